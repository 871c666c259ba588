"""`nakt demo --3d --smoke` as a user runs it (a subprocess): the whole 3D flow on synthetic volumes, then what it
left behind: the table, the annotation set of volumes, the registered 3D student, and a NIfTI prediction on the
input's grid."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "NAKT_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def demo3d(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo3d")
    proc = subprocess.run([sys.executable, "-m", "nakt_ray.cli", "demo", "--3d", "--smoke", "--run-dir",
                           str(root / "run")], cwd=root, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return root / "run", proc.stdout


def test_demo3d_prints_the_table_of_every_model_in_mm(demo3d):
    run_dir, out = demo3d
    assert "units: mm" in out and "| model | Dice | IoU | HD95 (mm) |" in out
    for name in ("unet_t1", "segresnet_t2", "dynunet_ct", "student", "teachers_ensemble"):
        assert f"| {name} |" in out
    report = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    assert report["spatial_dims"] == 3 and report["units"] == "mm"
    assert set(report["models"]["student"]["classes"]) == {"large_organ", "small_organ", "vessel", "lesion"}
    assert list((run_dir / "evaluation").glob("evaluation_slices__*.png"))


def test_demo3d_annotation_set_is_volumes_and_accounts_for_every_case(demo3d):
    from nakt_ray.annotation import parquet as ann

    run_dir, _ = demo3d
    manifest = ann.read_manifest(run_dir / "annotations")
    assert manifest["schema_version"] == 2 and manifest["num_cases"] == 8
    assert [len(t["input_size"]) for t in manifest["teachers"]] == [3, 3, 3]
    table = ann.read_table(run_dir / "annotations").to_pydict()
    assert sorted(table["case_id"]) == sorted(p.name.removesuffix(".nii.gz")
                                               for p in (run_dir / "data" / "transferal" / "images").iterdir())


def test_demo3d_prediction_is_on_the_inputs_grid(demo3d):
    nib = pytest.importorskip("nibabel")
    run_dir, out = demo3d
    masks = list((run_dir / "prediction").glob("*_mask.nii.gz"))
    assert len(masks) == 1 and masks[0].name in out
    case = masks[0].name.removesuffix("_mask.nii.gz")
    source = nib.load(run_dir / "data" / "test" / "images" / f"{case}.nii.gz")
    mask = nib.load(masks[0])
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-4)
    assert mask.shape == source.shape
    assert set(np.unique(np.asarray(mask.dataobj))) <= set(range(5))


def test_demo3d_registered_student_is_3d_with_its_volume_preprocessing(demo3d):
    import mlflow

    from nakt_ray.tracking import TAG_INPUT_SIZE, TAG_PREPROCESS, TAG_VOLUME

    run_dir, _ = demo3d
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)  # (the registry defaults to the global one)
    version = client.get_model_version_by_alias("nakt-demo-3d-student", "candidate")
    assert json.loads(version.tags[TAG_INPUT_SIZE]) == [32, 32, 32]
    assert json.loads(version.tags[TAG_VOLUME])["spacing"] == [2.5, 2.5, 2.5] and TAG_PREPROCESS not in version.tags
