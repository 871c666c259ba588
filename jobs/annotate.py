"""Annotation job: every teacher over the transferal set, fused, into Parquet (``nakt annotate`` on a cluster).

    ray job submit --runtime-env-json '{"env_vars": {"NAKT_PROGRESS": "0"}}' \
        -- python jobs/annotate.py --config run.yaml [--set KEY=VALUE ...] [--resume]

Output: ``annotate.output`` (default ``<run_dir>/annotations``; a shared path or ``s3://`` / ``gs://``), the
summary JSON on stdout, an MLflow run of stage ``annotate``. ``--resume`` finishes an interrupted annotation (or
starts one); a finished one is left as it is. Cost: teachers x images x per-image time / actors (docs/scaling.md).
"""
from __future__ import annotations

import sys

from common import Job, log, parser, run_nakt


def main(argv: list[str] | None = None) -> int:
    args = parser("annotate", __doc__).parse_args(argv)
    job = Job("annotate", args)
    extra = []
    if args.resume:
        from nakt_ray.annotation import parquet as ann
        from nakt_ray.runtime import storage

        if storage.exists(storage.join(job.cfg.annotations_dir, ann.SUMMARY)):
            log("annotate", f"{job.cfg.annotations_dir} is finished (it has {ann.SUMMARY}); nothing to do")
            return 0
        extra = ["--resume"]
    return run_nakt(job.argv("annotate", *extra))


if __name__ == "__main__":
    sys.exit(main())
