"""Beyond one machine, on this one: the ``jobs/`` entrypoints submitted as Ray jobs to a real ``ray start --head``
instance, annotation on a simulated multi-node cluster that loses a worker node mid-run (fault tier: ``make
test-faults``), a student logged and registered through a real MLflow tracking server (and a clear, fast error
when it is down), and the job wrappers.

Every Ray instance started here is this test's own: a private ``RAY_TMPDIR`` (so no ``ray_current_cluster`` file
lands in /tmp/ray for other sessions' ``auto`` to find) and its own process group, killed at the end. ``ray stop``
is never used: it stops every Ray process on the machine.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import TINY_UNET, make_scripted_teacher, tiny_raw_config

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ENV = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
ENV.update(RAY_AUTH_MODE="disabled", NAKT_PROGRESS="0", PYTHONUNBUFFERED="1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_tmpdir() -> str:
    """A private Ray temp root: short, because Ray's socket paths under it must stay below 108 characters."""
    return tempfile.mkdtemp(prefix="nkj-", dir="/tmp")


def kill_group(pgid: int, grace_s: float = 10.0) -> None:
    """SIGTERM the process group ``pgid`` (one Ray instance started here), SIGKILL what is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@contextlib.contextmanager
def ray_head(num_cpus: int = 2):
    """``ray start --head`` on 127.0.0.1 in a private temp dir and process group; yields its address and ports."""
    tmp = short_tmpdir()
    env = {**ENV, "RAY_TMPDIR": tmp}
    port, dashboard_port = free_port(), free_port()
    cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--node-ip-address=127.0.0.1",
           f"--port={port}", f"--num-cpus={num_cpus}", f"--temp-dir={tmp}/ray", "--disable-usage-stats",
           "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard_port}", f"--dashboard-agent-listen-port={free_port()}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # the group every process of this instance stays in
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard_port}", "env": env}
    finally:
        kill_group(proc.pid)
        shutil.rmtree(tmp, ignore_errors=True)


def submit_job(head: dict, entrypoint: str, env_vars: dict[str, str], timeout: float = 240) -> dict:
    """Run ``entrypoint`` as a Ray job on ``head`` with ``ray job submit`` (the dashboard's Jobs API, which
    ``ray[default]`` serves), wait for it, and read its final status back with ``ray job status``."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    job_id = f"nakt-test-{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.run([ray_cli, "job", "submit", "--address", head["dashboard"], "--submission-id", job_id,
                           "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", *shlex.split(entrypoint)],
                          env=head["env"], capture_output=True, text=True, timeout=timeout + 30)
    status = subprocess.run([ray_cli, "job", "status", "--address", head["dashboard"], job_id], env=head["env"],
                            capture_output=True, text=True, timeout=60)
    state = next((w.upper() for w in ("succeeded", "failed", "stopped") if f"' {w}" in status.stdout), "UNKNOWN")
    return {"status": state, "exit_code": proc.returncode, "message": status.stdout + status.stderr,
            "logs": proc.stdout + proc.stderr}


def transferal(tmp_path: Path, n: int, corrupt: int) -> Path:
    from nakt_ray.demo import synthetic

    src = synthetic.write_folder(tmp_path / "transferal", n, "mixed", seed=4, size=(40, 56))
    (src / "images" / sorted(os.listdir(src / "images"))[corrupt]).write_bytes(b"not an image")
    return src


def write_config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


# ----------------------------------------------------------------------------------------------------------------
# 1. The annotation job, submitted to a real `ray start --head` cluster.


@pytest.mark.fault  # a second tier: its own Ray cluster / every stage end to end (minutes on 2 cores)
@pytest.mark.timeout(600)  # several Ray and server processes: minutes on a loaded 2-core machine
def test_annotate_job_submitted_to_a_ray_start_cluster(tmp_path):
    from nakt_ray.annotation import parquet as ann

    src = transferal(tmp_path, 12, corrupt=5)
    raw = tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "checkpoint": str(make_scripted_teacher(tmp_path / "t1.ts", "t1", seed=1)), "batch_size": 4},
        {"name": "t2", "checkpoint": str(make_scripted_teacher(tmp_path / "t2.ts", "t2", seed=2)), "batch_size": 4}])
    raw["data"]["transferal"] = str(src)
    raw["annotate"] = {"decode_batch_size": 4, "rows_per_file": 4}
    cfg = write_config(tmp_path, raw)
    entrypoint = f"{sys.executable} {ROOT / 'jobs' / 'annotate.py'} --config {cfg} --set fusion.rule=majority_vote"

    with ray_head() as head:
        job = submit_job(head, entrypoint, {"RAY_AUTH_MODE": "disabled", "NAKT_PROGRESS": "0"})
    assert job["status"] == "SUCCEEDED" and job["exit_code"] == 0, job["message"] + "\n" + job["logs"][-4000:]
    # the driver joined the cluster it was submitted to (RAY_ADDRESS from the job supervisor), not a local Ray
    assert "joining the Ray cluster this job runs on" in job["logs"]

    out = tmp_path / "run" / "annotations"
    summary = json.loads((out / ann.SUMMARY).read_text())
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (12, 11, 1)
    ids = ann.read_table(out, columns=["case_id"]).column("case_id").to_pylist()
    assert sorted(ids) == sorted(p.stem for p in (src / "images").iterdir())  # every case, once
    manifest = ann.read_manifest(out)
    assert [t["name"] for t in manifest["teachers"]] == ["t1", "t2"]
    assert manifest["fusion"]["rule"] == "majority_vote"  # the job's --set reached the stage
    printed = load_job("common").last_json(job["logs"])  # `nakt annotate`'s summary, in the job's log
    assert printed["mlflow_run_id"] and printed["output"] == str(out)


@pytest.mark.fault  # a `ray start` cluster, two submitted jobs and three `nakt hosts` processes (~2 min)
@pytest.mark.timeout(600)
def test_teachers_kept_between_submitted_jobs_then_listed_and_stopped(tmp_path):
    """annotate.keep_teachers_s on a running cluster, as a user runs it: the second job meets the host the first
    started (same process; it served both runs), `nakt hosts` lists it and `--stop` ends it."""
    from nakt_ray.annotation import parquet as ann

    src = transferal(tmp_path, 8, corrupt=2)
    raw = tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "checkpoint": str(make_scripted_teacher(tmp_path / "t1.ts", "t1", seed=1)), "batch_size": 4},
        {"name": "t2", "checkpoint": str(make_scripted_teacher(tmp_path / "t2.ts", "t2", seed=2)), "batch_size": 4}])
    raw["data"]["transferal"] = str(src)
    raw["annotate"] = {"decode_batch_size": 4, "pools": "shared", "keep_teachers_s": 120}
    cfg = write_config(tmp_path, raw)
    nakt = [sys.executable, "-m", "nakt_ray.cli", "hosts", "--log-dir", str(tmp_path / "logs")]

    def hosts(head: dict, *extra: str) -> dict:
        proc = subprocess.run([*nakt, "--ray-address", head["address"], *extra], env=head["env"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return load_job("common").last_json(proc.stdout)

    with ray_head() as head:
        outputs = [tmp_path / "ann1", tmp_path / "ann2"]
        for out in outputs:
            job = submit_job(head, f"{sys.executable} {ROOT / 'jobs' / 'annotate.py'} --config {cfg} "
                                   f"--set annotate.output={out}", {"RAY_AUTH_MODE": "disabled", "NAKT_PROGRESS": "0"})
            assert job["status"] == "SUCCEEDED", job["message"] + "\n" + job["logs"][-4000:]
            listed = hosts(head)["hosts"]
            assert len(listed) == 1 and listed[0]["teachers"] == ["t1", "t2"], listed
            if out == outputs[0]:
                first = listed[0]
        (kept,) = listed
        assert (kept["name"], kept["pid"]) == (first["name"], first["pid"])  # the second job met the same process
        assert (first["runs"], kept["runs"]) == (1, 2) and kept["calls"] > first["calls"]
        stopped = hosts(head, "--stop")
        assert stopped["stopped"] == [kept["name"]]
        assert hosts(head)["hosts"] == []
    rows = [sorted(ann.read_table(out, columns=["case_id", "status", "soft_label"]).to_pydict()["soft_label"])
            for out in outputs]
    assert rows[0] == rows[1] and len(rows[0]) == 8


# ----------------------------------------------------------------------------------------------------------------
# 2. A simulated multi-node cluster that loses a worker node while annotating.


@pytest.mark.fault  # a node killed mid-run, on a three-node cluster of this machine: ~4 min on a loaded 2-core box
@pytest.mark.timeout(600)
def test_annotation_survives_losing_a_worker_node(tmp_path):
    src = transferal(tmp_path, 40, corrupt=11)
    # GPU fractions keep teacher actors off the (GPU-less) head; small CPU shares let one worker host them all
    teacher = {"batch_size": 4, "num_cpus": 0.25, "num_gpus": 0.25}
    raw = tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "checkpoint": str(make_scripted_teacher(tmp_path / "t1.ts", "t1", seed=1)), **teacher},
        {"name": "t2", "checkpoint": str(make_scripted_teacher(tmp_path / "t2.ts", "t2", seed=2)), "actors": 2,
         **teacher}])
    raw["data"]["transferal"] = str(src)
    raw["annotate"] = {"decode_batch_size": 4, "rows_per_file": 4}
    cfg, result_file, tmp = write_config(tmp_path, raw), tmp_path / "result.json", short_tmpdir()
    env = {**ENV, "RAY_TMPDIR": tmp, "NAKT_ACTOR_LOG": str(tmp_path / "actors.jsonl"),
           # the GCS declares a node dead after 3 failed health checks 1 s apart (Ray's default: 5 at 3 s), so
           # the restart comes ~12 s sooner; a check still waits Ray's default 10 s for a slow raylet's answer
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    proc = subprocess.Popen([sys.executable, str(TESTS / "_multinode_annotate.py"), str(cfg), str(result_file)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=540)
    finally:
        kill_group(proc.pid, grace_s=2)  # the Cluster's nodes, should the script have left any
        shutil.rmtree(tmp, ignore_errors=True)
    assert proc.returncode == 0, out[-5000:]
    result = json.loads(result_file.read_text())
    assert "removal_error" not in result, result["removal_error"]

    # the run completed with every input case exactly once, the corrupt one recorded as failed
    summary = result["summary"]
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (40, 39, 1)
    assert len(result["case_ids"]) == len(set(result["case_ids"])) == 40

    # the node really went mid-run, and it was hosting teacher actors (spread over both workers or not)
    removed, workers = result["removed"], set(result["workers"])
    (survivor,) = workers - {removed}
    assert removed not in result["alive_nodes"] and survivor in result["alive_nodes"]
    assert result["files_before_removal"] < 10  # 40 rows at 4 rows per file: most of the run was still to come
    before = result["actors_before_removal"]
    assert {r["node"] for r in before} <= workers  # teacher actors only ever on the GPU workers
    lost = Counter(r["teacher"] for r in before if r["node"] == removed)
    assert lost
    # the actors that died with the node were restarted, on the node that remains
    restarted = [r for r in result["actors"] if r["t"] > result["removed_at"]]
    assert Counter(r["teacher"] for r in restarted) >= lost
    assert {r["node"] for r in restarted} == {survivor}


# ----------------------------------------------------------------------------------------------------------------
# 3. A student logged and registered through a real MLflow tracking server; a clear error when it is down.


@contextlib.contextmanager
def mlflow_server(tmp_path: Path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
           "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not come up:\n{(tmp_path / 'mlflow-server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri, proc
    finally:
        kill_group(proc.pid, grace_s=10)
        log.close()


@pytest.mark.slow
@pytest.mark.fault  # a system run with an MLflow server process: second tier, keeps make test short
@pytest.mark.timeout(600)  # several Ray and server processes: minutes on a loaded 2-core machine
def test_student_registered_through_an_mlflow_server_and_a_clear_error_when_it_is_down(annotated, tmp_path,
                                                                                      capsys):
    from mlflow.tracking import MlflowClient

    from nakt_ray import config
    from nakt_ray.cli import main
    from nakt_ray.tracking import TrackingUnreachable
    from nakt_ray.training.student import train_student

    base, summary, _ = annotated
    raw = base.to_dict()
    raw.update(run_dir=str(tmp_path / "run"),
               student={"name": "s", "arch": "unet", "arch_args": TINY_UNET, "annotations": summary["output"]},
               training={"epochs": 1, "batch_size": 4, "num_workers": 0})
    with mlflow_server(tmp_path) as (uri, server):
        raw["tracking"] = {"uri": uri, "experiment": "jobs-server", "registered_model": "server-student",
                           "alias": "candidate"}
        result = train_student(config.from_dict(raw))

        client = MlflowClient(uri)
        version = client.get_model_version_by_alias("server-student", "candidate")
        assert version.run_id == result["run_id"] and str(version.version) == str(result["version"])
        run = client.get_run(result["run_id"])
        assert run.data.tags["nakt.stage"] == "train-student" and "train_loss" in run.data.metrics
        assert "student" in {a.path for a in client.list_artifacts(result["run_id"])}
        # the artifacts went through the server into its artifact store, not into run_dir
        assert any((tmp_path / "server-artifacts").rglob("MLmodel"))
        assert not (tmp_path / "run" / "mlflow.db").exists()

    # the server is gone: the next run stops at once with an error naming the URI (MLflow's own client would retry
    # for about 4 minutes before raising), from the library and from the command line
    assert server.poll() is not None
    raw["student"]["name"] = "s2"
    with pytest.raises(TrackingUnreachable, match=f"MLflow tracking server {uri} is not reachable"):
        train_student(config.from_dict(raw))
    cfg = write_config(tmp_path, raw)
    assert main(["train-student", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"nakt train-student: error: MLflow tracking server {uri} is not reachable" in err
    assert "set tracking.uri" in err


# ----------------------------------------------------------------------------------------------------------------
# The job wrappers in this process (the session's Ray instance): Ray address, the pipeline and its resume, tune.


def load_job(name: str):
    """``jobs/<name>.py`` as a module (jobs/ is a folder of scripts, not a package)."""
    if str(ROOT / "jobs") not in sys.path:
        sys.path.insert(0, str(ROOT / "jobs"))  # the scripts import their shared module as `common`
    spec = importlib.util.spec_from_file_location(f"nakt_job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("explicit, configured, env, file, expected", [
    ("10.0.0.1:6379", "auto", "10.0.0.2:6379", True, "10.0.0.1:6379"),  # --ray-address wins
    (None, "10.0.0.1:6379", "10.0.0.2:6379", True, "10.0.0.1:6379"),    # then the config's ray.address
    (None, None, "10.0.0.2:6379", False, "auto"),                      # under `ray job submit`
    (None, None, None, True, "auto"),                                   # a `ray start` instance on this machine
    (None, None, None, False, None),                                    # nothing: a local instance
])
def test_jobs_join_the_cluster_they_run_on(tmp_path, monkeypatch, explicit, configured, env, file, expected):
    common = load_job("common")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    if file:
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379")
    assert common.ray_address_file() == tmp_path / "ray" / "ray_current_cluster"
    assert common.cluster_address(configured, explicit) == expected


def test_job_passes_config_overrides_and_address_to_the_stage(tmp_path, monkeypatch):
    common = load_job("common")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    cfg = write_config(tmp_path, tiny_raw_config(tmp_path))
    args = common.parser("annotate", "").parse_args(["--config", str(cfg), "--set", "annotate.rows_per_file=7"])
    job = common.Job("annotate", args)
    assert job.argv("annotate", "--resume") == ["annotate", "--config", str(cfg), "--set", "annotate.rows_per_file=7",
                                                "--ray-address", "auto", "--resume"]
    with pytest.raises(SystemExit) as exit_:  # a bad config stops the job before any stage, naming the key
        common.Job("annotate", common.parser("annotate", "").parse_args(["--config", str(cfg), "--set", "x.y=1"]))
    assert exit_.value.code == 2


@pytest.mark.fault  # a second tier: its own Ray cluster / every stage end to end (minutes on 2 cores)
@pytest.mark.timeout(600)  # several Ray and server processes: minutes on a loaded 2-core machine
def test_pipeline_job_runs_every_stage_then_resumes_with_nothing_left(ray_session, tmp_path, synthetic_dirs,
                                                                       capsys):
    from nakt_ray.annotation import parquet as ann

    raw = tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "arch": "unet", "arch_args": TINY_UNET, "train_data": str(synthetic_dirs["site_a"])},
        {"name": "t2", "checkpoint": str(make_scripted_teacher(tmp_path / "t2.ts", "t2", seed=2))}],
        student={"name": "s", "arch": "unet", "arch_args": TINY_UNET})
    raw["data"].update(transferal=str(synthetic_dirs["mixed"]), test=str(synthetic_dirs["site_a"]))
    raw["annotate"] = {"decode_batch_size": 3, "rows_per_file": 3}
    cfg = write_config(tmp_path, raw)
    pipeline = load_job("pipeline")

    assert pipeline.main(["--config", str(cfg)]) == 0
    summary = json.loads(capsys.readouterr().out)
    stages = {s["stage"]: s for s in summary["stages"]}
    assert summary["status"] == "succeeded" and list(stages) == ["train-teacher", "annotate", "train-student",
                                                                 "evaluate"]
    assert all(s["status"] == "ok" for s in stages.values()), stages
    assert stages["train-teacher"]["result"] == {"t1": str(tmp_path / "run" / "teachers" / "t1" / "model.pt")}
    assert stages["annotate"]["result"]["cases_read"] == 6 and stages["annotate"]["result"]["mlflow_run_id"]
    assert stages["train-student"]["result"]["model_uri"] == "models:/test-student@candidate"
    assert set(stages["evaluate"]["result"]["models"]) == {"t1", "t2", "teachers_ensemble", "s"}
    assert json.loads((tmp_path / "run" / "pipeline.json").read_text()) == summary
    written = ann.parquet_files(tmp_path / "run" / "annotations")

    # the same job again with --resume: every finished stage is kept (evaluation runs again)
    assert pipeline.main(["--config", str(cfg), "--resume"]) == 0
    again = {s["stage"]: s for s in json.loads(capsys.readouterr().out)["stages"]}
    assert [again[s]["status"] for s in ("train-teacher", "annotate", "train-student")] == ["skipped"] * 3
    assert again["evaluate"]["status"] == "ok"
    assert ann.parquet_files(tmp_path / "run" / "annotations") == written

    # a failing stage stops the pipeline (status failed, exit code 1): resuming the annotation with another fusion
    (tmp_path / "run" / "annotations" / ann.SUMMARY).unlink()
    assert pipeline.main(["--config", str(cfg), "--resume", "--set", "fusion.rule=majority_vote"]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["status"] == "failed" and [s["status"] for s in failed["stages"]] == ["skipped", "failed"]


def test_distil_job_trains_fine_tunes_then_keeps_both_on_resume(annotated, tmp_path, synthetic_dirs, capsys):
    base, summary, _ = annotated
    raw = base.to_dict()
    raw.update(run_dir=str(tmp_path / "run"), student={"name": "s", "arch": "unet", "arch_args": TINY_UNET,
                                                       "annotations": summary["output"]},
               finetune={"epochs": 1, "batch_size": 4, "num_workers": 0})
    raw["data"]["finetune"] = str(synthetic_dirs["site_a"])
    cfg = write_config(tmp_path, raw)
    distil = load_job("distil")
    students = tmp_path / "run" / "student"

    assert distil.main(["--config", str(cfg)]) == 0
    assert (students / "s" / "model.pt").is_file() and (students / "s-finetuned" / "model.pt").is_file()
    mtimes = {p: p.stat().st_mtime for p in students.rglob("model.pt")}
    capsys.readouterr()
    assert distil.main(["--config", str(cfg), "--resume"]) == 0
    assert {p: p.stat().st_mtime for p in students.rglob("model.pt")} == mtimes  # nothing trained again
    assert capsys.readouterr().err.count("is finished; kept") == 2


def test_tune_job_runs_nakt_tune(annotated, tmp_path, capsys):
    common, tune = load_job("common"), load_job("tune")
    if not common.has_command("tune"):
        pytest.skip("this nakt-ray has no `nakt tune` yet (nakt_ray/search/)")
    base, summary, _ = annotated
    raw = base.to_dict()
    raw.update(run_dir=str(tmp_path / "run"), student={"name": "s", "arch": "unet", "arch_args": TINY_UNET,
                                                       "annotations": summary["output"]})
    raw["data"]["val"] = None  # refused by the search before any trial: the job reached `nakt tune` itself
    assert tune.main(["--config", str(write_config(tmp_path, raw))]) == 2
    assert "nakt tune: error:" in capsys.readouterr().err
