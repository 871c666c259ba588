"""``nakt predict`` on volumes (nakt_ray/inference/predict_volumes.py) and the export of 3D students
(nakt_ray/inference/export.py): NIfTI masks on the original grid of an oblique, anisotropic input (the affine read
back with nibabel), the known answer of a threshold model, a montage of mid-slices, a 2D model slice by slice,
pseudonymised names, a broken file recorded; TorchScript and ONNX of a 3D UNet with the parity check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ball_volume, scripted_threshold
from PIL import Image

from nakt_ray import config
from nakt_ray.cli import main
from nakt_ray.data.volumes import VolumeGeometry, read_label_volume, write_volume
from nakt_ray.inference.export import check_parity, export, export_onnx
from nakt_ray.inference.predict import PALETTE, predict_folder
from nakt_ray.models.model_file import ModelSpec, load_model, save_model
from nakt_ray.teachers.registry import load_teacher

TINY_UNET_3D = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}
VOLUME = {"spacing": [2.0, 2.0, 2.0], "orientation": "RAS", "modality": "mri", "crop_nonzero": True,
          "patch_size": [16, 16, 16]}
OBLIQUE = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
SHAPE = (20, 24, 22)
# The threshold model keeps each volume's spacing: no resampling, so its answer on the original grid is exact.
NATIVE = {**VOLUME, "spacing": None}








@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> Path:
    """Two volumes (the second oblique), anisotropic voxels (2.5, 1.5, 1.2) mm, and a broken file."""
    root = tmp_path_factory.mktemp("scans")
    rng = np.random.default_rng(0)
    for i in range(2):
        geom = VolumeGeometry.create(SHAPE, (2.5, 1.5, 1.2), (-10.0 * i, 3.0, 7.0), OBLIQUE if i == 1 else None)
        write_volume(root / "images" / f"patient{i}.nii.gz", ball_volume(rng, SHAPE), geom)
    (root / "images" / "broken.nii.gz").write_bytes(b"not a volume")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    spec = ModelSpec(name="s3d", arch="unet", arch_args=dict(TINY_UNET_3D), labels=("background", "ball"),
                     preprocess=config.PreprocessConfig(),
                     volume=config.build(config.VolumePreprocessConfig, VOLUME, "volume"))
    return {"thr3d": scripted_threshold(tmp / "thr3d.ts", [16, 16, 16], NATIVE),
            "thr2d": scripted_threshold(tmp / "thr2d.ts", [16, 16]),
            "unet3d": save_model(tmp / "unet3d.pt", spec.build(), spec)}


def test_a_3d_model_writes_nifti_masks_on_the_original_grid(volumes, models, tmp_path):
    nib = pytest.importorskip("nibabel")
    out = tmp_path / "pred"
    report = predict_folder(models["thr3d"], volumes, out)
    assert report["volumes"] is True and report["spatial_dims"] == 3 and report["preprocess_assumed"] is False
    assert report["counts"] == {"cases": 3, "ok": 2, "failed": 1}
    assert report["inference"]["sliding_window"] is True and report["preprocess"]["orientation"] == "RAS"
    by_id = {c["case_id"]: c for c in report["cases"]}
    assert by_id["broken"]["status"] == "failed" and by_id["broken"]["reason"].startswith("decode: DataError")
    for i in range(2):
        case = by_id[f"patient{i}"]
        assert case["size"] == list(SHAPE) and case["spacing"] == pytest.approx([2.5, 1.5, 1.2])
        src = nib.load(str(volumes / "images" / f"patient{i}.nii.gz"))
        mask = nib.load(case["mask"])
        # the same grid: shape, voxel sizes and affine (the second input is oblique)
        assert mask.shape == src.shape
        np.testing.assert_allclose(mask.affine, src.affine, atol=1e-4)
        np.testing.assert_allclose(mask.header.get_zooms(), src.header.get_zooms(), atol=1e-5)
        # the known answer: the threshold model finds the bright ball, voxel for voxel, though the volume was
        # reoriented (RAS), cropped and z-scored on the way (nibabel's array is (x, y, z): ours reversed)
        label = np.asarray(mask.dataobj).transpose(2, 1, 0)
        image = np.asarray(src.dataobj).transpose(2, 1, 0)
        np.testing.assert_array_equal(label, image > 200)
        assert case["classes"]["ball"] == int((label == 1).sum())
        # the montage: three planes side by side, the ball in its colour
        montage = np.asarray(Image.open(case["overlay"]))
        assert montage.ndim == 3 and montage.shape[2] == 3 and montage.shape[1] > montage.shape[0]
        assert (np.abs(montage.astype(int) - PALETTE[0].astype(int)).sum(-1) == 0).any()
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["counts"] == report["counts"] and saved["mask_encoding"]["values"] == {"background": 0, "ball": 1}


def test_a_2d_model_predicts_volumes_slice_by_slice_and_images_stay_images(volumes, models, tmp_path):
    report = predict_folder(models["thr2d"], volumes, tmp_path / "vol", volumes=True, slice_axis=0,
                            overlays=False)
    assert report["spatial_dims"] == 2 and report["counts"]["ok"] == 2
    assert report["inference"] == {"sliding_window": False, "slice_axis": 0}
    assert report["preprocess_assumed"] is True and "volume" in report["model"]["inferred"]
    case = next(c for c in report["cases"] if c["case_id"] == "patient1")
    label, geom = read_label_volume(case["mask"])
    assert geom.shape == SHAPE and case["overlay"] is None and label.sum() > 0
    # without --volumes a 2D model segments a NIfTI as it always has: one PNG per slice
    plain = predict_folder(models["thr2d"], volumes, tmp_path / "slices", overlays=False)
    assert "volumes" not in plain and any("#" in c["case_id"] for c in plain["cases"])
    with pytest.raises(ValueError, match="is a 3D model"):
        predict_folder(models["thr3d"], volumes, tmp_path / "x", volumes=False)
    with pytest.raises(ValueError, match="slice_axis"):
        predict_folder(models["thr2d"], volumes, tmp_path / "x", volumes=True, slice_axis=3)


def test_predict_volumes_pseudonymizes_file_names(volumes, models, tmp_path, monkeypatch):
    from nakt_ray.data.privacy import KEY_ENV

    monkeypatch.setenv(KEY_ENV, "0123456789abcdef-test-key")
    out = tmp_path / "pseudo"
    report = predict_folder(models["thr3d"], volumes, out, pseudonymize=True)
    assert report["counts"] == {"cases": 3, "ok": 2, "failed": 1}
    names = " ".join(p.name for p in out.iterdir())
    text = (out / "predictions.json").read_text()
    assert "patient" not in names and "patient" not in text and "broken" not in text
    assert len(list(out.glob("*_mask.nii.gz"))) == 2


def test_cli_predicts_volumes_with_a_3d_student_resampled_and_back(volumes, models, tmp_path, capsys):
    nib = pytest.importorskip("nibabel")
    assert main(["predict", "--model", str(models["unet3d"]), "--images", str(volumes), "--out",
                 str(tmp_path / "cli"), "--max-failed", "0"]) == 1  # the broken file fails the run
    captured = capsys.readouterr()
    assert "2 of 3 cases segmented" in captured.out
    assert sorted(p.name for p in (tmp_path / "cli").glob("*.nii.gz")) == ["patient0_mask.nii.gz",
                                                                          "patient1_mask.nii.gz"]
    report = json.loads((tmp_path / "cli" / "predictions.json").read_text())
    assert report["preprocess"]["spacing"] == [2.0, 2.0, 2.0]  # the student's own: predicted on a 2 mm grid
    src = nib.load(str(volumes / "images" / "patient1.nii.gz"))
    mask = nib.load(str(tmp_path / "cli" / "patient1_mask.nii.gz"))
    assert mask.shape == src.shape and np.allclose(mask.affine, src.affine, atol=1e-4)


def test_a_3d_student_exports_to_torchscript_and_predicts_the_same_masks(volumes, models, tmp_path):
    report = export(models["unet3d"], tmp_path / "ts", "torchscript")
    assert report["input_size"] == [16, 16, 16]
    described = yaml.safe_load((tmp_path / "ts" / "model.ts.yaml").read_text())
    assert described["input_size"] == [16, 16, 16] and described["volume"]["spacing"] == [2.0, 2.0, 2.0]
    assert "preprocess" not in described
    assert report["files"]["torchscript"]["max_abs_diff"] <= 1e-4
    teacher = load_teacher("ts", tmp_path / "ts" / "model.ts")
    assert teacher.spatial_dims == 3 and teacher.volume is not None
    a = predict_folder(models["unet3d"], volumes, tmp_path / "a", overlays=False)
    b = predict_folder(tmp_path / "ts" / "model.ts", volumes, tmp_path / "b", overlays=False)
    for ca, cb in zip(a["cases"], b["cases"]):
        if ca["status"] == "ok":
            np.testing.assert_array_equal(read_label_volume(ca["mask"])[0], read_label_volume(cb["mask"])[0])


def test_a_3d_student_exports_to_onnx_with_the_parity_check(models, tmp_path):
    model, spec = load_model(models["unet3d"])
    path = export_onnx(model, spec, tmp_path)
    assert check_parity(path, model, spec) <= 1e-3  # three volumes [3, 1, 16, 16, 16]: the batch is dynamic
    x = torch.randn(1, 1, 16, 16, 16)
    assert check_parity(path, model, spec, sample=x) <= 1e-3
    described = yaml.safe_load((tmp_path / "model.onnx.yaml").read_text())
    assert described["input_size"] == [16, 16, 16] and "volume" in described


def test_an_exported_3d_onnx_file_is_a_teacher_source(models, tmp_path):
    report = export(models["unet3d"], tmp_path, "onnx")
    assert report["files"]["onnx"]["max_abs_diff"] <= 1e-3
    assert load_teacher("onnx", tmp_path / "model.onnx").spatial_dims == 3
