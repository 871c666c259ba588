"""Student: distil the annotation set into one model with Ray Train, then log and register it in MLflow."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from nakt_ray import annotations as ann
from nakt_ray.config import RunConfig


def annotation_fingerprint(annotations_dir: str | Path) -> str:
    """A short hash of an annotation set (its manifest and its files' names and sizes)."""
    h = hashlib.sha256((Path(annotations_dir) / ann.MANIFEST).read_bytes())
    for f in ann.parquet_files(annotations_dir):
        h.update(f"{Path(f).name}:{Path(f).stat().st_size}".encode())
    return h.hexdigest()[:16]


def lineage_tags(manifest: dict[str, Any], annotations_dir: str | Path, rule: str,
                 weights: list[float] | None) -> dict[str, str]:
    teachers = manifest["teachers"]
    return {
        "nakt.teachers": ",".join(t["name"] for t in teachers),
        "nakt.teacher_archs": ",".join(t.get("arch", t.get("kind", "?")) for t in teachers),
        "nakt.teacher_fingerprints": ",".join(t["fingerprint"] for t in teachers),
        "nakt.transferal": manifest["transferal"],
        "nakt.annotations": str(Path(annotations_dir).resolve()),
        "nakt.annotation_fingerprint": annotation_fingerprint(annotations_dir),
        "nakt.fusion_rule": rule,
        "nakt.fusion_weights": json.dumps(weights),
    }


def train_student(cfg: RunConfig, annotations_dir: str | None = None) -> dict[str, Any]:
    """Train the configured student on an annotation set; register it. Returns paths, metrics and the model URI.

    The fusion used for the targets is ``cfg.fusion``: when it differs from the one the set was annotated with,
    targets are re-fused from the stored per-teacher maps on the fly (no teacher runs again).
    """
    import mlflow

    from nakt_ray import tracking
    from nakt_ray.checkpoint import load_model
    from nakt_ray.datasets import annotation_dataset
    from nakt_ray.runtime import init_ray
    from nakt_ray.teachers import labeled_split, model_spec
    from nakt_ray.training import fit

    src = Path(annotations_dir or cfg.student.annotations or cfg.annotations_dir)
    manifest = ann.read_manifest(src)
    if manifest["labels"] != list(cfg.data.labels):
        raise ValueError(f"annotation set {str(src)!r} has labels {manifest['labels']}; the config says "
                         f"{list(cfg.data.labels)}")
    rule = cfg.fusion.rule
    weights = list(cfg.fusion.weights) if cfg.fusion.weights else None
    if weights is not None and len(weights) != len(manifest["teachers"]):
        raise ValueError(f"fusion.weights has {len(weights)} values but annotation set {str(src)!r} holds "
                         f"{len(manifest['teachers'])} teachers")
    refuse = manifest["fusion"] != {"rule": rule, "weights": weights}
    init_ray(cfg.ray)
    tc = cfg.training
    train_ds = annotation_dataset(str(src), rule=rule if refuse else None, weights=weights,
                                  batch_size=tc.batch_size).materialize()
    val_ds = labeled_split(cfg, cfg.data.val, tc.batch_size)[0] if cfg.data.val else None
    tags = lineage_tags(manifest, src, rule, weights)
    spec = model_spec(cfg, cfg.student.name, cfg.student.arch, cfg.student.arch_args, "student", tags)
    out_path = cfg.student_checkpoint
    with tracking.stage_run(cfg, "train-student", run_name=f"student-{cfg.student.name}",
                            params={"student.cases": train_ds.count()}, tags=tags) as run:
        logger = tracking.RunLogger(tracking.tracking_uri(cfg), run.info.run_id)
        result = fit(spec, train_ds, tc, out_path=out_path, storage=Path(cfg.run_dir) / "ray_train",
                     name=f"student-{cfg.student.name}", val_ds=val_ds, logger=logger)
        mlflow.log_metric("train_wall_s", result.wall_s)
        mlflow.log_artifact(str(out_path), artifact_path="student")
        model, _ = load_model(out_path)
        uri, version = tracking.log_and_register_model(
            model, spec, cfg.tracking.registered_model, cfg.tracking.alias,
            {**tags, "nakt.arch": spec.arch, "nakt.arch_args": json.dumps(spec.arch_args)})
        run_id = run.info.run_id
    return {"model_path": str(out_path), "model_uri": uri, "version": version, "run_id": run_id,
            "metrics": result.metrics, "wall_s": result.wall_s}
