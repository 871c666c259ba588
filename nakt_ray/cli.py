"""``nakt``: the command line. Thin wrappers over the stage functions; heavy imports happen inside commands."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from nakt_ray.runtime import console
from nakt_ray.runtime.console import say


def _quiet(log_dir: str | Path) -> None:
    """Before Ray starts: Ray's output to ``<log_dir>/ray.log`` unless --verbose (``nakt_ray/runtime/console.py``)."""
    console.divert(log_dir)


def _max_failed(text: str) -> float:
    """``--max-failed``: a count of cases (``3``), or a share of them with a decimal point or a % (``0.05``, ``5%``)."""
    share = text.endswith("%") or "." in text
    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf") or (share and value > 1) or (not share and value != int(value)):
        raise argparse.ArgumentTypeError(f"got {text!r}; expected a count of cases (e.g. 3) or a share of them "
                                         "(e.g. 0.05 or 5%)")
    return value if share else int(value)


def _failed_cases(command: str, failed: int, total: int, where: str, limit: float | None,
                  announce: bool = True) -> int:
    """Say how many cases failed and where their reasons are (unless the command said it already); 1 when
    above ``--max-failed``, else 0."""
    if announce:
        say(f"nakt {command}: {failed} of {total} cases failed" + (f"; reasons in {where}" if failed else ""),
            error=True)
    if limit is None:
        return 0
    allowed = limit * total if isinstance(limit, float) else limit
    if failed > allowed:
        say(f"nakt {command}: error: {failed} of {total} cases failed, above --max-failed {limit:g}"
            + (f" ({allowed:g} cases)" if isinstance(limit, float) else ""), error=True)
        return 1
    return 0


def _add_max_failed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-failed", type=_max_failed, metavar="N|SHARE",
                   help="exit with code 1 when more cases than this fail: a count (0: none may fail) or a share "
                        "(0.05 or 5%%); the outputs are written either way (default: no limit, exit 0)")


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


def _require(*inputs: tuple[str, object, str]) -> None:
    """Refuse a missing input before Ray starts or an MLflow run opens (else: ~20 s of Ray start, then a FAILED
    run left in MLflow). Each input is ``(config key or --flag, path or None when unset, what it must be)``; URIs
    (``s3://``, ``models:/``, ``runs:/``) are checked where they are read."""
    from nakt_ray.errors import ConfigError, error

    for key, path, what in inputs:
        where = key if key.startswith("--") else f"config key '{key}'"
        text = str(path or "")
        if not text:
            raise error(ConfigError, where, f"not set; expected {what}")
        if "://" not in text and not text.startswith(("models:/", "runs:/")) and not Path(text).exists():
            raise error(ConfigError, where, f"{text!r} does not exist; expected {what}")


def _given(flag: str, value: object, key: str, default: object) -> tuple[str, object]:
    """``(name, path)`` of an input given by ``flag`` (when set) or else by config ``key``."""
    return (flag, value) if value else (key, default)


def _teacher_inputs(cfg) -> list[tuple[str, object, str]]:
    return [(f"teachers[{i}].checkpoint", cfg.teacher_checkpoint(t),
             f"teacher {t.name!r}'s model (or train it first: nakt train-teacher)") for i, t in enumerate(cfg.teachers)]


def _annotation_input(cfg, flag_value: str | None = None) -> tuple[str, object, str]:
    key, path = _given("--annotations", flag_value, "student.annotations" if cfg.student.annotations else
                       "annotate.output", cfg.student.annotations or cfg.annotations_dir)
    return key, path, "an annotation set written by `nakt annotate`"


def _labeled(key: str, path: object) -> list[tuple[str, object, str]]:
    """An optional labeled folder: checked only when set."""
    return [(key, path, "a labeled folder with images/ and masks/")] if path else []


def cmd_train_teacher(args: argparse.Namespace) -> int:
    from nakt_ray.training.teacher import train_teacher

    cfg = _load(args)
    names = args.teacher or [t.name for t in cfg.teachers if t.train_data]
    if not names:
        print("no teacher has train_data; nothing to train", file=sys.stderr)
        return 2
    _quiet(Path(cfg.run_dir) / "logs")
    for name in names:
        t0 = time.perf_counter()
        path = train_teacher(cfg, cfg.teacher(name))
        say(f"teacher {name}: {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from nakt_ray import tracking
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.annotation.pools import lean_monai
    from nakt_ray.runtime import storage
    from nakt_ray.runtime.cluster import init_ray

    cfg = _load(args)
    _require((*_given("--transferal", args.transferal, "data.transferal", cfg.data.transferal),
              "a folder of images (or one holding images/)"), *_teacher_inputs(cfg))
    _quiet(Path(cfg.run_dir) / "logs")
    if args.own_process:  # a `nakt annotate` process only annotates: its probe may import MONAI lean, as actors do
        lean_monai([(t.name, str(cfg.teacher_checkpoint(t))) for t in cfg.teachers], only_annotates=True)
    init_ray(cfg.ray)
    with tracking.stage_run(cfg, "annotate") as run:
        import mlflow

        summary = annotate(cfg, transferal=args.transferal, output=args.output, resume=args.resume)
        mlflow.log_metrics({k: summary[k] for k in ("cases_read", "annotated", "failed", "wall_s", "images_per_s")
                            if summary[k] is not None})  # images_per_s is None when a resume had nothing to do
        for name in ("manifest.json", "summary.json", "errors.json"):  # the output may be a URI (s3://...)
            mlflow.log_text(storage.read_text(storage.join(summary["output"], name)), f"annotations/{name}")
        summary["mlflow_run_id"] = run.info.run_id
    say(json.dumps(summary, indent=2))
    return _failed_cases("annotate", summary["failed"], summary["cases_read"],
                         storage.join(summary["output"], "errors.json"), args.max_failed)


def _parse_weights(text: str) -> list[float] | list[list[float]]:
    """``2,1,1`` -> one weight per teacher; ``1,1,0.2;1,0.5,1`` -> per-class weights, one row per teacher."""
    from nakt_ray.errors import ConfigError, error, expected

    try:
        rows = [[float(w) for w in row.split(",")] for row in text.split(";")]
    except ValueError:
        raise error(ConfigError, "--weights", expected(
            text, "numbers separated by ',' (one per teacher), or rows separated by ';' (one per teacher, one "
                  "weight per label)")) from None
    return rows if ";" in text else rows[0]


def cmd_fuse(args: argparse.Namespace) -> int:
    from nakt_ray.annotation.re_fuse import re_fuse
    from nakt_ray.config import RayConfig
    from nakt_ray.runtime.cluster import init_ray

    weights = _parse_weights(args.weights) if args.weights else None
    _quiet(Path(args.output).resolve().parent / "logs")  # beside the output: re_fuse wants an empty folder
    init_ray(RayConfig(address=args.ray_address))
    say(json.dumps(re_fuse(args.annotations, args.output, args.rule, weights, specialist=args.specialist), indent=2))
    return 0


def cmd_train_student(args: argparse.Namespace) -> int:
    from nakt_ray.training.student import train_student

    cfg = _load(args)
    _require(_annotation_input(cfg, args.annotations), *_labeled("data.val", cfg.data.val),
             *([("student.init", cfg.student.init, "a nakt model file")] if cfg.student.init else []))
    _quiet(Path(cfg.run_dir) / "logs")
    result = train_student(cfg, annotations_dir=args.annotations, resume=args.resume)
    say(json.dumps(result, indent=2, default=str))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from nakt_ray.training.student import finetune_student

    cfg = _load(args)
    _require(*_labeled("data.finetune", cfg.data.finetune), *_labeled("data.val", cfg.data.val))
    _quiet(Path(cfg.run_dir) / "logs")
    result = finetune_student(cfg, start="scratch" if args.from_scratch else "distilled", resume=args.resume)
    say(json.dumps(result, indent=2, default=str))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from nakt_ray.search.tune import tune_student

    cfg = _load(args)
    _require(_annotation_input(cfg), *_labeled("data.val", cfg.data.val))
    _quiet(Path(cfg.run_dir) / "logs")
    result = tune_student(cfg, resume=args.resume)
    say(result["table"])
    best = result["champion"]
    say(f"champion: {result['model_uri']} (version {result['version']}; trial {best['trial_id']}, best "
          f"{cfg.tune.metric} {best['best']:.4f})")
    say(f"search {result['name']}: {len(result['rows'])} trials in {result['wall_s']:.0f} s ({result['search_alg']}, "
          f"scheduler {cfg.tune.scheduler}); MLflow parent run {result['parent_run_id']}; "
          f"results: {result['files']['md']}, {result['files']['csv']}, {result['files']['png']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from nakt_ray import tracking
    from nakt_ray.evaluation.evaluate import evaluate, mlflow_metrics, models_from_args
    from nakt_ray.evaluation.report import check_output
    from nakt_ray.runtime.cluster import init_ray

    cfg = _load(args)
    data = args.data or cfg.data.test
    if not data:
        print("no labeled test set: set data.test in the config or pass --data", file=sys.stderr)
        return 2
    models = models_from_args(args.model)  # unnamed: models:/NAME@ALIAS -> NAME@ALIAS, .../t1/model.pt -> t1
    ensemble = []
    if not args.model:  # default: every teacher, their ensemble, and the student if it exists
        models = {t.name: str(cfg.teacher_checkpoint(t)) for t in cfg.teachers}
        ensemble = list(models) if len(models) > 1 else []
        if cfg.student_checkpoint.exists():
            models[cfg.student.name] = str(cfg.student_checkpoint)
    _require(*_labeled(*_given("--data", args.data, "data.test", cfg.data.test)),
             *(_teacher_inputs(cfg) if not args.model else
               [(f"--model {name}={src}", src, "a model file or an MLflow URI") for name, src in models.items()]))
    if not args.nsd_tolerance > 0:
        raise ValueError(f"--nsd-tolerance: got {args.nsd_tolerance}; expected a number of pixels > 0")
    # before Ray starts or a run opens: an earlier evaluation (the demo's) is never replaced unasked
    out_dir = check_output(args.output or Path(cfg.run_dir) / "evaluation", overwrite=args.overwrite)
    _quiet(Path(cfg.run_dir) / "logs")
    init_ray(cfg.ray)
    with tracking.stage_run(cfg, "evaluate"):
        import mlflow

        report = evaluate(cfg, models, data, out_dir, ensemble=ensemble, seed=args.seed,
                          nsd_tolerance=args.nsd_tolerance)
        mlflow.log_metrics(mlflow_metrics(report))
        for path in report["files"].values():  # only this evaluation's files, not whatever else the folder holds
            mlflow.log_artifact(path, artifact_path="evaluation")
    say(report["table"])
    say(f"\nwritten: {', '.join(report['files'].values())}")
    failed = len(report["failed"])
    return _failed_cases("evaluate", failed, report["cases"] + failed,
                         f"{Path(out_dir) / 'evaluation.json'} (its \"failed\" list)",
                         args.max_failed)


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
                            device=args.device, progress=progress, pseudonymize=args.pseudonymize,
                            volumes=args.volumes, slice_axis=args.slice_axis)
    if report["model"]["inferred"]:
        used = ("volume: RAS, per-volume z-score, each volume's spacing" if report.get("volumes")
                else "preprocess: resize to its input size, z-score")
        print(f"nakt predict: note: the model does not declare its {', '.join(report['model']['inferred'])}; "
              f"used what was inferred ({used}); declare them in its description YAML or nakt.* MLflow tags",
              file=sys.stderr)
    counts = report["counts"]
    print(f"{counts['ok']} of {counts['cases']} cases segmented into {args.out} ({counts['failed']} failed; "
          f"per-case status and reasons: {Path(args.out) / 'predictions.json'})")
    return _failed_cases("predict", counts["failed"], counts["cases"], str(Path(args.out) / "predictions.json"),
                         args.max_failed, announce=False)  # the line above says it


def cmd_demo(args: argparse.Namespace) -> int:
    if args.volumes:
        from nakt_ray.demo.run3d import run_demo_3d

        run_demo_3d(run_dir=args.run_dir, smoke=args.smoke)
        return 0
    from nakt_ray.demo.run import run_demo

    run_demo(run_dir=args.run_dir, smoke=args.smoke)
    return 0


def cmd_hosts(args: argparse.Namespace) -> int:
    import ray

    from nakt_ray.annotation.hosts import list_hosts, stop_hosts

    if not args.ray_address:
        raise ValueError("--ray-address is required: kept teachers live on a running cluster ('auto' joins the one "
                         "`ray start` left on this machine)")
    _quiet(Path(args.log_dir))
    ray.init(address=args.ray_address, logging_level="WARNING", include_dashboard=False)
    hosts = list_hosts()
    if args.stop:
        stopped = stop_hosts()
        say(json.dumps({"stopped": stopped, "hosts": hosts}, indent=2))
    else:
        say(json.dumps({"hosts": hosts}, indent=2))
    return 0


def _sub(sub: argparse._SubParsersAction, name: str, summary: str, about: str, examples: str,
         ray: bool = True) -> argparse.ArgumentParser:
    """A subcommand with its one-line ``summary``, a description and examples (shown by ``nakt NAME --help``)."""
    p = sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}.\n\n{about}",
                       epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(verbose_help="show Ray's, MLflow's and the libraries' own output on the console (default: "
                                "only nakt's; the rest goes to <run_dir>/logs/ray.log; also NAKT_VERBOSE=1)" if ray
                   else "accepted by every command for scripts' sake; this one starts no Ray and shows all it prints")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nakt", description="Network-agnostic knowledge transfer with Ray: teachers annotate, a student "
        "learns.\nAfter `make demo`, run it as .venv/bin/nakt, or `source .venv/bin/activate` first.",
        epilog="examples:\n  nakt demo --smoke\n  nakt annotate --config runs/demo/run.yaml --help",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "train-teacher", "train teachers on their labeled data (Ray Train)",
             "Each teacher with train_data in the config is trained and written to\n"
             "<run_dir>/teachers/NAME/model.pt; one MLflow run per teacher.",
             "nakt train-teacher --config runs/demo/run.yaml --teacher unet_a --epochs 2")
    _common(p)
    p.add_argument("--teacher", action="append", help="teacher name (repeatable; default: all with train_data)")
    p.add_argument("--epochs", type=int, help="override teacher_training.epochs")
    p.set_defaults(fn=cmd_train_teacher, epochs_key="teacher_training.epochs")

    p = _sub(sub, "annotate", "annotate the transferal set with every teacher (Ray Data)",
             "Every teacher's soft map, the fused label and quality figures go to Parquet (one row per case);\n"
             "cases that fail are listed in <output>/errors.json and the run goes on.",
             "nakt annotate --config runs/demo/run.yaml --transferal data/new_images --output runs/ann\n"
             "nakt annotate --config runs/demo/run.yaml --output runs/ann --resume --max-failed 0.05")
    _common(p)
    _add_max_failed(p)
    p.add_argument("--transferal", help="override data.transferal (a folder of images)")
    p.add_argument("--output", help="override annotate.output")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run: skip the cases already written to the output")
    p.set_defaults(fn=cmd_annotate)

    p = _sub(sub, "fuse", "re-fuse a stored annotation set with another rule/weights (no teacher runs)",
             "Reads the per-teacher maps stored by `nakt annotate` and writes a new set fused by --rule.\n"
             "Ray's output goes to logs/ray.log beside the output folder.",
             "nakt fuse --annotations runs/demo/annotations --output runs/demo/ann-staple --rule staple\n"
             "nakt fuse --annotations runs/demo/annotations --output runs/demo/ann-w --rule weighted_mean "
             "--weights 2,1,1 [--specialist 0.1]")
    p.add_argument("--annotations", required=True, help="annotation set folder written by `nakt annotate`")
    p.add_argument("--output", required=True, help="folder for the re-fused set")
    p.add_argument("--rule", required=True,
                   help="mean, weighted_mean, majority_vote, staple or confidence_weighted")
    p.add_argument("--weights", help="comma-separated, one per teacher in the set's order, e.g. 2,1,1; or per-class "
                   "weights: one row per teacher separated by ';', one weight per label, e.g. 1,1,0.2;1,0.5,1")
    p.add_argument("--specialist", type=float, metavar="TEMPERATURE", help="weigh teachers per case by their "
                   "confidence against their own over the set (docs/fusion.md); --weights become the prior")
    p.add_argument("--ray-address", help="join a running Ray cluster ('auto')")
    p.set_defaults(fn=cmd_fuse)

    p = _sub(sub, "train-student", "distil the annotations into a student (Ray Train), register it",
             "Trains config student on the annotation set, writes <run_dir>/student/NAME/model.pt and registers\n"
             "it in MLflow as tracking.registered_model@tracking.alias.",
             "nakt train-student --config runs/demo/run.yaml --epochs 3\n"
             "nakt train-student --config runs/demo/run.yaml --resume")
    _common(p)
    p.add_argument("--annotations", help="annotation set folder (default: <run_dir>/annotations)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run from its last checkpoint, in the same MLflow run")
    p.set_defaults(fn=cmd_train_student, epochs_key="training.epochs")

    p = _sub(sub, "finetune", "fine-tune the distilled student on the small labeled set data.finetune",
             "Continues the distilled student (or, with --from-scratch, its architecture from random weights)\n"
             "on data.finetune, choosing the best epoch on data.val.",
             "nakt finetune --config run.yaml --set data.finetune=data/few_labeled --epochs 10\n"
             "nakt finetune --config run.yaml --from-scratch")
    _common(p)
    p.add_argument("--from-scratch", action="store_true",
                   help="the 'labeled set only' baseline: the student's architecture from random weights")
    p.add_argument("--epochs", type=int, help="override finetune.epochs")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run from its last checkpoint, in the same MLflow run")
    p.set_defaults(fn=cmd_finetune, epochs_key="finetune.epochs")

    p = _sub(sub, "tune", "search students and fusion (Ray Tune over tune.space), register the best",
             "Each trial is a student training; the table of trials and the champion are written to\n"
             "<run_dir>/tune/ and the champion is registered in MLflow.",
             "nakt tune --config run.yaml --set tune.num_samples=8\nnakt tune --config run.yaml --resume")
    _common(p)
    p.add_argument("--epochs", type=int, help="override training.epochs (each trial's budget)")
    p.add_argument("--resume", action="store_true",
                   help="finish the interrupted search recorded in <run_dir>/tune/search.json, same MLflow run")
    p.set_defaults(fn=cmd_tune, epochs_key="training.epochs")

    p = _sub(sub, "evaluate", "Dice, IoU, HD95, NSD with CIs of models and the teachers' ensemble",
             "Scores models on a labeled folder (images/ + masks/) at the original size; writes\n"
             "evaluation.md, evaluation.json (failed cases in its \"failed\" list) and evaluation_cases.csv.",
             "nakt evaluate --config runs/demo/run.yaml --output runs/demo/eval2\n"
             "nakt evaluate --config runs/demo/run.yaml --data data/test --model models:/nakt-demo-student@candidate "
             "--output runs/eval-test --max-failed 0")
    _common(p)
    _add_max_failed(p)
    p.add_argument("--data", help="labeled folder (default: data.test)")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                   help="model file or MLflow URI to score (repeatable; default: teachers, their ensemble, the "
                        "student); unnamed, models:/NAME@ALIAS is labelled NAME@ALIAS, .../t1/model.pt t1")
    p.add_argument("--output", help="output folder (default: <run_dir>/evaluation); must be empty or new")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the evaluation files of a non-empty --output (other files stay)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap CIs (default: 0; same seed, same CIs)")
    p.add_argument("--nsd-tolerance", type=float, default=2.0,
                   help="NSD tolerance in pixels of the original images, or mm where their headers give the "
                        "pixel size (volumes always: mm) (default: 2)")
    p.set_defaults(fn=cmd_evaluate)

    p = _sub(sub, "export", "export a model to TorchScript and ONNX (parity-checked, with descriptions)",
             "Writes model.ts / model.onnx, a description YAML beside each and export.json; each export is\n"
             "checked against the torch model on a random input.",
             "nakt export --model runs/demo/student/student/model.pt --out deploy/\n"
             "nakt export --model models:/nakt-demo-student@candidate --tracking-uri sqlite:///runs/demo/mlflow.db "
             "--out deploy/ --formats onnx", ray=False)
    p.add_argument("--model", required=True, help="nakt model file or MLflow URI (models:/NAME@ALIAS, runs:/ID/model)")
    p.add_argument("--out", required=True, help="output folder (model.ts, model.onnx, their YAMLs, export.json)")
    p.add_argument("--formats", default="torchscript,onnx", help="comma-separated: torchscript, onnx")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI for models:/ and runs:/ sources")
    p.set_defaults(fn=cmd_export)

    p = _sub(sub, "predict", "segment a folder of images: mask and overlay PNGs at the original size",
             "Any model source (nakt file, exported .ts/.onnx, MLflow URI); cases that fail are listed with\n"
             "their reasons in <out>/predictions.json and the others are written.",
             "nakt predict --model runs/demo/student/student/model.pt --images runs/demo/data/test --out pred/\n"
             "nakt predict --model deploy/model.onnx --images scans/ --out pred/ --no-overlays --max-failed 0",
             ray=False)
    _add_max_failed(p)
    p.add_argument("--model", required=True,
                   help="nakt model file, TorchScript/ONNX file with its YAML, or MLflow URI")
    p.add_argument("--images", required=True, help="folder of images (or a folder with images/)")
    p.add_argument("--out", required=True, help="output folder (<case>_mask.png, <case>_overlay.png, predictions.json)")
    p.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=True,
                   help="also write overlay PNGs (default: yes)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--pseudonymize", action="store_true",
                   help="name cases by a keyed hash of their file names (key: NAKT_PSEUDONYM_KEY or "
                        "NAKT_PSEUDONYM_KEY_FILE)")
    p.add_argument("--volumes", action=argparse.BooleanOptionalAction, default=None,
                   help="segment volumes into NIfTI masks on their original grid, plus a mid-slice montage "
                        "(default: yes for a 3D model; --volumes with a 2D model predicts them slice by slice)")
    p.add_argument("--slice-axis", type=int, default=0,
                   help="with --volumes and a 2D model: the volume axis (0, 1, 2 of D, H, W) it slices along")
    p.add_argument("--tracking-uri", help="MLflow tracking/registry URI for models:/ and runs:/ sources")
    p.set_defaults(fn=cmd_predict)

    from nakt_ray.demo.run import DEMO_TIME, MARKER
    p = _sub(sub, "hosts", "list (or stop) the teachers kept loaded on a running cluster",
             "Runs with annotate.keep_teachers_s > 0 leave their teachers loaded in detached Ray actors until no run\n"
             "has used them for that long. This lists each host (teachers, node, calls, idle seconds) and with\n"
             "--stop ends them all at once, freeing their CPUs and GPUs.",
             "nakt hosts --ray-address auto\nnakt hosts --ray-address auto --stop")
    p.add_argument("--ray-address", help="the running cluster ('auto': the one `ray start` left on this machine)")
    p.add_argument("--stop", action="store_true", help="end every kept teacher host now")
    p.add_argument("--log-dir", default="runs/logs", help="where Ray's own output goes (default: runs/logs)")
    p.set_defaults(fn=cmd_hosts)

    from nakt_ray.demo.run3d import DEMO3D_TIME

    p = _sub(sub, "demo", f"the whole flow on synthetic data ({DEMO_TIME[False]})",
             "Generates three labeled sites, trains three teachers, annotates, distils and registers a student,\n"
             "evaluates and segments with the registered model. Run it again on the same --run-dir and it replaces\n"
             f"the earlier demo's output there (a folder holding no {MARKER} file is refused, untouched).",
             "nakt demo                  # into runs/demo\nnakt demo --smoke          # into runs/smoke\n"
             "nakt demo --3d             # volumes, into runs/demo3d\n"
             "nakt demo --run-dir runs/demo2 --verbose")
    p.add_argument("--run-dir", default=None, help="where everything goes (default: runs/demo, with --smoke "
                                                   "runs/smoke); an earlier demo's output there is replaced")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny version of the same path ({DEMO_TIME[True]}; with --3d {DEMO3D_TIME[True]})")
    p.add_argument("--3d", dest="volumes", action="store_true",
                   help=f"the flow on synthetic 3D volumes ({DEMO3D_TIME[False]}): three 3D teachers of three "
                        "architectures on MR/CT-like sites, a 3D student, Dice and HD95 in mm (default run dir "
                        "runs/demo3d, with --smoke runs/smoke3d)")
    p.set_defaults(fn=cmd_demo)
    for p in sub.choices.values():  # last in every command's option list
        p.add_argument("--verbose", action="store_true", default=console.verbose_from_env(),
                       help=p.get_default("verbose_help"))
    return parser


def main(argv: list[str] | None = None) -> int:
    from nakt_ray.errors import NaktError
    from nakt_ray.tracking import TrackingUnreachable

    args = build_parser().parse_args(argv)
    args.own_process = argv is None  # the `nakt` command itself, not a caller in its own process
    # A `nakt` process (argv None) keeps Ray's output in the log until it exits; a caller in its own process
    # (jobs/common.py, tests) gets its stdout and stderr back when the command returns.
    with console.session(verbose=args.verbose, keep=argv is None):
        try:
            return args.fn(args)
        # NaktError: every bad-input error of nakt (config, data, model files, teachers, export). ValueError: a bad
        # argument checked where no NaktError applies (a device name, a batch size).
        except (NaktError, FileExistsError, FileNotFoundError, ValueError, TrackingUnreachable) as err:
            say(f"nakt {args.command}: error: {err}", error=True)
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
