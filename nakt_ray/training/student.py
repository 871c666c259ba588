"""Student: distil the annotation set into one model with Ray Train, then log and register it in MLflow."""
from __future__ import annotations

import hashlib
import json
import posixpath
from pathlib import Path
from typing import Any

from nakt_ray.annotation import parquet as ann
from nakt_ray.config import RunConfig
from nakt_ray.errors import ConfigError, DataError, error
from nakt_ray.runtime import storage
from nakt_ray.tracking import (
    TAG_ANNOTATION_FINGERPRINT,
    TAG_ANNOTATIONS,
    TAG_ARCH,
    TAG_ARCH_ARGS,
    TAG_FINETUNE_CASES,
    TAG_FINETUNE_DATA,
    TAG_FUSION_RULE,
    TAG_FUSION_WEIGHTS,
    TAG_INIT,
    TAG_START,
    TAG_TEACHER_ARCHS,
    TAG_TEACHER_FINGERPRINTS,
    TAG_TEACHERS,
    TAG_TRANSFERAL,
)


def annotation_fingerprint(annotations_dir: str | Path) -> str:
    """A short hash of an annotation set (its manifest and its files' names and sizes); a path or a URI."""
    h = hashlib.sha256(storage.read_bytes(storage.join(annotations_dir, ann.MANIFEST)))
    fs, files = storage.listing(annotations_dir, ".parquet")
    for info in fs.get_file_info(files):
        h.update(f"{posixpath.basename(info.path)}:{info.size}".encode())
    return h.hexdigest()[:16]


def lineage_tags(manifest: dict[str, Any], annotations_dir: str | Path, rule: str,
                 weights: list[float] | list[list[float]] | None) -> dict[str, str]:
    teachers = manifest["teachers"]
    return {
        TAG_TEACHERS: ",".join(t["name"] for t in teachers),
        TAG_TEACHER_ARCHS: ",".join(t.get("arch", t.get("kind", "?")) for t in teachers),
        TAG_TEACHER_FINGERPRINTS: ",".join(t["fingerprint"] for t in teachers),
        TAG_TRANSFERAL: manifest["transferal"],
        TAG_ANNOTATIONS: storage.absolute(annotations_dir),
        TAG_ANNOTATION_FINGERPRINT: annotation_fingerprint(annotations_dir),
        TAG_FUSION_RULE: rule,
        TAG_FUSION_WEIGHTS: json.dumps(weights),
    }


def check_usable(annotations_dir: str | Path) -> int:
    """The number of usable (``status == "ok"``) rows of an annotation set; raises ``DataError`` when there are
    none (every case failed, or no rows at all): training on it would run zero steps and register an untrained
    student. Reads only the ``status`` column, in the driver, so it runs before Ray starts or a run opens."""
    try:
        statuses = ann.read_table(annotations_dir, columns=["status"]).column("status").to_pylist()
    except FileNotFoundError:  # a manifest without Parquet files: an empty set
        statuses = []
    ok = sum(1 for s in statuses if s == "ok")
    if not ok:
        raise error(DataError, f"annotation set {str(annotations_dir)!r}",
                    f"has no usable rows: {len(statuses) - ok} of {len(statuses)} rows have status 'error' (their "
                    f"reasons: {storage.join(annotations_dir, 'errors.json')}); nothing to train a student on")
    return ok


def _run_state_file(out_path: Path) -> Path:
    return out_path.parent / "train_run.json"


def read_unfinished(f: Path, earlier: str, what: str) -> dict[str, Any]:
    """The state JSON ``f`` of an interrupted run or search, refused when missing or finished."""
    if not f.exists():
        raise FileNotFoundError(f"cannot resume: {str(f)!r} does not exist (no earlier {earlier}); "
                                "run without --resume")
    state = json.loads(f.read_text())
    if state.get("finished"):
        raise ValueError(f"cannot resume: the {what} recorded in {str(f)!r} finished; run without --resume")
    return state


def _start_or_resume(out_path: Path, resume: bool, ray_name: str) -> dict[str, Any]:
    """The identity of a training run, persisted beside its model: Ray Train run name and MLflow run id.

    ``resume`` reuses the last run's identity (its checkpoints and its MLflow run); otherwise a new one starts.
    """
    from nakt_ray.training.loop import new_run_name

    f = _run_state_file(out_path)
    if resume:
        state = read_unfinished(f, "run of this model", "run")
        return state
    return {"ray_train_name": new_run_name(ray_name), "mlflow_run_id": None, "finished": False}


def unfinished_run(out_path: str | Path) -> bool:
    """Whether a training run of the model at ``out_path`` started and did not finish (so it can be resumed)."""
    f = _run_state_file(Path(out_path))
    return f.exists() and not json.loads(f.read_text()).get("finished")


def _save_run_state(out_path: Path, state: dict[str, Any]) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _run_state_file(out_path).write_text(json.dumps(state, indent=2))


def _fit_and_register(cfg: RunConfig, *, stage: str, label: str, spec: Any, train_ds: Any, val_ds: Any,
                      training: Any, out_path: Path, tags: dict[str, str], params: dict[str, Any], resume: bool,
                      alias: str | None, init_state: Any = None, state: dict[str, Any] | None = None,
                      run_tags: dict[str, str] | None = None, callbacks: list[Any] | None = None,
                      per_teacher: dict[str, Any] | None = None, rows: int | None = None) -> dict[str, Any]:
    """One student training: MLflow run (resumed with its id when ``resume``), Ray Train fit, registration.

    ``tags`` go to the run and the registered version; ``run_tags`` to the run only (e.g. a search's parent run).
    ``rows``: training rows of one pass over ``train_ds`` (``training.min_steps``; ``loop.fit``).
    """
    import mlflow

    from nakt_ray import tracking
    from nakt_ray.training.loop import fit

    state = state or _start_or_resume(out_path, resume, label)
    with tracking.stage_run(cfg, stage, run_name=label, params=params, tags={**tags, **(run_tags or {})},
                            run_id=state["mlflow_run_id"]) as run:
        state["mlflow_run_id"] = run.info.run_id
        _save_run_state(out_path, state)
        logger = tracking.RunLogger(tracking.tracking_uri(cfg), run.info.run_id)
        result = fit(spec, train_ds, training, out_path=out_path, storage=cfg.train_storage,
                     name=label, val_ds=val_ds, logger=logger, run_name=state["ray_train_name"],
                     init_state=init_state, callbacks=callbacks, per_teacher=per_teacher, rows=rows)
        mlflow.log_metric("train_wall_s", result.wall_s)
        mlflow.log_artifact(str(out_path), artifact_path="student")
        uri = version = None
        if alias:
            uri, version = register_student(out_path, spec, cfg.tracking.registered_model, alias, tags)
        state["finished"] = True
        _save_run_state(out_path, state)
    return {"model_path": str(out_path), "model_uri": uri, "version": version, "run_id": run.info.run_id,
            "ray_train_name": state["ray_train_name"], "metrics": result.metrics, "wall_s": result.wall_s}


def register_student(model_path: str | Path, spec: Any, registered_name: str, alias: str,
                     tags: dict[str, str]) -> tuple[str, str]:
    """Log the model file ``model_path`` to the active MLflow run and register it with ``alias`` and ``tags``
    (plus its architecture), in nakt's MLflow flavor (it loads without unpickling). Returns ``(model_uri,
    version)``."""
    from nakt_ray.models.mlflow_format import log_and_register_model
    from nakt_ray.models.model_file import load_model

    model, _ = load_model(model_path)
    tags = {**tags, TAG_ARCH: spec.arch, TAG_ARCH_ARGS: json.dumps(spec.arch_args)}
    return log_and_register_model(model, spec, registered_name, alias, tags)


def differs_from_stored(stored: dict[str, Any], rule: str, weights: Any) -> bool:
    """Whether a student must re-fuse the set's maps by ``rule``/``weights`` rather than read its stored soft labels.
    A set fused by that rule and those weights is read as stored; so is one re-fused with specialist weighting on
    them as the prior (``nakt fuse --specialist``: its per-case weights are in the set, not in the config)."""
    return {"rule": stored.get("rule"), "weights": stored.get("weights")} != {"rule": rule, "weights": weights}


def train_student(cfg: RunConfig, annotations_dir: str | None = None, resume: bool = False, *,
                  register: bool = True, stage: str = "train-student", run_name: str | None = None,
                  run_tags: dict[str, str] | None = None, callbacks: list[Any] | None = None,
                  val_ds: Any = None) -> dict[str, Any]:
    """Train the configured student on an annotation set; register it. Returns paths, metrics and the model URI.

    The fusion used for the targets is ``cfg.fusion``: when it differs from the one the set was annotated with,
    targets are re-fused from the stored per-teacher maps on the fly (no teacher runs again). The annotations
    stream from Parquet into the Ray Train workers' shards. ``resume`` continues an interrupted run from its last
    checkpoint, in the same MLflow run.

    A 3D student (``cfg.spatial_dims == 3``) trains on an annotation set of volumes (schema version 2): random
    patches of ``volume.patch_size`` streamed from the case stores, a share centred on foreground, re-fused per
    patch when the rule differs (``training/volume_data.py``); it validates on whole volumes of ``data.val`` by
    sliding window. A set of the other dimensionality is refused by name (:func:`check_dimensions`).

    A search trial (``nakt_ray/search/``) is this same function with ``register=False`` (the search registers
    only its best trial), its own ``stage`` and ``run_name`` (MLflow run, Ray Train run prefix), ``run_tags`` naming
    the search's parent run, ``callbacks`` (a Ray Train ``UserCallback`` that hands epochs to Tune) and ``val_ds``,
    the decoded ``data.val`` (the search decodes it once for all its trials; default: decoded here).
    """
    from nakt_ray.models.model_file import model_spec
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.loop import total_steps
    from nakt_ray.training.small_data import check_transferal_size
    from nakt_ray.training.student_data import annotation_dataset, decoded_row_bytes
    from nakt_ray.training.volume_data import annotation_patch_dataset, patch_options, validation_dataset

    src = str(annotations_dir or cfg.student.annotations or cfg.annotations_dir)  # a path or a URI
    manifest = ann.read_manifest(src)
    check_dimensions(cfg, manifest, src)
    if manifest["labels"] != list(cfg.data.labels):
        raise ValueError(f"annotation set {str(src)!r} has labels {manifest['labels']}; the config says "
                         f"{list(cfg.data.labels)}")
    rule = cfg.fusion.rule
    weights = cfg.fusion.effective_weights()
    if weights is not None and len(weights) != len(manifest["teachers"]):
        raise ValueError(f"fusion weights have {len(weights)} rows but annotation set {str(src)!r} holds "
                         f"{len(manifest['teachers'])} teachers")
    needs_re_fusion = differs_from_stored(manifest["fusion"], rule, weights)
    per_teacher = None
    target = resolved_target(cfg.fusion.target, manifest)
    if target == "teachers":  # each teacher's map, through the partial-label loss (loop.train_step)
        classes = ann.teacher_classes(manifest)
        cov = [[k in c for k in range(len(manifest["labels"]))] for c in classes]
        per_teacher = {"coverage": cov, "weights": weights}
        needs_re_fusion = False  # the fused target is not what the student learns from
    label = run_name or f"student-{cfg.student.name}"
    cases = check_usable(src)  # before Ray starts and before an MLflow run opens: nothing is left behind
    rows = cases * (cfg.training.patches_per_case if cfg.spatial_dims == 3 else 1)
    check_transferal_size(cases, str(src), cfg.spatial_dims, steps=total_steps(cfg.training, rows))
    state = _start_or_resume(cfg.student_checkpoint, resume, label)  # fails fast, before Ray starts
    init_ray(cfg.ray)
    tc = cfg.training
    if cfg.spatial_dims == 3:
        # Patches drawn anew every epoch cannot be held; they stream from the case stores (volume_data.py).
        train_ds = annotation_patch_dataset(str(src), patch_size=cfg.volume.patch_size,
                                            rule=rule if needs_re_fusion else None, weights=weights,
                                            agreement=tc.agreement_weighting, seed=tc.seed,
                                            teachers=per_teacher is not None, **patch_options(tc))
    else:
        train_ds = annotation_dataset(str(src), rule=rule if needs_re_fusion else None, weights=weights,
                                      batch_size=tc.batch_size, agreement=tc.agreement_weighting, shuffle=True,
                                      seed=tc.seed, teachers=per_teacher is not None)
        if cases * decoded_row_bytes(manifest) <= tc.cache_mb * 2**20:
            # Small enough to hold: decode and re-fuse once, not every epoch (STAPLE: ~4 s an epoch for 178 HC18
            # cases).
            train_ds = train_ds.materialize()
    if val_ds is None and cfg.data.val:
        val_ds = validation_dataset(cfg, cfg.data.val, tc.batch_size, cfg.spatial_dims)
    tags = lineage_tags(manifest, src, rule, weights)
    spec = model_spec(cfg, cfg.student.name, cfg.student.arch, cfg.student.arch_args, "student", tags)
    init_state = _init_state(cfg.student.init, spec) if cfg.student.init else None
    return _fit_and_register(cfg, stage=stage, label=label, spec=spec,
                             train_ds=train_ds, val_ds=val_ds, training=tc, out_path=cfg.student_checkpoint,
                             tags=tags, params={"student.cases": cases, "student.target": target}, resume=resume,
                             alias=cfg.tracking.alias if register else None, init_state=init_state, state=state,
                             run_tags=run_tags, callbacks=callbacks, per_teacher=per_teacher,
                             rows=rows)


def resolved_target(target: str, manifest: dict[str, Any]) -> str:
    """``fusion.target`` for an annotation set: ``auto`` is ``teachers`` when the set's teachers predict different
    label sets (the partial-label loss; docs/decisions.md 69), else ``fused``."""
    if target != "auto":
        return target
    return "teachers" if ann.coverage(manifest) is not None else "fused"


def check_dimensions(cfg: RunConfig, manifest: dict[str, Any], src: str) -> None:
    """Refuse, by name, a 2D student on an annotation set of volumes, a 3D student on a set of images, and a 3D
    student whose volume preprocessing differs from the one its set was annotated with (its model file would
    record preprocessing it was not trained on)."""
    from nakt_ray.config.convert import to_plain

    version = manifest.get("schema_version")
    where = f"annotation set {src!r}"
    if version == ann.SCHEMA_VERSION_VOLUMES and cfg.spatial_dims != 3:
        raise error(DataError, where, f"is a set of volumes (schema version {version}), but the student "
                    f"{cfg.student.arch!r} is 2D: set student.arch_args.spatial_dims: 3 (and volume.patch_size) to "
                    "train a 3D student on it, or point student.annotations at a set of images")
    if version != ann.SCHEMA_VERSION_VOLUMES and cfg.spatial_dims == 3:
        raise error(DataError, where, f"is a set of 2D images (schema version {version}), but the student "
                    f"{cfg.student.arch!r} is 3D (student.arch_args.spatial_dims: 3), which trains on volumes: "
                    "annotate a transferal set of volumes with this config (nakt annotate), or set "
                    "student.arch_args.spatial_dims: 2")
    if cfg.spatial_dims == 3:
        ours, theirs = to_plain(cfg.volume), dict(manifest.get("preprocess") or {})
        differ = sorted(k for k in ours if k != "patch_size" and k in theirs and ours[k] != theirs[k])
        if differ:
            raise error(DataError, where, "was preprocessed otherwise than this config says: " + "; ".join(
                f"volume.{k} is {ours[k]!r} here, {theirs[k]!r} in the set" for k in differ) + "; use the set's "
                "values (its manifest.json, preprocess) or annotate again")
        check_val_metrics(cfg.training, "training")


def check_val_metrics(training: Any, key: str) -> None:
    """3D validation scores Dice and IoU per volume: HD95 and NSD asked of a 3D run are refused, not skipped."""
    if training.val_metrics:
        raise error(ConfigError, f"config key '{key}.val_metrics'", f"{list(training.val_metrics)} are not computed "
                    "while training a 3D model (its validation scores Dice and IoU per volume); remove them and "
                    "score HD95 and NSD with nakt evaluate")


def _init_state(path: str | Path, spec: Any) -> dict[str, Any]:
    """The weights of the nakt model file ``path``, checked to fit ``spec``'s architecture."""
    import torch

    from nakt_ray.models.model_file import read_spec

    other = read_spec(path)
    if (other.arch, other.arch_args, other.num_classes, other.in_channels) != (
            spec.arch, spec.arch_args, spec.num_classes, spec.in_channels):
        raise ValueError(f"cannot start {spec.name!r} ({spec.arch} {spec.arch_args}, {spec.num_classes} classes) from "
                         f"{str(path)!r}: it holds {other.arch} {other.arch_args} with {other.num_classes} classes")
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


FINETUNE_VARIANTS = ("distilled", "scratch")


def finetune_student(cfg: RunConfig, start: str = "distilled", resume: bool = False) -> dict[str, Any]:
    """Fine-tune on the small labeled set ``data.finetune`` (the paper's second study), with ``cfg.finetune``.

    ``start``: ``distilled`` starts from the distilled student (``<run_dir>/student/<name>/model.pt``, or
    ``student.init``) and writes ``<name>-finetuned``; ``scratch`` is the "labeled set only" baseline, the same
    architecture from random weights, written as ``<name>-scratch``. With the distilled student itself these
    are the three variants to compare on one test set (``nakt evaluate``). Only the fine-tuned student is
    registered (alias ``<tracking.alias>-finetuned``).
    """
    from nakt_ray.models.model_file import model_spec
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.volume_data import labeled_training_set, validation_dataset

    if start not in FINETUNE_VARIANTS:
        raise ValueError(f"fine-tuning start {start!r}: expected one of {FINETUNE_VARIANTS}")
    if not cfg.data.finetune:
        raise ValueError("no labeled fine-tuning set: set data.finetune to a folder with images/ and masks/")
    if cfg.spatial_dims == 3:
        check_val_metrics(cfg.finetune, "finetune")
    init_ray(cfg.ray)
    tc = cfg.finetune
    train_ds, failed, n = labeled_training_set(cfg, cfg.data.finetune, tc, cfg.spatial_dims)
    val_ds = validation_dataset(cfg, cfg.data.val, tc.batch_size, cfg.spatial_dims) if cfg.data.val else None
    tags = {TAG_FINETUNE_DATA: str(Path(cfg.data.finetune).resolve()), TAG_FINETUNE_CASES: str(n - len(failed)),
            TAG_START: start}
    init_state = None
    if start == "distilled":
        source = Path(cfg.student.init or cfg.student_checkpoint)
        if not source.exists():
            raise FileNotFoundError(f"no distilled student at {str(source)!r}: run `nakt train-student` first "
                                    "or set student.init")
        from nakt_ray.models.model_file import read_spec

        tags = {**{k: str(v) for k, v in read_spec(source).lineage.items()}, **tags, TAG_INIT: str(source)}
    suffix = "finetuned" if start == "distilled" else "scratch"
    name = f"{cfg.student.name}-{suffix}"
    spec = model_spec(cfg, name, cfg.student.arch, cfg.student.arch_args, "student", tags)
    if start == "distilled":
        init_state = _init_state(source, spec)
    return _fit_and_register(cfg, stage=f"finetune-{suffix}", label=f"student-{name}", spec=spec,
                             train_ds=train_ds, val_ds=val_ds, training=tc,
                             out_path=Path(cfg.run_dir) / "student" / name / "model.pt", tags=tags,
                             params={"finetune.cases": n - len(failed), "finetune.failed_cases": len(failed)},
                             resume=resume, alias=f"{cfg.tracking.alias}-finetuned" if start == "distilled" else None,
                             init_state=init_state,
                             rows=(n - len(failed)) * (tc.patches_per_case if cfg.spatial_dims == 3 else 1))
