"""Annotation on a simulated three-node Ray cluster that loses a worker node mid-run. Used by
tests/test_jobs_cluster.py, in a process of its own (the test session's Ray instance must not be connected).

    python tests/_multinode_annotate.py RUN_YAML RESULT_JSON

The cluster (``ray.cluster_utils.Cluster``, every node on this machine) is shaped like the KubeRay one: a CPU-only
head (the driver's node) and two "GPU workers" (1 CPU, 1 GPU each: GPU as a scheduling resource only; torch stays
on the CPU). Teachers ask for a GPU fraction, so their actors can only live on the workers, and Ray Data spreads
them there. Each actor's batches after its first wait for the removal (``RecordingTeacher``). When the first Parquet
file appears, a worker node that hosts teacher actors is killed (all its
processes, as a lost machine). Every teacher actor records where it (re)starts; RESULT_JSON gets the summary, the
written case ids, those records and the removed node.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

import ray

from nakt_ray import config
from nakt_ray.annotation import parquet as ann
from nakt_ray.annotation.pipeline import annotate
from nakt_ray.annotation.pools import TeacherPredictor
from nakt_ray.config import RayConfig
from nakt_ray.runtime.cluster import init_ray

ACTOR_LOG = os.environ["NAKT_ACTOR_LOG"]  # a file every node sees (one machine)
# Written by the driver when it removes the node: the time and how many teacher actors the node hosted.
REMOVAL = ACTOR_LOG + ".removed"


def record(entry: dict) -> None:
    with open(ACTOR_LOG, "a") as f:  # one short line per write: appends do not interleave
        f.write(json.dumps(entry) + "\n")


class RecordingTeacher(TeacherPredictor):
    """A teacher actor that records the node it starts on, and holds the run still around the node's removal:

    - an actor's first batch goes through, so the first case can reach a Parquet file (the removal's trigger);
    - every later batch waits (up to 120 s) for the node to be removed, and then until as many actors have started
      again as the node hosted.

    So most of the run is still to do when the node goes, and no surviving actor can finish it before Ray has
    noticed the lost node and restarted its actors (which would leave the restart unobserved). CI saw both: a
    survivor that finished the run meanwhile, and one whose batches had all started before the node went."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._calls = 0
        record({"teacher": self.name, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "t": time.time()})

    def __call__(self, batch):
        self._calls += 1
        if self._calls > 1:
            deadline = time.time() + 120
            while time.time() < deadline and not os.path.exists(REMOVAL):
                time.sleep(0.1)
        if os.path.exists(REMOVAL):
            with open(REMOVAL) as f:
                removal = json.load(f)
            deadline = time.time() + 120
            while time.time() < deadline and sum(r["t"] > removal["t"] for r in actor_records()) < removal["lost"]:
                time.sleep(0.2)
        return super().__call__(batch)


def actor_records() -> list[dict]:
    if not os.path.exists(ACTOR_LOG):
        return []
    with open(ACTOR_LOG) as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    from ray.cluster_utils import Cluster

    t0 = time.time()
    cfg = config.load(sys.argv[1])
    out_dir = str(cfg.annotations_dir)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1, resources={"gpu_worker": 1}) for _ in range(2)]
    result: dict = {"head": cluster.head_node.node_id, "workers": [w.node_id for w in workers], "started_at": t0}
    try:
        cluster.wait_for_nodes()
        init_ray(RayConfig(address=cluster.address))
        result["cluster_up_at"] = time.time()

        def remove_a_worker_when_a_file_is_written() -> None:
            deadline = time.time() + 240
            while not ann.parquet_files(out_dir) and time.time() < deadline:
                time.sleep(0.05)
            hosts = {r["node"] for r in actor_records()}
            victim = next((w for w in workers if w.node_id in hosts), None)
            if victim is None:
                result["removal_error"] = f"no worker hosts a teacher actor (records: {actor_records()})"
                return
            before = actor_records()
            result.update(removed=victim.node_id, removed_at=time.time(),
                          files_before_removal=len(ann.parquet_files(out_dir)), actors_before_removal=before)
            lost = sum(r["node"] == victim.node_id for r in before)
            # The marker goes first: from now on the survivors' batches wait for the lost actors' restarts. Written
            # after the removal (which takes seconds on a loaded machine), the survivors could finish the whole run
            # meanwhile and the restart would go unobserved (seen in CI).
            with open(REMOVAL + ".tmp", "w") as f:  # renamed into place: actors never read half a file
                json.dump({"t": result["removed_at"], "lost": lost}, f)
            os.replace(REMOVAL + ".tmp", REMOVAL)
            cluster.remove_node(victim, allow_graceful=False)  # SIGKILL: the machine is gone

        remover = threading.Thread(target=remove_a_worker_when_a_file_is_written, daemon=True)
        remover.start()
        result["summary"] = annotate(cfg, predictor_cls=RecordingTeacher)
        remover.join(timeout=30)
        result["case_ids"] = ann.read_table(out_dir, columns=["case_id"]).column("case_id").to_pylist()
        result["alive_nodes"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        result["actors"] = actor_records()
        result["finished_at"] = time.time()
    finally:
        with open(sys.argv[2], "w") as f:
            json.dump(result, f)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
