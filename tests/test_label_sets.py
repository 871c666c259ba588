"""Teachers with different label sets, end to end (issue 17): three teachers that each predict some of the run's
three classes, under other names, annotate a 3-class transferal set; the fused label, re-fusion, a 3-class student,
its evaluation (a row per class, each teacher scored only on its classes) and its prediction (masks and an overlay
with a legend) are checked against what the teachers' known behaviour implies.

The teachers are threshold rules on the preprocessed image, as TorchScript with description YAMLs: "bright" says
``Head`` where the image is above ``HI``, "dark" says ``fluid`` (an alias of ``ventricle``) below ``LO``, and
"both" says both and also ``tumour`` (folded into its background by an alias) where neither holds. So the fused
hard label of every pixel is known from the image alone.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_UNET, tiny_raw_config

from nakt_ray import config
from nakt_ray.annotation import parquet as ann
from nakt_ray.errors import ConfigError

HI, LO, SHARP = 0.5, -0.5, 40.0
LABELS = ["background", "head", "ventricle"]


class Threshold(torch.nn.Module):
    """Logits of [background, above HI?, below LO?, in between?] with the channels kept by ``keep``."""

    def __init__(self, keep: list[int]):
        super().__init__()
        self.keep = keep
        self.hi, self.lo, self.sharp = HI, LO, SHARP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = torch.zeros_like(x)
        above, below = self.sharp * (x - self.hi), self.sharp * (self.lo - x)
        middle = self.sharp * torch.minimum(x - self.lo, self.hi - x) - 10.0  # below 0 where a class is sure
        channels = [zero, above, below, middle]
        return torch.cat([channels[k] for k in self.keep], dim=1)


def threshold_teacher(path: Path, labels: list[str], keep: list[int]) -> str:
    torch.jit.script(Threshold(keep)).save(str(path))
    Path(f"{path}.yaml").write_text(yaml.safe_dump({"labels": labels, "in_channels": 1, "input_size": [32, 32],
                                                    "outputs": "logits"}))
    return str(path)


def expected_label(image: np.ndarray) -> np.ndarray:
    """The union label the three teachers imply: head above HI, ventricle below LO, background between."""
    return np.where(image > HI, 1, np.where(image < LO, 2, 0)).astype(np.uint8)


@pytest.fixture(scope="module")
def label_set_run(ray_session, tmp_path_factory):
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.demo import synthetic

    tmp = tmp_path_factory.mktemp("label_sets")
    data = synthetic.write_folder(tmp / "data", 6, "mixed", seed=3, num_classes=3, size=(40, 48))
    teachers = [
        {"name": "bright", "checkpoint": threshold_teacher(tmp / "bright.ts", ["none", "Head"], [0, 1])},
        {"name": "dark", "checkpoint": threshold_teacher(tmp / "dark.ts", ["background", "fluid"], [0, 2])},
        {"name": "both", "checkpoint": threshold_teacher(tmp / "both.ts", ["background", "head", "ventricle",
                                                                           "tumour"], [0, 1, 2, 3])},
    ]
    raw = tiny_raw_config(tmp, teachers=teachers)
    raw["data"] = {"labels": LABELS, "transferal": str(data), "val": str(data),
                   "label_aliases": {"fluid": "ventricle", "tumour": "background"}}
    raw["annotate"] = {"pools": "shared"}
    raw["student"] = {"name": "s", "arch": "unet", "arch_args": TINY_UNET}
    cfg = config.from_dict(raw)
    return cfg, annotate(cfg), data


def test_each_teacher_stores_only_its_classes_and_the_manifest_says_how(label_set_run):
    cfg, summary, _ = label_set_run
    assert summary["annotated"] == 6 and summary["failed"] == 0
    manifest = ann.read_manifest(cfg.annotations_dir)
    records = {t["name"]: t for t in manifest["teachers"]}
    assert manifest["labels"] == LABELS
    assert records["bright"]["classes"] == [0, 1] and records["bright"]["label_map"] == {"Head": "head"}
    assert records["dark"]["classes"] == [0, 2] and records["dark"]["label_map"] == {"fluid": "ventricle"}
    assert records["both"]["classes"] == [0, 1, 2] and records["both"]["cells"] == [0, 1, 2, 0]
    assert records["both"]["label_map"]["tumour"] == "background"
    table = ann.read_table(cfg.annotations_dir).to_pylist()
    for row in table:
        for name, n in (("bright", 2), ("dark", 2), ("both", 3)):
            maps = ann.from_bytes([row[ann.prob_column(name)]], (n, 32, 32), "uint8")[0]
            assert np.abs(maps.astype(int).sum(0) - 255).max() <= n  # probabilities over its own classes
        # "both" folds tumour into its background: where only tumour holds, its background carries the mass
        image = ann.from_bytes([row["image"]], (1, 32, 32), "float16")[0, 0].astype(np.float32)
        both = ann.from_bytes([row[ann.prob_column("both")]], (3, 32, 32), "uint8")[0]
        between = (image > LO + 0.1) & (image < HI - 0.1)
        if between.any():
            assert both[0][between].min() >= 250


def test_the_fused_label_is_the_union_the_teachers_imply(label_set_run):
    cfg, _, _ = label_set_run
    rows = ann.read_table(cfg.annotations_dir).to_pylist()
    seen = np.zeros(3, int)
    for row in rows:
        image = ann.from_bytes([row["image"]], (1, 32, 32), "float16")[0, 0].astype(np.float32)
        hard = ann.from_bytes([row["hard_label"]], (32, 32), "uint8")[0]
        sure = np.abs(image - HI) > 0.05
        sure &= np.abs(image - LO) > 0.05  # away from the thresholds, where the sigmoids are not yet sure
        assert (hard[sure] == expected_label(image)[sure]).all()
        seen += np.bincount(hard.ravel(), minlength=3)
        soft = ann.from_bytes([row["soft_label"]], (3, 32, 32), "uint8")[0]
        assert np.abs(soft.astype(int).sum(0) - 255).max() <= 3
        assert 0.9 <= row["agreement"] <= 1.0  # the teachers agree on every class they share
    assert (seen > 50).all()  # every class is a real part of the fused labels


def test_re_fusion_works_unchanged_with_label_sets(label_set_run, tmp_path):
    from nakt_ray.annotation.re_fuse import re_fuse

    cfg, _, _ = label_set_run
    out = tmp_path / "vote"
    summary = re_fuse(cfg.annotations_dir, out, "majority_vote")
    assert summary["ok"] == 6
    assert ann.read_manifest(out)["teachers"] == ann.read_manifest(cfg.annotations_dir)["teachers"]
    for row in ann.read_table(out).to_pylist():
        image = ann.from_bytes([row["image"]], (1, 32, 32), "float16")[0, 0].astype(np.float32)
        hard = ann.from_bytes([row["hard_label"]], (32, 32), "uint8")[0]
        sure = (np.abs(image - HI) > 0.05) & (np.abs(image - LO) > 0.05)
        assert (hard[sure] == expected_label(image)[sure]).all()
    weighted = re_fuse(cfg.annotations_dir, tmp_path / "weighted", "weighted_mean", [1.0, 1.0, 0.0])
    assert weighted["ok"] == 6
    # per-class weights (one row per teacher, one weight per union label): "both" counts for little where it says
    # ventricle. The stored fused label is the rule applied to the stored maps (these teachers agree, so it is close
    # to the mean too; tests/test_annotate.py has teachers that disagree).
    from nakt_ray.fusion.partial import fuse_teachers

    rows = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.05]]
    per_class = re_fuse(cfg.annotations_dir, tmp_path / "per_class", "weighted_mean", rows)
    assert per_class["ok"] == 6 and ann.read_manifest(tmp_path / "per_class")["fusion"]["weights"] == rows
    shapes = {"bright": 2, "dark": 2, "both": 3}
    cov = ann.coverage(ann.read_manifest(cfg.annotations_dir))
    for row in ann.read_table(tmp_path / "per_class").to_pylist():
        maps = [ann.dequantize(ann.from_bytes([row[ann.prob_column(n)]], (c, 32, 32), "uint8")[0])
                for n, c in shapes.items()]
        soft = ann.dequantize(ann.from_bytes([row["soft_label"]], (3, 32, 32), "uint8")[0])
        assert np.abs(soft - fuse_teachers(maps, cov, "weighted_mean", rows)).max() <= 2.5 / 255
    with pytest.raises(ConfigError, match="staple.*per-teacher weights only"):
        re_fuse(cfg.annotations_dir, tmp_path / "staple_rows", "staple", rows)
    with pytest.raises(ConfigError, match="3 rows of 3 weights, one per label"):
        re_fuse(cfg.annotations_dir, tmp_path / "short_rows", "weighted_mean", [[1.0, 1.0]] * 3)


def test_a_three_class_student_evaluated_per_class_and_predicting_with_a_legend(label_set_run, tmp_path):
    from mlflow.tracking import MlflowClient

    from nakt_ray.evaluation.evaluate import ENSEMBLE, evaluate
    from nakt_ray.inference.predict import predict_folder
    from nakt_ray.tracking import tracking_uri
    from nakt_ray.training.student import resolved_target, train_student

    cfg, _, data = label_set_run
    assert cfg.fusion.target == "auto"
    result = train_student(cfg)
    student = result["model_path"]
    assert result["metrics"]["epoch"] == 0 and "val_dice" in result["metrics"]
    # the default target: teachers with different label sets learn through the partial-label loss (decision 69)
    params = MlflowClient(tracking_uri(cfg)).get_run(result["run_id"]).data.params
    assert params["student.target"] == "teachers" and params["fusion.target"] == "auto"
    manifest = ann.read_manifest(cfg.annotations_dir)
    assert resolved_target("auto", manifest) == "teachers" and resolved_target("fused", manifest) == "fused"
    full = {**manifest, "teachers": [{**t, "classes": [0, 1, 2]} for t in manifest["teachers"]]}
    assert resolved_target("auto", full) == "fused"
    teachers = {t.name: str(t.checkpoint) for t in cfg.teachers}
    report = evaluate(cfg, {**teachers, "s": str(student)}, str(data), tmp_path / "eval", ensemble=list(teachers),
                      n_boot=50)
    models = report["models"]
    # a teacher is scored only on the classes it covers; the student and the ensemble on all
    assert np.isnan(models["bright"]["classes"]["ventricle"]["dice"])
    assert np.isfinite(models["bright"]["classes"]["head"]["dice"])
    assert np.isnan(models["dark"]["classes"]["head"]["dice"])
    for name in ("both", "s", ENSEMBLE):
        assert all(np.isfinite(models[name]["classes"][c]["dice"]) for c in ("head", "ventricle"))
    # the ensemble is the union of the thresholds, as "both" is alone
    assert models[ENSEMBLE]["dice"] == pytest.approx(models["both"]["dice"], abs=0.02)
    table = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| s | ventricle |" in table and "| bright | head |" in table
    predicted = predict_folder(student, data / "images", tmp_path / "pred", overlays=True)
    masks = sorted((tmp_path / "pred").rglob("*mask*.png")) or sorted((tmp_path / "pred").rglob("*.png"))
    assert predicted and masks


def test_a_student_learns_from_each_teachers_map_through_the_partial_label_loss(label_set_run, tmp_path):
    from nakt_ray.losses import partial_label_loss
    from nakt_ray.training.loop import _targets, train_step
    from nakt_ray.training.student import train_student
    from nakt_ray.training.student_data import annotation_dataset

    cfg, _, _ = label_set_run
    rows = annotation_dataset(str(cfg.annotations_dir), teachers=True).take_all()
    teachers = np.stack([r["teachers"] for r in rows])  # [N, T, K+1, H, W], the union layout
    assert teachers.shape == (6, 3, 3, 32, 32)
    assert teachers[:, 0, 2].max() == 0 and teachers[:, 1, 1].max() == 0  # bright: no ventricle; dark: no head
    assert teachers[:, 0, 1].max() > 200 and teachers[:, 1, 2].max() > 200
    # one step with the per-teacher loss is the partial-label loss of the model's output against the maps
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 3, 3, padding=1)
    batch = {"image": torch.from_numpy(np.stack([r["image"] for r in rows[:2]])),
             "target": torch.from_numpy(np.stack([r["target"] for r in rows[:2]])),
             "teachers": torch.from_numpy(teachers[:2])}
    coverage = [[True, True, False], [True, False, True], [True, True, True]]
    with torch.no_grad():
        maps = batch["teachers"].float() / batch["teachers"].float().sum(2, keepdim=True)
        expected = partial_label_loss(model(batch["image"]), [maps[:, t][:, torch.tensor(c)] for t, c in
                                                              enumerate(coverage)], coverage)["loss"].item()
        fused = _targets(batch["target"])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    parts = train_step(model, opt, batch, config.TrainingConfig(), per_teacher={"coverage": coverage,
                                                                                  "weights": None})
    assert parts["loss"] == pytest.approx(expected, rel=1e-5)
    assert fused.shape == (2, 3, 32, 32)
    raw = cfg.to_dict()
    raw["run_dir"] = str(tmp_path / "run")
    raw["student"]["annotations"] = str(cfg.annotations_dir)
    raw["fusion"]["target"] = "teachers"
    result = train_student(config.from_dict(raw))
    assert np.isfinite(result["metrics"]["train_loss"]) and "val_dice" in result["metrics"]


@pytest.mark.fault  # a Ray Tune run (trials in their own processes): the system tier, to keep make test short
def test_the_fusion_search_works_unchanged_with_label_sets(label_set_run, tmp_path):
    """Ray Tune over the fusion rule and the teachers' weights: every trial re-fuses the stored maps of teachers
    with different label sets (no teacher runs: their files are gone)."""
    from nakt_ray.search.tune import tune_student

    cfg, summary, _ = label_set_run
    raw = cfg.to_dict()
    raw["run_dir"] = str(tmp_path / "run")
    for i, t in enumerate(raw["teachers"]):
        t["checkpoint"] = str(tmp_path / "gone" / f"teacher{i}.ts")
    raw["student"]["annotations"] = summary["output"]
    raw["training"] = {"epochs": 1, "batch_size": 4, "num_workers": 0, "torch_threads": 1, "min_steps": 0}
    raw["tune"] = {"num_samples": 2, "max_concurrent_trials": 1, "seed": 1,
                   "space": {"fusion.rule": {"choice": ["weighted_mean", "majority_vote"]},
                             "fusion.weights": {"simplex": 3}}}
    result = tune_student(config.from_dict(raw))
    rows = result["rows"]
    assert len(rows) == 2 and all(r["status"] != "error" and 0 <= r["best"] <= 1 for r in rows)
    assert all(len(r["values"]["fusion.weights"]) == 3 for r in rows)


def test_label_set_errors_name_teachers_and_labels_before_anything_runs(label_set_run, tmp_path):
    from nakt_ray.annotation.pipeline import annotate

    cfg, _, _ = label_set_run
    raw = cfg.to_dict()
    raw["annotate"]["output"] = str(tmp_path / "out")
    raw["data"]["label_aliases"] = {"tumour": "background"}  # fluid no longer maps
    with pytest.raises(ConfigError, match=r"teacher 'dark' labels \['fluid'\].*data.label_aliases"):
        annotate(config.from_dict(raw))
    raw["data"]["label_aliases"] = {"fluid": "ventricle", "tumour": "background"}
    raw["data"]["labels"] = [*LABELS, "spleen"]
    with pytest.raises(ConfigError, match=r"student labels \['spleen'\] are predicted by no teacher"):
        annotate(config.from_dict(raw))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    raw["data"]["labels"] = LABELS
    raw["data"]["label_aliases"] = {"fluid": "liver"}
    with pytest.raises(ConfigError, match="label_aliases.fluid"):
        config.from_dict(raw)
    json.dumps(raw)  # the config stays plain data


# ------------------------------------------------------------------------------------------------------------------
# volumes: the same in 3D (zarr stores, sliding-window teachers, patches, evaluation on the original grid)
# ------------------------------------------------------------------------------------------------------------------
VOLUME = {"patch_size": [16, 16, 16], "modality": "mri", "crop_nonzero": False}
UNET3D = {"spatial_dims": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}


def _two_cubes(root: Path, n: int, seed: int) -> Path:
    """Volumes with a bright cube (class 1) and a dark one (class 2) in a mid-grey background."""
    from nakt_ray.data.volumes import VolumeGeometry, write_volume

    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (20 + 2 * i, 22, 20)
        mask = np.zeros(shape, np.uint8)
        mask[2:9, 3:10, 3:10] = 1
        mask[11:18, 12:19, 10:17] = 2
        image = np.choose(mask, [100.0, 250.0, 10.0]) + rng.normal(0, 3, shape)
        geometry = VolumeGeometry.create(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
        write_volume(root / "images" / f"case{i}.nii.gz", image.astype(np.float32), geometry)
        write_volume(root / "masks" / f"case{i}.nii.gz", mask, geometry)
    return root


def threshold_teacher_3d(path: Path, labels: list[str], keep: list[int]) -> str:
    torch.jit.script(Threshold(keep)).save(str(path))
    Path(f"{path}.yaml").write_text(yaml.safe_dump({"labels": labels, "in_channels": 1,
                                                    "input_size": [16, 16, 16], "outputs": "logits"}))
    return str(path)


def test_teachers_with_label_sets_annotate_volumes_and_a_3d_student_learns_the_union(ray_session, tmp_path):
    from nakt_ray.annotation import volume_store as vs
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import ENSEMBLE, evaluate
    from nakt_ray.training.student import train_student

    data = _two_cubes(tmp_path / "data", 3, seed=0)
    teachers = [
        {"name": "bright", "checkpoint": threshold_teacher_3d(tmp_path / "b.ts", ["bg", "Bright cube"], [0, 1]),
         "sliding_window": True},
        {"name": "dark", "checkpoint": threshold_teacher_3d(tmp_path / "d.ts", ["bg", "hole"], [0, 2]),
         "sliding_window": True},
    ]
    raw = tiny_raw_config(tmp_path, teachers=teachers, volume=dict(VOLUME))
    raw["data"] = {"labels": ["background", "bright_cube", "dark cube"], "transferal": str(data), "val": str(data),
                   "label_aliases": {"hole": "dark cube"}}
    raw["student"] = {"name": "s3", "arch": "unet", "arch_args": UNET3D}
    raw["training"] = {"epochs": 2, "batch_size": 2, "num_workers": 0, "patches_per_case": 2, "min_steps": 0}
    cfg = config.from_dict(raw)
    summary = annotate(cfg)
    assert summary["annotated"] == 3
    manifest = ann.read_manifest(cfg.annotations_dir)
    assert [t["classes"] for t in manifest["teachers"]] == [[0, 1], [0, 2]]
    for row in ann.read_table(cfg.annotations_dir).to_pylist():
        group = vs.open_case(cfg.annotations_dir, row["store"])
        assert group[vs.teacher_key("bright")].shape[0] == 2 and group["soft_label"].shape[0] == 3
        image = np.asarray(group["image"][0], dtype=np.float32)
        hard = np.asarray(group["hard_label"][...])
        sure = (np.abs(image - HI) > 0.05) & (np.abs(image - LO) > 0.05)
        assert (hard[sure] == expected_label(image)[sure]).all()
        assert {1, 2} <= set(np.unique(hard).tolist())
    from nakt_ray.training.volume_data import annotation_patch_dataset

    patches = annotation_patch_dataset(str(cfg.annotations_dir), patch_size=(16, 16, 16), patches_per_case=1,
                                       teachers=True).take_all()
    union = np.stack([p["teachers"] for p in patches])  # [N, T, K+1, 16, 16, 16]
    assert union.shape[1:3] == (2, 3) and union[:, 0, 2].max() == 0 and union[:, 1, 1].max() == 0
    raw["fusion"] = {"target": "teachers"}  # the 3D student learns from each teacher's map
    cfg = config.from_dict(raw)
    result = train_student(cfg)
    assert result["metrics"]["epoch"] == 1 and "val_dice_dark cube" in result["metrics"]
    teacher_files = {t.name: str(t.checkpoint) for t in cfg.teachers}
    report = evaluate(cfg, {**teacher_files, "s3": result["model_path"]}, str(data), tmp_path / "eval",
                      ensemble=list(teacher_files), n_boot=20)
    models = report["models"]
    assert report["cases"] == 3, report["failed"]
    assert np.isnan(models["bright"]["classes"]["dark cube"]["dice"])
    assert models["bright"]["classes"]["bright_cube"]["dice"] > 0.9  # the threshold finds its cube
    assert models["dark"]["classes"]["dark cube"]["dice"] > 0.9
    assert models[ENSEMBLE]["dice"] > 0.9  # the union of the two, each class from its own teacher
    assert all(np.isfinite(models["s3"]["classes"][c]["dice"]) for c in ("bright_cube", "dark cube"))
