"""Tests for jobs/experiments/e9_weight_search.py (E9, fusion-weight search with poor teachers, issue 20 point 3):
the poor teachers, the shifted site, the search's objective (the re-fused val annotation's hard label), the
best-so-far curve and its thresholds, the lent pool's check, and the smoke run end to end as a subprocess (reads
../shared/data/hc18 in place; skipped when absent)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from _studies import EXPERIMENTS, HC18, load_study, needs, study_env, study_help

from nakt_ray.annotation import parquet as ann
from nakt_ray.metrics import dice_per_class

SCRIPT = EXPERIMENTS / "e9_weight_search.py"
needs_data = needs(HC18 / "masks", "HC18", "E9")


e9 = load_study("e9_weight_search")


def test_poor_teachers_follow_the_pool_few_first_then_shifted_architectures_mixed() -> None:
    poor = e9.poor_teachers(2, 2, 8)
    assert [n for n, _, _ in poor] == ["t8_few_timm_unet", "t9_few_unet", "t10_shift_segresnet",
                                       "t11_shift_attention_unet"]
    assert [k for _, _, k in poor] == [e9.FEW, e9.FEW, e9.SHIFT, e9.SHIFT]
    assert [(n, k) for n, _, k in e9.poor_teachers(0, 1, 4)] == [("t4_shift_segresnet", e9.SHIFT)]


def test_the_shifted_site_inverts_and_gamma_transforms_in_the_same_dtype() -> None:
    img = np.array([[0, 64, 128, 255]], np.uint8)
    out = e9.shift_intensity(img, 2.0)
    assert out.dtype == np.uint8 and out[0, 0] == 255 and out[0, -1] == 0
    assert out[0, 2] == round((1 - 128 / 255) ** 2 * 255)                      # 63: gamma darkens the mid-tones
    assert np.all(np.diff(out[0].astype(int)) < 0)                              # inverted: order reversed
    np.testing.assert_array_equal(e9.shift_intensity(img, 1.0), 255 - img)     # gamma 1: plain inversion
    wide = e9.shift_intensity(np.array([0, 65535], np.uint16), 2.0)
    assert wide.dtype == np.uint16 and wide.tolist() == [65535, 0]


def test_shift_domain_writes_transformed_images_and_links_the_masks(tmp_path) -> None:
    from PIL import Image

    src = tmp_path / "src"
    for sub in ("images", "masks"):
        (src / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    Image.fromarray(img).save(src / "images" / "000_a.png")
    Image.fromarray((img > 128).astype(np.uint8) * 255).save(src / "masks" / "000_a.png")
    out = e9.shift_domain(src, tmp_path / "out", 2.0)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / "000_a.png")), e9.shift_intensity(img, 2.0))
    assert (out / "masks" / "000_a.png").is_symlink()
    assert (out / "masks" / "000_a.png").resolve() == (src / "masks" / "000_a.png").resolve()


def _maps(rng, n=5, t=3, c=2, size=8) -> np.ndarray:
    logits = rng.normal(size=(n, t, c, size, size))
    return np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)


def test_the_objective_is_the_dice_of_the_re_fused_annotations_hard_label() -> None:
    rng = np.random.default_rng(1)
    probs = _maps(rng)
    q = ann.quantize(probs)                                                     # as stored
    truth = rng.integers(0, 2, size=(5, 8, 8)).astype(np.uint8)
    weights = [0.6, 0.3, 0.1]
    names = ["a", "b", "c"]
    batch = {"status": np.array(["ok"] * 5, dtype=object),
             **{ann.prob_column(n): ann.to_bytes(q[:, k]) for k, n in enumerate(names)}}
    fused = ann.re_fuse_batch(batch, teachers=names, shapes=[(2, 8, 8)] * 3, rule="weighted_mean", weights=weights)
    hard = ann.from_bytes(fused["hard_label"], (8, 8), "uint8")               # what `nakt fuse` would write
    expected = float(dice_per_class(hard, truth, 2)[:, 1].mean())
    assert e9.fused_dice(q, truth, weights) == pytest.approx(expected, abs=1e-12)
    alone = float(dice_per_class(ann.dequantize(q[:, 1]).argmax(1), truth, 2)[:, 1].mean())
    assert e9.fused_dice(q, truth, [0.0, 1.0, 0.0]) == pytest.approx(alone)   # one teacher's weight: that teacher


def test_a_poor_teacher_weighted_zero_leaves_the_objective_of_the_good_ones() -> None:
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 2, size=(4, 8, 8)).astype(np.uint8)
    good = np.stack([np.stack([1.0 - truth, truth * 1.0], axis=1) * 0.8 + 0.1] * 2, axis=1)   # right, confident
    bad = np.stack([truth * 1.0, 1.0 - truth], axis=1)[:, None] * 0.98 + 0.01                  # wrong everywhere
    q = ann.quantize(np.concatenate([good, bad, bad], axis=1))
    assert e9.fused_dice(q, truth, [1.0, 1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert e9.fused_dice(q, truth, None) < 0.5                                  # the mean lets the two bad ones win
    assert e9.poor_share([0.2, 0.2, 0.5, 0.1], [2, 3]) == pytest.approx(0.6)
    assert e9.poor_share([1.0, 1.0, 0.0, 0.0], [2, 3]) == 0.0


def test_best_so_far_and_the_first_trial_below_a_threshold() -> None:
    trials = [{"objective": o, "poor_share": s} for o, s in
              [(0.70, 0.40), (float("nan"), 0.0), (0.72, 0.08), (0.72, 0.01), (0.71, 0.00), (0.80, 0.03),
               (0.85, 0.20), (0.86, 0.004)]]
    curve = e9.best_so_far(trials)
    assert [c["trial"] for c in curve] == [1, 1, 3, 3, 3, 6, 7, 8]             # a tie keeps the earlier; NaN never
    assert [c["poor_share"] for c in curve] == [0.40, 0.40, 0.08, 0.08, 0.08, 0.03, 0.20, 0.004]
    assert e9.first_trial_below(curve, 0.05) == 6                               # though trial 7's best rises again
    assert e9.first_trial_below(curve, 0.01) == 8
    assert e9.first_trial_below(curve, 0.001) is None
    assert e9.settled_below(curve, 0.05) == 8                                   # trial 7's best undid trial 6's
    assert e9.settled_below(curve, 0.25) == 3 and e9.settled_below(curve, 0.01) == 8
    assert math.isnan(e9.best_so_far([{"objective": float("nan"), "poor_share": 0.1}])[0]["objective"])


def test_the_simplex_decodes_to_weights_that_sum_to_one_as_nakt_tune_does() -> None:
    from nakt_ray import config
    from nakt_ray.config.space import parse_space, trial_values

    dists = parse_space({"fusion.weights": {"simplex": 4}})
    base = config.from_dict({"teachers": [{"name": f"t{k}"} for k in range(4)],
                             "fusion": {"rule": "weighted_mean", "weights": [1.0] * 4}})
    params = {"fusion.weights[0]": 0.1, "fusion.weights[1]": 0.2, "fusion.weights[2]": 0.999, "fusion.weights[3]": 1.0}
    w = trial_values(dists, params, base)["fusion.weights"]
    assert sum(w) == pytest.approx(1.0) and w[0] > w[1] > w[2] > w[3] >= 0.0   # a draw near 1: a weight near 0
    assert e9.poor_share(w, [2, 3]) < 0.001


def test_a_lent_pool_teacher_is_used_only_when_trained_on_the_same_bootstrap(tmp_path) -> None:
    mine = tmp_path / "run" / "bootstraps" / "t0_unet"
    (mine / "images").mkdir(parents=True)
    for n in ("000_a.png", "001_b.png"):
        (mine / "images" / n).write_bytes(b"x")
    pool = tmp_path / "e6"
    assert e9.pool_checkpoint(None, "t0_unet", mine) is None
    assert e9.pool_checkpoint(pool, "t0_unet", mine) is None                    # nothing there: trained here
    (pool / "teachers" / "t0_unet").mkdir(parents=True)
    (pool / "teachers" / "t0_unet" / "model.pt").write_bytes(b"m")
    (pool / "bootstraps" / "t0_unet" / "images").mkdir(parents=True)
    (pool / "bootstraps" / "t0_unet" / "images" / "000_a.png").write_bytes(b"x")
    with pytest.raises(SystemExit, match="not trained on this run's bootstrap"):
        e9.pool_checkpoint(pool, "t0_unet", mine)
    (pool / "bootstraps" / "t0_unet" / "images" / "001_b.png").write_bytes(b"x")
    assert e9.pool_checkpoint(pool, "t0_unet", mine) == pool / "teachers" / "t0_unet" / "model.pt"


def test_cli_help() -> None:
    proc = study_help(SCRIPT)
    assert proc.returncode == 0
    assert all(f in proc.stdout for f in ("--smoke", "--reuse", "--pool-dir", "--trials", "--random-trials"))


@needs_data
@pytest.mark.fault  # a system run (the whole study, tiny: ~6 min on 2 busy cores): the tier of its own
def test_smoke_run_end_to_end_and_reuse_keeps_every_part(tmp_path) -> None:
    """Four pool teachers and two poor ones, two annotations, a TPE and a random search of 8 trials on val's stored
    maps, three students, the test evaluation; then --reuse trains, annotates and searches nothing again."""
    out, run = tmp_path / "out", tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--data", str(HC18), "--run-dir", str(run), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=study_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((out / "e9.json").read_text())
    names, poor = result["teachers"], result["poor"]
    assert len(names) == 6 and poor == [4, 5]
    assert [result["teacher_kinds"][names[k]] for k in poor] == [e9.FEW, e9.SHIFT]
    assert result["train_images"][names[4]] == 4 and result["cases"]["val"] == 8 and result["cases"]["test"] == 12
    for s in result["searches"].values():
        assert len(s["trials"]) == 8 and s["teachers"] == names
        for t in s["trials"]:
            assert len(t["weights"]) == 6 and sum(t["weights"]) == pytest.approx(1.0)
            assert t["poor_share"] == pytest.approx(t["weights"][4] + t["weights"][5])
            assert 0.0 <= t["objective"] <= 1.0
        best = max(range(8), key=lambda i: (s["trials"][i]["objective"], -i))
        assert s["best_trial"] == best + 1 and s["best_weights"] == s["trials"][best]["weights"]
        objectives = [b["objective"] for b in s["best_so_far"]]
        assert objectives == sorted(objectives)
        for th, first in s["first_below"].items():
            below = [b["poor_share"] < float(th) for b in s["best_so_far"]]
            assert first == (below.index(True) + 1 if any(below) else None)
            settled = s["settled_below"][th]
            assert settled is None or (first <= settled and all(below[settled - 1:]))
            assert (settled is None) == (not below[-1])
    assert result["searches"]["optuna"]["search_alg"] == "optuna-tpe"
    assert result["searches"]["random"]["search_alg"] == "random"
    refs = result["fusion_refs"]
    assert refs["mean"]["poor_share"] == pytest.approx(2 / 6) and refs["pool_only"]["poor_share"] == 0.0
    assert result["students"]["student_searched"]["fusion"]["weights"] == result["searches"]["optuna"]["best_weights"]
    assert result["students"]["student_val_dice"]["fusion"]["weights"] == result["val_weights"]
    for n in [*names, *e9.STUDENTS, e9.ENSEMBLE]:
        assert 0.0 <= result["models"][n]["dice"] <= 1.0
    for refs_ in result["deltas"].values():
        for x in refs_.values():
            assert -1.0 <= x["delta_ci"][0] <= x["delta"] <= x["delta_ci"][1] <= 1.0
    md = (out / "e9.md").read_text()
    assert "## The searches" in md and "## Weights per teacher" in md and "## Students" in md
    assert (out / "e9.png").stat().st_size > 0 and (run / "mlflow.db").exists()
    assert sorted(p.name for p in (run / "student").iterdir()) == sorted(e9.STUDENTS)
    stamps = {p: p.stat().st_mtime_ns for p in [*run.glob("teachers/*/model.pt"), *run.glob("student/*/model.pt"),
                                                 run / "annotations" / "summary.json"]}
    again = subprocess.run([*cmd, "--reuse"], capture_output=True, text=True, timeout=900, env=study_env(),
                           cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert "E9 search optuna: done earlier" in again.stdout and "E9 search random: done earlier" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps                  # nothing trained or annotated again
    reused = json.loads((out / "e9.json").read_text())
    assert reused["searches"] == result["searches"] and reused["models"] == result["models"]
