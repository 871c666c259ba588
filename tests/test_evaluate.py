from __future__ import annotations

import json

import numpy as np
import pytest

from nakt_ray.annotation import parquet as ann
from nakt_ray import config
from nakt_ray.evaluation.evaluate import ENSEMBLE, evaluate, score_batch

from conftest import make_teacher, tiny_raw_config


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
    with pytest.raises(ValueError, match="predicts 3 classes"):
        evaluate(cfg, {"x": str(make_teacher(tmp_path / "x.pt", "x", num_classes=3))}, str(synthetic_dirs["mixed"]),
                 tmp_path / "eval2")
