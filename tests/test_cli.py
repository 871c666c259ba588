"""The command line end to end, as a user runs it: `nakt demo --smoke` as a subprocess, then stages on its output."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import HC18

pytestmark = pytest.mark.slow
NAKT = [sys.executable, "-m", "nakt_ray.cli"]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "NAKT_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}


def run(args, cwd, timeout=600):
    return subprocess.run(NAKT + args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    proc = run(["demo", "--smoke", "--run-dir", str(root / "run")], cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root / "run", proc.stdout


def test_smoke_demo_prints_the_table_and_locations(smoke):
    run_dir, out = smoke
    for row in ("| unet_a |", "| segresnet_b |", "| attention_unet_c |", "| teachers_ensemble |", "| student |"):
        assert row in out
    assert "Parquet annotations:" in out and "models:/nakt-demo-student@candidate" in out
    report = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    assert all(0.0 <= r["dice"] <= 1.0 and r["n"] == 8 for r in report["models"].values())
    summary = json.loads((run_dir / "annotations" / "summary.json").read_text())
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (16, 16, 0)


def test_smoke_demo_mlflow_store_holds_runs_and_registered_student(smoke, tmp_path):
    run_dir, _ = smoke
    script = f"""
import mlflow, numpy as np, torch
mlflow.set_tracking_uri("sqlite:///{run_dir.resolve()}/mlflow.db")
runs = mlflow.search_runs(experiment_names=["nakt-demo"])
stages = sorted(runs["tags.nakt.stage"])
model = mlflow.pytorch.load_model("models:/nakt-demo-student@candidate", map_location="cpu").eval()
with torch.no_grad():
    y = model(torch.zeros(1, 1, 64, 64))
mv = mlflow.MlflowClient().get_model_version_by_alias("nakt-demo-student", "candidate")
print(stages, tuple(y.shape), mv.tags["nakt.teachers"], mv.tags["nakt.fusion_rule"])
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("['annotate', 'evaluate', 'train-student', 'train-teacher', 'train-teacher', 'train-teacher'] "
            "(1, 2, 64, 64) unet_a,segresnet_b,attention_unet_c mean") in proc.stdout


def test_annotate_cli_on_a_folder_with_a_corrupt_file(smoke, tmp_path):
    run_dir, _ = smoke
    images = tmp_path / "incoming"
    images.mkdir()
    for p in sorted((run_dir / "data" / "test" / "images").iterdir())[:5]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "broken.png").write_bytes(b"not an image")
    proc = run(["annotate", "--config", str(run_dir / "run.yaml"), "--transferal", str(images),
                "--output", str(tmp_path / "ann")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "ann" / "summary.json").read_text())
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (6, 5, 1)
    errors = json.loads((tmp_path / "ann" / "errors.json").read_text())
    assert errors[0]["case_id"] == "broken" and "broken.png" in errors[0]["reason"]


@pytest.mark.hc18
@pytest.mark.skipif(not (HC18 / "images").is_dir(), reason=f"HC18 data not found at {HC18}")
def test_annotate_hc18_with_demo_teachers_one_row_per_image(smoke, tmp_path):
    import pyarrow.parquet as pq

    run_dir, _ = smoke
    proc = run(["annotate", "--config", str(run_dir / "run.yaml"), "--transferal", str(HC18 / "images"),
                "--output", str(tmp_path / "hc18")], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pq.ParquetDataset(sorted(str(p) for p in (tmp_path / "hc18").glob("*.parquet"))).read(
        columns=["case_id", "status"])
    images = sorted(p.stem for p in (HC18 / "images").iterdir())
    assert sorted(table.column("case_id").to_pylist()) == images  # exactly one row per image
    assert set(table.column("status").to_pylist()) == {"ok"}


def test_cli_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"teachers": [{"name": "a", "arch": "unet"}], "trainig": {"epochs": 1}}))
    proc = run(["annotate", "--config", str(bad)], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "unknown config key 'trainig'; did you mean 'training'" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"teachers": [{"name": "a", "arch": "unet", "train_data": str(tmp_path / "no")}],
                                    "run_dir": str(tmp_path / "run")}))
    proc = run(["train-teacher", "--config", str(good)], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and str(tmp_path / "no") in proc.stderr
    proc = run(["annotate", "--config", str(good), "--set", "teachers.0.arch=unett"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "did you mean 'unet'" in proc.stderr
