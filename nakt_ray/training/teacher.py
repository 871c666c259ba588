"""Teachers: train one on a labeled site with Ray Train and save a self-describing model file.

In deployment, teachers come from other hospitals as finished models; ``nakt train-teacher`` exists so the demo
and experiments can make teachers of their own (no pretrained weights can be downloaded).
"""
from __future__ import annotations

import json
from pathlib import Path

from nakt_ray import zoo
from nakt_ray.config import RunConfig, TeacherConfig
from nakt_ray.models.model_file import model_spec
from nakt_ray.tracking import TAG_TEACHER


def train_teacher(cfg: RunConfig, teacher: TeacherConfig) -> Path:
    """Train ``teacher`` on its ``train_data``; returns the path of its model file.

    A 3D teacher (``zoo.spatial_dims_of(arch, arch_args) == 3``) trains on patches of the labeled volumes of
    ``train_data``, read and preprocessed once as ``volume`` says, and validates on whole volumes of ``val_data``
    by sliding window (``training/volume_data.py``); its model file records that preprocessing."""
    import mlflow

    from nakt_ray import tracking
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.loop import fit, total_steps
    from nakt_ray.training.small_data import check_labeled_size
    from nakt_ray.training.student import check_val_metrics
    from nakt_ray.training.volume_data import labeled_training_set, validation_dataset

    if not teacher.train_data:
        raise ValueError(f"teacher {teacher.name!r} has no train_data; set teachers[].train_data to a labeled "
                         "folder (images/ and masks/) or give it a finished checkpoint")
    tc = cfg.teacher_training
    dims = zoo.spatial_dims_of(teacher.arch, teacher.arch_args)
    if dims == 3:
        check_val_metrics(tc, "teacher_training")
    init_ray(cfg.ray)
    train_ds, failed, n = labeled_training_set(cfg, teacher.train_data, tc, dims)
    rows = (n - len(failed)) * (tc.patches_per_case if dims == 3 else 1)
    check_labeled_size(n - len(failed), str(teacher.train_data), dims, steps=total_steps(tc, max(1, rows)))
    val_ds = validation_dataset(cfg, teacher.val_data, tc.batch_size, dims) if teacher.val_data else None
    lineage = {"train_data": str(Path(teacher.train_data).resolve()), "num_cases": n - len(failed)}
    spec = model_spec(cfg, teacher.name, teacher.arch, teacher.arch_args, "teacher", lineage)
    out_path = cfg.teacher_checkpoint(teacher)
    with tracking.stage_run(cfg, "train-teacher", run_name=f"teacher-{teacher.name}",
                            params={"teacher.name": teacher.name, "teacher.arch": teacher.arch,
                                    "teacher.cases": n - len(failed), "teacher.failed_cases": len(failed)},
                            tags={TAG_TEACHER: teacher.name}) as run:
        logger = tracking.RunLogger(tracking.tracking_uri(cfg), run.info.run_id)
        result = fit(spec, train_ds, tc, out_path=out_path, storage=cfg.train_storage,
                     name=f"teacher-{teacher.name}", val_ds=val_ds, logger=logger,
                     rows=rows)
        mlflow.log_metric("train_wall_s", result.wall_s)
        mlflow.log_artifact(str(out_path), artifact_path="teacher")
        if failed:
            mlflow.log_text(json.dumps(failed, indent=2), "failed_cases.json")
    return out_path
