"""Search job: a Ray Tune search over student training and fusion on the annotation set, the best student
registered (``nakt tune`` on a cluster; the space is ``tune.space`` in the config).

    ray job submit -- python jobs/tune.py --config run.yaml [--set KEY=VALUE ...] [--resume]

Trials run in parallel up to ``tune.max_concurrent_trials``, each with ``tune.cpus_per_trial`` /
``tune.gpus_per_trial`` plus its Ray Train workers. ``--resume`` finishes the interrupted search recorded under
``<run_dir>/tune``.
"""
from __future__ import annotations

import sys

from common import Job, has_command, log, parser, run_nakt


def main(argv: list[str] | None = None) -> int:
    args = parser("tune", __doc__).parse_args(argv)
    if not has_command("tune"):
        log("tune", "error: this nakt-ray has no `nakt tune` command (nakt_ray/search/); upgrade the image")
        return 2
    job = Job("tune", args)
    return run_nakt(job.argv("tune", *(["--resume"] if args.resume else [])))


if __name__ == "__main__":
    sys.exit(main())
