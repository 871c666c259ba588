"""Tests for nakt_ray._torchvision_compat.

Importing torchvision (or defining operator schemas) cannot be undone inside one interpreter, so every check that
imports torchvision runs in a fresh ``sys.executable -c ...`` subprocess.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nakt_ray import _torchvision_compat as compat

REPO_ROOT = Path(__file__).resolve().parents[1]
MISSING_OP = "operator torchvision::nms does not exist"


def run_python(code: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with the repository importable."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def last_json(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_fake_torchvision(root: Path, body: str) -> Path:
    package = root / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(body))
    return root


def test_shims_the_real_cuda_torchvision_and_timm_then_works():
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    probe = run_python("import torchvision")
    if probe.returncode == 0:
        pytest.skip("torchvision imports natively on this machine; the shim is not needed here")
    assert MISSING_OP in probe.stderr, f"torchvision fails for another reason:\n{probe.stderr[-2000:]}"

    proc = run_python(
        """
        import json
        from nakt_ray._torchvision_compat import ensure_torchvision, state
        first = ensure_torchvision()
        second = ensure_torchvision()
        import timm, torch
        model = timm.create_model("resnet18", features_only=True, pretrained=False, in_chans=1).eval()
        with torch.no_grad():
            features = model(torch.randn(1, 1, 64, 64))
        print(json.dumps({
            "first": first, "second": second, "state": state(),
            "shapes": [list(f.shape) for f in features],
            "finite": all(bool(torch.isfinite(f).all()) for f in features),
            "nms_schema": hasattr(torch.ops.torchvision, "nms"),
        }))
        """
    )
    result = last_json(proc)
    assert result["first"] == result["second"] == result["state"] == "shimmed"
    assert result["shapes"] == [[1, 64, 32, 32], [1, 64, 16, 16], [1, 128, 8, 8], [1, 256, 4, 4], [1, 512, 2, 2]]
    assert result["finite"]
    assert result["nms_schema"]


def test_shim_path_with_a_fake_broken_torchvision(tmp_path):
    # Runs on any machine: a fake torchvision that fails like the CUDA build until the schemas exist.
    fake_root = write_fake_torchvision(
        tmp_path,
        """
        import torch
        if not (hasattr(torch.ops.torchvision, "nms") and hasattr(torch.ops.torchvision, "qnms")):
            raise RuntimeError("operator torchvision::nms does not exist")
        FAKE = True
        """,
    )
    proc = run_python(
        f"""
        import json, sys
        sys.path.insert(0, {str(fake_root)!r})
        import torch
        from nakt_ray._torchvision_compat import ensure_torchvision
        result = ensure_torchvision()
        import torchvision
        print(json.dumps({{"result": result, "fake": getattr(torchvision, "FAKE", False),
                          "nms_schema": hasattr(torch.ops.torchvision, "nms")}}))
        """
    )
    assert last_json(proc) == {"result": "shimmed", "fake": True, "nms_schema": True}


def test_inactive_where_a_real_torchvision_works(tmp_path):
    fake_root = write_fake_torchvision(tmp_path, "WORKS = True\n")
    proc = run_python(
        f"""
        import json, sys
        sys.path.insert(0, {str(fake_root)!r})
        import torch
        from nakt_ray._torchvision_compat import ensure_torchvision
        result = ensure_torchvision()
        import torchvision
        print(json.dumps({{"result": result, "file": torchvision.__file__,
                          "nms_schema": hasattr(torch.ops.torchvision, "nms"),
                          "qnms_schema": hasattr(torch.ops.torchvision, "qnms")}}))
        """
    )
    result = last_json(proc)
    assert result["result"] == "native"
    assert result["file"].startswith(str(fake_root))
    assert result["nms_schema"] is False
    assert result["qnms_schema"] is False


def test_unrelated_import_error_is_not_swallowed(tmp_path):
    fake_root = write_fake_torchvision(tmp_path, 'raise RuntimeError("libcudart.so.12: cannot open shared object")\n')
    proc = run_python(
        f"""
        import sys
        sys.path.insert(0, {str(fake_root)!r})
        from nakt_ray._torchvision_compat import ensure_torchvision
        ensure_torchvision()
        """
    )
    assert proc.returncode != 0
    assert "libcudart.so.12" in proc.stderr


def test_absent_when_torchvision_is_not_installed(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "torchvision" else real_find_spec(name, *args, **kwargs)

    imported: list[str] = []
    real_import_module = compat.importlib.import_module
    monkeypatch.setattr(compat, "_STATE", None)  # a fresh module state; restored after the test
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(
        compat.importlib, "import_module", lambda name, *a: imported.append(name) or real_import_module(name, *a)
    )

    assert compat.ensure_torchvision() == "absent"
    assert compat.state() == "absent"
    assert compat.ensure_torchvision() == "absent"
    assert imported == []


def test_the_worker_hook_imports_nothing_until_torchvision_is_imported():
    """Ray's worker setup hook is lazy: torch is not imported by it, and the first ``import timm`` (which imports
    torchvision) goes through ``ensure_torchvision`` and gets a working package, submodules included."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    out = last_json(run_python("""
        import json, sys
        from nakt_ray._torchvision_compat import install_import_hook, state
        install_import_hook()
        lazy = "torch" not in sys.modules and "torchvision" not in sys.modules and state() is None
        import timm, torchvision.ops
        install_import_hook()  # a no-op once torchvision is imported
        print(json.dumps({"lazy": lazy, "state": state(), "roi_align": hasattr(torchvision.ops, "roi_align"),
                          "finders": sum(type(f).__name__ == "_TorchvisionFinder" for f in sys.meta_path)}))
    """))
    assert out == {"lazy": True, "state": out["state"], "roi_align": True, "finders": 0}
    assert out["state"] in ("shimmed", "native")

