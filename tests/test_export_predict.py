"""Tests for nakt_ray/inference/export.py and nakt_ray/inference/predict.py (and their CLI commands): parity of
exported files, exported files as teacher sources, and a folder segmented at the original sizes with a corrupt file
in it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_teacher
from PIL import Image

from nakt_ray.cli import main
from nakt_ray.demo import synthetic
from nakt_ray.inference.export import ExportError, check_parity, export, export_torchscript
from nakt_ray.inference.predict import PALETTE, mask_scale, overlay, predict_folder
from nakt_ray.models.model_file import load_model
from nakt_ray.teachers.registry import load_teacher

SIZE = (32, 32)
# (case id prefix, site, seed, original (H, W)): two image sizes, neither the model's.
FOLDER = [("", "site_a", 1, (40, 56)), ("b_", "site_b", 2, (64, 48))]


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return make_teacher(tmp_path_factory.mktemp("student") / "model.pt", "student", seed=3)


@pytest.fixture(scope="module")
def exported(student, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("exported")
    return out, export(student, out)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("incoming")
    for prefix, site, seed, size in FOLDER:
        synthetic.write_folder(root, 2, site, seed=seed, size=size, prefix=prefix)
    (root / "images" / "broken.png").write_bytes(b"this is not a png")
    return root


def batch(n: int = 4, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, 1, *SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt, suffix, tol", [("torchscript", ".ts", 1e-4), ("onnx", ".onnx", 1e-3)])
def test_exported_file_matches_the_torch_model(exported, student, fmt, suffix, tol):
    out, report = exported
    entry = report["files"][fmt]
    assert Path(entry["model"]) == out / f"model{suffix}" and Path(entry["description"]).is_file()
    assert 0 <= entry["max_abs_diff"] <= tol == entry["tolerance"]
    model, spec = load_model(student)
    # Another batch size than traced and than the default parity batch: the batch dimension is dynamic.
    assert check_parity(out / f"model{suffix}", model, spec, sample=batch(5)) <= tol
    assert json.loads((out / "export.json").read_text())["files"][fmt]["max_abs_diff"] == entry["max_abs_diff"]


@pytest.mark.parametrize("suffix", [".ts", ".onnx"])
def test_parity_check_refuses_a_file_from_another_model(exported, tmp_path, suffix):
    other, spec = load_model(make_teacher(tmp_path / "other.pt", "other", seed=4))
    with pytest.raises(ExportError, match=r"max abs difference [0-9.e-]+ > tolerance"):
        check_parity(exported[0] / f"model{suffix}", other, spec)


@pytest.mark.parametrize("name", ["model.ts", "model.onnx", "model.onnx.yaml"])
def test_exported_file_is_a_teacher_source_with_the_same_probabilities(exported, student, name):
    original = load_teacher("original", student)
    teacher = load_teacher("exported", exported[0] / name)
    assert teacher.kind == ("onnx" if "onnx" in name else "torchscript")
    assert (teacher.labels, teacher.input_size, teacher.preprocess) == (original.labels, SIZE, original.preprocess)
    x = batch(3)
    assert torch.allclose(teacher.predict(x), original.predict(x), atol=1e-4)


def test_export_refuses_unknown_formats_and_non_torch_sources(exported, student, tmp_path):
    with pytest.raises(ExportError, match="'tflite'.*torchscript, onnx"):
        export(student, tmp_path, "torchscript,tflite")
    with pytest.raises(ExportError, match="already a onnx file"):
        export(exported[0] / "model.onnx", tmp_path)


def test_timm_unet_student_exports_to_torchscript(tmp_path):
    # TorchScript only: the ONNX export of a timm encoder alone takes ~10 s on 2 cores (it works: ~5e-8 apart).
    from nakt_ray.config import PreprocessConfig
    from nakt_ray.models.model_file import ModelSpec

    spec = ModelSpec(name="timm", arch="timm_unet", arch_args={"encoder": "resnet10t"},
                     labels=("background", "head"), preprocess=PreprocessConfig(size=(64, 64)), role="student")
    torch.manual_seed(0)
    model = spec.build().eval()
    path = export_torchscript(model, spec, tmp_path)
    assert check_parity(path, model, spec) <= 1e-4


@pytest.mark.parametrize("num_classes, scale", [(2, 255), (3, 127), (4, 85), (256, 1)])
def test_mask_scale(num_classes, scale):
    assert mask_scale(num_classes) == scale


def test_overlay_fills_and_outlines_each_class_over_grey():
    image = np.tile(np.linspace(0, 1000, 8, dtype=np.float32), (1, 8, 1))  # [1, 8, 8], a horizontal ramp
    label = np.zeros((8, 8), dtype=np.uint8)
    label[2:6, 2:6] = 1
    rgb = overlay(image, label)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert (rgb[0, :, 0] == rgb[0, :, 1]).all() and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255  # grey, stretched
    assert (rgb[2, 3] == PALETTE[0]).all()  # contour: the class colour itself
    inside = rgb[3, 3].astype(int)
    assert 0 < inside[0] - inside[2] and not (inside == PALETTE[0]).all()  # fill: tinted, not opaque


def test_predict_folder_writes_masks_at_original_size_and_records_the_corrupt_file(student, images, tmp_path):
    out = tmp_path / "pred"
    report = predict_folder(student, images, out, batch_size=3)
    assert report["counts"] == {"cases": 5, "ok": 4, "failed": 1}
    (bad,) = [c for c in report["cases"] if c["status"] == "failed"]
    assert bad["case_id"] == "broken" and "broken.png" in bad["reason"]
    assert not (out / "broken_mask.png").exists()
    sizes = {f"{prefix}{site}_{i:04d}": size for prefix, site, _, size in FOLDER for i in range(2)}
    for case in report["cases"]:
        if case["status"] != "ok":
            continue
        mask = np.asarray(Image.open(out / f"{case['case_id']}_mask.png"))
        assert mask.shape == sizes[case["case_id"]] == tuple(case["size"]) and set(np.unique(mask)) <= {0, 255}
        assert sum(case["classes"].values()) == mask.size
        with Image.open(out / f"{case['case_id']}_overlay.png") as im:
            # the image at its original size, and below it the legend of the model's class (its colour, its name)
            height, width = sizes[case["case_id"]]
            assert (im.mode, im.size[0]) == ("RGB", width) and im.size[1] > height
            legend = np.asarray(im)[height:]
            assert (np.abs(legend.astype(int) - PALETTE[0].astype(int)).sum(-1) == 0).any()
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["counts"] == report["counts"] and saved["mask_encoding"]["values"] == {"background": 0, "c1": 255}
    assert not saved["preprocess_assumed"]


def test_predict_with_an_exported_student_gives_the_same_masks(student, exported, images, tmp_path):
    torch_masks = predict_folder(student, images, tmp_path / "torch", overlays=False)
    onnx_masks = predict_folder(exported[0] / "model.onnx", images, tmp_path / "onnx", overlays=False)
    assert onnx_masks["model"]["kind"] == "onnx" and onnx_masks["counts"] == torch_masks["counts"]
    for a, b in zip(torch_masks["cases"], onnx_masks["cases"]):
        assert a["status"] == b["status"] and b.get("overlay") is None
        if a["status"] == "ok":
            ma, mb = (np.asarray(Image.open(c["mask"])) for c in (a, b))
            assert (ma == mb).mean() > 0.999


def test_predict_refuses_a_bad_batch_size_and_unavailable_cuda(student, images, tmp_path):
    with pytest.raises(ValueError, match="batch_size: got 0"):
        predict_folder(student, images, tmp_path, batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            predict_folder(student, images, tmp_path, device="cuda")


def test_cli_export_and_predict(student, exported, images, tmp_path, capsys):
    assert main(["export", "--model", str(student), "--out", str(tmp_path / "ts"), "--formats", "torchscript"]) == 0
    assert "torchscript:" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "ts").iterdir()) == ["export.json", "model.ts", "model.ts.yaml"]
    assert main(["predict", "--model", str(tmp_path / "ts" / "model.ts"), "--images", str(images), "--out",
                 str(tmp_path / "pred"), "--no-overlays", "--batch-size", "2"]) == 0
    captured = capsys.readouterr()
    assert "4 of 5 cases segmented" in captured.out and "5/5 cases (1 failed)" in captured.err
    assert len(list((tmp_path / "pred").glob("*_mask.png"))) == 4 and not list((tmp_path / "pred").glob("*overlay*"))


@pytest.mark.parametrize("argv, message", [
    (["export", "--model", "{tmp}/missing.pt", "--out", "{tmp}/x"], "missing.pt' does not exist"),
    (["export", "--model", "{student}", "--out", "{tmp}/x", "--formats", "pdf"], "expected one or more of"),
    (["predict", "--model", "{student}", "--images", "{tmp}/none", "--out", "{tmp}/x"], "none' does not exist"),
    (["predict", "--model", "{student}", "--images", "{images}", "--out", "{tmp}/x", "--device", "tpu"],
     "expected 'cpu' or 'cuda'"),
])
def test_cli_errors_exit_2_with_the_reason(student, images, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, student=student, images=images) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"nakt {argv[0]}: error:" in err and message in err


def test_cli_export_and_predict_a_registered_student(student, images, tmp_path, capsys):
    import mlflow

    from nakt_ray import tracking
    from nakt_ray.models.mlflow_format import log_and_register_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    before = mlflow.get_tracking_uri()
    try:  # the commands point MLflow at --tracking-uri for the whole process; put it back for other tests
        tracking.use_uri(uri)
        exp = mlflow.create_experiment("students", artifact_location=str(tmp_path / "artifacts"))
        with mlflow.start_run(experiment_id=exp):
            model, spec = load_model(student)
            model_uri, _ = log_and_register_model(model, spec, "s", "candidate", {"nakt.arch": "unet"})
        tracking.use_uri(before)
        assert main(["export", "--model", model_uri, "--out", str(tmp_path / "x"), "--formats", "torchscript",
                     "--tracking-uri", uri]) == 0
        export_err = capsys.readouterr().err
        assert main(["predict", "--model", model_uri, "--images", str(images), "--out", str(tmp_path / "pred"),
                     "--tracking-uri", uri]) == 0
        predict_err = capsys.readouterr().err
    finally:
        tracking.use_uri(before)
    report = json.loads((tmp_path / "x" / "export.json").read_text())
    assert report["model"] == "s" and report["lineage"]["version"] == "1"
    assert check_parity(tmp_path / "x" / "model.ts", model, spec) <= 1e-4
    pred = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert pred["counts"] == {"cases": 5, "ok": 4, "failed": 1} and pred["model"]["kind"] == "mlflow"
    # Whatever the registered version's tags leave undeclared is inferred, recorded and pointed out.
    assert bool(report["lineage"]["inferred"]) == ("does not declare" in export_err)
    assert bool(pred["model"]["inferred"]) == ("does not declare" in predict_err)
