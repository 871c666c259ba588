"""Search (nakt_ray/search/): the tune.* settings' validation, and a real smoke search on a stored annotation set
(tiny students, local-mode trials) with its MLflow parent/child runs, artifacts and champion; fusion-weight trials
run with every teacher file gone. The interrupted-and-resumed search is in the fault tier. The search-space
language (nakt_ray/config/space.py) is tested in tests/test_space.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_UNET, tiny_raw_config

from nakt_ray import config
from nakt_ray.config import ConfigError


def _raw(tmp_path: Path, space: dict, **tune) -> dict:
    raw = tiny_raw_config(tmp_path, student={"name": "s", "arch": "unet", "arch_args": TINY_UNET})
    raw["tune"] = {"space": space, **tune}
    return raw


def test_bad_tune_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"tune.grace_period.*at most training.epochs \(1\)"):
        config.from_dict(_raw(tmp_path, {}, grace_period=2))
    with pytest.raises(ConfigError, match=r"tune.metric.*val_metrics"):
        config.from_dict(_raw(tmp_path, {}, metric="val_hd95"))
    with pytest.raises(ConfigError, match=r"tune.search_alg.*did you mean 'optuna'"):
        config.from_dict(_raw(tmp_path, {}, search_alg="optuma"))
    with pytest.raises(ConfigError, match=r"tune.cpus_per_trial"):
        config.from_dict(_raw(tmp_path, {}, cpus_per_trial=0))


# ----------------------------------------------------------------------------------------------------------------
# Real searches on the session's annotation set.


def _search_raw(annotated, tmp_path: Path, synthetic_dirs, **tune) -> dict:
    """A search over lr, loss mix, temperature, augmentation, width, fusion rule and weights; teacher files gone."""
    base, summary, _ = annotated
    raw = base.to_dict()
    raw["run_dir"] = str(tmp_path / "run")
    # every teacher file is gone: a trial that loaded a teacher would fail, and the search with it
    for i, t in enumerate(raw["teachers"]):
        t["checkpoint"] = str(tmp_path / "gone" / f"teacher{i}.ts")
    raw["student"] = {"name": "s", "arch": "unet", "arch_args": TINY_UNET, "annotations": summary["output"]}
    raw["data"]["val"] = str(synthetic_dirs["mixed"])
    raw["training"] = {"epochs": 2, "batch_size": 4, "num_workers": 0, "torch_threads": 1, "min_steps": 0}
    raw["tune"] = {"num_samples": 3, "max_concurrent_trials": 1, "grace_period": 1, "reduction_factor": 2,
                   "seed": 3, "space": {
                       "training.lr": {"loguniform": [1e-3, 1e-2]},
                       "training.kl_weight": {"uniform": [0.0, 1.0]},
                       "training.temperature": {"uniform": [1.0, 4.0]},
                       "training.augment_strength": {"uniform": [0.0, 1.5]},
                       "student.arch_args.channels": {"choice": [[4, 8], [8, 8]]},
                       "fusion.rule": {"choice": ["weighted_mean", "staple"]},
                       "fusion.weights": {"simplex": 2},
                       "fusion.class_weights.1.1": {"uniform": [0.0, 1.0]}}, **tune}
    return raw


def test_smoke_search_registers_the_champion_with_child_runs_and_artifacts(annotated, tmp_path, synthetic_dirs):
    from mlflow.tracking import MlflowClient

    from nakt_ray.search.tune import tune_student
    from nakt_ray.tracking import tracking_uri

    cfg = config.from_dict(_search_raw(annotated, tmp_path, synthetic_dirs))
    assert not any(Path(t.checkpoint).exists() for t in cfg.teachers)
    result = tune_student(cfg)

    # every trial ran (ASHA may stop a lagging one after its first epoch), with its own sampled fusion weights
    rows = result["rows"]
    assert len(rows) == 3 and all(r["epochs"] >= 1 and r["status"] != "error" for r in rows)
    assert all(0 <= r["best"] <= 1 for r in rows)
    weights = {tuple(round(w, 4) for w in r["values"]["fusion.weights"]) for r in rows}
    assert len(weights) == 3 and all(sum(w) == pytest.approx(1, abs=1e-3) for w in weights)
    for r in rows:  # t2's weight where it says head, searched; STAPLE learns per-class reliability and drops it
        cw = r["values"]["fusion.class_weights"]
        assert cw is None if r["values"]["fusion.rule"] == "staple" else (cw[0] == [1.0, 1.0] and 0 <= cw[1][1] <= 1)

    # MLflow: one parent run (stage tune), one child run per trial holding its epochs
    client = MlflowClient(tracking_uri(cfg))
    parent = client.get_run(result["parent_run_id"])
    assert parent.data.tags["nakt.stage"] == "tune" and parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["nakt.tune_trial_id"] for c in children) == sorted(r["trial_id"] for r in rows)
    for child in children:
        row = next(r for r in rows if r["trial_id"] == child.data.tags["nakt.tune_trial_id"])
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_dice")]
        # (a trial ASHA stops may log one more epoch before its process is ended)
        assert steps[:row["epochs"]] == list(range(row["epochs"])) and child.info.status == "FINISHED"
        assert child.data.tags["nakt.tune_status"] == row["status"]
        assert float(child.data.params["training.lr"]) == pytest.approx(row["values"]["training.lr"])
        if row["epochs"] == cfg.training.epochs:  # ran to the end (ASHA's rung on the last epoch cuts nothing)
            assert row["status"] == "completed" and Path(row["model_path"]).exists()
            assert "train_wall_s" in child.data.metrics  # train_student returned: model logged, run closed
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "tune")}
    assert artifacts == {"tune/results.md", "tune/results.csv", "tune/results.png"}
    table = Path(result["files"]["md"]).read_text()
    assert all(r["trial_id"] in table for r in rows) and "fusion.weights.t1" in table
    assert Path(result["files"]["png"]).read_bytes()[:4] == b"\x89PNG"

    # the champion: the best finished trial, registered with its trial config and lineage
    best = result["champion"]
    finished = [r for r in rows if r["model_path"]]
    assert best["best"] == max(r["best"] for r in finished)
    version = client.get_model_version_by_alias(cfg.tracking.registered_model, "champion")
    assert version.run_id == best["run_id"] and result["model_uri"].endswith("@champion")
    tags = version.tags
    assert tags["nakt.tune_trial_id"] == best["trial_id"] and tags["nakt.teachers"] == "t1,t2"
    trial_config = json.loads(tags["nakt.tune_trial_config"])
    assert trial_config["fusion"]["rule"] == best["values"]["fusion.rule"] == tags["nakt.fusion_rule"]
    w, cw = best["values"]["fusion.weights"], best["values"]["fusion.class_weights"]
    effective = np.array(w)[:, None] * np.array(cw) if cw else np.array(w)  # what fusion took (FusionConfig)
    assert np.allclose(json.loads(tags["nakt.fusion_weights"]), effective)
    assert json.loads(tags["nakt.tune_values"])["training.lr"] == pytest.approx(best["values"]["training.lr"])
    assert parent.data.tags["nakt.champion_trial"] == best["trial_id"]


def test_tune_needs_a_validation_set_and_a_space(annotated, tmp_path, synthetic_dirs):
    from nakt_ray.search.tune import tune_student

    raw = _search_raw(annotated, tmp_path, synthetic_dirs)
    raw["data"]["val"] = None
    with pytest.raises(ValueError, match="data.val"):
        tune_student(config.from_dict(raw))
    raw = _search_raw(annotated, tmp_path, synthetic_dirs)
    raw["tune"]["space"] = {}
    with pytest.raises(ValueError, match="tune.space is empty"):
        tune_student(config.from_dict(raw))
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        tune_student(config.from_dict(_search_raw(annotated, tmp_path, synthetic_dirs)), resume=True)


# ----------------------------------------------------------------------------------------------------------------
# A search whose driver is killed after its first trial, then `nakt tune --resume`.

NAKT = [sys.executable, "-m", "nakt_ray.cli"]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "NAKT_PROGRESS": "0", "PYTHONUNBUFFERED": "1"}


def _terminated_trials(exp_dir: Path) -> int:
    """Trials the Tune experiment state records as finished (what a restore keeps)."""
    done = 0
    for f in exp_dir.glob("experiment_state-*.json"):
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        done = max(done, sum(json.loads(t[0]).get("status") == "TERMINATED" for t in state.get("trial_data", [])))
    return done


@pytest.mark.fault
@pytest.mark.timeout(600)  # several Ray processes killed and restarted: minutes on a loaded 2-core machine
def test_killed_search_resumes_with_the_remaining_trials_in_the_same_parent_run(annotated, tmp_path,
                                                                                 synthetic_dirs):
    from mlflow.tracking import MlflowClient

    raw = _search_raw(annotated, tmp_path, synthetic_dirs, num_samples=3, scheduler="none")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    # Tune saves its experiment state every step here (default: at most every ~10 s), so the kill lands right
    # after a recorded trial end
    env = {**ENV, "TUNE_GLOBAL_CHECKPOINT_S": "0"}
    proc = subprocess.Popen(NAKT + ["tune", "--config", str(path)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    state_file = tmp_path / "run" / "tune" / "search.json"
    deadline = time.time() + 300
    while True:
        if state_file.exists():
            exp_dir = tmp_path / "run" / "tune" / json.loads(state_file.read_text())["name"]
            if _terminated_trials(exp_dir) >= 1:
                break
        if proc.poll() is not None:
            pytest.fail(f"the search ended (rc {proc.returncode}) before it could be interrupted:\n"
                        f"{proc.stdout.read()[-3000:]}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the search never finished a trial")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray instance, as a crash would
    proc.wait(timeout=30)
    state = json.loads(state_file.read_text())
    assert state["finished"] is False and state["parent_run_id"]

    done = subprocess.run(NAKT + ["tune", "--config", str(path), "--resume"], cwd=tmp_path, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "champion: models:/test-student@champion" in done.stdout
    state = json.loads(state_file.read_text())
    assert state["finished"] is True
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    parent = client.get_run(state["parent_run_id"])
    assert parent.data.tags["nakt.resumed"] == "true" and parent.data.metrics["trials"] == 3
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trial_ids = {c.data.tags["nakt.tune_trial_id"] for c in children}
    assert len(trial_ids) == 3  # each trial in one child run, the interrupted one continued in its own
    assert parent.data.metrics["trials_completed"] == 3
    again = subprocess.run(NAKT + ["tune", "--config", str(path), "--resume"], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "finished" in again.stderr



def test_workers_release_a_dead_executions_share_of_the_cluster_sooner(ray_session):
    """Ray Data's coordinator keeps a killed execution's share of the CPUs until its request expires; nakt's Ray
    workers (trials, Train workers) run with a 45 s expiry instead of 180 s (runtime.DATA_REQUEST_EXPIRE)."""
    import os

    from nakt_ray.runtime.cluster import DATA_REQUEST_EXPIRE

    @ray_session.remote(num_cpus=0.1)
    def expiry() -> tuple[str | None, int]:
        from ray.data._internal.cluster_autoscaler.rate_based_cluster_autoscaler import RateBasedClusterAutoscaler

        return os.environ.get(DATA_REQUEST_EXPIRE[0]), RateBasedClusterAutoscaler.AUTOSCALING_REQUEST_EXPIRE_TIME_S

    assert ray_session.get(expiry.remote()) == ("45", 45)


@pytest.mark.parametrize("alg", ["random", "optuna"])
def test_every_search_algorithm_keeps_to_max_concurrent_trials(ray_session, tmp_path, alg):
    """Tune ignores TuneConfig.max_concurrent_trials for a SearchGenerator (the random searcher): the bound must
    come from the searcher itself, or every trial starts at once (and on 2 CPUs their datasets starve)."""
    from ray import tune

    from nakt_ray.search.tune import build_search_alg

    cfg = config.from_dict(_raw(tmp_path, {"training.lr": {"uniform": [1e-3, 1e-2]}}, search_alg=alg, seed=1,
                                num_samples=3, max_concurrent_trials=1))
    log = tmp_path / "spans"
    log.mkdir()

    def trial(params: dict) -> None:
        start = time.time()
        time.sleep(1.5)
        (log / f"{start:.6f}").write_text(str(time.time()))
        tune.report({"score": params["lr"]})

    search_alg, _ = build_search_alg(cfg)
    tune.Tuner(tune.with_resources(trial, {"cpu": 0.1}), param_space={"lr": tune.uniform(1e-3, 1e-2)},
               tune_config=tune.TuneConfig(metric="score", mode="max", search_alg=search_alg, num_samples=3,
                                           max_concurrent_trials=cfg.tune.max_concurrent_trials),
               run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0)).fit()
    spans = sorted((float(f.name), float(f.read_text())) for f in log.iterdir())
    assert len(spans) == 3
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), spans
