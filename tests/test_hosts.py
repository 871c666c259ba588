"""Teachers kept loaded between runs (``annotate.keep_teachers_s``, ``nakt_ray/annotation/hosts.py``): a second run
finds the same host processes, writes what the actor pools write, a replaced model file gets a host of its own, an
idle host ends itself, and ``stop_hosts`` frees them."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from conftest import tiny_raw_config
from test_annotate import _batch, _nan_run, _nan_teacher

from nakt_ray import config
from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation.hosts import TeacherHost, list_hosts, start_hosts, stop_hosts
from nakt_ray.annotation.pipeline import annotate
from nakt_ray.annotation.pools import TeacherPredictor
from nakt_ray.data.datasets import decode_batch
from nakt_ray.data.readers import list_cases
from nakt_ray.errors import ConfigError, TeacherOutputError

COLUMNS = ["case_id", "status", "error", "prob__t1", "prob__t2", "soft_label", "hard_label"]


def _rows(folder):
    t = ann.read_table(folder, columns=COLUMNS).to_pydict()
    return sorted(zip(*(t[c] for c in COLUMNS)))


def _kept(cfg, keep_s: float = 600.0):
    # Long enough that no host ends itself mid-test on a loaded machine (the runs between two uses of a host took
    # ~80 s with other work on the cores, and a 60 s keep let one go); the test stops them all itself.
    raw = cfg.to_dict()
    return config.from_dict({**raw, "annotate": {**raw["annotate"], "keep_teachers_s": keep_s}})


def test_kept_teachers_serve_the_next_run_as_the_pools_would(annotated, tmp_path):
    cfg, summary, _ = annotated  # per_teacher pools: t1 with one actor, t2 with two
    kept = _kept(cfg)
    try:
        first = annotate(kept, output=str(tmp_path / "k1"))
        hosts = {h["name"]: h for h in list_hosts()}
        second = annotate(kept, output=str(tmp_path / "k2"))
        again = {h["name"]: h for h in list_hosts()}
        # hosts waiting for the next run keep no other run's pools from starting (they ask for a token CPU share)
        pools = annotate(cfg, output=str(tmp_path / "pools"))

        # what the run's own actor pools wrote, row for row, both times
        assert (first["annotated"], first["failed"]) == (summary["annotated"], summary["failed"])
        assert _rows(tmp_path / "k1") == _rows(tmp_path / "k2") == _rows(cfg.annotations_dir)
        assert pools["annotated"] == second["annotated"]
        # the layout of the pools (a host per actor), kept: the second run met the same processes
        assert sorted(h["teachers"] for h in hosts.values()) == [["t1"], ["t2"], ["t2"]]
        assert {n: h["pid"] for n, h in again.items()} == {n: h["pid"] for n, h in hosts.items()}
        assert sum(h["calls"] for h in again.values()) > sum(h["calls"] for h in hosts.values())
        assert max(h["runs"] for h in again.values()) == 2

        # a replaced model file (new time) is another teacher: a host of its own; the old one waits out its time
        t1 = kept.teacher_checkpoint(kept.teachers[0])
        os.utime(t1, ns=(time.time_ns(), time.time_ns() + 10**9))
        annotate(kept, output=str(tmp_path / "k3"))
        after = {h["name"]: h for h in list_hosts()}
        assert set(hosts) < set(after) and [h["teachers"] for n, h in after.items() if n not in hosts] == [["t1"]]
    finally:
        stopped = stop_hosts()
    assert len(stopped) == 4 and list_hosts() == []


def test_an_idle_host_ends_itself(annotated):
    cfg, _, _ = annotated
    t = cfg.teachers[0]
    unit = dict(teachers=[dict(checkpoint=str(cfg.teacher_checkpoint(t)), name=t.name, in_channels=1)],
                batch_sizes=[2], num_threads=1, predictor_cls=TeacherPredictor)
    try:
        (name,) = start_hosts(unit, 1, num_gpus=0.0, keep_s=2.0, restarts=0)
        assert [h["name"] for h in list_hosts()] == [name]  # waits for it to load
        deadline = time.time() + 60
        while list_hosts() and time.time() < deadline:
            time.sleep(0.5)
        assert list_hosts() == []
    finally:
        stop_hosts()


def test_a_host_counts_failed_batches_per_run(tmp_path, synthetic_dirs):
    cfg = _nan_run(tmp_path, synthetic_dirs, threshold=0.5, pools="shared", batch_size=2)
    teacher = dict(checkpoint=str(_nan_teacher(tmp_path / "all.ts", 0.5)), name="nan", in_channels=1)
    host = TeacherHost([teacher], [2], 1, TeacherPredictor, keep_s=3600.0, identity={})
    batch = decode_batch(_batch(list_cases(cfg.data.transferal)[:2]), preprocess=cfg.preprocess, num_classes=2)
    one = {"image": batch["image"], "error": np.array(["", ""], dtype=object)}
    for run in ("a", "a", "b", "b"):  # two all-failed batches a run: below the three that stop a run, each run
        assert all(e.startswith("predict: teacher 'nan'") for e in host.predict(dict(one), run)["error"])
    with pytest.raises(TeacherOutputError, match="every case of 3 batches in a row"):
        host.predict(dict(one), "b")


def test_keep_teachers_s_is_checked(tmp_path):
    raw = tiny_raw_config(tmp_path)
    with pytest.raises(ConfigError, match=r"annotate.keep_teachers_s.*got 5.*at least 30 seconds"):
        config.from_dict({**raw, "annotate": {"keep_teachers_s": 5}})
    assert config.from_dict({**raw, "annotate": {"keep_teachers_s": 30}}).annotate.keep_teachers_s == 30


def test_nakt_hosts_needs_a_running_cluster(capsys):
    from nakt_ray.cli import main

    assert main(["hosts"]) == 2
    assert "nakt hosts: error: --ray-address is required" in capsys.readouterr().err
