"""MONAI imported without its optional integrations in annotation actors (nakt_ray/runtime/lean_imports.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_scripted_teacher, make_teacher

from nakt_ray.runtime.lean_imports import HIDDEN_FROM_MONAI, LEAN_KINDS, lean_import_suits

LEAN_PROCESS = """
import json, sys
import torch
from nakt_ray.runtime.lean_imports import import_monai_lean
first = import_monai_lean()
again = import_monai_lean()
during = sorted(m for m in {hidden} if m in sys.modules)
from monai.inferers import sliding_window_inference
from monai.networks.nets import AttentionUnet, SegResNet, UNet
torch.manual_seed(0)
x = torch.randn(1, 1, 40, 40)
outs = []
for net in (UNet(2, 1, 2, (8, 16), (2,)), SegResNet(2, init_filters=8), AttentionUnet(2, 1, 2, (8, 16), (2,))):
    net.eval()
    with torch.no_grad():
        full = net(x)
        tiled = sliding_window_inference(x, (32, 32), 2, net, overlap=0.5, mode="gaussian")
    outs.append(list(full.shape) + list(tiled.shape))
import scipy.ndimage, mlflow  # the hidden packages still import afterwards
print(json.dumps({{"first": first, "again": again, "during": during, "shapes": outs,
                   "scipy": scipy.ndimage.__name__, "mlflow": bool(mlflow.__version__)}}))
"""


def test_lean_import_builds_networks_and_sliding_window_in_a_fresh_process():
    code = LEAN_PROCESS.format(hidden=repr(HIDDEN_FROM_MONAI))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["first"] is True and r["again"] is False
    assert r["during"] == []  # none of the five was imported by MONAI
    assert r["shapes"] == [[1, 2, 40, 40, 1, 2, 40, 40]] * 3
    assert r["scipy"] == "scipy.ndimage" and r["mlflow"] is True


def test_lean_kinds_and_the_switch(monkeypatch):
    assert lean_import_suits(["nakt", "torchscript", "onnx"])
    assert not lean_import_suits(["nakt", "monai_bundle"])
    assert not lean_import_suits(["nnunet"]) and not lean_import_suits(["mlflow"])
    assert {"nakt", "torchscript", "onnx"} <= LEAN_KINDS
    monkeypatch.setenv("NAKT_LEAN_MONAI", "0")
    assert not lean_import_suits(["nakt"])


def test_outside_an_actor_nothing_changes(tmp_path: Path):
    """The driver, the plain loop and tests import MONAI in full: lean_monai is a no-op outside Ray actors."""
    from nakt_ray.annotation.pools import lean_monai

    code = (f"import sys\nfrom nakt_ray.annotation.pools import lean_monai\n"
            f"lean_monai([('t', {str(make_teacher(tmp_path / 't.pt', 't'))!r})])\n"
            f"print('monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
    assert callable(lean_monai)


@pytest.mark.parametrize("kind", ["nakt", "torchscript"])
def test_an_actor_with_network_teachers_imports_monai_lean(ray_session, tmp_path: Path, kind: str):
    import ray

    path = (make_teacher(tmp_path / "t.pt", "t") if kind == "nakt"
            else make_scripted_teacher(tmp_path / "t.ts", "t"))

    @ray.remote(num_cpus=0.1)
    class Probe:
        def check(self, source: str) -> dict:
            import sys

            from nakt_ray.annotation.pools import TeacherPredictor

            before = "monai" in sys.modules
            predictor = TeacherPredictor(source, "t", in_channels=1)
            return {"before": before, "monai": "monai" in sys.modules, "hidden_loaded": sorted(
                m for m in ("mlflow", "matplotlib", "skimage", "scipy") if m in sys.modules),
                "classes": predictor.num_stored}

    actor = Probe.remote()
    r = ray.get(actor.check.remote(str(path)))
    ray.kill(actor)
    assert r["before"] is False
    assert r["classes"] == 2
    if kind == "nakt":  # a zoo model: MONAI imported, lean (it pulled in none of the hidden packages)
        assert r["monai"] is True
    assert r["hidden_loaded"] == []
