"""Real interruptions: a `nakt` driver process killed mid-run (with the local Ray instance it started), then the
same command again with --resume. Annotation ends with every case exactly once; student training continues from
its last checkpoint in the same MLflow run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_UNET, committed_checkpoint, make_scripted_teacher, tiny_raw_config

# two driver processes per test, each starting Ray: minutes on a loaded 2-core machine
pytestmark = [pytest.mark.fault, pytest.mark.timeout(600)]
NAKT = [sys.executable, "-m", "nakt_ray.cli"]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "NAKT_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    # a session of its own, so the driver and every Ray process it started can be killed together
    return subprocess.Popen(NAKT + args, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before it could be interrupted:\n"
                        f"{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the run never reached the point to interrupt it")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray instance, as a crash or `kill -9` would
    proc.wait(timeout=30)


def _finish(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(NAKT + args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def _config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_killed_annotation_driver_resumes_with_every_case_once(tmp_path, synthetic_dirs):
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.demo import synthetic

    src = synthetic.write_folder(tmp_path / "transferal", 48, "mixed", seed=5, size=(40, 56))
    (src / "images" / sorted(os.listdir(src / "images"))[7]).write_bytes(b"not an image")
    raw = tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "checkpoint": str(make_scripted_teacher(tmp_path / "t1.ts", "t1", seed=1)), "batch_size": 2},
        {"name": "t2", "checkpoint": str(make_scripted_teacher(tmp_path / "t2.ts", "t2", seed=2)), "batch_size": 2}])
    raw["data"]["transferal"] = str(src)
    raw["annotate"] = {"decode_batch_size": 2, "rows_per_file": 2}
    cfg = _config(tmp_path, raw)
    out = tmp_path / "run" / "annotations"

    proc = _start(["annotate", "--config", str(cfg)], tmp_path)
    _kill_when(proc, lambda: len(ann.parquet_files(out)) >= 2 if out.exists() else False)
    assert not (out / ann.SUMMARY).exists()  # it really was cut short
    before = len(ann.parquet_files(out))

    summary = json.loads(_finish(["annotate", "--config", str(cfg), "--resume"], tmp_path))
    assert summary["resumed_cases"] >= 2 and before >= 2
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (48, 47, 1)
    ids = ann.read_table(out, columns=["case_id"]).column("case_id").to_pylist()
    assert len(ids) == len(set(ids)) == 48  # every input case exactly once, none lost, none doubled


def test_killed_training_driver_resumes_into_the_same_mlflow_run(annotated, tmp_path, synthetic_dirs):
    from mlflow.tracking import MlflowClient

    base, summary, _ = annotated
    raw = base.to_dict()
    raw.update(run_dir=str(tmp_path / "run"),
               student={"name": "s", "arch": "unet", "arch_args": TINY_UNET, "annotations": summary["output"]},
               training={"epochs": 4, "batch_size": 4, "num_workers": 1, "max_failures": 0})
    raw["data"]["val"] = str(synthetic_dirs["mixed"])
    cfg = _config(tmp_path, raw)
    storage = tmp_path / "run" / "ray_train"

    proc = _start(["train-student", "--config", str(cfg)], tmp_path)
    _kill_when(proc, lambda: committed_checkpoint(storage))
    state = json.loads((tmp_path / "run" / "student" / "s" / "train_run.json").read_text())
    assert state["finished"] is False and state["mlflow_run_id"]

    result = json.loads(_finish(["train-student", "--config", str(cfg), "--resume"], tmp_path))
    assert result["run_id"] == state["mlflow_run_id"] and result["ray_train_name"] == state["ray_train_name"]
    assert result["metrics"]["epoch"] == 3
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    steps = [h.step for h in client.get_metric_history(result["run_id"], "train_loss")]
    assert set(steps) == {0, 1, 2, 3}
    # resumed from the checkpoint, not from scratch: epoch 0 was trained (and logged) once
    assert steps.count(0) == 1
    starts = [(m.step, m.value) for m in sorted(client.get_metric_history(result["run_id"], "start_epoch"),
                                                key=lambda m: m.timestamp)]
    assert starts[0] == (0, 0) and len(starts) == 2 and starts[1][0] >= 1  # started, then resumed past epoch 0
    assert client.get_run(result["run_id"]).data.tags["nakt.resumed"] == "true"
    proc = subprocess.run(NAKT + ["train-student", "--config", str(cfg), "--resume"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "finished" in proc.stderr
