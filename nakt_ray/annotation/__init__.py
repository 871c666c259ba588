"""Annotation: the transferal set streamed through Ray Data actor pools that host the teachers; every teacher's
soft map and the fused soft label written to Parquet, every case accounted for (``status`` ok or error).

Takes in: a run config (teachers, transferal folder, fusion). Gives out: an annotation set (Parquet files,
``manifest.json``, ``summary.json``, ``errors.json``; schema in ``docs/annotations.md``), resumable, and
re-fusable under another rule without running a teacher (:mod:`nakt_ray.annotation.re_fuse`). The teachers' actor
pools (:mod:`nakt_ray.annotation.pools`) also serve evaluation.
"""
