"""MLflow: a real SQLite store, the Model Registry, and the registered model loaded back in a fresh process."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import tiny_raw_config

from nakt_ray import config, tracking
from nakt_ray.models.model_file import ModelSpec


@pytest.fixture
def cfg(tmp_path):
    return config.from_dict(tiny_raw_config(tmp_path))


def test_default_store_is_sqlite_in_run_dir(cfg, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.tracking_uri(cfg)
    assert uri.startswith("sqlite:///") and uri.endswith("/run/mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(cfg) == "http://127.0.0.1:5000"


def test_stage_run_logs_params_and_worker_metrics(cfg):
    from mlflow.tracking import MlflowClient

    with tracking.stage_run(cfg, "train-teacher", params={"teacher.name": "t1"}) as run:
        logger = tracking.RunLogger(tracking.tracking_uri(cfg), run.info.run_id)
        for epoch in range(3):
            logger.log_metrics({"train_loss": 1.0 / (epoch + 1), "ignored": "text"}, step=epoch)
    client = MlflowClient(tracking.tracking_uri(cfg))
    data = client.get_run(run.info.run_id).data
    assert data.params["training.epochs"] == "1" and data.params["teacher.name"] == "t1"
    assert data.tags["nakt.stage"] == "train-teacher"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [0, 1, 2] and history[-1].value == pytest.approx(1 / 3)


def test_registered_timm_student_loads_in_a_fresh_process(cfg, tmp_path):
    """A student is registered in nakt's MLflow flavor (MLmodel + the nakt model file, no pickle) with its alias
    and tags, and loads in another interpreter through nakt's loader, bit for bit."""
    from nakt_ray.models.mlflow_format import log_and_register_model

    spec = ModelSpec(name="s", arch="timm_unet", arch_args={"encoder": "resnet18"}, labels=("bg", "fg"),
                     preprocess=config.PreprocessConfig(size=(64, 64)), role="student")
    model = spec.build().eval()
    x = np.random.default_rng(0).normal(size=(2, 1, 64, 64)).astype(np.float32)
    import torch

    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    with tracking.stage_run(cfg, "train-student"):
        uri, version = log_and_register_model(model, spec, "test-student", "candidate",
                                              {"nakt.teachers": "t1,t2", "nakt.fusion_rule": "mean"})
    assert uri == "models:/test-student@candidate" and version == "1"
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", expected)
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch, mlflow
        from nakt_ray.models.mlflow_format import load_registered
        mlflow.set_tracking_uri({tracking.tracking_uri(cfg)!r})
        print("FLAVORS", sorted(mlflow.models.get_model_info("models:/test-student@candidate").flavors))
        model, spec = load_registered("models:/test-student@candidate")
        with torch.no_grad():
            y = model(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))).numpy()
        assert np.allclose(y, np.load({str(tmp_path / 'y.npy')!r}), atol=1e-5), "outputs differ"
        mv = mlflow.MlflowClient().get_model_version_by_alias("test-student", "candidate")
        print("TAGS", mv.tags["nakt.teachers"], mv.tags["nakt.fusion_rule"], mv.tags["nakt.labels"], spec.arch)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FLAVORS ['nakt']" in proc.stdout
    assert 'TAGS t1,t2 mean ["bg", "fg"] timm_unet' in proc.stdout


def test_ray_workers_can_import_timm(ray_session):
    """The worker setup hook makes torchvision (and so timm) importable in every Ray worker process."""

    @ray_session.remote(num_cpus=0.25)
    def import_timm_in_worker() -> str:
        import timm  # noqa: F401 - the import itself is the test

        from nakt_ray._torchvision_compat import state

        return str(state())

    assert ray_session.get(import_timm_in_worker.remote(), timeout=120) in ("shimmed", "native")


def test_a_tracking_server_that_does_not_answer_fails_fast_naming_it():
    """An http(s) tracking URI is probed before MLflow is used (its own client retries for ~4 minutes); any HTTP
    answer, even a 404 from a proxy without /health, counts as reachable; non-server URIs are not probed."""
    import http.server
    import socket
    import threading

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(tracking.TrackingUnreachable, match=rf"MLflow tracking server {dead} is not reachable"):
        tracking.check_reachable(dead)

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # answers 501 to GET
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        tracking.check_reachable(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.server_close()
    tracking.check_reachable("sqlite:///nowhere/mlflow.db")
    tracking.check_reachable("databricks")


def test_a_second_run_in_the_same_process_logs_into_its_own_store(tmp_path, monkeypatch):
    """MLflow's set_tracking_uri writes MLFLOW_TRACKING_URI; nakt puts it back so the next config is not captured."""
    import os

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = (config.from_dict(tiny_raw_config(tmp_path / n)) for n in ("a", "b"))
    with tracking.stage_run(first, "annotate"):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking.tracking_uri(second) == f"sqlite:///{(tmp_path / 'b' / 'run').resolve()}/mlflow.db"
