"""Student training on a real annotation set: losses and agreement weights, validation metrics, early stopping,
fine-tuning variants, a worker killed mid-run, and an interrupted run resumed into the same MLflow run."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    TINY_UNET,
    assert_resumed_from_a_checkpoint,
    committed_checkpoint,
    corrupt_copy,
    kill_a_train_worker,
    kill_when,
)

from nakt_ray import config


def _student_cfg(annotated, tmp_path: Path, synthetic_dirs, training: dict | None = None, **extra):
    cfg, summary, _ = annotated
    raw = cfg.to_dict()
    raw["run_dir"] = str(tmp_path / "run")
    raw["student"] = {"name": "s", "arch": "unet", "arch_args": TINY_UNET, "annotations": summary["output"]}
    raw["data"]["val"] = str(synthetic_dirs["mixed"])
    raw["training"] = {"epochs": 2, "batch_size": 4, "num_workers": 0, "min_steps": 0, **(training or {})}
    raw.update(extra)
    return config.from_dict(raw)


def _mlflow_client(cfg):
    from mlflow.tracking import MlflowClient

    from nakt_ray.tracking import tracking_uri

    return MlflowClient(tracking_uri(cfg))


def test_agreement_weights_from_the_stored_maps(annotated):
    from nakt_ray.training.student_data import annotation_dataset

    cfg, _, _ = annotated
    rows = annotation_dataset(str(cfg.annotations_dir), agreement="pixel").take_all()
    assert len(rows) == 5 and rows[0]["weight"].shape == (32, 32)
    # two teachers: at each pixel one or both agree with the fused label -> weights 1/2 or 1 (x 255)
    values = set(np.unique(np.stack([r["weight"] for r in rows])).tolist())
    assert values <= {128, 255} and 255 in values
    case = annotation_dataset(str(cfg.annotations_dir), agreement="case").take_all()
    table = {r["case_id"]: r["agreement"] for r in _ok_rows(cfg)}
    assert sorted(r["weight"][0, 0] for r in case) == sorted(round(255 * a) for a in table.values())


def _ok_rows(cfg):
    from nakt_ray.annotation import parquet as ann

    t = ann.read_table(cfg.annotations_dir, columns=["case_id", "status", "agreement"]).to_pylist()
    return [r for r in t if r["status"] == "ok"]


def test_student_with_every_loss_part_validation_metrics_and_early_stopping(annotated, tmp_path, synthetic_dirs):
    from nakt_ray.training.student import train_student

    # lr so small that validation cannot improve after epoch 0: patience 1 stops after epoch 1 of 5
    cfg = _student_cfg(annotated, tmp_path, synthetic_dirs, training=dict(
        epochs=5, lr=1e-9, hard_weight=0.5, kl_weight=0.5, agreement_weighting="pixel", val_metrics=["hd95", "nsd"],
        patience=1))
    from nakt_ray.training.small_data import SMALLEST_TRANSFERAL_CASES, SmallDataWarning

    with pytest.warns(SmallDataWarning, match=rf"holds 5 cases, fewer than {SMALLEST_TRANSFERAL_CASES}.*E7"):
        result = train_student(cfg)  # a 5-case transferal set: the small-data warning, and the run goes on
    m = result["metrics"]
    assert m["epoch"] == 1 and m["stopped_early"] == 1.0 and m["best_epoch"] == 0
    assert {"val_dice", "val_iou", "val_hd95", "val_nsd", "train_hard_loss", "train_kl_loss"} <= set(m)
    assert 0 <= m["val_nsd"] <= 1 and m["val_hd95"] >= 0
    client = _mlflow_client(cfg)
    history = client.get_metric_history(result["run_id"], "val_hd95")
    assert [h.step for h in history] == [0, 1]
    version = client.get_model_version_by_alias(cfg.tracking.registered_model, cfg.tracking.alias)
    assert version.tags["nakt.fusion_rule"] == "mean" and version.tags["nakt.teachers"] == "t1,t2"


def test_the_same_seed_trains_the_same_student_and_another_seed_does_not(annotated, tmp_path, synthetic_dirs):
    """File shuffle, shuffle buffer, augmentation and initialisation all follow ``training.seed`` (decision 34)."""
    from nakt_ray.models.model_file import load_model
    from nakt_ray.training.student import train_student

    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        cfg = _student_cfg(annotated, tmp_path / name, synthetic_dirs, training=dict(epochs=2, seed=seed))
        return load_model(train_student(cfg)["model_path"])[0].state_dict()

    first, again, other = weights(3, "a"), weights(3, "b"), weights(4, "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_finetuning_starts_from_the_distilled_student_and_scratch_does_not(annotated, tmp_path, synthetic_dirs):
    from nakt_ray.models.model_file import load_model
    from nakt_ray.training.student import finetune_student, train_student

    labeled = corrupt_copy(synthetic_dirs["site_a"], tmp_path / "few", ["site_a_0002.png"])
    cfg = _student_cfg(annotated, tmp_path, synthetic_dirs, training=dict(epochs=1),
                       finetune={"epochs": 1, "batch_size": 4, "num_workers": 0, "lr": 1e-9, "augment": False})
    cfg = config.from_dict(config.apply_overrides(cfg.to_dict(), [f"data.finetune={labeled}"]))
    distilled = train_student(cfg)
    tuned = finetune_student(cfg, "distilled")
    scratch = finetune_student(cfg, "scratch")
    w = {k: load_model(r["model_path"])[0].state_dict() for k, r in
         (("distilled", distilled), ("tuned", tuned), ("scratch", scratch))}
    key = next(k for k in w["distilled"] if k.endswith("weight"))
    assert torch.allclose(w["tuned"][key], w["distilled"][key], atol=1e-6)  # lr ~0: still the distilled weights
    assert not torch.allclose(w["scratch"][key], w["distilled"][key], atol=1e-3)
    assert Path(tuned["model_path"]).parent.name == "s-finetuned" and scratch["model_uri"] is None
    client = _mlflow_client(cfg)
    version = client.get_model_version_by_alias(cfg.tracking.registered_model, f"{cfg.tracking.alias}-finetuned")
    assert version.tags["nakt.finetune_cases"] == "5"  # 6 labeled cases, one corrupt
    assert version.tags["nakt.teachers"] == "t1,t2"  # the distilled student's lineage carries over
    with pytest.raises(ValueError, match="data.finetune"):
        finetune_student(config.from_dict(config.apply_overrides(cfg.to_dict(), ["data.finetune=null"])))


@pytest.mark.fault
@pytest.mark.timeout(600)  # several Ray processes killed and restarted: minutes on a loaded 2-core machine
def test_two_worker_run_survives_a_killed_worker_and_registers(annotated, tmp_path, synthetic_dirs):

    from nakt_ray.training.student import train_student

    cfg = _student_cfg(annotated, tmp_path, synthetic_dirs, training=dict(
        epochs=3, num_workers=2, cpus_per_worker=0.5, torch_threads=1, max_failures=2))
    killed = []
    storage = Path(cfg.run_dir) / "ray_train"
    # killed once Ray Train has recorded a checkpoint: a group restarted before that rightly starts at epoch 0
    kill_when(lambda: committed_checkpoint(storage), lambda: killed.extend(kill_a_train_worker()))
    result = train_student(cfg)
    assert killed, "the test did not kill a worker"
    assert result["metrics"]["epoch"] == 2 and result["model_uri"].endswith(f"@{cfg.tracking.alias}")
    assert_resumed_from_a_checkpoint(_mlflow_client(cfg).get_metric_history(result["run_id"], "train_loss"), 3)


def test_an_annotation_set_without_usable_rows_is_refused_before_any_run(annotated, tmp_path, synthetic_dirs):
    """Every transferal image corrupt: the set holds only error rows, and training refuses it by name before Ray
    Train or an MLflow run starts (it used to train zero steps and register an untrained student)."""
    import json
    import re

    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.errors import DataError
    from nakt_ray.training.student import train_student

    cfg, _, _ = annotated
    names = [p.name for p in (synthetic_dirs["mixed"] / "images").iterdir()]
    raw = cfg.to_dict()
    raw["data"]["transferal"] = str(corrupt_copy(synthetic_dirs["mixed"], tmp_path / "corrupt", names))
    raw["annotate"]["output"] = str(tmp_path / "failed_set")
    summary = annotate(config.from_dict(raw))
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (6, 0, 6)
    assert len(json.loads((tmp_path / "failed_set" / "errors.json").read_text())) == 6

    student = _student_cfg(annotated, tmp_path, synthetic_dirs)
    where = tmp_path / "failed_set"
    with pytest.raises(DataError, match=re.escape(f"annotation set '{where}': has no usable rows: 6 of 6 rows have "
                                                  f"status 'error' (their reasons: {where}/errors.json)")):
        train_student(student, annotations_dir=str(tmp_path / "failed_set"))
    run_dir = Path(student.run_dir)
    assert not (run_dir / "mlflow.db").exists()  # no MLflow run opened, no student registered
    assert not student.student_checkpoint.parent.exists() and not (run_dir / "ray_train").exists()
