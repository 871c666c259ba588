"""``nakt``: the command line. Thin wrappers over the stage functions; heavy imports happen inside commands."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _common(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("--config", required=config_required, help="run config YAML (see docs/config.md)")
    p.add_argument("--run-dir", help="override run_dir")
    p.add_argument("--tracking-uri", help="override tracking.uri (MLflow)")
    p.add_argument("--ray-address", help="override ray.address ('auto' joins a running cluster)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set training.epochs=3 --set teachers.0.actors=2")


def _load(args: argparse.Namespace):
    from nakt_ray import config

    overrides = list(args.set)
    for flag, key in (("run_dir", "run_dir"), ("tracking_uri", "tracking.uri"), ("ray_address", "ray.address")):
        if getattr(args, flag, None):
            overrides.append(f"{key}={getattr(args, flag)}")
    if getattr(args, "epochs", None):
        overrides.append(f"{args.epochs_key}={args.epochs}")
    return config.load(args.config, overrides)


def cmd_train_teacher(args: argparse.Namespace) -> int:
    from nakt_ray.training.teacher import train_teacher

    cfg = _load(args)
    names = args.teacher or [t.name for t in cfg.teachers if t.train_data]
    if not names:
        print("no teacher has train_data; nothing to train", file=sys.stderr)
        return 2
    for name in names:
        t0 = time.perf_counter()
        path = train_teacher(cfg, cfg.teacher(name))
        print(f"teacher {name}: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from nakt_ray import tracking
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.runtime import storage
    from nakt_ray.runtime.cluster import init_ray

    cfg = _load(args)
    init_ray(cfg.ray)
    with tracking.stage_run(cfg, "annotate") as run:
        import mlflow

        summary = annotate(cfg, transferal=args.transferal, output=args.output, resume=args.resume)
        mlflow.log_metrics({k: summary[k] for k in ("cases_read", "annotated", "failed", "wall_s", "images_per_s")
                            if summary[k] is not None})  # images_per_s is None when a resume had nothing to do
        for name in ("manifest.json", "summary.json", "errors.json"):  # the output may be a URI (s3://...)
            mlflow.log_text(storage.read_text(storage.join(summary["output"], name)), f"annotations/{name}")
        summary["mlflow_run_id"] = run.info.run_id
    print(json.dumps(summary, indent=2))
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    from nakt_ray.annotation.re_fuse import re_fuse
    from nakt_ray.config import RayConfig
    from nakt_ray.runtime.cluster import init_ray

    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    init_ray(RayConfig(address=args.ray_address))
    print(json.dumps(re_fuse(args.annotations, args.output, args.rule, weights), indent=2))
    return 0


def cmd_train_student(args: argparse.Namespace) -> int:
    from nakt_ray.training.student import train_student

    cfg = _load(args)
    result = train_student(cfg, annotations_dir=args.annotations, resume=args.resume)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from nakt_ray.training.student import finetune_student

    cfg = _load(args)
    result = finetune_student(cfg, start="scratch" if args.from_scratch else "distilled", resume=args.resume)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from nakt_ray.search.tune import tune_student

    cfg = _load(args)
    result = tune_student(cfg, resume=args.resume)
    print(result["table"])
    best = result["champion"]
    print(f"champion: {result['model_uri']} (version {result['version']}; trial {best['trial_id']}, best "
          f"{cfg.tune.metric} {best['best']:.4f})")
    print(f"search {result['name']}: {len(result['rows'])} trials in {result['wall_s']:.0f} s ({result['search_alg']}, "
          f"scheduler {cfg.tune.scheduler}); MLflow parent run {result['parent_run_id']}; "
          f"results: {result['files']['md']}, {result['files']['csv']}, {result['files']['png']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nakt_ray import tracking
    from nakt_ray.evaluation.evaluate import evaluate
    from nakt_ray.runtime.cluster import init_ray

    cfg = _load(args)
    data = args.data or cfg.data.test
    if not data:
        print("no labeled test set: set data.test in the config or pass --data", file=sys.stderr)
        return 2
    models: dict[str, str] = {}
    for item in args.model:
        name, _, path = item.rpartition("=")
        models[name or Path(path).parent.name] = path
    ensemble = []
    if not args.model:  # default: every teacher, their ensemble, and the student if it exists
        models = {t.name: str(cfg.teacher_checkpoint(t)) for t in cfg.teachers}
        ensemble = list(models) if len(models) > 1 else []
        if cfg.student_checkpoint.exists():
            models[cfg.student.name] = str(cfg.student_checkpoint)
    out_dir = Path(args.output or Path(cfg.run_dir) / "evaluation")
    init_ray(cfg.ray)
    with tracking.stage_run(cfg, "evaluate"):
        import mlflow

        report = evaluate(cfg, models, data, out_dir, ensemble=ensemble)
        for name, r in report["models"].items():
            mlflow.log_metrics({f"dice.{name}": r["dice"], f"iou.{name}": r["iou"]})
        mlflow.log_artifacts(str(out_dir), artifact_path="evaluation")
    print(report["table"])
    print(f"\nwritten: {out_dir / 'evaluation.md'}, {out_dir / 'evaluation.json'}")
    return 0


def _use_tracking_uri(uri: str | None) -> None:
    """Point MLflow (tracking and registry) at ``uri`` for models:/ and runs:/ sources; None keeps MLflow's default."""
    if uri:
        from nakt_ray.tracking import use_uri

        use_uri(uri)


def cmd_export(args: argparse.Namespace) -> int:
    from nakt_ray.inference.export import export

    _use_tracking_uri(args.tracking_uri)
    report = export(args.model, args.out, args.formats)
    for fmt, f in report["files"].items():
        print(f"{fmt}: {f['model']} (+ {Path(f['description']).name}); max |difference| to the torch model "
              f"{f['max_abs_diff']:.2g} (tolerance {f['tolerance']:g})")
    inferred = report["lineage"].get("inferred")
    if inferred:
        print(f"nakt export: note: the model does not declare its {', '.join(inferred)}; the descriptions hold what "
              "was inferred (edit the YAMLs, or set the nakt.* MLflow tags and export again)", file=sys.stderr)
    print(f"written: {Path(args.out) / 'export.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from nakt_ray.inference.predict import predict_folder

    def progress(done: int, total: int, failed: int) -> None:
        print(f"nakt predict: {done}/{total} cases" + (f" ({failed} failed)" if failed else ""), file=sys.stderr,
              flush=True)

    _use_tracking_uri(args.tracking_uri)
    report = predict_folder(args.model, args.images, args.out, batch_size=args.batch_size, overlays=args.overlays,
                            device=args.device, progress=progress)
    if report["model"]["inferred"]:
        print(f"nakt predict: note: the model does not declare its {', '.join(report['model']['inferred'])}; "
              "used what was inferred (preprocess: resize to its input size, z-score); declare them in its "
              "description YAML or nakt.* MLflow tags", file=sys.stderr)
    counts = report["counts"]
    print(f"{counts['ok']} of {counts['cases']} cases segmented into {args.out} ({counts['failed']} failed; "
          f"per-case status and reasons: {Path(args.out) / 'predictions.json'})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from nakt_ray.demo.run import run_demo

    run_demo(run_dir=args.run_dir, smoke=args.smoke)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nakt", description="Network-agnostic knowledge transfer with Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-teacher", help="train teachers on their labeled data (Ray Train)")
    _common(p)
    p.add_argument("--teacher", action="append", help="teacher name (repeatable; default: all with train_data)")
    p.add_argument("--epochs", type=int, help="override teacher_training.epochs")
    p.set_defaults(fn=cmd_train_teacher, epochs_key="teacher_training.epochs")

    p = sub.add_parser("annotate", help="annotate the transferal set with every teacher (Ray Data)")
    _common(p)
    p.add_argument("--transferal", help="override data.transferal (a folder of images)")
    p.add_argument("--output", help="override annotate.output")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run: skip the cases already written to the output")
    p.set_defaults(fn=cmd_annotate)

    p = sub.add_parser("fuse", help="re-fuse a stored annotation set with another rule/weights (no teacher runs)")
    p.add_argument("--annotations", required=True, help="annotation set folder written by `nakt annotate`")
    p.add_argument("--output", required=True, help="folder for the re-fused set")
    p.add_argument("--rule", required=True, help="mean, weighted_mean, majority_vote or staple")
    p.add_argument("--weights", help="comma-separated, one per teacher in the set's order, e.g. 2,1,1")
    p.add_argument("--ray-address", help="join a running Ray cluster ('auto')")
    p.set_defaults(fn=cmd_fuse)

    p = sub.add_parser("train-student", help="distil the annotations into a student (Ray Train), register it")
    _common(p)
    p.add_argument("--annotations", help="annotation set folder (default: <run_dir>/annotations)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run from its last checkpoint, in the same MLflow run")
    p.set_defaults(fn=cmd_train_student, epochs_key="training.epochs")

    p = sub.add_parser("finetune", help="fine-tune the distilled student on the small labeled set data.finetune")
    _common(p)
    p.add_argument("--from-scratch", action="store_true",
                   help="the 'labeled set only' baseline: the student's architecture from random weights")
    p.add_argument("--epochs", type=int, help="override finetune.epochs")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run from its last checkpoint, in the same MLflow run")
    p.set_defaults(fn=cmd_finetune, epochs_key="finetune.epochs")

    p = sub.add_parser("tune", help="search students and fusion (Ray Tune over tune.space), register the best")
    _common(p)
    p.add_argument("--epochs", type=int, help="override training.epochs (each trial's budget)")
    p.add_argument("--resume", action="store_true",
                   help="finish the interrupted search recorded in <run_dir>/tune/search.json, same MLflow run")
    p.set_defaults(fn=cmd_tune, epochs_key="training.epochs")

    p = sub.add_parser("evaluate", help="Dice/IoU of models and the teachers' ensemble on a labeled set")
    _common(p)
    p.add_argument("--data", help="labeled folder (default: data.test)")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                   help="model file to score (repeatable; default: teachers, their ensemble, the student)")
    p.add_argument("--output", help="output folder (default: <run_dir>/evaluation)")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("export", help="export a model to TorchScript and ONNX (parity-checked, with descriptions)")
    p.add_argument("--model", required=True, help="nakt model file or MLflow URI (models:/NAME@ALIAS, runs:/ID/model)")
    p.add_argument("--out", required=True, help="output folder (model.ts, model.onnx, their YAMLs, export.json)")
    p.add_argument("--formats", default="torchscript,onnx", help="comma-separated: torchscript, onnx")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI for models:/ and runs:/ sources")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("predict", help="segment a folder of images: mask and overlay PNGs at the original size")
    p.add_argument("--model", required=True,
                   help="nakt model file, TorchScript/ONNX file with its YAML, or MLflow URI")
    p.add_argument("--images", required=True, help="folder of images (or a folder with images/)")
    p.add_argument("--out", required=True, help="output folder (<case>_mask.png, <case>_overlay.png, predictions.json)")
    p.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=True,
                   help="also write overlay PNGs (default: yes)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI for models:/ and runs:/ sources")
    p.set_defaults(fn=cmd_predict)

    p = sub.add_parser("demo", help="the whole flow on synthetic data (about 10 min on 2 CPU cores)")
    p.add_argument("--run-dir", default=None, help="where everything goes (default: runs/demo or runs/smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny version of the same path (< 2 min)")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nakt_ray.errors import NaktError
    from nakt_ray.tracking import TrackingUnreachable

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    # NaktError: every bad-input error of nakt (config, data, model files, teachers, export). ValueError: a bad
    # argument checked where no NaktError applies (a device name, a batch size).
    except (NaktError, FileExistsError, FileNotFoundError, ValueError, TrackingUnreachable) as err:
        print(f"nakt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
