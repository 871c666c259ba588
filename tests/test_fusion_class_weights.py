"""Per-class fusion weights (issue 17, point 3: "weights per teacher, optionally per class"): the rule on hand-made
arrays, full and partial coverage, the config key ``fusion.class_weights``, its search entries and the errors. The
definition is in docs/fusion.md ("Per-class weights"): teacher t's weight at a pixel is ``sum_c W[t, c] p_t(c)``."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_UNET, tiny_raw_config

from nakt_ray import config
from nakt_ray.config import ConfigError
from nakt_ray.fusion import fuse
from nakt_ray.fusion.partial import check_rule, fuse_partial, fuse_teachers

PER_PIXEL_RULES = ("weighted_mean", "majority_vote", "confidence_weighted")


def pixels(*columns: list[float]) -> np.ndarray:
    """One teacher's probabilities ``[C, 1, N]`` from N per-pixel class distributions."""
    return np.array(columns, dtype=np.float64).T[:, None, :]


def random_probs(rng: np.random.Generator, n_teachers: int, n_classes: int, size: int = 6) -> np.ndarray:
    return rng.dirichlet(np.ones(n_classes), size=(n_teachers, size, size)).transpose(0, 3, 1, 2)


def test_weighted_mean_by_hand() -> None:
    # teacher A is trusted on class 1 only, teacher B on class 2 only (W rows: background, class 1, class 2)
    a = pixels([0.1, 0.8, 0.1], [0.2, 0.1, 0.7])
    b = pixels([0.1, 0.1, 0.8], [0.6, 0.3, 0.1])
    w = [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    got = fuse(np.stack([a, b]), "weighted_mean", w)[:, 0, :]
    # pixel 0: A's weight 0.1 + 0.8 = 0.9, B's 0.1 + 0.8 = 0.9 -> the plain mean
    assert got[:, 0] == pytest.approx([0.1, 0.45, 0.45], abs=1e-6)
    # pixel 1: A claims class 2 (weight 0.2 + 0.1 = 0.3), B claims background (0.6 + 0.1 = 0.7)
    expected = (0.3 * np.array([0.2, 0.1, 0.7]) + 0.7 * np.array([0.6, 0.3, 0.1])) / 1.0
    assert got[:, 1] == pytest.approx(expected, abs=1e-6)
    # the plain mean would make class 2 and background nearly even there; the weights side with B
    plain = fuse(np.stack([a, b]), "mean")[:, 0, 1]
    assert got[0, 1] - got[2, 1] > plain[0] - plain[2] + 0.15


def test_majority_vote_by_hand() -> None:
    # three teachers; the third's vote for class 2 weighs 3, its other votes 1
    t0, t1, t2 = pixels([0.7, 0.2, 0.1]), pixels([0.7, 0.2, 0.1]), pixels([0.1, 0.2, 0.7])
    w = [[1, 1, 1], [1, 1, 1], [1, 1, 3]]
    got = fuse(np.stack([t0, t1, t2]), "majority_vote", w)[:, 0, 0]
    assert got == pytest.approx([0.4, 0.0, 0.6], abs=1e-6)  # 2 votes of 1 for background against 1 vote of 3
    # the same teachers, the third voting background: its background vote weighs 1
    got = fuse(np.stack([t0, t1, t0]), "majority_vote", w)[:, 0, 0]
    assert got == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)


@pytest.mark.parametrize("rule", PER_PIXEL_RULES)
def test_constant_rows_are_the_per_teacher_rule(rule: str) -> None:
    probs = random_probs(np.random.default_rng(1), 3, 4)
    w = [0.2, 0.5, 0.3]
    rows = [[x] * 4 for x in w]
    assert np.abs(fuse(probs, rule, w) - fuse(probs, rule, rows)).max() < 1e-6
    batched = np.stack([probs, probs[::-1]])  # [B, T, C, H, W]
    assert np.abs(fuse(batched, rule, rows)[1] - fuse(probs[::-1], rule, rows)).max() < 1e-6


def test_a_pixel_where_every_weight_is_zero_falls_back_to_equal_weights() -> None:
    a, b = pixels([1.0, 0.0]), pixels([0.0, 1.0])
    got = fuse(np.stack([a, b]), "weighted_mean", [[0.0, 1.0], [1.0, 0.0]])[:, 0, 0]
    assert got == pytest.approx([0.5, 0.5], abs=1e-6)  # each claims only what it is weighted 0 for


@pytest.mark.parametrize("rule", PER_PIXEL_RULES)
def test_partial_fusion_with_full_coverage_equals_the_rule(rule: str) -> None:
    rng = np.random.default_rng(2)
    probs = random_probs(rng, 3, 4)
    w = rng.uniform(0.0, 1.0, (3, 4))
    got = fuse_partial(list(probs), np.ones((3, 4), bool), rule, w)
    assert np.abs(got - fuse(probs, rule, w)).max() < 1e-5


@pytest.mark.parametrize("rule", PER_PIXEL_RULES)
def test_partial_coverage_uses_only_the_weights_of_classes_a_teacher_predicts(rule: str) -> None:
    rng = np.random.default_rng(3)
    cov = np.array([[1, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 0]], bool)  # union: background + 3 classes
    own = [rng.dirichlet(np.ones(int(c.sum())), size=(5, 5)).transpose(2, 0, 1) for c in cov]
    w = rng.uniform(0.2, 1.0, (3, 4))
    base = fuse_partial(own, cov, rule, w)
    changed = w.copy()
    changed[~cov] = 50.0  # the entries of classes a teacher does not predict are unused
    assert np.abs(fuse_partial(own, cov, rule, changed) - base).max() < 1e-6
    # constant rows are the per-teacher weights; and a weight that matters changes the result
    rows = np.repeat(w[:, :1], 4, axis=1)
    assert np.abs(fuse_partial(own, cov, rule, rows) - fuse_partial(own, cov, rule, w[:, 0])).max() < 1e-5
    changed = w.copy()
    changed[2, 1] = 0.0
    assert np.abs(fuse_partial(own, cov, rule, changed) - base).max() > 1e-3


def test_partial_per_class_weight_decides_a_contested_class() -> None:
    # teachers 0 and 1 both cover class 1; 0 says it is there, 1 says its background. Weighted per class, where 0
    # says class 1 it counts 4 times what 1 counts saying background: class 1 gets 0.8 of the pixel.
    cov = np.array([[1, 1, 0], [1, 1, 1]], bool)
    t0 = pixels([0.0, 1.0])
    t1 = pixels([1.0, 0.0, 0.0])
    got = fuse_partial([t0, t1], cov, "weighted_mean", [[1, 4, 1], [1, 1, 1]])[:, 0, 0]
    assert got == pytest.approx([0.2, 0.8, 0.0], abs=1e-4)
    assert fuse_teachers([t0, t1], cov, "weighted_mean", [[1, 4, 1], [1, 1, 1]])[:, 0, 0] == pytest.approx(got)


@pytest.mark.parametrize("rule, weights, match", [
    ("staple", [[1, 1, 1], [1, 1, 1]], "staple.*per-teacher weights only"),
    ("weighted_mean", [[1, 1], [1, 1, 1]], r"2 rows \(one per teacher\) of 3 numbers"),
    ("weighted_mean", [[1, 1, 1]], r"shape \[T, C\] = \[2, 3\]"),
    ("majority_vote", [[1, -1, 1], [1, 1, 1]], "non-negative"),
    ("weighted_mean", [[0, 0, 0], [0, 0, 0]], "not all be zero"),
])
def test_bad_per_class_weights_are_refused(rule: str, weights: list, match: str) -> None:
    probs = random_probs(np.random.default_rng(4), 2, 3)
    with pytest.raises(ValueError, match=match):
        fuse(probs, rule, weights)
    with pytest.raises(ValueError, match=match):
        check_rule(rule, weights, 2, 3)


# ---- the config key and the search space ----------------------------------------------------------------------
def _raw(tmp_path, **fusion) -> dict:
    raw = tiny_raw_config(tmp_path, student={"name": "s", "arch": "unet", "arch_args": TINY_UNET})
    raw["fusion"] = fusion
    return raw


def test_class_weights_in_the_config(tmp_path) -> None:
    n = len(tiny_raw_config(tmp_path)["teachers"])
    rows = [[1.0, 0.5]] * n
    cfg = config.from_dict(_raw(tmp_path, rule="weighted_mean", class_weights=rows))
    assert cfg.fusion.effective_weights() == rows  # weighted_mean needs no per-teacher weights beside them
    scale = [float(i + 1) for i in range(n)]
    cfg = config.from_dict(_raw(tmp_path, rule="majority_vote", weights=scale, class_weights=rows))
    assert cfg.fusion.effective_weights() == [[s * 1.0, s * 0.5] for s in scale]
    assert config.from_dict(_raw(tmp_path)).fusion.effective_weights() is None
    # with target: teachers they weigh each teacher's partial-label loss per class (losses.partial_label_loss)
    cfg = config.from_dict(_raw(tmp_path, rule="weighted_mean", class_weights=rows, target="teachers"))
    assert cfg.fusion.effective_weights() == rows


@pytest.mark.parametrize("fusion, match", [
    ({"rule": "staple", "class_weights": "ROWS"}, r"fusion.class_weights.*'staple' learns"),
    ({"rule": "mean", "class_weights": "ROWS"}, r"fusion.class_weights.*'mean' takes no weights"),
    ({"rule": "weighted_mean", "class_weights": [[1.0, 1.0]]}, r"rows, one per teacher .* of 2 weights, one per label"),
    ({"rule": "weighted_mean", "class_weights": "SHORT"}, r"of 2 weights, one per label of data.labels"),
    ({"rule": "weighted_mean", "class_weights": "NEGATIVE"}, r"fusion.class_weights.*non-negative"),
])
def test_bad_class_weights_in_the_config_name_the_key(tmp_path, fusion: dict, match: str) -> None:
    n = len(tiny_raw_config(tmp_path)["teachers"])
    rows = {"ROWS": [[1.0, 1.0]] * n, "SHORT": [[1.0]] * n, "NEGATIVE": [[1.0, -1.0]] * n}
    if isinstance(fusion.get("class_weights"), str):
        fusion = {**fusion, "class_weights": rows[fusion["class_weights"]]}
    with pytest.raises(ConfigError, match=match):
        config.from_dict(_raw(tmp_path, **fusion))


def test_searched_class_weights_fill_from_the_base(tmp_path) -> None:
    from nakt_ray.config.space import parse_space, trial_config, trial_values

    n = len(tiny_raw_config(tmp_path)["teachers"])
    space = {"fusion.class_weights.0.1": {"uniform": [0.0, 2.0]}, "fusion.rule": {"choice": ["weighted_mean",
                                                                                            "staple"]}}
    raw = _raw(tmp_path, rule="weighted_mean", class_weights=[[1.0, 0.5]] * n)
    raw["tune"] = {"space": space}
    cfg = config.from_dict(raw)
    dists = parse_space(space)
    values = trial_values(dists, {"fusion.class_weights.0.1": 1.5, "fusion.rule": "weighted_mean"}, cfg)
    assert values["fusion.class_weights"] == [[1.0, 1.5]] + [[1.0, 0.5]] * (n - 1)
    assert trial_config(cfg, values).fusion.class_weights[0] == (1.0, 1.5)
    # STAPLE learns per-class reliability itself: its trials drop the per-class weights
    values = trial_values(dists, {"fusion.class_weights.0.1": 1.5, "fusion.rule": "staple"}, cfg)
    assert values["fusion.class_weights"] is None and trial_config(cfg, values).fusion.class_weights is None
    bad = {**raw, "tune": {"space": {"fusion.class_weights.0.7": {"uniform": [0.0, 1.0]}}}}
    with pytest.raises(ConfigError, match=r"label index below 2"):
        config.from_dict(bad)


def test_nakt_fuse_reads_per_class_weights_as_rows() -> None:
    from nakt_ray.cli import _parse_weights

    assert _parse_weights("2,1,1") == [2.0, 1.0, 1.0]
    assert _parse_weights("1,1,0.2;1,0.5,1") == [[1.0, 1.0, 0.2], [1.0, 0.5, 1.0]]
    with pytest.raises(ConfigError, match=r"--weights.*rows separated by ';'"):
        _parse_weights("1,x;1,1")
