"""3D training on patches: the patch datasets (annotation set of volumes, labeled folder of volumes), a 3D student
and a 3D teacher trained end to end, a resumed 3D run, and the errors for sets of the other dimensionality.

Everything is tiny: volumes of 12-28 voxels a side, 16^3 patches, a UNet of (4, 8, 16) channels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    TINY_UNET,
    assert_resumed_from_a_checkpoint,
    committed_checkpoint,
    kill_a_train_worker,
    kill_when,
    tiny_raw_config,
)

from nakt_ray import config

UNET3D = {"spatial_dims": 3, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0}
VOLUME = {"patch_size": [16, 16, 16], "modality": "mri", "crop_nonzero": False}
LABELS = ["background", "cube"]
SHAPES = [(24, 28, 20), (20, 24, 24), (28, 20, 22), (22, 26, 18), (24, 20, 26), (26, 22, 20)]


def _cube_volume(shape, rng) -> tuple[np.ndarray, np.ndarray]:
    """A bright cube on a dark background (trivially learnable), with noise."""
    mask = np.zeros(shape, np.uint8)
    size = rng.integers(6, 10)
    at = [rng.integers(0, s - size) for s in shape]
    mask[tuple(slice(a, a + size) for a in at)] = 1
    image = (100 + 100 * mask + rng.normal(0, 15, shape)).astype(np.float32)
    return image, mask


def _write_folder(root: Path, shapes, seed: int, broken: bool = False) -> Path:
    from nakt_ray.data.volumes import VolumeGeometry, write_volume

    rng = np.random.default_rng(seed)
    for i, shape in enumerate(shapes):
        image, mask = _cube_volume(shape, rng)
        geometry = VolumeGeometry.create(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        write_volume(root / "images" / f"case{i:02d}.nii.gz", image, geometry)
        if broken and i == 0:  # a mask on another grid: this case fails to read, the others train
            mask, geometry = mask[:-2], VolumeGeometry.create((shape[0] - 2, *shape[1:]), (1.0,) * 3, (0.0,) * 3)
        write_volume(root / "masks" / f"case{i:02d}.nii.gz", mask, geometry)
    return root


def _raw(tmp_path: Path, **extra) -> dict:
    raw = tiny_raw_config(tmp_path, volume=dict(VOLUME), **extra)
    raw["data"]["labels"] = list(LABELS)
    return raw


def write_volume_set(root: Path, folder: Path, cfg) -> Path:
    """An annotation set of volumes (schema version 2) written the way annotation/volumes.py writes one: the
    images read and preprocessed as the run says, two teachers' maps (one exact but unsure, one shifted by a
    voxel), fused by the store, one error row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nakt_ray.annotation import parquet as ann
    from nakt_ray.annotation import volume_store as vs
    from nakt_ray.config.convert import to_plain
    from nakt_ray.data.volume_cases import list_volume_cases, read_case_labels, read_case_volume

    rows = []
    for case in list_volume_cases(folder, require_masks=True):
        image, transform = read_case_volume(case, cfg.volume)
        truth = read_case_labels(case, cfg.volume, transform, 2).astype(np.float32)
        name = vs.store_name(case.case_id)
        group = vs.create_case(root, name, image, {"case_id": case.case_id, "shape": list(image.shape[1:])})
        for teacher, fg in (("t1", 0.1 + 0.8 * truth), ("t2", np.roll(0.05 + 0.9 * truth, 1, axis=2))):
            vs.write_map(group, vs.teacher_key(teacher), ann.quantize(np.stack([1 - fg, fg])))
        figures = vs.fuse_case(group, ["t1", "t2"], "mean", None)
        rows.append({"case_id": case.case_id, "source": case.image_path, "status": "ok", "error": "",
                     "geometry": json.dumps(transform.to_dict()), "store": name,
                     "shape": json.dumps(list(image.shape[1:])), **figures})
    rows.append({"case_id": "broken", "source": "broken.nii.gz", "status": "error", "error": "decode: broken",
                 "geometry": "", "store": "", "shape": "", "agreement": None, "entropy": None})
    manifest = {"schema_version": ann.SCHEMA_VERSION_VOLUMES, "spatial_dims": 3, "transferal": str(folder),
                "labels": list(LABELS), "image_channels": 1, "image_dtype": "float16", "num_classes": 2,
                "prob_dtype": "uint8", "prob_scale": 255, "chunk": vs.CHUNK, "stores": vs.STORES,
                "preprocess": to_plain(cfg.volume),
                "teachers": [{"name": t, "arch": "unet", "fingerprint": f"fp-{t}"} for t in ("t1", "t2")],
                "fusion": {"rule": "mean", "weights": None}}
    ann.write_manifest(root, manifest)
    pq.write_table(pa.Table.from_pylist(rows, schema=ann.arrow_schema_volumes(manifest)), root / "part-0.parquet")
    return root


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("volumes")
    return {"transferal": _write_folder(root / "transferal", SHAPES[:5], seed=1),
            "site": _write_folder(root / "site", SHAPES, seed=2, broken=True),
            "val": _write_folder(root / "val", [(12, 30, 18), (24, 24, 24)], seed=3)}


@pytest.fixture(scope="module")
def volume_set(tmp_path_factory, volumes) -> Path:
    tmp = tmp_path_factory.mktemp("volume_set")
    return write_volume_set(tmp / "set", volumes["transferal"], config.from_dict(_raw(tmp)))


def _student_raw(tmp_path: Path, volume_set: Path, volumes, training: dict | None = None) -> dict:
    raw = _raw(tmp_path)
    raw["student"] = {"name": "s3", "arch": "unet", "arch_args": dict(UNET3D), "annotations": str(volume_set)}
    raw["data"]["val"] = str(volumes["val"])
    raw["training"] = {"epochs": 2, "batch_size": 4, "num_workers": 0, "lr": 0.01, "min_steps": 0, **(training or {})}
    return raw


def _key(row: dict) -> bytes:
    return row["image"].tobytes()


def test_patches_of_a_volume_set_are_new_every_epoch_and_reproducible(ray_session, volume_set):
    from nakt_ray.training.volume_data import annotation_patch_dataset

    ds = annotation_patch_dataset(str(volume_set), patch_size=(16, 16, 16), patches_per_case=3, seed=1)
    first, second = ds.take_all(), ds.take_all()  # two executions: two epochs
    assert len(first) == len(second) == 5 * 3  # the error row has no patches
    row = first[0]
    assert set(row) == {"image", "target"}
    assert row["image"].shape == (1, 16, 16, 16) and row["image"].dtype == np.float16
    assert row["target"].shape == (2, 16, 16, 16) and row["target"].dtype == np.uint8
    sums = np.stack([r["target"] for r in first]).astype(int).sum(1)
    assert sums.min() >= 254 and sums.max() <= 256  # p x 255 per class, rounded
    assert {_key(r) for r in first} != {_key(r) for r in second}
    again = annotation_patch_dataset(str(volume_set), patch_size=(16, 16, 16), patches_per_case=3, seed=1)
    assert {_key(r) for r in again.take_all()} == {_key(r) for r in first}  # the same seed: the same patches
    other = annotation_patch_dataset(str(volume_set), patch_size=(16, 16, 16), patches_per_case=3, seed=2)
    assert {_key(r) for r in other.take_all()} != {_key(r) for r in first}
    # about a third of the patches are centred on the cube; a uniform 16^3 box holds some of it less often
    fg = np.mean([(r["target"][1] > 127).any() for r in first + second])
    assert fg > 0.3


def test_a_patch_task_hands_its_cases_on_one_by_one(ray_session, volume_set, monkeypatch):
    """A task reads several cases (CASES_PER_BLOCK), but its patches leave it in blocks of about one case's
    patches (PATCH_BLOCK_BYTES), so the trainer's first batch of an epoch does not wait for a whole task."""
    from nakt_ray.training import volume_data

    kwargs = dict(patch_size=(16, 16, 16), patches_per_case=3, seed=1)
    assert volume_data.annotation_patch_dataset(str(volume_set), **kwargs).materialize().num_blocks() == 2  # 2 tasks
    case_bytes = 3 * 16**3 * (2 + 2)  # 3 patches: float16 image, uint8 target of 2 classes
    monkeypatch.setattr(volume_data, "PATCH_BLOCK_BYTES", case_bytes)
    ds = volume_data.annotation_patch_dataset(str(volume_set), **kwargs)
    assert ds.context.target_max_block_size == case_bytes
    blocks = ds.materialize()
    assert blocks.num_blocks() == 5 and blocks.count() == 5 * 3  # one block per case


def test_agreement_weights_and_re_fusion_per_patch(ray_session, volume_set):
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.training.volume_data import annotation_patch_dataset

    def rows(**kw):
        ds = annotation_patch_dataset(str(volume_set), patch_size=(16, 16, 16), patches_per_case=2, seed=5, **kw)
        return sorted(ds.take_all(), key=_key)

    stored, pixel, case = rows(), rows(agreement="pixel"), rows(agreement="case")
    # two teachers: at each voxel one or both agree with the fused label -> 1/2 or 1 (x 255); padding agrees
    assert set(np.unique(np.stack([r["weight"] for r in pixel])).tolist()) == {128, 255}
    table = ann.read_table(volume_set, columns=["status", "agreement"]).to_pylist()
    expected = {round(255 * r["agreement"]) for r in table if r["status"] == "ok"}
    assert {int(np.unique(r["weight"])[0]) for r in case} <= expected and len({int(r["weight"][0, 0, 0])
                                                                             for r in case}) > 1
    # re-fused per patch from the stored teacher maps: the stored rule gives the stored label, voxel for voxel
    same = rows(rule="mean")
    assert [_key(r) for r in same] == [_key(r) for r in stored]
    for a, b in zip(same, stored):
        np.testing.assert_array_equal(a["target"], b["target"])
    vote = rows(rule="majority_vote")
    assert set(np.unique(np.stack([r["target"] for r in vote])).tolist()) <= {0, 128, 255}
    assert any(not np.array_equal(a["target"], b["target"]) for a, b in zip(vote, stored))


def test_patches_of_labeled_volumes_are_one_hot_and_a_bad_case_is_reported(ray_session, volumes, tmp_path):
    from nakt_ray.training.volume_data import labeled_patch_dataset, labeled_volumes

    cfg = config.from_dict(_raw(tmp_path))
    held, failed, n = labeled_volumes(cfg, str(volumes["site"]))
    assert n == 6 and [f["case_id"] for f in failed] == ["case00"] and "case00" in failed[0]["error"]
    assert held.count() == 5
    rows = labeled_patch_dataset(held, num_classes=2, patch_size=(16, 16, 16), patches_per_case=2,
                                 foreground_share=1.0, seed=0).take_all()
    assert len(rows) == 10
    targets = np.stack([r["target"] for r in rows])
    assert set(np.unique(targets).tolist()) == {0, 255} and (targets.astype(int).sum(1) == 255).all()
    assert all((r["target"][1] == 255).any() for r in rows)  # every patch forced onto the cube holds some of it
    assert rows[0]["image"].dtype == np.float16 and rows[0]["image"].shape == (1, 16, 16, 16)


def test_a_3d_student_learns_a_cube_from_a_volume_set_and_is_registered(volume_set, volumes, tmp_path):
    from nakt_ray.models.model_file import load_model
    from nakt_ray.training.student import train_student

    cfg = config.from_dict(_student_raw(tmp_path, volume_set, volumes, training=dict(
        epochs=8, kl_weight=0.5, hard_weight=0.5, agreement_weighting="pixel")))
    assert cfg.spatial_dims == 3
    result = train_student(cfg)
    m = result["metrics"]
    # a foreground cube of ~5 % of the volume: predicting all foreground scores Dice ~0.1, nothing 0
    assert m["best_val_dice"] > 0.5 and m["val_dice_cube"] == pytest.approx(m["val_dice"])
    assert {"train_kl_loss", "train_hard_loss", "val_iou"} <= set(m)
    from mlflow.tracking import MlflowClient

    from nakt_ray.tracking import tracking_uri

    client = MlflowClient(tracking_uri(cfg))
    losses = [h.value for h in sorted(client.get_metric_history(result["run_id"], "train_loss"),
                                      key=lambda h: h.step)]
    assert losses[-1] < losses[0]
    _, spec = load_model(result["model_path"])
    assert spec.volume == cfg.volume and spec.input_size == (16, 16, 16) and spec.lineage["nakt.teachers"] == "t1,t2"
    version = client.get_model_version_by_alias(cfg.tracking.registered_model, cfg.tracking.alias)
    assert version.tags["nakt.teachers"] == "t1,t2"


def test_a_3d_teacher_trains_on_a_labeled_folder_of_volumes(volumes, tmp_path):
    from nakt_ray.models.model_file import load_model
    from nakt_ray.training.teacher import train_teacher

    raw = _raw(tmp_path, teachers=[{"name": "t3", "arch": "unet", "arch_args": dict(UNET3D),
                                    "train_data": str(volumes["site"]), "val_data": str(volumes["val"])}])
    raw["teacher_training"] = {"epochs": 6, "batch_size": 4, "num_workers": 0, "lr": 0.01}
    cfg = config.from_dict(raw)
    path = train_teacher(cfg, cfg.teachers[0])
    model, spec = load_model(path)
    assert spec.volume == cfg.volume and spec.role == "teacher" and spec.lineage["num_cases"] == 5  # one broken
    import torch

    with torch.no_grad():
        assert model(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)
    from mlflow.tracking import MlflowClient

    from nakt_ray.tracking import tracking_uri

    run = MlflowClient(tracking_uri(cfg)).search_runs(
        [MlflowClient(tracking_uri(cfg)).get_experiment_by_name("tests").experiment_id])[0]
    assert run.data.metrics["best_val_dice"] > 0.3


@pytest.mark.fault  # a 2-worker DDP run resumed: minutes of worker start-up on 2 cores (the fault tier)
def test_a_3d_run_resumes_from_its_last_checkpoint(ray_session, volume_set, volumes, tmp_path):
    """Real Ray Train workers: the run stops after epoch 0; the same run name continues from its checkpoint, with two
    DDP workers drawing their patches from one streamed dataset."""
    import dataclasses

    import mlflow

    from nakt_ray.models.model_file import model_spec
    from nakt_ray.tracking import RunLogger
    from nakt_ray.training.loop import fit
    from nakt_ray.training.volume_data import annotation_patch_dataset, validation_dataset

    cfg = config.from_dict(_student_raw(tmp_path, volume_set, volumes, training=dict(num_workers=1, epochs=1)))
    spec = model_spec(cfg, "s3", "unet", UNET3D, "student", {})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    run_id = mlflow.MlflowClient().create_run(mlflow.MlflowClient().create_experiment("resume")).info.run_id

    def once(epochs: int, workers: int):
        ds = annotation_patch_dataset(str(volume_set), patch_size=(16, 16, 16), patches_per_case=2, seed=0)
        val = validation_dataset(cfg, str(volumes["val"]), 4, 3)
        training = dataclasses.replace(cfg.training, epochs=epochs, num_workers=workers, torch_threads=1)
        return fit(spec, ds, training, out_path=tmp_path / "model.pt",
                   storage=tmp_path / "rt", name="s3", val_ds=val, logger=RunLogger(uri, run_id),
                   run_name="s3-resumed")

    assert once(1, workers=1).metrics["epoch"] == 0
    result = once(3, workers=2)
    assert result.metrics["epoch"] == 2 and 0 <= result.metrics["val_dice"] <= 1
    history = mlflow.MlflowClient().get_metric_history(run_id, "start_epoch")
    assert sorted(h.value for h in history) == [0, 1]  # the second run started at epoch 1, from the checkpoint
    assert sorted(h.step for h in mlflow.MlflowClient().get_metric_history(run_id, "train_loss")) == [0, 1, 2]


@pytest.mark.fault
@pytest.mark.timeout(600)  # Ray Train workers killed and restarted: minutes on a loaded 2-core machine
def test_a_two_worker_3d_run_survives_a_killed_worker_and_registers(ray_session, volume_set, volumes, tmp_path):
    """Worker-failure recovery as in 2D: DDP on patches, one worker SIGKILLed once a checkpoint is recorded; the
    restarted group goes on from it, finishes and registers the student."""

    from mlflow.tracking import MlflowClient

    from nakt_ray.tracking import tracking_uri
    from nakt_ray.training.student import train_student

    cfg = config.from_dict(_student_raw(tmp_path, volume_set, volumes, training=dict(
        epochs=3, num_workers=2, cpus_per_worker=0.5, torch_threads=1, max_failures=2, patches_per_case=2)))
    killed = []
    kill_when(lambda: committed_checkpoint(Path(cfg.run_dir) / "ray_train"),
              lambda: killed.extend(kill_a_train_worker()))
    result = train_student(cfg)
    assert killed, "the test did not kill a worker"
    assert result["metrics"]["epoch"] == 2 and result["model_uri"].endswith(f"@{cfg.tracking.alias}")
    history = MlflowClient(tracking_uri(cfg)).get_metric_history(result["run_id"], "train_loss")
    assert_resumed_from_a_checkpoint(history, 3)


@pytest.mark.fault
@pytest.mark.timeout(900)  # two 3D trials on Ray Tune: minutes on 2 cores (9.5 min with 2 epochs under load)
def test_a_3d_search_scores_trials_by_sliding_window_and_registers_the_champion(ray_session, volume_set, volumes,
                                                                                tmp_path):
    """`nakt tune` on a set of volumes: each trial re-fuses the stored maps with its sampled rule and weights, trains a
    3D student on patches, is scored on whole val volumes, and the best is registered with its trial config."""
    from mlflow.tracking import MlflowClient

    from nakt_ray.search.tune import tune_student
    from nakt_ray.tracking import tracking_uri

    raw = _student_raw(tmp_path, volume_set, volumes, training=dict(epochs=1, patches_per_case=2, torch_threads=1))
    raw["tune"] = {"num_samples": 2, "max_concurrent_trials": 1, "grace_period": 1, "seed": 0, "space": {
        "training.lr": {"loguniform": [3e-3, 3e-2]},
        "fusion.rule": {"choice": ["weighted_mean", "confidence_weighted"]}, "fusion.weights": {"simplex": 2}}}
    cfg = config.from_dict(raw)
    result = tune_student(cfg)
    rows = result["rows"]
    assert len(rows) == 2 and all(r["status"] == "completed" and r["epochs"] == 1 for r in rows)
    assert all(0 <= r["best"] <= 1 for r in rows) and len({r["values"]["training.lr"] for r in rows}) == 2
    version = MlflowClient(tracking_uri(cfg)).get_model_version_by_alias(cfg.tracking.registered_model, "champion")
    best = result["champion"]
    assert best["best"] == max(r["best"] for r in rows) and version.run_id == best["run_id"]
    assert json.loads(version.tags["nakt.tune_trial_config"])["fusion"]["rule"] == best["values"]["fusion.rule"]
    from nakt_ray.models.model_file import load_model

    _, spec = load_model(best["model_path"])
    assert spec.volume == cfg.volume and spec.input_size == (16, 16, 16)


def test_sets_of_the_other_dimensionality_are_refused_by_name(volume_set, volumes, tmp_path):
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.errors import ConfigError, DataError
    from nakt_ray.training.student import train_student

    image_set = tmp_path / "image_set"  # the manifest of a set of images is all the check reads
    image_set.mkdir()
    ann.write_manifest(image_set, {"labels": LABELS, "teachers": [], "fusion": {"rule": "mean", "weights": None}})
    assert ann.read_manifest(image_set)["schema_version"] == 1
    raw = _student_raw(tmp_path, volume_set, volumes)
    with pytest.raises(DataError, match=r"is a set of 2D images \(schema version 1\), but the student 'unet' is 3D"
                                        r".*set student.arch_args.spatial_dims: 2"):
        train_student(config.from_dict(raw), annotations_dir=str(image_set))
    raw2d = _student_raw(tmp_path, volume_set, volumes)
    raw2d["student"]["arch_args"] = dict(TINY_UNET)
    with pytest.raises(DataError, match=rf"annotation set '{volume_set}': is a set of volumes \(schema version 2\), "
                                        r"but the student 'unet' is 2D: set student.arch_args.spatial_dims: 3"):
        train_student(config.from_dict(raw2d))
    other = _student_raw(tmp_path, volume_set, volumes)
    other["volume"]["modality"] = "none"
    with pytest.raises(DataError, match=r"volume.modality is 'none' here, 'mri' in the set"):
        train_student(config.from_dict(other))
    metrics = _student_raw(tmp_path, volume_set, volumes, training=dict(val_metrics=["hd95"]))
    with pytest.raises(ConfigError, match=r"training.val_metrics"):
        train_student(config.from_dict(metrics))
    assert not (tmp_path / "run" / "mlflow.db").exists()  # refused before any run opened
