from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_teacher, tiny_raw_config

from nakt_ray import config
from nakt_ray.annotation import parquet as ann
from nakt_ray.errors import TeacherLoadError
from nakt_ray.evaluation.evaluate import ENSEMBLE, evaluate, score_batch


def test_score_batch_at_original_resolution():
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 1
    from nakt_ray.data.preprocess import Geometry, preprocess_mask

    geom = Geometry(20, 30, 32, 32, 32, 32, 0, 0)
    small = preprocess_mask(mask, geom)
    perfect = ann.quantize(np.stack([1.0 - small, small]).astype(np.float32))
    wrong = ann.quantize(np.stack([small, 1.0 - small]).astype(np.float32))
    batch = {"case_id": np.array(["c"], object), "error": np.array([""], object),
             "geometry": np.array([json.dumps(geom.to_dict())], object), "mask": np.array([mask.tobytes()], object),
             "mask_shape": np.array([[20, 30]]), "prob__good": perfect[None], "prob__bad": wrong[None]}
    out = score_batch(batch, models=["good", "bad"], ensemble=["good", "bad"], num_classes=2)
    assert out["dice__good"][0] == pytest.approx(1.0, abs=0.02)
    assert out["dice__bad"][0] == pytest.approx(0.0, abs=0.02)
    assert 0.0 <= out[f"dice__{ENSEMBLE}"][0] <= 1.0


def test_evaluate_writes_tables(ray_session, tmp_path, synthetic_dirs):
    cfg = config.from_dict(tiny_raw_config(tmp_path))
    models = {"t1": str(make_teacher(tmp_path / "t1.pt", "t1", seed=1)),
              "t2": str(make_teacher(tmp_path / "t2.pt", "t2", seed=2))}
    report = evaluate(cfg, models, str(synthetic_dirs["mixed"]), tmp_path / "eval", ensemble=["t1", "t2"])
    assert set(report["models"]) == {"t1", "t2", ENSEMBLE}
    for r in report["models"].values():
        assert r["n"] == 6 and 0.0 <= r["dice"] <= 1.0 and r["dice_ci"][0] <= r["dice"] <= r["dice_ci"][1]
    assert "| t1 |" in (tmp_path / "eval" / "evaluation.md").read_text()
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["models"]["t2"]["n"] == 6
    with pytest.raises(TeacherLoadError, match="predicts 3 classes"):
        evaluate(cfg, {"x": str(make_teacher(tmp_path / "x.pt", "x", num_classes=3))}, str(synthetic_dirs["mixed"]),
                 tmp_path / "eval2")


def test_model_refs_run_configured_teachers_as_annotation_does(tmp_path):
    from nakt_ray.annotation.pools import TeacherRef, teacher_ref
    from nakt_ray.evaluation.evaluate import model_refs
    from nakt_ray.teachers.description import InferenceOptions

    cfg = config.from_dict(tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "checkpoint": "a.pt", "sliding_window": True, "overlap": 0.5, "tta_flips": [-1], "amp": "none",
         "actors": 2, "batch_size": 3, "num_cpus": 1.0, "num_gpus": 0.5}]))
    t1, student = model_refs(cfg, {"t1": "b.pt", "student": "s.pt"}, batch_size=5)
    assert t1 == teacher_ref(cfg, cfg.teachers[0], "b.pt")  # the annotation pipeline's own conversion
    assert t1.options == InferenceOptions(sliding_window=True, overlap=0.5, tta_flips=(-1,), amp="none")
    assert (t1.checkpoint, t1.actors, t1.batch_size, t1.num_cpus, t1.num_gpus) == ("b.pt", 2, 3, 1.0, 0.5)
    assert student == TeacherRef("student", "s.pt", batch_size=5)  # not a teacher of the run: plain inference
    assert teacher_ref(cfg, cfg.teachers[0]).checkpoint == "a.pt"


def _direct_dice(cfg, path, data, options):
    """Per-case teacher Dice computed without Ray: decode, ``LoadedTeacher.predict`` with ``options``, the stored
    (quantised) maps, then the same scoring as ``evaluate``."""
    import torch

    from nakt_ray.data.datasets import decode_batch
    from nakt_ray.data.readers import list_cases
    from nakt_ray.teachers.registry import load_teacher

    cases = list_cases(data, require_masks=True)
    batch = decode_batch({"case_id": np.array([c.case_id for c in cases], object),
                          "image_path": np.array([c.image_path for c in cases], object),
                          "mask_path": np.array([c.mask_path for c in cases], object)},
                         preprocess=cfg.preprocess, num_classes=2, keep_mask=True)
    teacher = load_teacher("t", path, "cpu", options)
    batch["prob__t"] = ann.quantize(teacher.predict(torch.from_numpy(batch["image"])).numpy())
    dice = score_batch(batch, models=["t"], ensemble=[], num_classes=2)["dice__t"]
    return dict(zip(batch["case_id"], dice))


def test_evaluate_runs_each_teacher_with_its_inference_options(ray_session, tmp_path, synthetic_dirs):
    """A configured teacher is scored as it annotates: with its sliding window and TTA flips. The same file under a
    name that is not a configured teacher runs plainly (resampled, no TTA), and the two give other Dice."""
    import csv

    from nakt_ray.teachers.description import InferenceOptions

    # Input size 16 on 32x32 images: sliding window tiles where plain inference resamples; a random-weight UNet
    # is not flip-symmetric, so the width flip changes its maps too.
    path = str(make_teacher(tmp_path / "t.pt", "t", seed=2, size=(16, 16)))
    cfg = config.from_dict(tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "checkpoint": path, "sliding_window": True, "tta_flips": [-1], "batch_size": 4}]))
    data = str(synthetic_dirs["mixed"])
    evaluate(cfg, {"t1": path, "plain": path}, data, tmp_path / "eval")
    with open(tmp_path / "eval" / "evaluation_cases.csv") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    with_options = _direct_dice(cfg, path, data, InferenceOptions(sliding_window=True, tta_flips=(-1,)))
    without = _direct_dice(cfg, path, data, InferenceOptions())
    assert set(rows) == set(with_options) and len(rows) == 6
    # The options matter on this input (else the test could not fail) ...
    assert max(abs(with_options[c] - without[c]) for c in rows) > 0.03
    for case, row in rows.items():  # ... and evaluate() applies them to the teacher, and only to it
        assert float(row["dice__t1"]) == pytest.approx(with_options[case], abs=0.01), case
        assert float(row["dice__plain"]) == pytest.approx(without[case], abs=0.01), case
