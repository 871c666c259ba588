"""Label spaces (nakt_ray/fusion/labels.py): teachers' label names matched to the student's, and how their channels
fold onto the union; and the annotation set's record of it (nakt_ray/annotation/parquet.py: ``teacher_classes``,
``coverage``, ``teacher_shapes``, ``fused_columns`` with teachers that store only their own classes).

All inputs are hand-made; the expected answers are worked out in the comments.
"""
from __future__ import annotations

import numpy as np
import pytest

from nakt_ray.annotation import parquet as ann
from nakt_ray.errors import ConfigError
from nakt_ray.fusion import fuse
from nakt_ray.fusion.labels import (
    LabelMap,
    fold_channels,
    map_label_spaces,
    normalise_label,
)
from nakt_ray.fusion.partial import (
    coverage_from_classes,
    fuse_partial,
    pairwise_dice_partial,
)

STUDENT = ["background", "liver", "left ventricle", "kidney"]  # union classes 0..3


def random_probs(rng: np.random.Generator, shape: tuple[int, ...], axis: int = -3) -> np.ndarray:
    e = np.exp(2.0 * rng.normal(size=shape))
    return e / e.sum(axis=axis, keepdims=True)


# --------------------------------------------------------------------------------------------------------------
# matching names
# --------------------------------------------------------------------------------------------------------------
def test_normalise_label_ignores_case_underscores_hyphens_and_spaces() -> None:
    assert normalise_label("Left_Ventricle") == normalise_label(" left-ventricle ") == "left ventricle"
    assert normalise_label("LEFT  __ Ventricle") == "left ventricle"
    assert normalise_label("leftventricle") != "left ventricle"  # a missing separator is another name


def test_exact_names_map_each_teacher_onto_the_classes_it_names() -> None:
    maps = map_label_spaces({"a": ["background", "liver"], "b": ["background", "kidney", "left ventricle"]},
                            STUDENT)
    assert maps["a"] == LabelMap(classes=(0, 1), cells=(0, 1), label_map={"liver": "liver"})
    # b's own order is kidney, left ventricle; its stored channels are in union order: 0, 2 (lv), 3 (kidney)
    assert maps["b"].classes == (0, 2, 3)
    assert maps["b"].cells == (0, 2, 1)
    assert maps["b"].label_map == {"kidney": "kidney", "left ventricle": "left ventricle"}


def test_names_match_whatever_the_case_underscores_and_hyphens() -> None:
    maps = map_label_spaces({"a": ["BG", "LIVER", "Left_Ventricle"], "b": ["bg", "Kid-ney"]},
                            ["Background", "Liver", "left-ventricle", "kid_ney"])
    assert maps["a"].classes == (0, 1, 2) and maps["b"].classes == (0, 3)
    # the label map records the teacher's spelling -> the student's spelling
    assert maps["a"].label_map == {"LIVER": "Liver", "Left_Ventricle": "left-ventricle"}


def test_an_alias_names_the_student_label() -> None:
    maps = map_label_spaces({"a": ["bg", "LV"], "b": ["bg", "liver", "kidney"]}, STUDENT,
                            aliases={"lv": "Left_Ventricle"})
    assert maps["a"].classes == (0, 2)
    assert maps["a"].label_map == {"LV": "left ventricle"}
    with pytest.raises(ConfigError, match="'LV'"):  # without the alias, LV matches nothing
        map_label_spaces({"a": ["bg", "LV"], "b": ["bg", "liver", "kidney"]}, STUDENT)


def test_an_alias_to_background_folds_the_class_into_the_teachers_background() -> None:
    teachers = {"a": ["bg", "liver", "tumour"], "b": ["bg", "left ventricle", "kidney"]}
    maps = map_label_spaces(teachers, STUDENT, aliases={"tumour": "background"})
    m = maps["a"]
    assert m.classes == (0, 1) and m.cells == (0, 1, 0)
    assert m.label_map == {"liver": "liver", "tumour": "background"}
    assert not m.identity
    # on arrays: tumour's probability joins a's background; the stored map has 2 channels summing to 1
    probs = np.array([0.5, 0.2, 0.3])[:, None, None] * np.ones((3, 2, 2))
    folded = fold_channels(probs, m)
    np.testing.assert_allclose(folded[:, 0, 0], [0.8, 0.2])
    # an alias to the student's own first label (whatever its name) does the same
    named = map_label_spaces(teachers, ["none", *STUDENT[1:]], aliases={"tumour": "none"})
    assert named["a"].cells == (0, 1, 0) and named["a"].label_map["tumour"] == "background"


def test_two_teacher_labels_onto_one_student_class_are_summed() -> None:
    maps = map_label_spaces({"a": ["bg", "left kidney", "liver", "right kidney"], "b": ["bg", "lv"]}, STUDENT,
                            aliases={"left_kidney": "kidney", "Right Kidney": "kidney", "LV": "left ventricle"})
    m = maps["a"]
    assert m.classes == (0, 1, 3)           # background, liver, kidney
    assert m.cells == (0, 2, 1, 2)          # both kidneys onto stored channel 2 (union class 3)
    assert m.label_map == {"left kidney": "kidney", "liver": "liver", "right kidney": "kidney"}
    rng = np.random.default_rng(0)
    probs = random_probs(rng, (2, 4, 5, 6), axis=1)  # [B, C_own, H, W]
    folded = fold_channels(probs, m, axis=1)
    assert folded.shape == (2, 3, 5, 6)
    np.testing.assert_allclose(folded[:, 0], probs[:, 0])
    np.testing.assert_allclose(folded[:, 1], probs[:, 2])
    np.testing.assert_allclose(folded[:, 2], probs[:, 1] + probs[:, 3])
    np.testing.assert_allclose(folded.sum(axis=1), 1.0)


def test_a_teachers_first_label_is_its_background_whatever_its_name() -> None:
    # "liver" first is this teacher's background (how its file names channel 0), not the student's liver
    maps = map_label_spaces({"a": ["liver", "kidney"], "b": ["other", "liver", "left ventricle"]}, STUDENT)
    assert maps["a"].classes == (0, 3) and maps["a"].label_map == {"kidney": "kidney"}
    assert maps["b"].classes == (0, 1, 2) and "other" not in maps["b"].label_map


def test_binary_run_takes_a_binary_teachers_one_class_whatever_its_name() -> None:
    maps = map_label_spaces({"a": ["background", "head"], "b": ["bg", "foreground"]}, ["background", "foreground"])
    assert maps["a"] == LabelMap(classes=(0, 1), cells=(0, 1), label_map={"head": "foreground"})
    assert maps["b"].label_map == {"foreground": "foreground"}


def test_binary_rule_does_not_apply_to_a_three_class_teacher_or_a_multi_class_run() -> None:
    with pytest.raises(ConfigError, match=r"teacher 'a' labels \['head', 'brain'\]"):
        map_label_spaces({"a": ["background", "head", "brain"]}, ["background", "foreground"])
    with pytest.raises(ConfigError, match=r"teacher 'a' labels \['head'\]"):
        map_label_spaces({"a": ["background", "head"], "b": ["bg", "liver", "left ventricle", "kidney"]}, STUDENT)


# --------------------------------------------------------------------------------------------------------------
# the errors: named, all in one message
# --------------------------------------------------------------------------------------------------------------
def test_unmatched_teacher_labels_are_named_with_their_teacher_and_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        map_label_spaces({"siteA": ["bg", "liver", "spleen"], "siteB": ["bg", "left ventricle", "kidney"]}, STUDENT)
    msg = str(err.value)
    assert "config key 'data.labels'" in msg
    assert "teacher 'siteA' labels ['spleen']" in msg and "siteB" not in msg
    assert "data.label_aliases" in msg


def test_a_teacher_that_covers_nothing_is_named() -> None:
    with pytest.raises(ConfigError, match=r"cover none of the student's classes: teacher 'b' \(its labels "
                                          r"\['bg', 'tumour'\] all fold into background\)"):
        map_label_spaces({"a": ["bg", "liver", "left ventricle", "kidney"], "b": ["bg", "tumour"]}, STUDENT,
                         aliases={"tumour": "background"})


def test_a_student_label_no_teacher_covers_is_named() -> None:
    with pytest.raises(ConfigError, match=r"student labels \['left ventricle'\] are predicted by no teacher"):
        map_label_spaces({"a": ["bg", "liver"], "b": ["bg", "kidney"]}, STUDENT)


def test_every_problem_is_named_in_one_message() -> None:
    teachers = {"a": ["bg", "liver", "spleen"], "b": ["bg", "tumour"], "c": ["bg", "liver"]}
    with pytest.raises(ConfigError) as err:
        map_label_spaces(teachers, STUDENT, aliases={"tumour": "background"}, where="the teachers of run.yaml")
    msg = str(err.value)
    assert msg.startswith("the teachers of run.yaml: ")
    assert "teacher 'a' labels ['spleen']" in msg                       # unmatched
    assert "cover none of the student's classes: teacher 'b'" in msg     # empty
    # nobody predicts left ventricle or kidney: said now, not after the first two are fixed
    assert "student labels ['left ventricle', 'kidney'] are predicted by no teacher" in msg
    # liver is a's (matched) label and c's: not reported as uncovered
    assert "'liver'] are predicted" not in msg


def test_a_class_only_a_teacher_with_an_unmatched_label_names_is_not_reported_uncovered() -> None:
    with pytest.raises(ConfigError) as err:
        map_label_spaces({"a": ["bg", "liver", "spleen"], "b": ["bg", "left ventricle", "kidney"]}, STUDENT)
    assert "predicted by no teacher" not in str(err.value)  # a's liver counts once its spleen is fixed


# --------------------------------------------------------------------------------------------------------------
# fold_channels
# --------------------------------------------------------------------------------------------------------------
def test_fold_channels_identity_returns_the_same_array() -> None:
    m = map_label_spaces({"a": ["bg", "liver", "left ventricle", "kidney"]}, STUDENT)["a"]
    assert m.identity
    probs = random_probs(np.random.default_rng(1), (4, 3, 3))
    assert fold_channels(probs, m) is probs
    # a teacher of a subset, in union order, is stored as it is too
    sub = map_label_spaces({"a": ["bg", "liver"], "b": ["bg", "left ventricle", "kidney"]}, STUDENT)["b"]
    assert sub.identity and sub.classes == (0, 2, 3)
    p3 = random_probs(np.random.default_rng(2), (2, 3, 4, 4), axis=1)
    assert fold_channels(p3, sub, axis=1) is p3


def test_fold_channels_refuses_a_wrong_channel_count() -> None:
    folding = LabelMap(classes=(0, 1), cells=(0, 1, 0), label_map={"liver": "liver", "tumour": "background"})
    with pytest.raises(ValueError, match="probs has 2 channels on axis -3; the label map expects 3"):
        fold_channels(np.ones((2, 3, 3)) / 2, folding)
    identity = LabelMap(classes=(0, 1), cells=(0, 1), label_map={"liver": "liver"})
    with pytest.raises(ValueError, match="probs has 3 channels on axis 1; the label map expects 2"):
        fold_channels(np.ones((1, 3, 3, 3)) / 3, identity, axis=1)


# --------------------------------------------------------------------------------------------------------------
# the annotation set's manifest and fused columns
# --------------------------------------------------------------------------------------------------------------
def manifest(classes: list[list[int]] | None, labels: list[str] = STUDENT) -> dict:
    teachers = [{"name": f"t{i}"} for i in range(len(classes) if classes else 2)]
    if classes:
        for t, c in zip(teachers, classes):
            t["classes"] = c
    return {"labels": list(labels), "label_shape": [len(labels), 5, 6], "teachers": teachers}


def test_a_set_without_classes_is_read_as_every_teacher_covering_everything() -> None:
    old = manifest(None)
    assert ann.teacher_classes(old) == [[0, 1, 2, 3], [0, 1, 2, 3]]
    assert ann.coverage(old) is None
    assert ann.teacher_shapes(old) == [(4, 5, 6), (4, 5, 6)]
    # classes recorded, all full: still the fast path
    assert ann.coverage(manifest([[0, 1, 2, 3], [0, 1, 2, 3]])) is None


def test_a_set_with_classes_gives_coverage_and_shapes() -> None:
    m = manifest([[0, 1], [0, 2, 3], [0, 1, 2, 3]])
    assert ann.teacher_classes(m) == [[0, 1], [0, 2, 3], [0, 1, 2, 3]]
    np.testing.assert_array_equal(ann.coverage(m), [[1, 1, 0, 0], [1, 0, 1, 1], [1, 1, 1, 1]])
    assert ann.coverage(m).dtype == np.bool_
    assert ann.teacher_shapes(m) == [(2, 5, 6), (3, 5, 6), (4, 5, 6)]


def test_fused_columns_with_partial_coverage_hand_made() -> None:
    # union 0 bg, 1 liver, 2 kidney; teacher A covers liver, B covers kidney; one pixel row of 3 and a failed row.
    #   pixel 0: A says liver (bg .2, liver .8), B says bg (1, 0)     -> liver
    #   pixel 1: A says bg (1, 0),               B says kidney (0, 1) -> kidney
    #   pixel 2: both say bg                                           -> bg
    a = np.array([[[0.2, 1.0, 1.0]], [[0.8, 0.0, 0.0]]])          # [C_A=2, H=1, W=3]
    b = np.array([[[1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]])
    cov = coverage_from_classes([[1], [2]], 3)
    probs_q = [ann.quantize(np.stack([a, a])), ann.quantize(np.stack([b, b]))]  # [B=2, C_t, 1, 3] uint8
    ok = np.array([True, False])
    out = ann.fused_columns(probs_q, ok, "mean", None, cov)
    soft = ann.from_bytes(out["soft_label"][:1], (3, 1, 3), "uint8")[0]
    hard = ann.from_bytes(out["hard_label"][:1], (1, 3), "uint8")[0]
    assert soft.shape == (3, 1, 3)
    np.testing.assert_allclose(ann.dequantize(soft).sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(soft.astype(int).sum(axis=0), 255, atol=2)  # K+1 channels summing to 1 as stored
    np.testing.assert_array_equal(hard, [[1, 2, 0]])
    # the pooled soft label at pixel 0: A's liver .8 stands; B's background covers bg and liver, consistent with it
    np.testing.assert_allclose(ann.dequantize(soft)[:, 0, 0], [0.2, 0.8, 0.0], atol=1 / 255)
    # the teachers agree on every class they share (none): agreement 1
    assert out["agreement"][0] == pytest.approx(1.0) and np.isnan(out["agreement"][1])
    assert out["soft_label"][1] == b"" and out["hard_label"][1] == b""
    # the naive fusion (B's background read as the union's background) calls pixel 0 background (.6 against .4)
    naive = fuse(np.stack([np.concatenate([a, np.zeros((1, 1, 3))]), np.insert(b, 1, 0.0, axis=0)]), "mean")
    assert naive[:, 0, 0].argmax() == 0


def test_fused_columns_equals_fuse_partial_and_pairwise_dice_partial() -> None:
    rng = np.random.default_rng(5)
    cov = coverage_from_classes([[1], [2, 3], [1, 3]], 4)
    probs = [random_probs(rng, (3, int(c.sum()), 5, 6), axis=1) for c in cov]
    probs_q = [ann.quantize(p) for p in probs]
    out = ann.fused_columns(probs_q, np.ones(3, bool), "weighted_mean", [1.0, 2.0, 3.0], cov)
    deq = [ann.dequantize(q) for q in probs_q]
    expected = fuse_partial(deq, cov, "weighted_mean", [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(ann.from_bytes(out["soft_label"], (4, 5, 6), "uint8"), ann.quantize(expected))
    np.testing.assert_allclose(out["agreement"], pairwise_dice_partial(deq, cov), rtol=1e-6)
