"""Benchmark: a remote teacher (an HTTP inference endpoint) against the same model loaded locally, side by side.

    .venv/bin/python bench/remote_teacher.py                          # 64 images, 128x128, OIP, concurrency 1 4 16
    .venv/bin/python bench/remote_teacher.py --images 256 --size 256 --protocol mlflow --out remote.json

Cost on 2 CPU cores: ~1-2 min with the defaults (most of it the server's start and the remote runs).

One model (a MONAI UNet with random weights, seeded: throughput does not depend on them) is saved as TorchScript
with its description. The local teacher loads that file (``load_teacher``); the remote one is a teacher YAML pointing
at a server on 127.0.0.1 in a process of its own: the OIP v2 server of ``tests/_oip_server.py`` (FastAPI + uvicorn;
KServe's and MLServer's servers do not install here, ``docs/decisions.md`` 62), or with ``--protocol mlflow`` MLflow's
scoring server exactly as ``mlflow models serve`` starts it (uvicorn over ``mlflow.pyfunc.scoring_server``). Both
paths run ``LoadedTeacher.predict`` over the same images in batches of ``--batch``; the remote teacher sends one
image per request (``max_batch: 1``; ``--max-batch`` to change), ``concurrency`` requests at a time, for each
concurrency asked.

Printed (and written as JSON with ``--out``): images/s of each path, the ratio remote / local, and the latency of
the remote requests (each POST, as the client sees it: encode, send, the server's work, decode) at p50/p90/p99;
for the local path, the latency of one batch's forward. Client and server share this machine's cores, so on a small
machine the remote path also pays for the other's CPU; on a cluster the server's work is elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "tests" / "_oip_server.py"


def make_model(folder: Path, size: int, classes: int) -> tuple[Path, Any]:
    """A MONAI UNet (16, 32, 64) as TorchScript with its description YAML; also the module (for MLflow)."""
    import torch
    import yaml

    from nakt_ray import zoo

    torch.manual_seed(0)
    model = zoo.create_model("unet", 1, classes, (size, size), channels=[16, 32, 64], strides=[2, 2]).eval()
    path = folder / "model.ts"
    torch.jit.trace(model, torch.zeros(1, 1, size, size)).save(str(path))
    labels = ["background"] + [f"c{k}" for k in range(1, classes)]
    Path(f"{path}.yaml").write_text(yaml.safe_dump({"labels": labels, "in_channels": 1, "input_size": [size, size],
                                                    "outputs": "logits"}))
    return path, model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(protocol: str, folder: Path, model_file: Path, model: Any, size: int, classes: int,
                 threads: int) -> tuple[subprocess.Popen, str]:
    """The server in a process of its own; returns it and its URL once it answers its health check."""
    import requests

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if protocol == "oip":
        cmd = [sys.executable, str(SERVER), str(model_file), "--port", str(port), "--classes", str(classes),
               "--size", str(size), str(size), "--threads", str(threads)]
        health = "/v2/health/ready"
    else:
        import mlflow.pytorch
        import torch
        from mlflow.models import infer_signature
        from mlflow.pyfunc import scoring_server

        x = np.zeros((1, 1, size, size), np.float32)
        with torch.no_grad():
            y = model(torch.from_numpy(x)).numpy()
        mlflow.pytorch.save_model(model, str(folder / "pyfunc"), serialization_format="pickle",
                                  signature=infer_signature(x, y), pip_requirements=["torch"])
        command, server_env = scoring_server.get_cmd(str(folder / "pyfunc"), port=port, host="127.0.0.1")
        cmd, env = [sys.executable, "-m", *command.split()], {**server_env, "OMP_NUM_THREADS": str(threads)}
        health = "/ping"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the {protocol} server exited: {proc.stderr.read()[-2000:]}")
        try:
            if requests.get(url + health, timeout=1).ok:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"the {protocol} server did not answer {health} within 120 s")


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)} if len(ms) else {}


def timed_run(teacher: Any, images: Any, batch: int) -> tuple[float, list[float]]:
    """Seconds to predict every image in batches of ``batch``, and each batch's seconds (warm up first)."""
    batches = []
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        t = time.perf_counter()
        teacher.predict(images[i:i + batch])
        batches.append(time.perf_counter() - t)
    return time.perf_counter() - t0, batches


def remote_run(protocol: str, url: str, folder: Path, concurrency: int, images: Any, batch: int,
               size: int, classes: int, max_batch: int) -> dict[str, Any]:
    import yaml

    from nakt_ray.teachers.registry import load_teacher

    labels = ["background"] + [f"c{k}" for k in range(1, classes)]
    source = folder / f"remote_c{concurrency}.yaml"
    source.write_text(yaml.safe_dump({
        "protocol": protocol, "url": url, "model": "seg", "max_batch": max_batch, "concurrency": concurrency,
        "timeout_s": 120, "labels": labels, "in_channels": 1, "input_size": [size, size], "outputs": "logits"}))
    teacher = load_teacher(f"remote_c{concurrency}", source)
    http = teacher._forward.http  # every POST timed as the client sees it (encode, send, wait, decode)
    latencies: list[float] = []
    request = http.request

    def timed(method: str, path: str, body: bytes | None = None, **kw: Any) -> Any:
        t = time.perf_counter()
        resp = request(method, path, body, **kw)
        if method == "POST":
            latencies.append(time.perf_counter() - t)
        return resp

    http.request = timed
    teacher.predict(images[:batch])  # warm-up: connections opened, server threads started
    latencies.clear()
    seconds, _ = timed_run(teacher, images, batch)
    return {"path": f"remote c={concurrency}", "concurrency": concurrency, "seconds": round(seconds, 2),
            "images_per_s": round(len(images) / seconds, 1), "requests": len(latencies), **percentiles(latencies)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=128, help="image side = the model's input size, pixels")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="images per predict call (a teacher's batch_size)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-batch", type=int, default=1, help="images per request of the remote teacher")
    p.add_argument("--protocol", choices=["oip", "mlflow"], default="oip")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, local and server alike")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args()

    import torch

    from nakt_ray.teachers.registry import load_teacher

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="nakt-bench-remote-"))
    model_file, model = make_model(work, args.size, args.classes)
    images = torch.from_numpy(np.random.default_rng(0).normal(size=(args.images, 1, args.size, args.size))
                              .astype(np.float32))
    local_teacher = load_teacher("local", model_file)
    local_teacher.predict(images[:args.batch])  # warm-up
    seconds, batches = timed_run(local_teacher, images, args.batch)
    local = {"path": "local", "seconds": round(seconds, 2), "images_per_s": round(args.images / seconds, 1),
             "batch_latency": percentiles(batches)}
    proc, url = start_server(args.protocol, work, model_file, model, args.size, args.classes, args.threads)
    try:
        remote = [remote_run(args.protocol, url, work, c, images, args.batch, args.size, args.classes,
                             args.max_batch) for c in args.concurrency]
    finally:
        proc.terminate()
        proc.wait(10)
    for r in remote:
        r["ratio_to_local"] = round(r["images_per_s"] / local["images_per_s"], 3)
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "local": local, "remote": remote}

    print(f"{args.images} images {args.size}x{args.size}, batches of {args.batch}, {args.protocol} on 127.0.0.1, "
          f"{args.threads} torch threads, {os.cpu_count()} CPUs")
    print(f"{'path':<14}{'images/s':>10}{'x local':>9}{'requests':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}")
    lat = local["batch_latency"]
    print(f"{'local':<14}{local['images_per_s']:>10}{1.0:>9.3f}{'-':>10}{lat['p50_ms']:>9}{lat['p90_ms']:>9}"
          f"{lat['p99_ms']:>9}   (latency: one batch of {args.batch})")
    for r in remote:
        print(f"{r['path']:<14}{r['images_per_s']:>10}{r['ratio_to_local']:>9.3f}{r['requests']:>10}"
              f"{r['p50_ms']:>9}{r['p90_ms']:>9}{r['p99_ms']:>9}   (latency: one request of {args.max_batch} "
              "image(s))")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
