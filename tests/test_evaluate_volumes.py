"""Evaluation of volumes (nakt_ray/evaluation/volumes.py, figures.py): every prediction mapped back onto the original
grid and scored in mm with the original voxel spacing; the scoring task on a hand-made store (no Ray); and
``evaluate`` of a 3D run through the actor pools with 3D, 2D (slice by slice) and student models, the teachers'
ensemble, an unusable mask recorded, the report files and a figure per model."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import ball_volume, scripted_threshold
from PIL import Image

from nakt_ray import config
from nakt_ray.annotation import volume_store as vs
from nakt_ray.annotation.parquet import quantize
from nakt_ray.data.volume_preprocess import preprocess_label_volume, preprocess_volume
from nakt_ray.data.volumes import VolumeGeometry, write_volume
from nakt_ray.evaluation.evaluate import ENSEMBLE, evaluate
from nakt_ray.evaluation.figures import CasePlanes, mid_planes, to_display
from nakt_ray.evaluation.report import FILES
from nakt_ray.evaluation.volumes import score_volumes
from nakt_ray.metrics import class_scores

TINY_UNET_3D = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}
# Each volume keeps its spacing: no resampling, so a threshold teacher's answer on the original grid is exact.
VOLUME = {"spacing": None, "orientation": "RAS", "modality": "mri", "crop_nonzero": True,
          "patch_size": [16, 16, 16]}
SPACING = (2.5, 1.5, 1.2)
OBLIQUE = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
SHAPE = (20, 24, 22)








def _geometry(i: int) -> VolumeGeometry:
    return VolumeGeometry.create(SHAPE, SPACING, (-10.0 * i, 3.0, 7.0), OBLIQUE if i % 2 else None)


def _one_hot(label: np.ndarray) -> np.ndarray:
    return np.stack([label == 0, label == 1]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# The scoring task alone, on a store written by hand


def test_score_volumes_maps_back_to_the_original_grid_and_measures_in_mm(tmp_path):
    cfg = config.build(config.VolumePreprocessConfig, VOLUME, "volume")
    geom = _geometry(1)  # oblique: the preprocessed grid is permuted, flipped and cropped
    image = ball_volume(np.random.default_rng(4), SHAPE)
    truth = (image > 200).astype(np.uint8)
    shifted = np.roll(truth, 2, axis=0)  # 2 slices of 2.5 mm
    write_volume(tmp_path / "mask.nii.gz", truth, geom)
    write_volume(tmp_path / "image.nii.gz", image, geom)
    x, transform = preprocess_volume(image, geom, cfg)
    assert x.shape[1:] != SHAPE  # really another grid
    group = vs.create_case(tmp_path, "case.zarr", x, {})
    for name, label in (("good", truth), ("shifted", shifted)):
        vs.write_map(group, vs.teacher_key(name), quantize(_one_hot(preprocess_label_volume(label, geom, cfg,
                                                                                            transform))))
    batch = {"case_id": np.array(["c"], dtype=object), "error": np.array([""], dtype=object),
             "image": np.array(["case.zarr"], dtype=object), "geometry": np.array([json.dumps(transform.to_dict())]),
             "image_path": np.array([str(tmp_path / "image.nii.gz")], dtype=object),
             "mask_path": np.array([str(tmp_path / "mask.nii.gz")], dtype=object),
             "original_id": np.array([""], dtype=object)}
    out = score_volumes(batch, out_dir=str(tmp_path), models=["good", "shifted"], ensemble=["good", "shifted"],
                        ensemble_name=ENSEMBLE, num_classes=2, nsd_tolerance=2.0, pictured=["c"])
    assert out["error"][0] == ""
    assert out["dice_class__good"][0, 1] == 1.0 and out["hd95_class__good"][0, 1] == 0.0
    expected = class_scores(shifted, truth, 2, 2.0, SPACING, spatial_dims=3)  # on the original grid, in mm
    for m in ("dice", "iou", "hd95", "nsd"):
        assert out[f"{m}_class__shifted"][0, 1] == pytest.approx(expected[m][1])
    assert out["hd95__shifted"][0] == pytest.approx(5.0)  # 2 slices x 2.5 mm, not 2 voxels
    # the ensemble: the mean of the two maps (ties at the shifted voxels go to the background)
    ens = class_scores(truth & shifted, truth, 2, 2.0, SPACING, spatial_dims=3)
    assert out[f"dice_class__{ENSEMBLE}"][0, 1] == pytest.approx(ens["dice"][1])
    assert not (tmp_path / vs.STORES / "case.zarr").exists()  # the store is gone once scored
    assert out["figure"][0]  # the pictured case carries its mid-planes

    # a mask on another grid: an error row that names the files, and the store is removed all the same
    vs.create_case(tmp_path, "case.zarr", x, {})
    write_volume(tmp_path / "other.nii.gz", truth[:, :, :-1], VolumeGeometry.create(SHAPE[:2] + (21,), SPACING,
                                                                                   (0, 0, 0)))
    bad = score_volumes({**batch, "mask_path": np.array([str(tmp_path / "other.nii.gz")], dtype=object)},
                        out_dir=str(tmp_path), models=["good"], ensemble=[], ensemble_name=ENSEMBLE, num_classes=2,
                        nsd_tolerance=2.0, pictured=[])
    assert bad["error"][0].startswith("score: DataError") and "other.nii.gz" in bad["error"][0]
    assert np.isnan(bad["dice__good"][0]) and not (tmp_path / vs.STORES / "case.zarr").exists()


def test_mid_planes_pass_through_the_truth_and_keep_the_display_convention():
    geom = VolumeGeometry.create((10, 12, 14), (3.0, 1.0, 0.5), (0, 0, 0))  # d->L, h->P, w->S (LPS columns)
    truth = np.zeros((10, 12, 14), np.uint8)
    truth[2:5, 7:10, 9:12] = 1
    shown, spacing = to_display(truth, geom)
    # RAS order: (S, A, R) = (w, reversed h, reversed d)
    assert shown.shape == (14, 12, 10) and spacing == (0.5, 1.0, 3.0)
    planes = CasePlanes(geom, truth)
    assert planes.centre == (10, 3, 6)  # the truth's centroid in (S, A, R)
    axial = mid_planes(shown, planes.centre)["axial"]
    assert axial.shape == (12, 10) and axial.sum() == 9  # the truth's full 3 x 3 cross-section


# ---------------------------------------------------------------------------------------------------------------
# evaluate() of a 3D run, through Ray


@pytest.fixture(scope="module")
def evaluated(ray_session, tmp_path_factory):
    from nakt_ray.models.model_file import ModelSpec, save_model

    tmp = tmp_path_factory.mktemp("eval3d")
    rng = np.random.default_rng(0)
    for i in range(3):
        image = ball_volume(rng, SHAPE)
        write_volume(tmp / "test" / "images" / f"vol{i}.nii.gz", image, _geometry(i))
        write_volume(tmp / "test" / "masks" / f"vol{i}.nii.gz", (image > 200).astype(np.uint8), _geometry(i))
    # a mask on another grid than its image: the case fails with its reason, the others are scored
    write_volume(tmp / "test" / "images" / "vol9.nii.gz", ball_volume(rng, SHAPE), _geometry(0))
    write_volume(tmp / "test" / "masks" / "vol9.nii.gz", np.zeros((20, 24, 21), np.uint8),
                 VolumeGeometry.create((20, 24, 21), SPACING, (0, 0, 0)))
    torch.manual_seed(0)
    spec = ModelSpec(name="student", arch="unet", arch_args=dict(TINY_UNET_3D), labels=("background", "ball"),
                     preprocess=config.PreprocessConfig(),
                     volume=config.build(config.VolumePreprocessConfig, VOLUME, "volume"))
    student = str(save_model(tmp / "student.pt", spec.build(), spec))
    teachers = [{"name": "thr3d", "checkpoint": str(scripted_threshold(tmp / "thr3d.ts", [16, 16, 16])),
                 "sliding_window": True, "tta_flips": [-3]},
                {"name": "thr2d", "checkpoint": str(scripted_threshold(tmp / "thr2d.ts", [16, 16])),
                 "sliding_window": True, "slice_axis": 1}]
    cfg = config.from_dict({"run_dir": str(tmp / "run"), "data": {"labels": ["background", "ball"],
                                                                  "test": str(tmp / "test")},
                            "volume": VOLUME, "teachers": teachers,
                            "student": {"arch": "unet", "arch_args": TINY_UNET_3D}})
    models = {"thr3d": teachers[0]["checkpoint"], "thr2d": teachers[1]["checkpoint"], "student": student}
    out = tmp / "evaluation"
    return out, evaluate(cfg, models, str(tmp / "test"), out, ensemble=["thr3d", "thr2d"], n_boot=200)


def test_evaluate_scores_volumes_in_mm_with_every_model_and_the_ensemble(evaluated):
    out, report = evaluated
    assert report["units"] == "mm" and report["spatial_dims"] == 3 and report["cases"] == 3
    assert set(report["models"]) == {"thr3d", "thr2d", "student", ENSEMBLE}
    # the threshold teachers (3D by sliding window with depth flips; 2D slice by slice along H) find the ball
    # exactly on the original grids, the oblique one included
    for name in ("thr3d", "thr2d", ENSEMBLE):
        r = report["models"][name]
        assert r["dice"] == 1.0 and r["hd95"] == 0.0 and r["nsd"] == 1.0 and r["classes"]["ball"]["iou"] == 1.0
    assert 0.0 <= report["models"]["student"]["dice"] < 0.9  # untrained
    [failed] = report["failed"]
    assert failed["case_id"] == "vol9" and failed["reason"].startswith("score: DataError")
    assert not (out / ".volume-stores").exists()  # the scratch stores are gone


def test_evaluate_of_volumes_writes_the_report_files_and_a_figure_per_model(evaluated):
    out, report = evaluated
    assert set(FILES) <= set(report["files"])
    md = (out / "evaluation.md").read_text()
    assert "| HD95 (mm) | NSD at 2 mm |" in md and "6-neighbour" in md and "voxel spacing (d, h, w)" in md
    assert json.loads((out / "evaluation.json").read_text())["spatial_dims"] == 3
    with open(out / "evaluation_cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == ["vol0", "vol1", "vol2"]
    assert all(float(r["hd95__thr3d__ball"]) == 0.0 for r in rows)
    for name in ("thr3d", "thr2d", "student", ENSEMBLE):
        path = out / f"evaluation_slices__{name}.png"
        assert report["files"][path.name] == str(path)
        picture = np.asarray(Image.open(path).convert("RGB"))
        assert picture.shape[0] > 300 and picture.shape[1] > 300  # 3 cases x 3 planes
        # the model's contour (red) is drawn on the image
        assert (np.abs(picture.astype(int) - [255, 64, 0]).sum(-1) < 60).any()
