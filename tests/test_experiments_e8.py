"""Tests for jobs/experiments/e8_mixed_sources.py (E8, teachers from three source kinds): its smoke run end to end
as a subprocess (an nnU-Net folder made by nnU-Net's own code, a MONAI bundle, a remote teacher behind MLflow's
scoring server, one annotation run, one student, the evaluation). Reads ../shared/data/hc18 in place (skipped when
absent) and needs nnunetv2 (skipped when not installed)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _studies import EXPERIMENTS, HC18, needs, study_env, study_help

SCRIPT = EXPERIMENTS / "e8_mixed_sources.py"
needs_data = needs(HC18 / "masks", "HC18", "E8")
needs_nnunet = pytest.mark.skipif(importlib.util.find_spec("nnunetv2") is None,
                                  reason="nnunetv2 is not installed (pip install -c constraints.txt -e '.[nnunet]')")


def _bundle_sees_what_its_network_trained_on(bundle: Path, run: Path) -> None:
    """The bundle teacher on a site_b image on the run's grid, given in any intensity scale (the run's input is
    z-scored already), equals its nakt file on that image z-scored as in training."""
    import numpy as np
    import torch

    from nakt_ray.data.preprocess import preprocess_image
    from nakt_ray.data.readers import list_cases, read_image
    from nakt_ray.models.model_file import load_model
    from nakt_ray.teachers.registry import load_teacher

    teacher = load_teacher("segresnet_b", str(bundle))
    net, spec = load_model(run / "teachers" / "segresnet_b_local" / "model.pt")
    case = list_cases(run / "site_b_grid")[0]
    trained, _ = preprocess_image(read_image(case.image_path), spec.preprocess)  # on the grid: no resize
    assert trained.shape == (1, 96, 96)
    raw = read_image(case.image_path).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(trained)[None]).softmax(1)
        got = teacher.predict(torch.from_numpy(3.0 * raw[None] - 7.0))
    assert (got - expected).abs().max().item() < 1e-4


def test_cli_help() -> None:
    proc = study_help(SCRIPT)
    assert proc.returncode == 0 and "--smoke" in proc.stdout and "--reuse" in proc.stdout


@needs_data
@needs_nnunet
@pytest.mark.fault  # a system run (the whole study, tiny: ~3-4 min on 2 cores): the tier of its own
def test_smoke_run_end_to_end(tmp_path) -> None:
    """Three teachers, each from another source kind, annotate every transferal case; the student is scored against
    each and their ensemble; the server is gone afterwards."""
    out, run = tmp_path / "out", tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--run-dir", str(run), "--out", str(out)],
                          capture_output=True, text=True, timeout=1200, env=study_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((out / "e8.json").read_text())
    assert {(out / f).is_file() for f in ("e8.md", "e8.png")} == {True}

    manifest = json.loads((run / "annotations" / "manifest.json").read_text())
    kinds = {r["name"]: r["kind"] for r in manifest["teachers"]}
    assert kinds == {"nnunet_a": "nnunet", "segresnet_b": "monai_bundle", "attention_unet_c": "remote"}
    summary = result["annotation"]["summary"]
    assert manifest["num_cases"] == summary["cases_read"] == result["cases"]["transferal"] == 16
    assert summary["annotated"] + summary["failed"] == 16 and summary["annotated"] > 0
    assert set(result["annotation"]["agreement"]["pairs"]) == {
        "nnunet_a / segresnet_b", "nnunet_a / attention_unet_c", "segresnet_b / attention_unet_c"}

    names = {"nnunet_a", "segresnet_b", "attention_unet_c", "teachers_ensemble", "student", "segresnet_b_local",
             "attention_unet_c_local"}
    assert set(result["models"]) == names
    assert all(0.0 <= result["models"][n]["dice"] <= 1.0 for n in names)
    assert set(result["deltas"]["student"]) == {"nnunet_a", "segresnet_b", "attention_unet_c", "teachers_ensemble"}
    # The served model is its nakt file's weights on the same input: the same test Dice, case by case.
    served = result["conversion"]["attention_unet_c"]
    assert served["cases"] == 12 and served["max_abs_case_diff"] <= 0.01, served
    assert result["conversion"]["segresnet_b"]["cases"] == 12

    bundle = run / "sources" / "segresnet_b_bundle"
    assert {p.name for p in (bundle / "configs").iterdir()} == {"inference.json", "metadata.json"}
    _bundle_sees_what_its_network_trained_on(bundle, run)
    remote = run / "sources" / "attention_unet_c.yaml"
    url = next(line.split(": ", 1)[1] for line in remote.read_text().splitlines() if line.startswith("url:"))
    import urllib.request

    with pytest.raises(OSError):  # the scoring server was stopped at the end
        urllib.request.urlopen(f"{url}/ping", timeout=2)
    report = (out / "e8.md").read_text()
    assert "| teacher nnunet_a | nnunet |" in report and "Every case accounted for: 16 transferal images" in report
