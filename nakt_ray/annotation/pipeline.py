"""Annotation: stream a transferal set through the teachers' Ray Data actor pools, fuse, write Parquet.

    cases -> decode + preprocess (CPU tasks) -> teacher pool(s) (``pools.add_teacher_pools``) -> fuse (tasks) -> Parquet

The teachers' pools (one per teacher, or one shared pool whose actors host every teacher) are built by
:mod:`nakt_ray.annotation.pools`, which evaluation uses too. A case that fails anywhere keeps its row with
``status = "error"`` and the reason, so the written set accounts for every input case exactly once (checked before
the summary is written). An interrupted run can be resumed into the same output (:func:`resume_state`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation.pools import (
    TeacherPredictor,
    add_teacher_pools,
    check_teachers,
    light_task_pool,
    pool_layout,
    teacher_ref,
)
from nakt_ray.errors import ConfigError, DataError, error
from nakt_ray.runtime import storage

if TYPE_CHECKING:
    from nakt_ray.config import RunConfig


def fuse_batch(batch: dict[str, np.ndarray], *, teachers: list[str], rule: str,
               weights: list[float] | None) -> dict[str, np.ndarray]:
    """Fuse the teachers' columns into ``soft_label``/``hard_label`` plus quality figures, as Parquet-ready rows.

    Fusion reads the same quantised maps that are stored, so re-fusing the stored set later gives the same result.
    """
    ok = batch["error"] == ""
    out = {
        "case_id": batch["case_id"], "source": batch["source"],
        "status": np.where(ok, "ok", "error").astype(object), "error": batch["error"],
        "geometry": batch["geometry"],
        "image": ann.to_bytes(batch["image"].astype(np.float16)),
    }
    for t in teachers:
        out[ann.prob_column(t)] = ann.to_bytes(batch[ann.prob_column(t)])
    probs_q = np.stack([batch[ann.prob_column(t)] for t in teachers], axis=1)  # [B, T, C, H, W] uint8
    out.update(ann.fused_columns(probs_q, ok, rule, weights))
    for key in ("image", *(ann.prob_column(t) for t in teachers)):
        out[key][~ok] = b""  # failed cases carry no arrays
    return out


def resume_state(out_dir: str | Path, manifest: dict[str, Any]) -> tuple[set[str], list[str]]:
    """What an interrupted run left in ``out_dir``: the case ids in its readable Parquet files.

    A file that cannot be read (cut off when the run was killed) is deleted, so its cases are annotated again.
    Files written with other teachers, fusion or preprocessing are refused: mixing them would corrupt the set.
    Returns ``(case ids done, names of the files discarded)``.
    """
    import posixpath

    import pyarrow.parquet as pq

    done: set[str] = set()
    discarded = []
    fs, files = storage.listing(out_dir, ".parquet")  # local or object storage alike
    for f in files:
        name = posixpath.basename(f)
        try:
            meta = json.loads(pq.read_schema(f, filesystem=fs).metadata[ann.METADATA_KEY])
            ids = pq.read_table(f, columns=["case_id"], filesystem=fs).column("case_id").to_pylist()
        except Exception:  # noqa: BLE001 - a truncated or empty file: redo its cases
            fs.delete_file(f)
            discarded.append(name)
            continue
        for key in ("teachers", "fusion", "preprocess", "labels", "prob_dtype"):
            ours = json.loads(json.dumps(manifest[key]))
            if meta.get(key) != ours:
                raise error(DataError, f"cannot resume into {str(out_dir)!r}",
                            f"{name} was written with other {key} ({meta.get(key)!r}; this run: {ours!r})")
        repeated = done.intersection(ids)
        if repeated:
            raise RuntimeError(f"{str(out_dir)!r}: cases {sorted(repeated)[:5]} appear in more than one file")
        done.update(ids)
    return done, discarded


def _earlier_summaries(out_dir: str) -> list[dict[str, Any]]:
    """The summaries an interrupted or finished run left in ``out_dir`` (its own and those it kept), oldest first."""
    try:
        previous = json.loads(storage.read_text(storage.join(out_dir, ann.SUMMARY)))
    except (OSError, ValueError):  # none yet (FileNotFoundError), or unreadable
        return []
    return [*previous.pop("earlier_runs", []), previous]


def annotate(cfg: RunConfig, transferal: str | None = None, output: str | None = None,
             predictor_cls: type = TeacherPredictor, resume: bool = False) -> dict[str, Any]:
    """Run the annotation pipeline for ``cfg`` (a RunConfig); returns the summary (also saved as JSON).

    With ``resume``, the cases already written to the output by an interrupted run are skipped (see
    :func:`resume_state`); the finished set is the same as that of an uninterrupted run. Raises if the written
    set does not account for every input case exactly once.
    """
    from nakt_ray.data.datasets import cases_dataset, decode_batch
    from nakt_ray.data.readers import list_cases
    from nakt_ray.runtime.cluster import LIGHT_CPU
    from nakt_ray.tracking import tracking_uri

    source = transferal or cfg.data.transferal
    if not source:
        raise error(ConfigError, "no transferal data", "set data.transferal in the config or pass --transferal")
    # A local path or an object-store URI (s3://, gs://, file://): written by Ray Data, read back through pyarrow.
    out_dir = str(output or cfg.annotations_dir)
    if not storage.is_empty(out_dir) and not resume:
        raise FileExistsError(f"annotation output {out_dir!r} is not empty; remove it, choose another, or "
                              "pass --resume to finish an interrupted run")
    storage.make_dirs(out_dir)
    teachers = [teacher_ref(cfg, t) for t in cfg.teachers]
    pre = cfg.preprocess
    uri = tracking_uri(cfg)
    t_probe = time.perf_counter()
    records = check_teachers(teachers, cfg.data.num_classes, pre.in_channels, uri)
    t_probe = time.perf_counter() - t_probe
    cases = list_cases(source)
    weights = list(cfg.fusion.weights) if cfg.fusion.weights else None
    manifest = {
        "transferal": str(Path(source).resolve()), "labels": list(cfg.data.labels),
        "image_shape": [pre.in_channels, *pre.size], "image_dtype": "float16",
        "label_shape": [cfg.data.num_classes, *pre.size], "prob_dtype": cfg.annotate.prob_dtype,
        "prob_scale": 255 if cfg.annotate.prob_dtype == "uint8" else 1,
        "preprocess": cfg.to_dict()["preprocess"], "teachers": records,
        "fusion": {"rule": cfg.fusion.rule, "weights": weights},
    }
    done, discarded = resume_state(out_dir, manifest) if resume else (set(), [])
    todo = [c for c in cases if c.case_id not in done]
    t0 = time.perf_counter()

    # 1. Decode and preprocess in CPU tasks; 2. the teachers' actor pool(s); 3. fuse in tasks; 4. write Parquet.
    names = [t.name for t in teachers]
    layout = pool_layout(cfg.annotate.pools)
    if todo:
        ds = cases_dataset(todo, rows_per_block=cfg.annotate.decode_batch_size)
        light = light_task_pool()
        ds = ds.map_batches(decode_batch, batch_size=cfg.annotate.decode_batch_size, num_cpus=LIGHT_CPU, compute=light,
                            fn_kwargs=dict(preprocess=pre, num_classes=cfg.data.num_classes))
        ds = add_teacher_pools(ds, teachers, cfg.data.num_classes, pre.in_channels, uri, predictor_cls,
                               cfg.annotate.prob_dtype, layout, cfg.annotate.shared_actors)
        ds = ds.map_batches(fuse_batch, batch_size=cfg.annotate.decode_batch_size, num_cpus=LIGHT_CPU, compute=light,
                            fn_kwargs=dict(teachers=names, rule=cfg.fusion.rule, weights=weights))
        ds.write_parquet(storage.absolute(out_dir), min_rows_per_file=cfg.annotate.rows_per_file,
                         schema=ann.arrow_schema(names, manifest), ray_remote_args={"num_cpus": LIGHT_CPU})
    wall = time.perf_counter() - t0

    # 5. Account for every case, write the manifest, the summary and the errors table.
    t_account = time.perf_counter()
    table = ann.read_table(out_dir, columns=["case_id", "status", "error"]).to_pydict()
    expected = {c.case_id for c in cases}
    seen = table["case_id"]
    if len(seen) != len(set(seen)) or set(seen) != expected:
        raise RuntimeError(f"annotation accounting failed in {out_dir}: {len(expected)} input cases, "
                           f"{len(seen)} rows, {len(set(seen))} distinct, {len(expected - set(seen))} missing")
    errors = [{"case_id": c, "stage": e.split(":", 1)[0], "reason": e}
              for c, s, e in zip(table["case_id"], table["status"], table["error"]) if s != "ok"]
    ann.write_manifest(out_dir, {**manifest, "num_cases": len(cases)})
    # A resumed run keeps the figures of the runs before it (a resume over a finished set annotates nothing).
    earlier = _earlier_summaries(out_dir) if resume else []
    summary = {"cases_read": len(cases), "annotated": len(cases) - len(errors), "failed": len(errors),
               "wall_s": round(wall, 2), "images_per_s": round(len(todo) / wall, 2) if todo else None,
               "cases_this_run": len(todo), "output": str(out_dir),
               "resumed_cases": len(done), "discarded_files": discarded,
               "teachers": names, "fusion": cfg.fusion.rule, "pools": layout,
               "phases_s": {"probe_teachers": round(t_probe, 2), "pipeline": round(wall, 2),
                            "accounting": round(time.perf_counter() - t_account, 2)},
               **({"earlier_runs": earlier} if earlier else {})}
    storage.write_text(storage.join(out_dir, ann.SUMMARY), json.dumps(summary, indent=2))
    storage.write_text(storage.join(out_dir, "errors.json"), json.dumps(errors, indent=2))
    return summary
