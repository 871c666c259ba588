"""``nakt fuse``: re-fuse a stored annotation set with another rule or other weights, without any teacher.

Every teacher's probability map is stored, so fusion is a cheap pass over Parquet: read, recompute
``soft_label``/``hard_label``/``agreement``/``entropy`` with :func:`nakt_ray.annotation.parquet.re_fuse_batch`,
write a new set whose manifest records the new fusion and the set it came from. A set of volumes (schema version 2)
is re-fused store by store: each case's store is copied into the new set and fused again there, slab by slab
(``annotation.volumes.re_fuse_volume_cases``), so the new set stands on its own.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from nakt_ray.annotation import parquet as ann
from nakt_ray.errors import ConfigError, error, expected
from nakt_ray.fusion.partial import check_rule
from nakt_ray.fusion.rules import per_class


def re_fuse(annotations_dir: str | Path, output: str | Path, rule: str,
            weights: list[float] | list[list[float]] | None = None, batch_size: int = 32) -> dict[str, Any]:
    """Write ``output``: the set in ``annotations_dir`` re-fused by ``rule``/``weights`` (one weight per teacher,
    in the set's order, or one row per teacher of one weight per label of the set: per-class weights) from its
    stored per-teacher maps, in Ray Data tasks of ``batch_size`` rows. Returns a summary (cases, ok, rule, weights,
    source, output, wall_s)."""
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
    try:  # the rule's own checks (weights it refuses or needs, their values), before any Ray task
        check_rule(rule, weights, len(teachers), len(manifest["labels"]))
    except ValueError as err:
        raise error(ConfigError, f"fusion rule {rule!r} with weights {weights}", str(err)) from None
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"fusion output {str(out_dir)!r} is not empty; remove it or choose another")
    out_dir.mkdir(parents=True, exist_ok=True)
    new_manifest = {k: v for k, v in manifest.items() if k != "schema_version"}
    new_manifest.update(fusion={"rule": rule, "weights": weights}, fused_from=str(src.resolve()))
    t0 = time.perf_counter()
    ds = read_parquet(ann.parquet_files(src))
    if manifest["schema_version"] == ann.SCHEMA_VERSION_VOLUMES:
        from nakt_ray.annotation.volumes import re_fuse_volume_cases

        ds = ds.map_batches(re_fuse_volume_cases, batch_size=1, num_cpus=0.5,
                            fn_kwargs=dict(src=str(src.resolve()), out_dir=str(out_dir.resolve()), teachers=teachers,
                                           rule=rule, weights=weights, coverage=ann.coverage(manifest)))
        schema = ann.arrow_schema_volumes(new_manifest)
    else:
        ds = ds.map_batches(ann.re_fuse_batch, batch_size=batch_size, num_cpus=0.5,
                            fn_kwargs=dict(teachers=teachers, shapes=ann.teacher_shapes(manifest), rule=rule,
                                           weights=weights, prob_dtype=manifest["prob_dtype"],
                                           coverage=ann.coverage(manifest)))
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
    for name in ("errors.json",):
        if (src / name).exists():
            (out_dir / name).write_text((src / name).read_text())
    (out_dir / ann.SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary

