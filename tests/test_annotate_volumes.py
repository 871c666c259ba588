"""Annotation of volumes (a 3D run): zarr stores referenced from Parquet rows (schema version 2), 2D and 3D teachers
in one run, every case accounted for, resume, re-fusion without teachers; and the stores' slab-wise fusion against
whole-volume fusion."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ball_volume, scripted_threshold

from nakt_ray import config
from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation import volume_store as vs
from nakt_ray.annotation.pipeline import annotate
from nakt_ray.data.readers import Case
from nakt_ray.data.volume_cases import list_volume_cases, read_case_labels, read_case_volume
from nakt_ray.data.volume_preprocess import VolumeTransform, restore_volume
from nakt_ray.data.volumes import VolumeGeometry, read_volume, write_volume
from nakt_ray.errors import ConfigError, DataError
from nakt_ray.fusion import fuse, pairwise_dice

TINY_UNET_3D = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}
VOLUME = {"spacing": [2.0, 2.0, 2.0], "orientation": "RAS", "modality": "mri", "crop_nonzero": True,
          "patch_size": [16, 16, 16]}








def _write_cases(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    oblique = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    for i in range(n):
        geom = VolumeGeometry.create((20, 24, 22), (2.5, 1.5, 1.5), (-10.0 * i, 3.0, 7.0),
                                     oblique if i == 1 else None)
        image = ball_volume(rng, radius=(3.5, 5.0))
        write_volume(root / "images" / f"vol{i}.nii.gz", image, geom)
        write_volume(root / "masks" / f"vol{i}.nii.gz", (image > 200).astype(np.uint8), geom)
    return root


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory):
    """Three readable volumes and one broken file; teachers: 3D threshold (sliding window, TTA over depth), 2D
    threshold (slice by slice), a random 3D UNet (nakt model file)."""
    from nakt_ray.models.model_file import ModelSpec, save_model

    tmp = tmp_path_factory.mktemp("volumes")
    src = _write_cases(tmp / "transferal", 3)
    (src / "images" / "broken.nii.gz").write_bytes(b"not a volume")
    torch.manual_seed(0)
    spec = ModelSpec(name="net", arch="unet", arch_args=dict(TINY_UNET_3D), labels=("background", "ball"),
                     preprocess=config.PreprocessConfig(), volume=config.build(config.VolumePreprocessConfig, VOLUME,
                                                                               "volume"))
    net = save_model(tmp / "net3d.pt", spec.build(), spec)
    teachers = [
        {"name": "thr3d", "checkpoint": str(scripted_threshold(tmp / "thr3d.ts", [16, 16, 16])), "sliding_window": True,
         "tta_flips": [-3, -1]},
        {"name": "thr2d", "checkpoint": str(scripted_threshold(tmp / "thr2d.ts", [16, 16])), "sliding_window": True,
         "slice_axis": 0},
        {"name": "net", "checkpoint": str(net)},
    ]
    raw = {"run_dir": str(tmp / "run"), "data": {"labels": ["background", "ball"], "transferal": str(src)},
           "volume": VOLUME, "teachers": teachers, "fusion": {"rule": "majority_vote"},
           "student": {"arch": "unet", "arch_args": TINY_UNET_3D}}
    return tmp, src, raw


@pytest.fixture(scope="module")
def annotated_volumes(ray_session, volume_run):
    tmp, src, raw = volume_run
    cfg = config.from_dict(raw)
    out = tmp / "ann"
    return cfg, src, out, annotate(cfg, output=str(out))


def test_config_of_a_volume_run_is_3d(volume_run):
    _, _, raw = volume_run
    cfg = config.from_dict(raw)
    assert cfg.spatial_dims == 3 and cfg.model_input_size == (16, 16, 16)
    with pytest.raises(config.ConfigError, match="volume.patch_size"):
        config.from_dict({**raw, "volume": {**VOLUME, "patch_size": [15, 16, 16]}})


def test_every_volume_is_one_row_and_the_broken_one_says_why(annotated_volumes):
    cfg, src, out, summary = annotated_volumes
    assert summary["cases_read"] == 4 and summary["annotated"] == 3 and summary["failed"] == 1
    table = ann.read_table(out).to_pydict()
    assert sorted(table["case_id"]) == ["broken", "vol0", "vol1", "vol2"]
    row = {c: table["status"][i] for i, c in enumerate(table["case_id"])}
    assert row["broken"] == "error" and all(row[f"vol{i}"] == "ok" for i in range(3))
    why = table["error"][table["case_id"].index("broken")]
    assert why.startswith("decode: DataError") and "broken.nii.gz" in why
    assert table["store"][table["case_id"].index("broken")] == ""
    manifest = ann.read_manifest(out)
    assert manifest["schema_version"] == 2 and manifest["spatial_dims"] == 3
    assert [t["name"] for t in manifest["teachers"]] == ["thr3d", "thr2d", "net"]
    assert manifest["teachers"][1]["input_size"] == [16, 16]
    assert (out / "stores").is_dir() and len(list((out / "stores").iterdir())) == 3  # no store for the failure


def test_stores_hold_every_teachers_maps_and_the_known_answer(annotated_volumes):
    cfg, src, out, _ = annotated_volumes
    table = ann.read_table(out).to_pydict()
    for i, case in enumerate(table["case_id"]):
        if table["status"][i] != "ok":
            continue
        group = vs.open_case(out, table["store"][i])
        shape = tuple(json.loads(table["shape"][i]))
        image = np.asarray(group["image"][...], dtype=np.float32)
        assert image.shape == (1, *shape)
        for t in ("thr3d", "thr2d", "net"):
            maps = np.asarray(group[vs.teacher_key(t)][...])
            assert maps.dtype == np.uint8 and maps.shape == (2, *shape)
            assert np.abs(maps.astype(int).sum(0) - 255).max() <= 1
        # The two threshold teachers outvote the random net: the hard label is the threshold of the stored image.
        hard = np.asarray(group["hard_label"][...])
        clear = np.abs(image[0] - 0.5) > 0.05  # away from the threshold (the image is stored as float16)
        np.testing.assert_array_equal(hard[clear], (image[0] > 0.5)[clear])
        assert hard.sum() > 0
        locations = np.asarray(group["class_locations"][...])
        assert len(locations) == min(int((hard == 1).sum()), vs.LOCATIONS_PER_CLASS)
        assert (hard[tuple(locations[:, 1:].T)] == locations[:, 0]).all()
        # The row's geometry maps a prediction back onto the case's original grid.
        transform = VolumeTransform.from_dict(json.loads(table["geometry"][i]))
        original, geom = read_volume(src / "images" / f"{case}.nii.gz")
        restored = restore_volume(np.stack([1.0 - hard, hard]).astype(np.float32), transform)
        assert restored.shape == (2, *original.shape) and transform.original == geom


def test_a_3d_teacher_cannot_annotate_a_2d_run(volume_run, tmp_path):
    from nakt_ray.annotation.pools import check_teachers, teacher_ref
    from nakt_ray.errors import TeacherLoadError

    tmp, _, raw = volume_run
    cfg = config.from_dict({**raw, "student": {"arch": "unet"}})
    assert cfg.spatial_dims == 2
    with pytest.raises(TeacherLoadError, match="is a 3D model .* but the run is 2D"):
        check_teachers([teacher_ref(cfg, cfg.teacher("thr3d"))], 2, 1, None, cfg.spatial_dims)


@pytest.mark.parametrize("rule", ["mean", "confidence_weighted"])
def test_fuse_case_slab_by_slab_equals_fusing_the_whole_volume(tmp_path, rule):
    rng = np.random.default_rng(3)
    shape = (3, 70, 20, 18)  # C, D (three slabs of CHUNK), H, W
    group = vs.create_case(tmp_path, "c.zarr", rng.normal(size=(1, *shape[1:])).astype(np.float32), {})
    teachers = ["a", "b", "c"]
    probs = []
    for t in teachers:
        p = rng.dirichlet(np.ones(3) * 0.5, size=shape[1:]).transpose(3, 0, 1, 2).astype(np.float32)
        q = ann.quantize(p)
        vs.write_map(group, vs.teacher_key(t), q)
        probs.append(ann.dequantize(q, axis=0))
    figures = vs.fuse_case(group, teachers, rule, None)
    stack = np.stack(probs)                                       # [T, C, D, H, W]
    whole = fuse(stack.reshape(3, 3, shape[1] * shape[2], shape[3]), rule).reshape(shape)
    np.testing.assert_array_equal(np.asarray(group["soft_label"][...]), ann.quantize(whole))
    np.testing.assert_array_equal(np.asarray(group["hard_label"][...]), whole.argmax(0))
    expected = pairwise_dice(stack.reshape(3, 3, shape[1] * shape[2], shape[3]))
    assert figures["agreement"] == pytest.approx(expected, abs=1e-9)


def test_fuse_case_with_teachers_of_different_classes(tmp_path):
    from nakt_ray.fusion.partial import (
        coverage_from_classes,
        fuse_partial,
        pairwise_dice_partial,
    )

    rng = np.random.default_rng(4)
    depth, h, w = 70, 12, 10  # three slabs of CHUNK
    group = vs.create_case(tmp_path, "p.zarr", rng.normal(size=(1, depth, h, w)).astype(np.float32), {})
    # union classes 0..3; a covers 1, 2; b covers 2, 3; c covers 3: each stores its background + its classes
    classes = {"a": [1, 2], "b": [2, 3], "c": [3]}
    coverage = coverage_from_classes(list(classes.values()), 4)
    probs = []
    for t, own in classes.items():
        n = len(own) + 1
        p = rng.dirichlet(np.ones(n) * 0.5, size=(depth, h, w)).transpose(3, 0, 1, 2).astype(np.float32)
        q = ann.quantize(p)
        vs.write_map(group, vs.teacher_key(t), q)
        assert group[vs.teacher_key(t)].shape == (n, depth, h, w)
        probs.append(ann.dequantize(q, axis=0))
    figures = vs.fuse_case(group, list(classes), "mean", None, coverage=coverage)
    soft = np.asarray(group["soft_label"][...])
    assert soft.shape == (4, depth, h, w)  # the union's K+1 channels, whatever each teacher stored
    flat = [p.reshape(p.shape[0], depth * h, w) for p in probs]
    whole = fuse_partial(flat, coverage, "mean").reshape(4, depth, h, w)
    np.testing.assert_array_equal(soft, ann.quantize(whole))
    np.testing.assert_array_equal(np.asarray(group["hard_label"][...]), whole.argmax(0))
    # every class the teachers imply is found in the fused label (class 1 only a's, class 3 b's and c's)
    assert set(np.unique(np.asarray(group["class_locations"][...])[:, 0])) == {1, 2, 3}
    expected = pairwise_dice_partial(flat, coverage)  # pairs (a, b) on class 2 and (b, c) on class 3
    assert figures["agreement"] == pytest.approx(expected, abs=1e-9)
    assert figures["agreement"] != pytest.approx(pairwise_dice_partial(flat[:2], coverage[:2]), abs=1e-3)


def test_read_box_reads_the_box(tmp_path):
    arr = np.arange(2 * 40 * 36 * 33, dtype=np.float32).reshape(2, 40, 36, 33)
    group = vs.create_case(tmp_path, "b.zarr", arr[:1], {})
    vs.write_map(group, "m", arr)
    np.testing.assert_array_equal(vs.read_box(group["m"], (5, 30, 1), (20, 6, 32)), arr[:, 5:25, 30:36, 1:33])


def test_volume_cases_pair_images_and_masks_and_refuse_a_mask_off_grid(tmp_path):
    root = _write_cases(tmp_path / "labeled", 2)
    cases = list_volume_cases(root, require_masks=True)
    assert [c.case_id for c in cases] == ["vol0", "vol1"] and all(c.mask_path for c in cases)
    cfg = config.build(config.VolumePreprocessConfig, VOLUME, "volume")
    image, transform = read_case_volume(cases[0], cfg)
    labels = read_case_labels(cases[0], cfg, transform, num_classes=2)
    assert labels.shape == image.shape[1:] and set(np.unique(labels)) == {0, 1}
    with pytest.raises(DataError, match="holds class 1, but the run has 1 classes"):
        read_case_labels(cases[0], cfg, transform, num_classes=1)
    mask, geom = read_volume(root / "masks" / "vol1.nii.gz")
    shifted = VolumeGeometry.create(geom.shape, geom.spacing, (0.0, 0.0, 99.0), geom.direction)
    write_volume(root / "masks" / "vol1.nii.gz", mask.astype(np.uint8), shifted)
    _, transform1 = read_case_volume(cases[1], cfg)
    with pytest.raises(DataError, match="mask volume .*vol1.nii.gz.* has origin"):
        read_case_labels(cases[1], cfg, transform1, num_classes=2)
    (root / "masks" / "vol0.nii.gz").unlink()
    with pytest.raises(DataError, match="have no mask in masks/"):
        list_volume_cases(root, require_masks=True)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no volumes"):
        list_volume_cases(tmp_path / "empty")
    assert all(isinstance(c, Case) for c in cases)  # readers.Case: pseudonymisation applies unchanged


def test_re_fusing_a_set_of_volumes_needs_no_teacher(annotated_volumes, tmp_path):
    from nakt_ray.annotation.re_fuse import re_fuse

    cfg, src, out, _ = annotated_volumes
    summary = re_fuse(out, tmp_path / "mean", "weighted_mean", [1.0, 1.0, 0.0])  # the random net weighs nothing
    assert summary["cases"] == 4 and summary["ok"] == 3
    table = ann.read_table(tmp_path / "mean").to_pydict()
    manifest = ann.read_manifest(tmp_path / "mean")
    assert manifest["schema_version"] == 2 and manifest["fusion"]["rule"] == "weighted_mean"
    for i, status in enumerate(table["status"]):
        if status != "ok":
            continue
        new, old = vs.open_case(tmp_path / "mean", table["store"][i]), vs.open_case(out, table["store"][i])
        maps = [ann.dequantize(np.asarray(new[vs.teacher_key(t)][...]), axis=0) for t in ("thr3d", "thr2d")]
        expected = ann.quantize((maps[0] + maps[1]) / 2)
        assert np.abs(np.asarray(new["soft_label"][...]).astype(int) - expected).max() <= 1
        np.testing.assert_array_equal(np.asarray(new["image"][...]), np.asarray(old["image"][...]))
        assert table["agreement"][i] == pytest.approx(
            ann.read_table(out).to_pydict()["agreement"][i], abs=1e-6)  # agreement is the teachers', not the rule's


def test_specialist_re_fusion_weighs_each_case_by_its_own_teachers(annotated_volumes, tmp_path):
    """`nakt fuse --specialist`: per case, weights from each teacher's confidence against its own over the set,
    stored beside the set; each case fused by its own weights; a student given the rule reads it as stored."""
    from nakt_ray.annotation.re_fuse import SPECIALIST_FILE, re_fuse
    from nakt_ray.fusion.specialist import foreground_confidence, specialist_weights
    from nakt_ray.training.student import differs_from_stored

    cfg, src, out, _ = annotated_volumes
    teachers = [t["name"] for t in ann.read_manifest(out)["teachers"]]
    summary = re_fuse(out, tmp_path / "spec", "weighted_mean", [1.0, 1.0, 0.0], specialist=0.5)
    assert summary["ok"] == 3 and summary["specialist"] == 0.5
    manifest = ann.read_manifest(tmp_path / "spec")
    assert manifest["fusion"]["specialist"] == {"temperature": 0.5, "cases": SPECIALIST_FILE}
    assert not differs_from_stored(manifest["fusion"], "weighted_mean", [1.0, 1.0, 0.0])
    assert differs_from_stored(manifest["fusion"], "mean", None)
    cases = json.loads((tmp_path / "spec" / SPECIALIST_FILE).read_text())["cases"]
    table = ann.read_table(tmp_path / "spec").to_pydict()
    ok = [i for i, s in enumerate(table["status"]) if s == "ok"]
    assert sorted(cases) == sorted(table["case_id"][i] for i in ok)
    confidence, fused = [], {}
    for i in ok:  # the confidences as read slab by slab equal those of the whole volume
        group = vs.open_case(tmp_path / "spec", table["store"][i])
        maps = [ann.dequantize(np.asarray(group[vs.teacher_key(t)][...]), axis=0) for t in teachers]
        sums, count = foreground_confidence(maps)
        confidence.append(sums / count)
        np.testing.assert_allclose(cases[table["case_id"][i]]["confidence"], confidence[-1], atol=1e-5)
        fused[table["case_id"][i]] = (maps, np.asarray(group["soft_label"][...]))
    expected_w = specialist_weights(np.array(confidence), 0.5, [1.0, 1.0, 0.0])
    for (case, (maps, soft)), w in zip(fused.items(), expected_w):
        np.testing.assert_allclose(cases[case]["weights"], w, atol=1e-9)
        assert w[2] == 0.0  # the prior's zero stays zero
        expected = ann.quantize(sum(wt * m for wt, m in zip(w, maps)))
        assert np.abs(soft.astype(int) - expected).max() <= 1
    with pytest.raises(ConfigError, match="specialist weighting"):
        re_fuse(out, tmp_path / "staple", "staple", specialist=0.5)
    with pytest.raises(ConfigError, match="specialist temperature"):
        re_fuse(out, tmp_path / "cold", "weighted_mean", specialist=0.0)


def test_an_interrupted_volume_run_resumes_to_the_same_set(annotated_volumes, volume_run, tmp_path):
    import shutil

    cfg, src, out, _ = annotated_volumes
    copy = tmp_path / "ann"
    shutil.copytree(out, copy)
    import pyarrow.parquet as pq

    gone = ann.read_table(copy).to_pydict()
    files = sorted(copy.glob("*.parquet"))
    for f in files[1:]:
        f.unlink()
    # As if the run had died after writing the file of its first two cases (the stores of the others are left).
    pq.write_table(pq.read_table(files[0]).slice(0, 2), files[0])
    left = set(ann.read_table(copy, columns=["case_id"]).column("case_id").to_pylist())
    assert left != set(gone["case_id"])
    summary = annotate(cfg, output=str(copy), resume=True)
    assert summary["resumed_cases"] == len(left) and summary["cases_this_run"] == 4 - len(left)
    after = ann.read_table(copy).to_pydict()
    assert sorted(after["case_id"]) == sorted(gone["case_id"])
    for i, case in enumerate(after["case_id"]):
        j = gone["case_id"].index(case)
        assert after["status"][i] == gone["status"][j]
        if after["status"][i] == "ok":
            np.testing.assert_array_equal(np.asarray(vs.open_case(copy, after["store"][i])["soft_label"][...]),
                                          np.asarray(vs.open_case(out, gone["store"][j])["soft_label"][...]))


@pytest.mark.fault  # two more volume runs (~25 s): the second tier, to keep `make test` under 10 min
def test_kept_teachers_annotate_volumes_into_each_runs_own_stores(annotated_volumes, volume_run, tmp_path):
    """annotate.keep_teachers_s on a volume run: the hosts are built without the run's store folder and get it with
    each batch, so a second run into another folder meets the same hosts and writes the same maps there."""
    from nakt_ray.annotation.hosts import list_hosts, stop_hosts

    cfg, _, out, summary = annotated_volumes
    _, _, raw = volume_run
    kept = config.from_dict({**raw, "annotate": {"keep_teachers_s": 60}})
    try:
        first = annotate(kept, output=str(tmp_path / "k1"))
        hosts = {h["name"]: h["pid"] for h in list_hosts()}
        second = annotate(kept, output=str(tmp_path / "k2"))
        assert {h["name"]: h["pid"] for h in list_hosts()} == hosts and len(hosts) == 1  # the shared layout, kept
    finally:
        stop_hosts()
    for run, folder in ((first, tmp_path / "k1"), (second, tmp_path / "k2")):
        assert (run["annotated"], run["failed"]) == (summary["annotated"], summary["failed"])
        table, pools = ann.read_table(folder).to_pydict(), ann.read_table(out).to_pydict()
        for case, store in zip(table["case_id"], table["store"]):
            if not store:
                continue
            theirs = pools["store"][pools["case_id"].index(case)]
            for key in [vs.teacher_key(t) for t in ("thr3d", "thr2d", "net")] + ["hard_label"]:
                np.testing.assert_array_equal(np.asarray(vs.open_case(folder, store)[key][...]),
                                              np.asarray(vs.open_case(out, theirs)[key][...]))
