"""E8's teacher sources other than nnU-Net's (``_nnunet.py``): a nakt model file written out as a MONAI bundle, and
the same kind of file served by MLflow's own scoring server on 127.0.0.1 with the remote teacher YAML that points
at it. Each is the real format its kind reads (``nakt_ray/teachers/kinds/``: ``monai_bundle.py``, ``remote.py``).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import yaml


def write_bundle(model_file: Path, out: Path) -> Path:
    """A nakt SegResNet model file as a MONAI bundle folder: ``configs/metadata.json`` (labels as channel_def),
    ``configs/inference.json`` (network_def, preprocessing, inferer, postprocessing, as the Model Zoo lays them out)
    and ``models/model.pt`` (the state dict).

    The preprocessing is what the network saw in training: its site's images on the run's grid, z-scored per image
    (nakt's ``normalize: zscore``, which MONAI's ``NormalizeIntensityd`` computes the same way: mean and population
    std over the image). The loader and the resize are the bundle's geometry, which the run does itself (decision
    61); ``reverse_indexing: false`` keeps the image in numpy's (H, W) order, the order nakt trained it in."""
    import torch

    from nakt_ray.models.model_file import load_model

    net, spec = load_model(model_file)
    if type(net).__name__ != "SegResNet" or spec.preprocess.normalize != "zscore":
        raise ValueError(f"{model_file}: expected a SegResNet trained on z-scored images; got {type(net).__name__} "
                         f"with normalize {spec.preprocess.normalize!r}")
    h, w = spec.preprocess.size
    network_def = {"_target_": "SegResNet", "spatial_dims": net.spatial_dims, "in_channels": net.in_channels,
                   "out_channels": len(spec.labels), "init_filters": net.init_filters,
                   "blocks_down": list(net.blocks_down), "blocks_up": list(net.blocks_up),
                   "dropout_prob": net.dropout_prob}
    inference = {
        "imports": ["$import torch"],
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "PILReader", "reverse_indexing": False},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Resized", "keys": "image", "spatial_size": [h, w], "mode": "bilinear",
             "anti_aliasing": True},
            {"_target_": "NormalizeIntensityd", "keys": "image"},
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
    }
    metadata = {
        "name": f"nakt_{spec.name}", "version": "0.1.0", "task": "fetal head segmentation in 2D ultrasound",
        "description": f"{spec.name} ({spec.arch}) trained by nakt on its site; exported as a MONAI bundle for E8",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": spec.in_channels,
                                 "spatial_shape": [h, w], "dtype": "float32"}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(spec.labels),
                                 "spatial_shape": [h, w], "dtype": "float32",
                                 "channel_def": {str(i): name for i, name in enumerate(spec.labels)}}}},
    }
    (out / "configs").mkdir(parents=True, exist_ok=True)
    (out / "models").mkdir(exist_ok=True)
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    torch.save(net.state_dict(), out / "models" / "model.pt")
    return out


def write_mlflow_model(model_file: Path, out: Path) -> dict:
    """A nakt model file as an MLflow ``pytorch`` model (pickled module, tensor signature ``[-1, C, H, W]`` ->
    ``[-1, K, H, W]``), the input of ``mlflow models serve``; returns its description for the teacher YAML."""
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from nakt_ray.models.model_file import load_model

    net, spec = load_model(model_file)
    x = np.zeros((1, spec.in_channels, *spec.preprocess.size), dtype=np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    mlflow.pytorch.save_model(net.eval(), str(out), serialization_format="pickle", signature=infer_signature(x, y),
                              pip_requirements=["torch", "monai"])
    return {"labels": list(spec.labels), "in_channels": spec.in_channels, "input_size": list(spec.preprocess.size),
            "outputs": "logits", "preprocess": {"normalize": spec.preprocess.normalize}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(model_dir: Path, log: Path, port: int = 0, wait_s: float = 240.0) -> Iterator[str]:
    """``mlflow models serve --env-manager local`` on 127.0.0.1 for ``model_dir``; yields its base URL once ``/ping``
    answers, and stops it (its process group) on leaving, also on an error. One torch thread: the annotation and
    evaluation actors share the machine's cores with it."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    # The CLI starts `uvicorn` by name: this environment's, also when it is not activated (not on PATH).
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen([str(bin_dir / "mlflow"), "models", "serve", "-m", str(model_dir.resolve()),
                                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1", "-t", "120"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited with {proc.returncode} before answering; see {log}:\n"
                                   + "\n".join(log.read_text().splitlines()[-15:]))
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow models serve did not answer {url}/ping within {wait_s:.0f} s; see {log}")
            time.sleep(1.0)
        yield url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the group this process started (uvicorn and its worker)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def remote_yaml(path: Path, url: str, model: str, version: str, description: dict) -> Path:
    """The remote teacher YAML for MLflow's scoring server at ``url`` (no credential: ``mlflow models serve`` has no
    authentication; a gateway's would be ``credential_env``)."""
    data = {"kind": "remote", "protocol": "mlflow", "url": url, "model": model, "version": version,
            "concurrency": 2, "max_batch": 8, "timeout_s": 120, "retries": 3, **description}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
