"""The whole pipeline as one job: train-teacher (teachers with ``train_data``) -> annotate -> train-student ->
evaluate (when ``data.test`` is set), each stage the ``nakt`` command itself, each with its own MLflow run.

    ray job submit -- python jobs/pipeline.py --config run.yaml [--set KEY=VALUE ...] [--resume]

stderr: one line per stage (start, end, wall time) and each stage's own output. stdout: one summary JSON
(``status``, per stage ``status`` ok / skipped / failed, ``wall_s`` and its result), also written to
``<run_dir>/pipeline.json``. The job stops at the first failed stage (exit code 1). ``--resume`` keeps every stage
that finished and resumes the interrupted one, so the same submission can be repeated after a failure.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from common import Job, last_json, log, parser, run_nakt_captured, training_resume_flag


def train_teachers(job: Job) -> dict[str, Any]:
    names = [t.name for t in job.cfg.teachers if t.train_data]
    if job.args.resume:
        names = [n for n in names if not job.cfg.teacher_checkpoint(job.cfg.teacher(n)).exists()]
    if not names:
        return {"status": "skipped", "reason": "no teacher to train (none has train_data, or all are trained)"}
    rc, _ = run_nakt_captured(job.argv("train-teacher", *[a for n in names for a in ("--teacher", n)]))
    return {"rc": rc, "result": {n: str(job.cfg.teacher_checkpoint(job.cfg.teacher(n))) for n in names}}


def annotate(job: Job) -> dict[str, Any]:
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.runtime import storage

    summary = storage.join(job.cfg.annotations_dir, ann.SUMMARY)
    if job.args.resume and storage.exists(summary):
        return {"status": "skipped", "reason": "finished earlier",
                "result": json.loads(storage.read_text(summary))}
    rc, out = run_nakt_captured(job.argv("annotate", *(["--resume"] if job.args.resume else [])))
    return {"rc": rc, "result": last_json(out)}


def train_student(job: Job) -> dict[str, Any]:
    extra: list[str] | None = []
    if job.args.resume:
        extra = training_resume_flag(job.cfg.student_checkpoint)
        if extra is None:
            return {"status": "skipped", "reason": "finished earlier",
                    "result": {"model_path": str(job.cfg.student_checkpoint)}}
    rc, out = run_nakt_captured(job.argv("train-student", *extra))
    result = last_json(out)
    if isinstance(result, dict):
        result = {k: result.get(k) for k in ("model_path", "model_uri", "version", "run_id", "metrics", "wall_s")}
    return {"rc": rc, "result": result}


def evaluate(job: Job) -> dict[str, Any]:
    if not job.cfg.data.test:
        return {"status": "skipped", "reason": "no data.test"}
    out_dir = Path(job.cfg.run_dir) / "evaluation"
    rc, _ = run_nakt_captured(job.argv("evaluate", "--output", str(out_dir), "--overwrite"))
    result = None
    if rc == 0:
        report = json.loads((out_dir / "evaluation.json").read_text())
        result = {"report": str(out_dir / "evaluation.md"),
                  "models": {name: {"dice": r["dice"], "iou": r["iou"]} for name, r in report["models"].items()}}
    return {"rc": rc, "result": result}


STAGES = (("train-teacher", train_teachers), ("annotate", annotate), ("train-student", train_student),
          ("evaluate", evaluate))


def main(argv: list[str] | None = None) -> int:
    args = parser("pipeline", __doc__).parse_args(argv)
    job = Job("pipeline", args)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"config": str(args.config), "run_dir": job.cfg.run_dir, "ray_address": job.address,
                               "resume": args.resume, "status": "succeeded", "stages": []}
    for name, stage in STAGES:
        log("pipeline", f"stage {name}: start")
        s0 = time.perf_counter()
        try:
            record = stage(job)
        except Exception as err:  # noqa: BLE001 - recorded in the summary; the traceback goes to the log
            traceback.print_exc()
            record = {"rc": 1, "error": f"{type(err).__name__}: {err}"}
        rc = record.pop("rc", 0)
        record = {"stage": name, "status": record.pop("status", "ok" if rc == 0 else "failed"),
                  "wall_s": round(time.perf_counter() - s0, 2), **record}
        summary["stages"].append(record)
        log("pipeline", f"stage {name}: {record['status']} in {record['wall_s']:.1f} s")
        if record["status"] == "failed":
            summary["status"] = "failed"
            break
    summary["wall_s"] = round(time.perf_counter() - t0, 2)
    text = json.dumps(summary, indent=2, default=str)
    Path(job.cfg.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(job.cfg.run_dir) / "pipeline.json").write_text(text)
    print(text)
    return 0 if summary["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
