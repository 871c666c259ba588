"""The annotation stage: its UDFs called directly, and the whole pipeline inside real Ray Data map_batches."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import corrupt_copy, make_teacher, tiny_raw_config

from nakt_ray import config
from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation.pipeline import annotate, fuse_batch
from nakt_ray.annotation.pools import (
    INLINE_ACTOR_THREADS,
    INLINE_MIN_CASES,
    INLINE_MIN_VOLUMES,
    EnsemblePredictor,
    TeacherPredictor,
    pool_layout,
    shared_pool_size,
)
from nakt_ray.data.datasets import decode_batch
from nakt_ray.data.readers import list_cases
from nakt_ray.errors import ConfigError, TeacherLoadError, TeacherOutputError
from nakt_ray.fusion import fuse


def _batch(cases):
    return {"case_id": np.array([c.case_id for c in cases], dtype=object),
            "image_path": np.array([c.image_path for c in cases], dtype=object),
            "mask_path": np.array([c.mask_path or "" for c in cases], dtype=object)}


def test_decode_batch_keeps_failed_cases_with_reason(tmp_path, synthetic_dirs):
    src = corrupt_copy(synthetic_dirs["site_a"], tmp_path / "src", ["site_a_0001.png"])
    cfg = config.PreprocessConfig(size=(32, 32))
    out = decode_batch(_batch(list_cases(src)), preprocess=cfg, num_classes=2, with_label=True)
    assert out["image"].shape == (6, 1, 32, 32) and out["target"].shape == (6, 2, 32, 32)
    errors = dict(zip(out["case_id"], out["error"]))
    assert errors["site_a_0001"].startswith("decode: DataError: cannot read image file")
    assert "site_a_0001.png" in errors["site_a_0001"]
    assert all(e == "" for k, e in errors.items() if k != "site_a_0001")
    ok = out["error"] == ""
    np.testing.assert_array_equal(out["target"][ok].sum(1), 255)  # one-hot x 255


def test_teacher_predictor_called_directly(tmp_path, synthetic_dirs):
    path = make_teacher(tmp_path / "t.pt", "t")
    predictor = TeacherPredictor(str(path), "t", in_channels=1)
    batch = decode_batch(_batch(list_cases(synthetic_dirs["mixed"])), preprocess=config.PreprocessConfig(size=(32, 32)),
                         num_classes=2)
    batch["error"][2] = "decode: broken"
    out = predictor(dict(batch))
    probs = out["prob__t"]
    assert probs.dtype == np.uint8 and probs.shape == (6, 2, 32, 32)
    assert np.abs(probs[[0, 1, 3, 4, 5]].astype(int).sum(1) - 255).max() <= 1  # probabilities, quantised
    assert probs[2].max() == 0  # failed rows pass through empty


def test_ensemble_predictor_adds_every_teacher_in_its_own_batch_size(tmp_path, synthetic_dirs):
    paths = [make_teacher(tmp_path / f"t{i}.pt", f"t{i}", seed=i) for i in (1, 2)]
    kwargs = [dict(checkpoint=str(p), name=f"t{i}", in_channels=1) for i, p in zip((1, 2), paths)]
    batch = decode_batch(_batch(list_cases(synthetic_dirs["mixed"])), preprocess=config.PreprocessConfig(size=(32, 32)),
                         num_classes=2)
    batch["error"][4] = "decode: broken"
    sizes = []

    class Counting(TeacherPredictor):  # records the batch sizes it is called with
        def __call__(self, b):
            sizes.append((self.name, len(b["error"])))
            return super().__call__(b)

    out = EnsemblePredictor(kwargs, batch_sizes=[4, 5], predictor_cls=Counting)(dict(batch))
    assert sizes == [("t1", 4), ("t1", 2), ("t2", 5), ("t2", 1)]
    for kw in kwargs:  # the same maps as the teacher alone on the whole batch
        alone = TeacherPredictor(**kw)(dict(batch))[f"prob__{kw['name']}"]
        np.testing.assert_array_equal(out[f"prob__{kw['name']}"], alone)
        assert out[f"prob__{kw['name']}"][4].max() == 0
    empty = {k: v[:0] for k, v in batch.items()}
    assert EnsemblePredictor(kwargs, batch_sizes=[4, 5])(empty)["prob__t1"].shape == (0, 2, 32, 32)


@pytest.mark.parametrize("cpus, gpus, requested, expected", [
    (2, 0, None, (1, 2, 1.0)),      # a 2-core machine: one actor, both cores as torch threads, half the CPUs to tasks
    (16, 0, None, (4, 4, 2.0)),     # one actor per 4 CPUs
    (2, 0, 2, (2, 1, 0.5)),         # as asked: two single-thread actors
    (16, 2, None, (2, 8, 4.0)),     # one per GPU
    (1, 0, None, (1, 1, 0.5)),
])
def test_shared_pool_size(cpus, gpus, requested, expected):
    assert shared_pool_size(cpus, gpus, requested) == expected


@pytest.mark.parametrize("cpus, gpus, requested, expected", [
    (2, 0, None, (2, 1, 0.5)),      # the inline layout on 2 cores: two single-thread actors
    (16, 0, None, (16, 1, 0.5)),
    (16, 0, 4, (4, 4, 2.0)),
    (16, 2, None, (2, 8, 4.0)),     # one per GPU, as the shared layout
])
def test_inline_pool_size(cpus, gpus, requested, expected):
    assert shared_pool_size(cpus, gpus, requested, INLINE_ACTOR_THREADS) == expected


def test_pool_layout_auto_is_shared_without_gpus(ray_session):
    assert pool_layout("auto") == "shared"  # the test cluster has no GPUs
    assert pool_layout("per_teacher") == "per_teacher"
    # an image run large enough to pay for a second actor's start decodes and fuses in its actors
    assert pool_layout("auto", cases=INLINE_MIN_CASES - 1) == "shared"
    assert pool_layout("auto", cases=INLINE_MIN_CASES) == "inline"
    assert pool_layout("inline") == "inline"
    assert pool_layout("auto", cases=INLINE_MIN_VOLUMES - 1, volumes=True) == "shared"
    assert pool_layout("auto", cases=INLINE_MIN_VOLUMES, volumes=True) == "inline"
    with pytest.raises(ValueError, match="annotate.pools 'both'"):
        pool_layout("both")


@pytest.mark.parametrize("layout, actors", [("shared", 2), ("inline", None)])
def test_shared_and_inline_pools_give_the_per_teacher_result(annotated, tmp_path, layout, actors):
    cfg, summary, _ = annotated  # per_teacher pools; six cases, one of them a corrupt file
    shared = config.from_dict({**cfg.to_dict(), "annotate": {**cfg.to_dict()["annotate"], "pools": layout,
                                                             "shared_actors": actors}})
    out = annotate(shared, output=str(tmp_path / "shared"))
    assert out["pools"] == layout and summary["pools"] == "per_teacher"
    assert (out["annotated"], out["failed"]) == (summary["annotated"], summary["failed"])
    cols = ["case_id", "status", "error", "prob__t1", "prob__t2", "soft_label", "hard_label"]

    def rows(folder):
        t = ann.read_table(folder, columns=cols).to_pydict()
        return sorted(zip(*(t[c] for c in cols)))

    assert rows(tmp_path / "shared") == rows(cfg.annotations_dir)


def test_teacher_with_other_input_size_is_resampled(tmp_path):
    path = make_teacher(tmp_path / "t.pt", "t", size=(64, 64))
    predictor = TeacherPredictor(str(path), "t", in_channels=1)
    out = predictor.predict(np.zeros((2, 1, 32, 32), np.float32))
    assert out.shape == (2, 2, 32, 32)


def test_teacher_errors_name_the_teacher(tmp_path):
    path = make_teacher(tmp_path / "t.pt", "three", num_classes=3)
    with pytest.raises(TeacherLoadError, match="teacher 'three'.*predicts 3 classes.*matched 2 labels"):
        TeacherPredictor(str(path), "three", in_channels=1, classes=[0, 1], cells=[0, 1])
    with pytest.raises(TeacherLoadError, match="teacher 'three'.*takes 1 input channels.*gives 3"):
        TeacherPredictor(str(path), "three", in_channels=3)
    predictor = TeacherPredictor(str(path), "three", in_channels=1)
    predictor.teacher._forward = lambda x: x.new_full((x.shape[0], 3, 32, 32), float("nan"))
    unusable = (TeacherLoadError, TeacherOutputError)  # a prediction that cannot be used, caught as it is made
    with pytest.raises(unusable, match="teacher 'three'.*NaN"):
        predictor.predict(np.zeros((1, 1, 32, 32), np.float32))
    predictor.teacher._forward = lambda x: x.new_zeros((x.shape[0], 2, 32, 32))
    with pytest.raises(unusable, match="teacher 'three'.*returns 2 classes but its labels declare 3"):
        predictor.predict(np.zeros((1, 1, 32, 32), np.float32))


def test_fuse_batch_rows_are_parquet_ready():
    q = lambda p: ann.quantize(np.asarray(p, np.float32))  # noqa: E731
    a = np.stack([np.full((4, 4), 0.2), np.full((4, 4), 0.8)])[None]  # [1, C, H, W]
    b = np.stack([np.full((4, 4), 0.6), np.full((4, 4), 0.4)])[None]
    batch = {"case_id": np.array(["x"], object), "source": np.array(["x.png"], object),
             "error": np.array([""], object), "geometry": np.array(["{}"], object),
             "image": np.zeros((1, 1, 4, 4), np.float32), "prob__a": q(a), "prob__b": q(b)}
    out = fuse_batch(batch, teachers=["a", "b"], rule="mean", weights=None)
    soft = ann.from_bytes(out["soft_label"], (2, 4, 4), "uint8")
    assert abs(int(soft[0, 1, 0, 0]) - round(0.6 * 255)) <= 1
    assert out["status"][0] == "ok" and ann.from_bytes(out["hard_label"], (4, 4), "uint8").max() == 1
    assert out["agreement"][0] == pytest.approx(0.0)  # a says foreground, b says background everywhere
    weighted = fuse_batch(batch, teachers=["a", "b"], rule="weighted_mean", weights=[0.0, 1.0])
    assert ann.from_bytes(weighted["hard_label"], (4, 4), "uint8").max() == 0


def test_annotate_accounts_for_every_case(annotated):
    cfg, summary, victim = annotated
    assert summary["cases_read"] == 6 and summary["annotated"] == 5 and summary["failed"] == 1
    table = ann.read_table(cfg.annotations_dir).to_pydict()
    assert sorted(table["case_id"]) == sorted(c.case_id for c in list_cases(cfg.data.transferal))
    errors = json.loads((cfg.annotations_dir / "errors.json").read_text())
    assert [e["case_id"] for e in errors] == [victim] and errors[0]["stage"] == "decode"
    row = table["case_id"].index(victim)
    assert table["status"][row] == "error" and table["soft_label"][row] == b""


def test_annotation_set_is_self_describing(annotated):
    cfg, _, _ = annotated
    manifest = ann.read_manifest(cfg.annotations_dir)
    assert [t["name"] for t in manifest["teachers"]] == ["t1", "t2"]
    assert all(len(t["fingerprint"]) == 16 for t in manifest["teachers"])
    assert manifest["label_shape"] == [2, 32, 32] and manifest["fusion"] == {"rule": "mean", "weights": None}
    import pyarrow.parquet as pq

    for f in ann.parquet_files(cfg.annotations_dir):  # every file carries the manifest in its metadata
        meta = json.loads(pq.read_schema(f).metadata[ann.METADATA_KEY])
        assert meta["teachers"] == manifest["teachers"] and meta["schema_version"] == ann.SCHEMA_VERSION
    table = ann.read_table(cfg.annotations_dir).to_pydict()
    ok = [i for i, s in enumerate(table["status"]) if s == "ok"]
    p1 = ann.dequantize(ann.from_bytes([table["prob__t1"][i] for i in ok], (2, 32, 32), "uint8"))
    p2 = ann.dequantize(ann.from_bytes([table["prob__t2"][i] for i in ok], (2, 32, 32), "uint8"))
    soft = ann.dequantize(ann.from_bytes([table["soft_label"][i] for i in ok], (2, 32, 32), "uint8"))
    np.testing.assert_allclose(soft, (p1 + p2) / 2, atol=2 / 255)  # the stored fusion is the mean of stored maps
    image = ann.from_bytes([table["image"][ok[0]]], (1, 32, 32), "float16")
    assert np.isfinite(image).all() and image.std() > 0.1


def test_refused_output_and_mismatched_teachers(annotated, tmp_path):
    cfg, _, _ = annotated
    with pytest.raises(FileExistsError, match="not empty"):
        annotate(cfg)
    raw = cfg.to_dict()
    raw["teachers"][1]["checkpoint"] = str(make_teacher(tmp_path / "t3.pt", "t3", num_classes=3))
    raw["annotate"]["output"] = str(tmp_path / "out")
    # a label the student does not have, named with the teacher, before any actor starts
    with pytest.raises(ConfigError, match=r"match no student label: teacher 't2' labels \['c1', 'c2'\]"):
        annotate(config.from_dict(raw))


def test_student_dataset_re_fuses_from_stored_maps(annotated):
    from nakt_ray.training.student_data import annotation_dataset

    cfg, _, _ = annotated
    only_t2 = annotation_dataset(str(cfg.annotations_dir), rule="weighted_mean", weights=[0.0, 1.0]).take_all()
    assert len(only_t2) == 5  # the error row is filtered out
    assert only_t2[0]["image"].shape == (1, 32, 32) and only_t2[0]["target"].shape == (2, 32, 32)
    table = ann.read_table(cfg.annotations_dir, columns=["case_id", "status", "prob__t2"]).to_pydict()
    t2 = sorted(ann.from_bytes([p], (2, 32, 32), "uint8")[0].sum() for p, s in zip(table["prob__t2"],
                                                                                    table["status"]) if s == "ok")
    assert sorted(r["target"].sum() for r in only_t2) == pytest.approx(t2, rel=0.01)


def test_annotation_batch_called_directly():
    from nakt_ray.training.student_data import annotation_batch

    image = np.random.default_rng(0).normal(size=(2, 1, 4, 4)).astype(np.float16)
    a = ann.quantize(np.stack([np.full((2, 4, 4), 0.9), np.full((2, 4, 4), 0.1)], 1))  # [B, C, H, W]
    b = ann.quantize(np.stack([np.full((2, 4, 4), 0.1), np.full((2, 4, 4), 0.9)], 1))
    batch = {"image": ann.to_bytes(image), "soft_label": ann.to_bytes(a), "prob__a": ann.to_bytes(a),
             "prob__b": ann.to_bytes(b)}
    stored = annotation_batch(batch, image_shape=(1, 4, 4), label_shape=(2, 4, 4))
    np.testing.assert_array_equal(stored["target"], a)
    np.testing.assert_allclose(stored["image"], image.astype(np.float32))
    re_fused = annotation_batch(batch, image_shape=(1, 4, 4), label_shape=(2, 4, 4), teachers=["a", "b"],
                               rule="weighted_mean", weights=[0.0, 1.0])
    assert np.abs(re_fused["target"].astype(int) - b.astype(int)).max() <= 1


def test_re_fuse_changes_fusion_without_any_teacher(annotated, tmp_path):
    from nakt_ray.annotation.re_fuse import re_fuse

    cfg, _, _ = annotated
    hidden = []
    for t in cfg.teachers:  # re-fusion must not need the teachers: hide their model files
        path = cfg.teacher_checkpoint(t)
        hidden.append((path, path.with_suffix(".hidden")))
        path.rename(hidden[-1][1])
    try:
        only_t2 = re_fuse(cfg.annotations_dir, tmp_path / "t2", "weighted_mean", [0.0, 1.0])
    finally:
        for path, moved in hidden:
            moved.rename(path)
    assert only_t2["cases"] == 6 and only_t2["ok"] == 5

    def by_case(folder, column):
        t = ann.read_table(folder, columns=["case_id", column]).to_pydict()
        return dict(zip(t["case_id"], t[column]))

    stored = ann.read_table(cfg.annotations_dir).to_pydict()
    batch = {k: np.array(v, dtype=object) for k, v in stored.items()}
    same = ann.re_fuse_batch(batch, teachers=["t1", "t2"], shapes=[(2, 32, 32)] * 2, rule="mean", weights=None)
    assert list(same["soft_label"]) == stored["soft_label"]  # re-fusing by the same rule reproduces the set
    stored_t2 = by_case(cfg.annotations_dir, "prob__t2")
    for case, soft in by_case(tmp_path / "t2", "soft_label").items():
        if soft:
            a = ann.from_bytes([soft], (2, 32, 32), "uint8").astype(int)
            b = ann.from_bytes([stored_t2[case]], (2, 32, 32), "uint8").astype(int)
            assert np.abs(a - b).max() <= 1
    manifest = ann.read_manifest(tmp_path / "t2")
    assert manifest["fusion"] == {"rule": "weighted_mean", "weights": [0.0, 1.0]}
    assert manifest["fused_from"] == str(cfg.annotations_dir.resolve())
    with pytest.raises(ValueError, match="3 weights given but annotation set .* holds 2 teachers"):
        re_fuse(cfg.annotations_dir, tmp_path / "bad", "weighted_mean", [1.0, 1.0, 1.0])
    # per-class weights: t1 counts where it says background, t2 where it says head. These random teachers disagree,
    # so the set moves away from the mean, to the rule applied to the stored maps.
    rows = [[1.0, 0.0], [0.0, 1.0]]
    assert re_fuse(cfg.annotations_dir, tmp_path / "per_class", "weighted_mean", rows)["ok"] == 5
    stored_t1, moved = by_case(cfg.annotations_dir, "prob__t1"), 0.0
    mean_soft = by_case(cfg.annotations_dir, "soft_label")
    for case, soft in by_case(tmp_path / "per_class", "soft_label").items():
        if soft:
            maps = np.stack([ann.dequantize(ann.from_bytes([s[case]], (2, 32, 32), "uint8")[0])
                             for s in (stored_t1, stored_t2)])
            got = ann.dequantize(ann.from_bytes([soft], (2, 32, 32), "uint8")[0])
            assert np.abs(got - fuse(maps, "weighted_mean", rows)).max() <= 2.5 / 255
            before = ann.dequantize(ann.from_bytes([mean_soft[case]], (2, 32, 32), "uint8")[0])
            moved = max(moved, float(np.abs(got - before).max()))
    assert moved > 0.05
    # specialist weighting: each case by its own weights, written beside the set (images decode row by row)
    from nakt_ray.annotation.re_fuse import SPECIALIST_FILE
    from nakt_ray.fusion.specialist import foreground_confidence

    assert re_fuse(cfg.annotations_dir, tmp_path / "spec", "weighted_mean", specialist=0.5)["ok"] == 5
    cases = json.loads((tmp_path / "spec" / SPECIALIST_FILE).read_text())["cases"]
    assert len(cases) == 5 and len({tuple(np.round(v["weights"], 6)) for v in cases.values()}) > 1
    for case, soft in by_case(tmp_path / "spec", "soft_label").items():
        if soft:
            maps = [ann.dequantize(ann.from_bytes([s[case]], (2, 32, 32), "uint8")[0]) for s in (stored_t1, stored_t2)]
            sums, count = foreground_confidence(maps)
            np.testing.assert_allclose(cases[case]["confidence"], sums / max(count, 1), atol=1e-5)
            w = cases[case]["weights"]
            got = ann.dequantize(ann.from_bytes([soft], (2, 32, 32), "uint8")[0])
            assert np.abs(got - (w[0] * maps[0] + w[1] * maps[1])).max() <= 2.5 / 255


def test_decode_batch_reads_slices_of_a_volume(tmp_path):
    import nibabel as nib

    root = tmp_path / "vol"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    volume = np.random.default_rng(0).uniform(0, 100, (40, 48, 3)).astype(np.float32)
    labels = np.zeros((40, 48, 3), np.uint8)
    labels[10:20, 10:30, 1] = 1  # foreground only in slice 1
    nib.save(nib.Nifti1Image(volume, np.eye(4)), root / "images" / "ct.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), root / "masks" / "ct.nii.gz")
    cases = list_cases(root, require_masks=True)
    assert [c.case_id for c in cases] == ["ct#0000", "ct#0001", "ct#0002"]
    batch = _batch(cases)
    batch["slice_index"] = np.array([c.slice_index for c in cases])
    out = decode_batch(batch, preprocess=config.PreprocessConfig(size=(32, 32)), num_classes=2, with_label=True)
    assert list(out["error"]) == ["", "", ""]
    assert [int(t[1].max()) for t in out["target"]] == [0, 255, 0]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::UserWarning")
def test_annotate_with_teachers_from_all_four_sources(ray_session, tmp_path, synthetic_dirs):
    """The same weights as a nakt file, TorchScript, ONNX and an MLflow model: four teachers, one pipeline run,
    and (up to export precision and uint8 quantisation) four identical probability maps."""
    import mlflow
    import torch
    import yaml
    from mlflow.tracking import MlflowClient

    from nakt_ray.models.model_file import load_model
    from nakt_ray.tracking import TAG_IN_CHANNELS, TAG_INPUT_SIZE, TAG_LABELS, TAG_OUTPUTS

    nakt_file = make_teacher(tmp_path / "nakt.pt", "n", seed=5)
    model, _ = load_model(nakt_file)
    description = {"labels": ["background", "head"], "in_channels": 1, "input_size": [32, 32], "outputs": "logits"}
    example = torch.zeros(1, 1, 32, 32)
    torch.jit.trace(model, example).save(str(tmp_path / "model.ts"))
    (tmp_path / "model.ts.yaml").write_text(yaml.safe_dump(description))
    torch.onnx.export(model, (example,), str(tmp_path / "model.onnx"), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    (tmp_path / "model.onnx.yaml").write_text(yaml.safe_dump(description))
    raw = tiny_raw_config(tmp_path, teachers=[
        {"name": "as_nakt", "checkpoint": str(nakt_file)},
        {"name": "as_torchscript", "checkpoint": str(tmp_path / "model.ts")},
        {"name": "as_onnx", "checkpoint": str(tmp_path / "model.onnx")},
        {"name": "as_mlflow", "checkpoint": "models:/foreign-teacher@prod", "trust_pickle": True}])
    raw["data"]["transferal"] = str(synthetic_dirs["mixed"])
    cfg = config.from_dict(raw)
    from nakt_ray import tracking

    tracking.setup(cfg)
    with mlflow.start_run():
        mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=["torch"],
                                 registered_model_name="foreign-teacher")
    client = MlflowClient()
    client.set_registered_model_alias("foreign-teacher", "prod", "1")
    for tag, value in ((TAG_LABELS, '["background", "head"]'), (TAG_IN_CHANNELS, "1"), (TAG_INPUT_SIZE, "[32, 32]"),
                       (TAG_OUTPUTS, "logits")):
        client.set_model_version_tag("foreign-teacher", "1", tag, value)

    summary = annotate(cfg)
    assert (summary["annotated"], summary["failed"]) == (6, 0)
    manifest = ann.read_manifest(cfg.annotations_dir)
    assert [t["kind"] for t in manifest["teachers"]] == ["nakt", "torchscript", "onnx", "mlflow"]
    table = ann.read_table(cfg.annotations_dir).to_pydict()
    maps = {t: ann.from_bytes(table[ann.prob_column(t)], (2, 32, 32), "uint8").astype(int)
            for t in ("as_nakt", "as_torchscript", "as_onnx", "as_mlflow")}
    for name, probs in maps.items():
        assert np.abs(probs - maps["as_nakt"]).max() <= 1, name
    assert min(table["agreement"]) == pytest.approx(1.0)


# per_teacher in the main tier; the layouts whose actors host every teacher (and, inline, decode and fuse too) in
# the fault tier (~12 s each)
@pytest.mark.parametrize("pools", ["per_teacher", pytest.param("shared", marks=pytest.mark.fault),
                                   pytest.param("inline", marks=pytest.mark.fault)])
def test_a_teacher_actor_that_dies_is_restarted_and_its_batch_retried(annotated, tmp_path, pools):
    import os
    import sys

    import cloudpickle

    cfg, _, _ = annotated
    run_cfg = config.from_dict({**cfg.to_dict(), "annotate": {**cfg.to_dict()["annotate"], "pools": pools}})

    class DiesOnce(TeacherPredictor):
        marker = str(tmp_path / "died")

        def __call__(self, batch):
            if self.name == "t2" and not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)  # the actor process dies mid-run, holding a batch
            return super().__call__(batch)

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get the class by value
    try:
        summary = annotate(run_cfg, output=str(tmp_path / "ann"), predictor_cls=DiesOnce)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert os.path.exists(DiesOnce.marker)  # the actor did die
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (6, 5, 1)

    def rows(folder):
        t = ann.read_table(folder, columns=["case_id", "status", "soft_label"]).to_pydict()
        return sorted(zip(t["case_id"], t["status"], t["soft_label"]))

    assert rows(tmp_path / "ann") == rows(cfg.annotations_dir)  # every case once, same result as without a death


def test_resume_after_an_interruption_gives_the_uninterrupted_result(annotated, tmp_path):
    cfg, _, _ = annotated
    # What a killed run leaves: some complete files, one cut off mid-write, no manifest or summary.
    partial = tmp_path / "partial"
    partial.mkdir()
    import pyarrow.parquet as pq

    table = ann.read_table(cfg.annotations_dir)  # keeps the schema metadata (the manifest)
    pq.write_table(table.slice(0, 2), partial / "complete.parquet")
    pq.write_table(table.slice(2, 2), tmp_path / "cut.parquet")
    data = (tmp_path / "cut.parquet").read_bytes()
    (partial / "cut.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(FileExistsError, match="--resume"):
        annotate(cfg, output=str(partial))
    summary = annotate(cfg, output=str(partial), resume=True)
    assert summary["discarded_files"] == ["cut.parquet"]
    assert summary["resumed_cases"] == 2
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (6, 5, 1)

    def rows(folder):
        t = ann.read_table(folder, columns=["case_id", "status", "soft_label", "prob__t1"]).to_pydict()
        return sorted(zip(t["case_id"], t["status"], t["soft_label"], t["prob__t1"]))

    assert rows(partial) == rows(cfg.annotations_dir)
    # Resuming a finished set does nothing and still accounts for every case.
    again = annotate(cfg, output=str(partial), resume=True)
    assert again["resumed_cases"] == 6 and rows(partial) == rows(cfg.annotations_dir)
    # ... and keeps the figures of the run that did the work (it used to overwrite them with zeros).
    assert again["cases_this_run"] == 0 and again["images_per_s"] is None
    assert [e["cases_this_run"] for e in again["earlier_runs"]] == [4]
    assert again["earlier_runs"][0]["images_per_s"] == summary["images_per_s"] > 0


def test_float16_storage_option(annotated, tmp_path):
    cfg, _, _ = annotated
    raw = cfg.to_dict()
    raw["annotate"].update(prob_dtype="float16", output=str(tmp_path / "f16"))
    f16 = config.from_dict(raw)
    annotate(f16)
    manifest = ann.read_manifest(f16.annotations_dir)
    assert (manifest["prob_dtype"], manifest["prob_scale"]) == ("float16", 1)

    def maps(folder, dtype):
        t = ann.read_table(folder, columns=["case_id", "status", "prob__t1", "soft_label"]).to_pydict()
        ok = sorted(i for i, s in enumerate(t["status"]) if s == "ok")
        order = sorted(ok, key=lambda i: t["case_id"][i])
        return {c: ann.dequantize(ann.from_bytes([t[c][i] for i in order], (2, 32, 32), dtype))
                for c in ("prob__t1", "soft_label")}

    half, byte = maps(f16.annotations_dir, "float16"), maps(cfg.annotations_dir, "uint8")
    for column in half:
        assert np.abs(half[column] - byte[column]).max() <= 1.5 / 255
    from nakt_ray.training.student_data import annotation_batch

    t = ann.read_table(f16.annotations_dir).to_pydict()
    ok = [i for i, s in enumerate(t["status"]) if s == "ok"]
    batch = {k: np.array([t[k][i] for i in ok], dtype=object) for k in ("image", "soft_label", "prob__t1", "prob__t2")}
    rows = annotation_batch(batch, image_shape=(1, 32, 32), label_shape=(2, 32, 32), teachers=["t1", "t2"],
                            rule="majority_vote", prob_dtype="float16")
    assert rows["target"].dtype == np.float16 and rows["target"].shape == (5, 2, 32, 32)


class _NanAbove(torch.nn.Module):
    """A teacher that returns NaN for every image whose mean intensity is above ``threshold`` (per image)."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=1, keepdim=True)
        logits = torch.cat([-m, m], dim=1)
        bad = x.mean(dim=(1, 2, 3)) > self.threshold
        return torch.where(bad[:, None, None, None], torch.full_like(logits, float("nan")), logits)


def _nan_teacher(path, threshold: float):
    """As TorchScript with its description; the load-time probe (zeros, randn) passes for a threshold > 0.1."""
    import yaml

    torch.jit.script(_NanAbove(threshold)).save(str(path))
    path.with_name(path.name + ".yaml").write_text(yaml.safe_dump(
        {"labels": ["background", "head"], "in_channels": 1, "input_size": [32, 32], "outputs": "logits"}))
    return path


def _nan_run(tmp_path, synthetic_dirs, threshold: float, pools: str, batch_size: int):
    """A config with the NaN teacher first and a normal one, un-normalised inputs (intensities 0..255), and a
    transferal set of the six synthetic cases plus one white image (mean 255)."""
    from conftest import make_scripted_teacher
    from PIL import Image

    src = corrupt_copy(synthetic_dirs["mixed"], tmp_path / "transferal", [])
    Image.fromarray(np.full((40, 56), 255, np.uint8)).save(src / "images" / "white.png")
    raw = tiny_raw_config(tmp_path, teachers=[
        {"name": "nan", "checkpoint": str(_nan_teacher(tmp_path / "nan.ts", threshold)), "batch_size": batch_size},
        {"name": "ok", "checkpoint": str(make_scripted_teacher(tmp_path / "ok.ts", "ok")), "batch_size": batch_size}])
    raw["data"]["transferal"] = str(src)
    raw["preprocess"] = {"size": [32, 32], "normalize": "none"}
    raw["annotate"] = {"decode_batch_size": 4, "pools": pools, "output": str(tmp_path / "ann")}
    return config.from_dict(raw)


def test_a_teacher_nan_for_one_case_makes_an_error_row_and_the_run_goes_on(ray_session, tmp_path, synthetic_dirs):
    cfg = _nan_run(tmp_path, synthetic_dirs, threshold=200.0, pools="per_teacher", batch_size=4)
    summary = annotate(cfg)
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (7, 6, 1)
    table = ann.read_table(cfg.annotations_dir, columns=["case_id", "status", "error", "prob__ok"]).to_pydict()
    assert sorted(table["case_id"]) == sorted(c.case_id for c in list_cases(cfg.data.transferal))  # each once
    rows = {c: (s, e, p) for c, s, e, p in zip(table["case_id"], table["status"], table["error"], table["prob__ok"])}
    status, reason, probs = rows.pop("white")
    assert status == "error" and probs == b""
    assert reason.startswith("predict: teacher 'nan' (") and "NaN" in reason
    assert {s for s, _, _ in rows.values()} == {"ok"}  # the cases batched with it keep their predictions
    errors = json.loads((cfg.annotations_dir / "errors.json").read_text())
    assert [(e["case_id"], e["stage"]) for e in errors] == [("white", "predict")]


def test_a_teacher_nan_for_some_cases_called_directly_in_the_shared_layout(tmp_path, synthetic_dirs):
    cfg = _nan_run(tmp_path, synthetic_dirs, threshold=200.0, pools="shared", batch_size=3)
    kwargs = [dict(checkpoint=str(cfg.teacher_checkpoint(t)), name=t.name, in_channels=1)
              for t in cfg.teachers]
    batch = decode_batch(_batch(list_cases(cfg.data.transferal)), preprocess=cfg.preprocess, num_classes=2)
    white = list(batch["case_id"]).index("white")
    out = EnsemblePredictor(kwargs, batch_sizes=[3, 3])(dict(batch))
    assert out["error"][white].startswith("predict: teacher 'nan'")
    assert all(e == "" for i, e in enumerate(out["error"]) if i != white)
    assert out["prob__nan"][white].max() == 0 and out["prob__ok"][white].max() == 0  # no arrays for the error row
    assert all(out["prob__ok"][i].max() > 0 for i in range(len(out["error"])) if i != white)
    broken = TeacherPredictor(**{**kwargs[0], "checkpoint": str(_nan_teacher(tmp_path / "all.ts", 0.5))})
    one = {"image": batch["image"][:2], "error": np.array(["", ""], dtype=object)}
    for _ in range(2):  # two batches in which every case failed: error rows, the run goes on
        assert all(e.startswith("predict: teacher 'nan'") for e in broken(dict(one))["error"])
    with pytest.raises(TeacherOutputError, match=r"teacher 'nan' .*every case of 3 batches in a row \(6 cases\)"):
        broken(dict(one))


def test_a_teacher_nan_for_every_case_stops_the_run(ray_session, tmp_path, synthetic_dirs):
    few = _nan_run(tmp_path / "few", synthetic_dirs, threshold=0.5, pools="shared", batch_size=4)
    for image in sorted(Path(few.data.transferal, "images").iterdir())[2:]:
        image.unlink()  # two cases, so at most two batches: too few for the actor's rule
    with pytest.raises(TeacherOutputError, match=r"no case could be annotated; cases failed at prediction: teacher "
                                                 r"'nan': 2 \(of 2\); reasons in .*errors.json"):
        annotate(few)  # the run ends, then refuses the set
    assert len(json.loads((tmp_path / "few" / "ann" / "errors.json").read_text())) == 2


@pytest.mark.fault  # a `nakt annotate` process of 28 batches (~20 s): the second tier, to keep `make test` in 10 min
def test_a_teacher_nan_for_every_case_stops_the_run_early_from_its_actor(tmp_path, synthetic_dirs):
    import subprocess
    import sys

    from nakt_ray.annotation.pipeline import LOCK

    # Stopped early by the actor, seen as a user sees it. In a process of its own: Ray Data keeps a failed
    # dataset's actors (and their CPUs) while its exception is referenced, which pytest's log capture does.
    cfg = _nan_run(tmp_path, synthetic_dirs, threshold=0.5, pools="shared", batch_size=1)
    for image in sorted(Path(cfg.data.transferal, "images").iterdir()):
        for k in range(3):
            (image.parent / f"{image.stem}_{k}.png").write_bytes(image.read_bytes())  # 28 cases, one a batch
    proc = subprocess.run([sys.executable, "-m", "nakt_ray.cli", "annotate", "--config",
                           str(config.dump(cfg, tmp_path / "run.yaml")), "--set", "ray.num_cpus=2"],
                          capture_output=True, text=True, timeout=400,
                          env={**os.environ, "RAY_AUTH_MODE": "disabled", "NAKT_PROGRESS": "0"})
    found = re.search(r"nakt annotate: error: teacher 'nan' \(.*nan.ts\): unusable output for every case of (\d+) "
                      r"batches in a row \(\d+ cases\), so the run stops.*NaN", proc.stderr)
    assert proc.returncode == 2 and found, proc.stderr[-3000:]
    assert 3 <= int(found.group(1)) < 28  # early (batches already queued to the actor may fail too)
    assert not (tmp_path / "ann" / "summary.json").exists() and not (tmp_path / "ann" / LOCK).exists()


def test_a_second_run_into_a_locked_output_fails_at_once_and_a_stale_lock_is_taken_over(annotated, tmp_path):
    import shutil
    import socket
    import subprocess
    import time

    import pyarrow.parquet as pq

    from nakt_ray.annotation.pipeline import LOCK, release_output_lock, take_output_lock

    cfg, _, _ = annotated
    out = tmp_path / "out"
    shutil.copytree(cfg.annotations_dir, out)  # a finished set ...
    pq.write_table(ann.read_table(cfg.annotations_dir).slice(0, 2), tmp_path / "cut.parquet")
    (out / "cut.parquet").write_bytes((tmp_path / "cut.parquet").read_bytes()[:100])  # ... plus a file a resume deletes
    holder = subprocess.Popen(["sleep", "300"])  # a live process on this host holds the lock
    try:
        (out / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "12:00"}))
        t0 = time.perf_counter()
        with pytest.raises(FileExistsError, match=rf"'{out}' is in use by another run: pid {holder.pid} on host "
                                                  rf"'{socket.gethostname()}' since 12:00 \(lock file"):
            annotate(cfg, output=str(out), resume=True)
        assert time.perf_counter() - t0 < 2  # at once: before any teacher is loaded
        assert (out / "cut.parquet").exists()  # the other run's files are untouched
    finally:
        holder.kill()
        holder.wait()  # reaped: its pid no longer exists
    with pytest.warns(UserWarning, match=rf"taking over the lock of pid {holder.pid} on this host"):
        summary = annotate(cfg, output=str(out), resume=True)
    assert summary["discarded_files"] == ["cut.parquet"] and summary["resumed_cases"] == 6
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(LOCK)) == []  # released at the end
    lock = take_output_lock(str(out))  # the lock itself: one holder at a time, released by its holder only
    with pytest.raises(FileExistsError, match=f"pid {os.getpid()}"):
        take_output_lock(str(out))
    release_output_lock(lock)
    release_output_lock(take_output_lock(str(out)))
