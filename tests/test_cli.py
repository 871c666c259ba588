"""The command line end to end, as a user runs it: `nakt demo --smoke` as a subprocess, then stages on its output."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import HC18

pytestmark = pytest.mark.slow
NAKT = [sys.executable, "-m", "nakt_ray.cli"]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "NAKT_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}


def run(args, cwd, timeout=600):
    return subprocess.run(NAKT + args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


SMOKE_CONSOLE: dict[str, str] = {}  # the smoke demo's stdout and stderr, for the console tests


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    proc = run(["demo", "--smoke", "--run-dir", str(root / "run")], cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    SMOKE_CONSOLE.update(stdout=proc.stdout, stderr=proc.stderr)
    return root / "run", proc.stdout


def test_smoke_demo_prints_the_table_and_locations(smoke):
    run_dir, out = smoke
    for row in ("| unet_a |", "| segresnet_b |", "| attention_unet_c |", "| teachers_ensemble |", "| student |"):
        assert row in out
    assert "Parquet annotations:" in out and "models:/nakt-demo-student@candidate" in out
    report = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    assert all(0.0 <= r["dice"] <= 1.0 and r["n"] == 8 for r in report["models"].values())
    summary = json.loads((run_dir / "annotations" / "summary.json").read_text())
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (16, 16, 0)


def test_smoke_demo_mlflow_store_holds_runs_and_registered_student(smoke, tmp_path):
    run_dir, _ = smoke
    script = f"""
import mlflow, numpy as np, torch
mlflow.set_tracking_uri("sqlite:///{run_dir.resolve()}/mlflow.db")
runs = mlflow.search_runs(experiment_names=["nakt-demo"])
stages = sorted(runs["tags.nakt.stage"])
from nakt_ray.models.mlflow_format import load_registered
model, _ = load_registered("models:/nakt-demo-student@candidate")
model.eval()
with torch.no_grad():
    y = model(torch.zeros(1, 1, 64, 64))
mv = mlflow.MlflowClient().get_model_version_by_alias("nakt-demo-student", "candidate")
print(stages, tuple(y.shape), mv.tags["nakt.teachers"], mv.tags["nakt.fusion_rule"])
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("['annotate', 'evaluate', 'train-student', 'train-teacher', 'train-teacher', 'train-teacher'] "
            "(1, 2, 64, 64) unet_a,segresnet_b,attention_unet_c mean") in proc.stdout


@pytest.mark.fault  # the CLI end to end on a real folder (73 s); the library path's error rows are in test_annotate.py
def test_annotate_cli_on_a_folder_with_a_corrupt_file(smoke, tmp_path):
    run_dir, _ = smoke
    images = tmp_path / "incoming"
    images.mkdir()
    for p in sorted((run_dir / "data" / "test" / "images").iterdir())[:5]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "broken.png").write_bytes(b"not an image")
    # --max-failed 0: the set is written all the same, and the command says so and exits 1 (docs/decisions.md, 49)
    proc = run(["annotate", "--config", str(run_dir / "run.yaml"), "--transferal", str(images),
                "--output", str(tmp_path / "ann"), "--max-failed", "0"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"nakt annotate: 1 of 6 cases failed; reasons in {tmp_path / 'ann' / 'errors.json'}" in proc.stderr
    assert "nakt annotate: error: 1 of 6 cases failed, above --max-failed 0" in proc.stderr
    summary = json.loads((tmp_path / "ann" / "summary.json").read_text())
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (6, 5, 1)
    errors = json.loads((tmp_path / "ann" / "errors.json").read_text())
    assert errors[0]["case_id"] == "broken" and "broken.png" in errors[0]["reason"]

    # predict (no Ray): a count, a share and no limit
    model = str(run_dir / "student" / "student" / "model.pt")
    for i, (limit, rc) in enumerate((("0", 1), ("1", 0), ("0.1", 1), ("20%", 0), (None, 0))):
        proc = run(["predict", "--model", model, "--images", str(images), "--out", str(tmp_path / f"pred{i}"),
                    "--no-overlays", *(["--max-failed", limit] if limit else [])], cwd=tmp_path, timeout=300)
        assert proc.returncode == rc, (limit, proc.stderr[-3000:])
        assert "5 of 6 cases segmented" in proc.stdout and "1 failed" in proc.stdout
        assert ("above --max-failed" in proc.stderr) == (rc == 1), (limit, proc.stderr[-2000:])

    # evaluate: a labeled folder with one corrupt image
    labeled = tmp_path / "labeled"
    for sub in ("images", "masks"):
        (labeled / sub).mkdir(parents=True)
        for q in sorted((run_dir / "data" / "test" / sub).iterdir())[:3]:
            (labeled / sub / q.name).write_bytes(q.read_bytes())
    (labeled / "images" / "broken.png").write_bytes(b"not an image")
    (labeled / "masks" / "broken.png").write_bytes(q.read_bytes())
    proc = run(["evaluate", "--config", str(run_dir / "run.yaml"), "--data", str(labeled), "--model",
                f"student={model}", "--output", str(tmp_path / "eval"), "--max-failed", "0"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "nakt evaluate: 1 of 4 cases failed; reasons in" in proc.stderr and "evaluation.json" in proc.stderr
    assert "above --max-failed 0" in proc.stderr
    assert [f["case_id"] for f in json.loads((tmp_path / "eval" / "evaluation.json").read_text())["failed"]] == [
        "broken"]


@pytest.mark.hc18
@pytest.mark.fault  # a whole real-data run (33 s): in the system tier, to keep `make test` near 10 minutes
@pytest.mark.skipif(not (HC18 / "images").is_dir(), reason=f"HC18 data not found at {HC18}")
def test_annotate_hc18_with_demo_teachers_one_row_per_image(smoke, tmp_path):
    import pyarrow.parquet as pq

    run_dir, _ = smoke
    proc = run(["annotate", "--config", str(run_dir / "run.yaml"), "--transferal", str(HC18 / "images"),
                "--output", str(tmp_path / "hc18")], cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pq.ParquetDataset(sorted(str(p) for p in (tmp_path / "hc18").glob("*.parquet"))).read(
        columns=["case_id", "status"])
    images = sorted(p.stem for p in (HC18 / "images").iterdir())
    assert sorted(table.column("case_id").to_pylist()) == images  # exactly one row per image
    assert set(table.column("status").to_pylist()) == {"ok"}


def test_cli_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"teachers": [{"name": "a", "arch": "unet"}], "trainig": {"epochs": 1}}))
    proc = run(["annotate", "--config", str(bad)], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "unknown config key 'trainig'; did you mean 'training'" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"teachers": [{"name": "a", "arch": "unet", "train_data": str(tmp_path / "no")}],
                                    "run_dir": str(tmp_path / "run")}))
    proc = run(["train-teacher", "--config", str(good)], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and str(tmp_path / "no") in proc.stderr
    proc = run(["annotate", "--config", str(good), "--set", "teachers.0.arch=unett"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "did you mean 'unet'" in proc.stderr


def test_missing_inputs_are_refused_before_ray_or_mlflow_start(tmp_path):
    """A missing transferal folder, teacher model, annotation set or test set: exit 2 in seconds, naming the key
    and the path, with no Ray started and no MLflow store or run created (it took ~23 s and left a FAILED run)."""
    import time

    teacher = tmp_path / "t.ts"
    teacher.write_bytes(b"only its existence is checked before Ray starts")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"),
                                   "teachers": [{"name": "a", "checkpoint": str(teacher)}, {"name": "b"}]}))
    gone = tmp_path / "no_such_folder"
    cases = [
        (["annotate", "--transferal", str(gone)], f"--transferal: '{gone}' does not exist"),
        (["annotate", "--set", f"data.transferal={gone}"], f"config key 'data.transferal': '{gone}' does not exist"),
        (["annotate", "--transferal", str(tmp_path)],
         f"config key 'teachers[1].checkpoint': '{tmp_path / 'run' / 'teachers' / 'b' / 'model.pt'}' does not exist"),
        (["train-student", "--annotations", str(gone)], f"--annotations: '{gone}' does not exist"),
        (["evaluate", "--set", f"data.test={gone}"], f"config key 'data.test': '{gone}' does not exist"),
    ]
    for args, message in cases:
        t0 = time.perf_counter()
        proc = run([args[0], "--config", str(cfg), *args[1:]], cwd=tmp_path, timeout=120)
        took = time.perf_counter() - t0
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr[-2000:])
        assert took < 20, f"{args}: {took:.1f} s"  # ~2 s (Python and the config); Ray alone starts in ~5-20 s
        assert not (tmp_path / "run" / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
        assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_smoke_demo_console_shows_nakt_only_and_ray_goes_to_a_log(smoke):
    """`nakt demo` printed ~970 lines, ~25 of them nakt's. Now Ray's (and MLflow's) output
    goes to <run_dir>/logs/ray.log: its Python loggers, the driver's C++ core-worker lines, workers' output."""
    run_dir, _ = smoke
    console = SMOKE_CONSOLE["stdout"] + SMOKE_CONSOLE["stderr"]
    assert len(console.splitlines()) < 50, console  # 37 measured; 177 before Ray's output went to the log
    for noise in (" INFO ", "mlflow.store", "WARNING mlflow", "core_worker", "\x1b[", "Successfully registered",
                  "(pid=", "Traceback"):
        assert noise not in console, noise
    log = run_dir / "logs" / "ray.log"
    assert f"nakt: Ray's own output goes to {log} (--verbose shows it here)" in SMOKE_CONSOLE["stderr"]
    assert f"Ray's own output:    {log}" in SMOKE_CONSOLE["stdout"]
    text = log.read_text()
    assert "Creating initial MLflow database tables" in text and "Successfully registered model" in text
    assert "Ray's per-process logs (workers, raylet, GCS) are in " in text


def test_max_failed_accepts_a_count_or_a_share():
    import argparse

    from nakt_ray.cli import _failed_cases, _max_failed

    assert [_max_failed(x) for x in ("0", "3", "0.05", "5%", "1.0", "0.")] == [0, 3, 0.05, 0.05, 1.0, 0.0]
    for bad in ("-1", "1.5", "abc", "150%", "2.5", "nan", "inf", "-0.1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a count of cases"):
            _max_failed(bad)
    assert _failed_cases("x", 0, 10, "e.json", 0) == 0 and _failed_cases("x", 1, 10, "e.json", 0) == 1
    assert _failed_cases("x", 1, 10, "e.json", 0.1) == 0 and _failed_cases("x", 2, 10, "e.json", 0.1) == 1
    assert _failed_cases("x", 5, 10, "e.json", None) == 0


def test_every_subcommand_help_has_a_description_an_example_and_every_option_a_help():
    """`nakt COMMAND --help` tells what the command does, shows it, and explains every option."""
    import argparse

    from nakt_ray.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"train-teacher", "annotate", "fuse", "train-student", "finetune", "tune",
                                "evaluate", "export", "predict", "demo", "hosts"}
    for name, parser in sub.choices.items():
        text = parser.format_help()
        assert parser.description and len(parser.description.splitlines()) >= 2, name
        assert "examples:\n  nakt " + name in text, name
        assert "--verbose" in text, name
        bare = [a.option_strings for a in parser._actions if not a.help or a.help == argparse.SUPPRESS]
        assert not bare, (name, bare)
    for name in ("annotate", "evaluate", "predict"):
        assert "--max-failed" in sub.choices[name].format_help()
    proc = run(["annotate", "--help"], cwd=".", timeout=60)  # as a user sees it: examples kept line by line
    assert proc.returncode == 0 and "examples:\n  nakt annotate --config runs/demo/run.yaml" in proc.stdout


def test_readme_and_demo_help_give_the_same_measured_time_and_say_how_to_run_nakt():
    """One measured figure (demo/run.py's DEMO_TIME) in README, `nakt demo --help` and the
    demo's output; README says how to run `nakt` after `make demo`."""
    from pathlib import Path

    from nakt_ray.demo.run import DEMO_TIME

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    setup = readme.split("## Set-up, demo, tests", 1)[1].split("\n## ", 1)[0]
    assert f"`nakt demo`, {DEMO_TIME[False]}" in setup and f"{DEMO_TIME[True]}" in setup
    assert ".venv/bin/nakt" in setup and "source .venv/bin/activate" in setup
    assert "~8 min" not in readme and "about 10 min" not in readme
    proc = run(["demo", "--help"], cwd=".", timeout=60)
    shown = " ".join(proc.stdout.split())  # argparse wraps option help
    assert proc.returncode == 0 and DEMO_TIME[False] in shown and DEMO_TIME[True] in shown


def test_demo_refuses_a_folder_it_did_not_write_and_leaves_it_alone(tmp_path):
    """The demo replaces only its own earlier output (a folder holding its marker)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = run(["demo", "--smoke", "--run-dir", str(mine)], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "was not written by nakt demo (no .nakt-demo file)" in proc.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


def test_experiment_reports_name_the_data_and_classes_given(tmp_path):
    """E1-E3 take the dataset's name and classes from --dataset-name / --labels (else from the
    data folder); the report says them instead of 'HC18' and 'head'."""
    import argparse
    from pathlib import Path

    experiments = Path(__file__).resolve().parents[1] / "jobs" / "experiments"
    for script in ("e1_single_teacher.py", "e2_finetune.py", "e3_multi_teacher.py"):
        proc = subprocess.run([sys.executable, str(experiments / script), "--help"], capture_output=True, text=True,
                              timeout=60, env=ENV)
        assert proc.returncode == 0 and "--dataset-name" in proc.stdout and "--labels" in proc.stdout, script
    sys.path.insert(0, str(experiments))
    try:
        import _common
        import e2_finetune
    finally:
        sys.path.remove(str(experiments))

    args = argparse.Namespace(data=str(tmp_path / "brats"), dataset_name=None, labels=None)
    _common.resolve_dataset(args)
    assert (args.dataset_name, args.labels) == ("brats", ["background", "foreground"])
    args = argparse.Namespace(data=str(_common.HC18), dataset_name=None, labels=None)
    _common.resolve_dataset(args)
    assert (args.dataset_name, args.labels) == ("HC18", ["background", "head"])
    args = argparse.Namespace(data=str(tmp_path), dataset_name="BraTS-2021", labels="background,tumour")
    _common.resolve_dataset(args)
    assert (args.dataset_name, args.labels) == ("BraTS-2021", ["background", "tumour"])

    score = {"dice": 0.8, "dice_ci": [0.7, 0.9]}
    result = {"sizes": [4], "models": {"scratch n=4": score, "distil+ft n=4": score, "distilled": score,
                                       "teacher (site_a)": score}, "table": "| model |", "timings": {"teacher_s": 1.0},
              "image_size": 64, "epochs": {"teacher": 1}, "student_arch": "unet", "smoke": True,
              "dataset": "BraTS-2021", "labels": ["background", "tumour"]}
    e2_finetune.write_results(result, tmp_path / "out", tmp_path / "run")
    report = (tmp_path / "out" / "e2.md").read_text()
    assert "BraTS-2021" in report and "tumour" in report and "HC18" not in report and "head" not in report


@pytest.mark.fault  # a second whole smoke demo (~50 s): the system tier, to keep `make test` near 10 min
def test_demo_twice_on_one_run_dir_replaces_its_output_and_verbose_shows_ray(smoke):
    """`make demo` a second time failed ('demo run directory ... is not empty'). The
    second run (here with --verbose) replaces the first one's output; --verbose brings Ray's output back.
    (Last in this module: it rewrites the smoke run directory, with the same seeded data, in place.)"""
    run_dir, _ = smoke
    (run_dir / "annotations" / "stale.txt").write_text("left by the first run")
    proc = run(["demo", "--smoke", "--verbose", "--run-dir", str(run_dir)], cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "(the earlier demo's output there was replaced)" in proc.stdout
    assert not (run_dir / "annotations" / "stale.txt").exists() and (run_dir / ".nakt-demo").is_file()
    assert "Creating initial MLflow database tables" in proc.stderr  # a fresh store, and Ray/MLflow shown
    assert not (run_dir / "logs" / "ray.log").exists()
    summary = json.loads((run_dir / "annotations" / "summary.json").read_text())
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (16, 16, 0)
