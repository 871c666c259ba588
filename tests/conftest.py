"""Shared fixtures: one Ray instance per session (2 CPUs, fractional resources everywhere), tiny data and models."""
from __future__ import annotations

import json as _json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("NAKT_PROGRESS", "0")
# A developer's own MLflow server must not receive the suite's runs (and tests that expect a run's own SQLite store
# would find the server's registered models instead).
os.environ.pop("MLFLOW_TRACKING_URI", None)

HC18 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hc18"


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one (starting Ray costs ~4 s and ~0.8 GB)."""
    import ray

    from nakt_ray.config import RayConfig
    from nakt_ray.runtime.cluster import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


def tiny_raw_config(tmp_path: Path, teachers: list[dict] | None = None, **extra) -> dict:
    """Plain config data for a tiny run under ``tmp_path`` (32x32 inputs)."""
    raw = {
        "run_dir": str(tmp_path / "run"),
        "data": {"labels": ["background", "head"]},
        "preprocess": {"size": [32, 32]},
        "teachers": teachers or [{"name": "t1", "arch": "unet"}, {"name": "t2", "arch": "unet"}],
        "teacher_training": {"epochs": 1, "batch_size": 4, "num_workers": 0},
        # min_steps 0: one pass an epoch (the default floor of 550 steps, decision 74, would make every tiny student
        # train 550 steps); tests that need the floor set it
        "training": {"epochs": 1, "batch_size": 4, "num_workers": 0, "min_steps": 0},
        "tracking": {"experiment": "tests", "registered_model": "test-student"},
    }
    if "training" in extra:  # a test's own training section keeps the suite's one pass an epoch unless it says
        extra = {**extra, "training": {"min_steps": 0, **extra["training"]}}
    raw.update(extra)
    return raw


TINY_UNET = {"channels": [4, 8], "strides": [2], "num_res_units": 0}


def make_teacher(path: Path, name: str, num_classes: int = 2, size=(32, 32), seed: int = 0, in_channels: int = 1):
    """Save an untrained tiny UNet as a nakt model file (random but deterministic weights)."""
    import torch

    from nakt_ray.config import PreprocessConfig
    from nakt_ray.models.model_file import ModelSpec, save_model

    torch.manual_seed(seed)
    labels = ("background",) + tuple(f"c{i}" for i in range(1, num_classes))
    spec = ModelSpec(name=name, arch="unet", arch_args=dict(TINY_UNET), labels=labels,
                     preprocess=PreprocessConfig(size=size, in_channels=in_channels))
    return save_model(path, spec.build(), spec)


def make_scripted_teacher(path: Path, name: str, seed: int = 0, size=(32, 32)) -> Path:
    """A tiny UNet as TorchScript with its description YAML: a teacher whose actors load without importing
    MONAI (~5 s of CPU less per actor start on 2 cores), for pipeline tests that start many actors."""
    import torch
    import yaml

    from nakt_ray import zoo

    torch.manual_seed(seed)
    model = zoo.create_model("unet", 1, 2, size, **TINY_UNET).eval()
    torch.jit.trace(model, torch.zeros(1, 1, *size)).save(str(path))
    Path(f"{path}.yaml").write_text(yaml.safe_dump({"labels": ["background", "head"], "in_channels": 1,
                                                    "input_size": list(size), "outputs": "logits"}))
    return path


@pytest.fixture(scope="session")
def synthetic_dirs(tmp_path_factory) -> dict[str, Path]:
    """Small labeled synthetic folders (written once per session)."""
    from nakt_ray.demo import synthetic

    root = tmp_path_factory.mktemp("synthetic")
    return {
        "site_a": synthetic.write_folder(root / "site_a", 6, "site_a", seed=1, size=(48, 64)),
        "mixed": synthetic.write_folder(root / "mixed", 6, "mixed", seed=2, size=(40, 56)),
    }


def corrupt_copy(src: Path, dst: Path, corrupt: list[str]) -> Path:
    """Copy a folder source and overwrite the named images with bytes that are not an image."""
    import shutil

    shutil.copytree(src, dst)
    for name in corrupt:
        (dst / "images" / name).write_bytes(b"this is not a png" + np.arange(10, dtype=np.uint8).tobytes())
    return dst


@pytest.fixture(scope="session")
def annotated(ray_session, tmp_path_factory, synthetic_dirs):
    """A real annotate() run (shared by the annotation and student tests): two TorchScript teachers (one with
    two actors, in pools of their own: ``annotate.pools: per_teacher``), six cases of which one is corrupt."""
    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate

    tmp = tmp_path_factory.mktemp("annotate")
    src = corrupt_copy(synthetic_dirs["mixed"], tmp / "transferal", [])
    victim = sorted((src / "images").iterdir())[3]
    victim.write_bytes(b"corrupt")
    raw = tiny_raw_config(tmp, teachers=[
        {"name": "t1", "checkpoint": str(make_scripted_teacher(tmp / "t1.ts", "t1", seed=1)), "batch_size": 2},
        {"name": "t2", "checkpoint": str(make_scripted_teacher(tmp / "t2.ts", "t2", seed=2)), "actors": 2}])
    raw["data"]["transferal"] = str(src)
    raw["annotate"] = {"decode_batch_size": 2, "rows_per_file": 2, "pools": "per_teacher"}
    cfg = config.from_dict(raw)
    return cfg, annotate(cfg), victim.stem


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """``mlflow.set_tracking_uri`` also sets ``MLFLOW_TRACKING_URI``; a test that points MLflow at a server it
    then stops must not leave later tests pointing there."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def committed_checkpoint(storage: Path) -> bool:
    """Whether Ray Train has recorded a checkpoint in a run's snapshot, which is what a resumed run restores from.

    A checkpoint folder appears in storage before the controller records it (its next poll of the workers); a
    driver or worker killed in between leaves nothing to resume from, and the resumed run (or restarted worker
    group) rightly starts at epoch 0 (seen in CI: with tiny epochs a second epoch was logged inside that window).
    """
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            if _json.loads(snapshot.read_text()).get("latest_checkpoint_result"):
                return True
        except (OSError, ValueError):  # being written
            continue
    return False


# ---------------------------------------------------------------------------------------------------------------
# Volumes: a teacher whose answer is known, and a volume it answers (test_{annotate,evaluate,predict}_volumes.py)


def scripted_threshold(path: Path, input_size: list[int], volume: dict | None = None) -> Path:
    """A TorchScript teacher (with its description YAML) whose answer is known: foreground ("ball") where the
    normalised intensity exceeds 0.5, for 2D or 3D inputs alike (``input_size`` of 2 or 3 values)."""
    import torch

    class Threshold(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([torch.zeros_like(x), 10.0 * (x - 0.5)], 1)

    torch.jit.script(Threshold()).save(str(path))
    description = {"labels": ["background", "ball"], "in_channels": 1, "input_size": input_size, "outputs": "logits"}
    if volume is not None:
        description["volume"] = volume
    path.with_name(path.name + ".yaml").write_text(_json.dumps(description))
    return path


def ball_volume(rng: np.random.Generator, shape: tuple[int, int, int] = (20, 24, 22),
                radius: tuple[float, float] = (4.0, 5.0)) -> np.ndarray:
    """A body (100) with a bright ball (300) inside, zero outside the body, mild noise: ``[D, H, W]`` float32."""
    d, h, w = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    body = ((np.abs(d - shape[0] / 2) < shape[0] / 2 - 2) & (np.abs(h - shape[1] / 2) < shape[1] / 2 - 3)
            & (np.abs(w - shape[2] / 2) < shape[2] / 2 - 2))
    c = rng.uniform(0.4, 0.6, 3) * np.array(shape)
    ball = ((d - c[0]) ** 2 + (h - c[1]) ** 2 + (w - c[2]) ** 2) < rng.uniform(*radius) ** 2
    img = np.where(body, 100.0, 0.0) + np.where(ball & body, 200.0, 0.0)
    return (img + body * rng.normal(0, 3, shape)).astype(np.float32)


def assert_resumed_from_a_checkpoint(history, epochs: int) -> None:
    """A run's ``train_loss`` history (MLflow metrics) after a worker was killed once a checkpoint was committed:
    the first group logged epochs 0..k, the restarted group went on from a committed checkpoint (not epoch 0) to
    the last epoch, so every epoch is logged and none is missing.

    How many epochs were done twice is timing, not correctness: the controller records a reported checkpoint at
    its next poll of the workers, so on a loaded machine with second-long epochs the last recorded checkpoint can
    lag the last logged epoch by more than one (seen in CI: steps 0, 1, 2, 1, 2).
    """
    steps = [h.step for h in sorted(history, key=lambda h: h.timestamp)]
    cut = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), len(steps))
    first, again = steps[:cut], steps[cut:]
    assert first == list(range(len(first))), steps
    if not again:  # killed between an epoch's report and the next epoch's logging: nothing done twice
        assert first == list(range(epochs)), steps
    else:
        assert again == list(range(again[0], epochs)) and 1 <= again[0] <= first[-1], steps


def kill_when(predicate, action, timeout: float = 240.0) -> threading.Thread:
    """Run ``action`` once, from a daemon thread, as soon as ``predicate()`` holds (polled every 0.2 s)."""
    def run():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                action()
                return
            time.sleep(0.2)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def actor_pids(class_name: str) -> list[int]:
    """PIDs of live Ray actor processes of ``class_name`` started by this test process's Ray instance (their
    process title is ``ray::<Class>...``; the state API needs the dashboard, which the tests do not start)."""
    import os

    parent, title = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                title[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return sorted(pid for pid, t in title.items() if t.startswith(f"ray::{class_name}") and ours(pid))


def kill_a_train_worker() -> list[int]:
    """SIGKILL the newest live Ray Train worker process of this test's Ray instance; the PIDs killed (0 or 1)."""
    import signal

    workers = actor_pids("RayTrainWorker")
    if workers:
        os.kill(workers[-1], signal.SIGKILL)
    return workers[-1:]
