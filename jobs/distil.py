"""Distillation job: the student trained on the annotation set (Ray Train, DDP) and registered in MLflow
(``nakt train-student`` on a cluster); then, when ``data.finetune`` is set, fine-tuned on that small labeled set
(``nakt finetune``, registered as ``<alias>-finetuned``).

    ray job submit -- python jobs/distil.py --config run.yaml [--set KEY=VALUE ...] [--resume]

Reads ``student.annotations`` or ``annotate.output`` (a shared path or ``s3://`` / ``gs://``); checkpoints go to
``ray.storage_path`` (default ``<run_dir>/ray_train``). ``--resume`` keeps a finished training, resumes an
interrupted one from its last checkpoint in the same MLflow run, starts one that never ran.
"""
from __future__ import annotations

import sys
from pathlib import Path

from common import Job, log, parser, run_nakt, training_resume_flag


def main(argv: list[str] | None = None) -> int:
    args = parser("distil", __doc__).parse_args(argv)
    job = Job("distil", args)
    steps = [("train-student", job.cfg.student_checkpoint)]
    if job.cfg.data.finetune:
        steps.append(("finetune", Path(job.cfg.run_dir) / "student" / f"{job.cfg.student.name}-finetuned" / "model.pt"))
    for command, model_path in steps:
        extra: list[str] | None = []
        if args.resume:
            extra = training_resume_flag(model_path)
            if extra is None:
                log("distil", f"{command}: {model_path} is finished; kept")
                continue
        rc = run_nakt(job.argv(command, *extra))
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
