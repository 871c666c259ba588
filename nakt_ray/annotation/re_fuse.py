"""``nakt fuse``: re-fuse a stored annotation set with another rule or other weights, without any teacher.

Every teacher's probability map is stored, so fusion is a cheap pass over Parquet: read, recompute
``soft_label``/``hard_label``/``agreement``/``entropy`` with :func:`nakt_ray.annotation.parquet.re_fuse_batch`,
write a new set whose manifest records the new fusion and the set it came from. A set of volumes (schema version 2)
is re-fused store by store: each case's store is copied into the new set and fused again there, slab by slab
(``annotation.volumes.re_fuse_volume_cases``), so the new set stands on its own.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from nakt_ray.annotation import parquet as ann
from nakt_ray.errors import ConfigError, DataError, error, expected
from nakt_ray.fusion.partial import check_rule
from nakt_ray.fusion.rules import per_class

SPECIALIST_RULES = ("weighted_mean", "confidence_weighted", "majority_vote")
SPECIALIST_FILE = "specialist.json"


def re_fuse(annotations_dir: str | Path, output: str | Path, rule: str,
            weights: list[float] | list[list[float]] | None = None, batch_size: int = 32,
            specialist: float | None = None) -> dict[str, Any]:
    """Write ``output``: the set in ``annotations_dir`` re-fused by ``rule``/``weights`` (one weight per teacher,
    in the set's order, or one row per teacher of one weight per label of the set: per-class weights) from its
    stored per-teacher maps, in Ray Data tasks of ``batch_size`` rows. Returns a summary (cases, ok, rule, weights,
    source, output, wall_s).

    ``specialist``: a temperature. Each case then gets its own per-teacher weights, from how sure each teacher is in
    it against its own certainty over the set (``fusion.specialist``; ``weights`` become the prior): a first pass
    reads every case's maps for the teachers' confidences, the second fuses. The weights and confidences per case go
    to ``specialist.json`` in the new set; its manifest's ``fusion`` names the temperature."""
    from nakt_ray.annotation.parquet import read_parquet
    from nakt_ray.fusion import FUSION_RULES
    from nakt_ray.runtime.cluster import LIGHT_CPU

    src, out_dir = Path(annotations_dir), Path(output)
    manifest = ann.read_manifest(src)
    teachers = [t["name"] for t in manifest["teachers"]]
    if rule not in FUSION_RULES:
        raise error(ConfigError, "fusion rule", expected(rule, f"one of {', '.join(sorted(FUSION_RULES))}"))
    if weights is not None and len(weights) != len(teachers):
        raise error(ConfigError, f"fusion weights {weights}", f"{len(weights)} weights given but annotation set "
                    f"{str(src)!r} holds {len(teachers)} teachers ({', '.join(teachers)})")
    if per_class(weights):
        labels = manifest["labels"]
        if any(not isinstance(row, (list, tuple)) or len(row) != len(labels) for row in weights):
            raise error(ConfigError, f"fusion weights {weights}", expected(
                weights, f"{len(teachers)} rows of {len(labels)} weights, one per label of annotation set "
                         f"{str(src)!r} ({', '.join(labels)})"))
    if specialist is not None:
        if rule not in SPECIALIST_RULES:
            raise error(ConfigError, f"fusion rule {rule!r} with specialist weighting", expected(
                rule, f"one of {', '.join(SPECIALIST_RULES)}: a rule that weighs teachers"))
        if per_class(weights):
            raise error(ConfigError, f"fusion weights {weights}", "specialist weighting takes one prior weight "
                        "per teacher, not per-class rows")
        if not (isinstance(specialist, (int, float)) and math.isfinite(specialist) and specialist > 0):
            raise error(ConfigError, "specialist temperature", expected(specialist, "a positive number"))
    try:  # the rule's own checks (weights it refuses or needs, their values), before any Ray task
        prior = [1.0] * len(teachers) if specialist is not None and weights is None else weights
        check_rule(rule, prior, len(teachers), len(manifest["labels"]))
    except ValueError as err:
        raise error(ConfigError, f"fusion rule {rule!r} with weights {weights}", str(err)) from None
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"fusion output {str(out_dir)!r} is not empty; remove it or choose another")
    out_dir.mkdir(parents=True, exist_ok=True)
    new_manifest = {k: v for k, v in manifest.items() if k != "schema_version"}
    new_manifest.update(fusion={"rule": rule, "weights": weights}, fused_from=str(src.resolve()))
    volumes = manifest["schema_version"] == ann.SCHEMA_VERSION_VOLUMES
    t0 = time.perf_counter()
    case_weights = None
    if specialist is not None:
        case_weights = _specialist_case_weights(src, manifest, teachers, float(specialist), prior, volumes,
                                                batch_size, out_dir)
        new_manifest["fusion"]["specialist"] = {"temperature": float(specialist), "cases": SPECIALIST_FILE}
    ds = read_parquet(ann.parquet_files(src))
    if volumes:
        from nakt_ray.annotation.volumes import re_fuse_volume_cases

        ds = ds.map_batches(re_fuse_volume_cases, batch_size=1, num_cpus=0.5,
                            fn_kwargs=dict(src=str(src.resolve()), out_dir=str(out_dir.resolve()), teachers=teachers,
                                           rule=rule, weights=weights, coverage=ann.coverage(manifest),
                                           case_weights=case_weights))
        schema = ann.arrow_schema_volumes(new_manifest)
    else:
        ds = ds.map_batches(ann.re_fuse_batch, batch_size=batch_size, num_cpus=0.5,
                            fn_kwargs=dict(teachers=teachers, shapes=ann.teacher_shapes(manifest), rule=rule,
                                           weights=weights, prob_dtype=manifest["prob_dtype"],
                                           coverage=ann.coverage(manifest), case_weights=case_weights))
        schema = ann.arrow_schema(teachers, new_manifest)
    ds.write_parquet(str(out_dir.resolve()), min_rows_per_file=256, schema=schema,
                     ray_remote_args={"num_cpus": LIGHT_CPU})
    wall = time.perf_counter() - t0
    ann.write_manifest(out_dir, {**new_manifest, "schema_version": manifest["schema_version"]})
    table = ann.read_table(out_dir, columns=["case_id", "status"]).to_pydict()
    source_ids = ann.read_table(src, columns=["case_id"]).column("case_id").to_pylist()
    if sorted(table["case_id"]) != sorted(source_ids):
        raise RuntimeError(f"re-fusion of {src} into {out_dir} lost or repeated cases")
    summary = {"cases": len(source_ids), "ok": table["status"].count("ok"), "rule": rule, "weights": weights,
               "source": str(src), "output": str(out_dir), "wall_s": round(wall, 2)}
    if specialist is not None:
        summary["specialist"] = float(specialist)
    for name in ("errors.json",):
        if (src / name).exists():
            (out_dir / name).write_text((src / name).read_text())
    (out_dir / ann.SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def _specialist_case_weights(src: Path, manifest: dict[str, Any], teachers: list[str], temperature: float,
                             prior: list[float], volumes: bool, batch_size: int,
                             out_dir: Path) -> dict[str, list[float]]:
    """The first pass of a specialist re-fusion: every ok case's per-teacher foreground confidence (Ray Data tasks
    over the stored maps), then :func:`fusion.specialist.specialist_weights`; both written to ``SPECIALIST_FILE``
    in ``out_dir``. Returns the weights per case id."""
    import numpy as np

    from nakt_ray.annotation.parquet import read_parquet
    from nakt_ray.fusion.specialist import specialist_weights

    ds = read_parquet(ann.parquet_files(src))
    if volumes:
        from nakt_ray.annotation.volumes import volume_confidence_cases

        ds = ds.map_batches(volume_confidence_cases, batch_size=1, num_cpus=0.5,
                            fn_kwargs=dict(src=str(src.resolve()), teachers=teachers))
    else:
        ds = ds.map_batches(ann.confidence_batch, batch_size=batch_size, num_cpus=0.5,
                            fn_kwargs=dict(teachers=teachers, shapes=ann.teacher_shapes(manifest),
                                           prob_dtype=manifest["prob_dtype"]))
    rows = [r for r in ds.take_all() if np.isfinite(r["confidence"]).all()]  # error rows have no maps
    if not rows:
        raise error(DataError, f"annotation set {str(src)!r}", "holds no ok case to weigh teachers by")
    rows.sort(key=lambda r: str(r["case_id"]))
    confidence = np.stack([np.asarray(r["confidence"], dtype=np.float64) for r in rows])
    weights = specialist_weights(confidence, temperature, prior)
    cases = {str(r["case_id"]): {"confidence": [round(float(c), 6) for c in conf], "weights": [float(x) for x in w]}
             for r, conf, w in zip(rows, confidence, weights)}
    (out_dir / SPECIALIST_FILE).write_text(json.dumps(
        {"teachers": teachers, "temperature": temperature, "prior": prior, "cases": cases}, indent=1))
    return {case: v["weights"] for case, v in cases.items()}
