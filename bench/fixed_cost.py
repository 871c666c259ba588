"""Benchmark: where the annotation pipeline's fixed cost goes, on a fresh Ray instance and on a running cluster.

    .venv/bin/python bench/fixed_cost.py                       # 3 teachers, one batch of 8 HC18 images, 3 jobs
    .venv/bin/python bench/fixed_cost.py --jobs 5 --out bench/results/fixed_cost.json

The fixed cost is what a run costs beyond its images: the wall time of a one-batch run less the plain loop's time
for the same images (``bench/annotate.py``'s definition; the plain loop's rate comes from ``--plain-images`` images
in this process after a warm-up pass, so it carries no start-up).

Two settings, each timed from the driver's ``init_ray`` to the end of ``annotate`` (the driver's own ``import`` of
nakt and torch is reported apart: the plain loop pays it too):

- **fresh instance**: this process starts a local Ray instance (timed) and runs the one batch, as ``nakt annotate``
  does on a laptop;
- **running cluster**: ``ray start --head --block`` once (stopped at the end; other Ray instances on the machine are
  left alone), then ``--jobs`` one-batch runs per setting, each a driver process of its own that connects to it, as
  a job submitted to a KubeRay cluster (Ray binds worker processes to a job, so each job starts its own workers;
  the head node, its GCS and raylet are already up).

Settings (``--settings``), run side by side, alternating job by job: ``lean``, the default, where the annotation
actors, and the driver of a process that only annotates (``nakt annotate``), import MONAI without its optional
integrations (``nakt_ray/runtime/lean_imports.py``); ``full``, MONAI imported in full everywhere
(``NAKT_LEAN_MONAI=0``, and a driver that goes on to train or evaluate); ``preload``, ``preload_monai`` (Ray's worker
preload, rejected); ``kept``, lean with the teachers kept loaded between jobs (``annotate.keep_teachers_s``: the
first job on the running cluster starts the hosts, the next find them; its median over the jobs after the first is
printed apart). Ratios are printed against the first setting.

Per run it records ``annotate``'s phases (probing the teachers in the driver, the streamed execution, the
accounting) and, from ``ray.timeline()``, every task and actor call of the run with its start (seconds after
``init_ray``) and duration: decode, the actors' ``__init__`` (imports, loading the teachers), their first batch,
fusion and the write. Printed per run, and in the JSON (``--out``).

Cost: ~3-4 min on 2 quiet cores (3 jobs per setting).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from annotate import HC18, TEACHERS, image_folder, make_teachers, plain_loop, run_config
from remote_teacher import free_port

# Ray Data's and Ray's own bookkeeping calls: counted in the wall time, not listed.
_BOOKKEEPING = ("_AutoscalingCoordinatorActor", "ActorLocationTracker", "_StatsActor", "get_location")


def timeline_spans(t_begin: float, t_end: float) -> list[dict]:
    """The run's tasks and actor calls between ``t_begin`` and ``t_end`` (``time.time()`` seconds), from
    ``ray.timeline()`` (cluster-wide): what ran, start (s after ``t_begin``), duration (s), worker (thread id)."""
    import ray

    spans = []
    for ev in ray.timeline():
        cat = ev.get("cat", "")
        if ev.get("ph") != "X" or not cat.startswith("task::") or any(b in cat for b in _BOOKKEEPING):
            continue
        start = ev["ts"] / 1e6
        if t_begin - 0.5 <= start <= t_end + 0.5:
            spans.append({"what": cat.removeprefix("task::").replace("ray.data._internal.execution.operators.", ""),
                          "start_s": round(start - t_begin, 3), "dur_s": round(ev.get("dur", 0) / 1e6, 3),
                          "worker": ev.get("tid")})
    return sorted(spans, key=lambda s: s["start_s"])


def job(cfg_json: str, out: str, lean_driver: bool, keep_teachers_s: float = 0.0) -> None:
    """One one-batch annotation run in this process (``ray.address`` of the config: a running cluster, or None: start
    a local instance)."""
    t_imp = time.perf_counter()
    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.runtime.cluster import init_ray
    imports = time.perf_counter() - t_imp

    raw = json.loads(cfg_json)
    raw["annotate"]["keep_teachers_s"] = keep_teachers_s
    cfg = config.from_dict(raw)
    t_wall0, t0 = time.time(), time.perf_counter()
    if lean_driver:  # as `nakt annotate` does (cli.cmd_annotate): this process only annotates
        from nakt_ray.annotation.pools import lean_monai

        lean_monai([(t.name, str(cfg.teacher_checkpoint(t))) for t in cfg.teachers], only_annotates=True)
    init_ray(cfg.ray)
    ray_init = time.perf_counter() - t0
    summary = annotate(cfg)
    wall = time.perf_counter() - t0
    spans = timeline_spans(t_wall0, time.time())
    Path(out).write_text(json.dumps({"images": summary["cases_read"], "driver_imports_s": imports,
                                     "ray_init_s": ray_init, "wall_s": wall, "phases_s": summary["phases_s"],
                                     "spans": spans}))


# Each setting: (extra arguments of the job, its environment, the environment of the Ray instance it runs on: the
# running cluster's head, or the local instance the job starts, which inherits the job's environment).
SETTINGS: dict[str, tuple[list[str], dict[str, str], dict[str, str]]] = {
    "lean": ([], {}, {}),
    "full": (["--full-monai-driver"], {"NAKT_LEAN_MONAI": "0"}, {}),
    # Ray's own worker preload (default_worker.py --worker-preload-modules): every worker process imports these
    # before it accepts work, so an actor placed on an idle worker finds them imported.
    "preload": ([], {}, {"RAY_preload_python_modules": "torch"}),
    "preload_monai": ([], {}, {"RAY_preload_python_modules": "torch,monai"}),
    # lean, with the teachers kept loaded between jobs (annotate.keep_teachers_s; decision 75): the first job on a
    # running cluster starts the hosts, the next ones find them
    "kept": (["--keep-teachers-s", "600"], {}, {}),
}


def run_job(cfg, out: Path, setting: tuple[list[str], dict[str, str], dict[str, str]]) -> dict:
    extra, env, head_env = setting
    if cfg.ray.address is None:  # a local instance: its raylet inherits the job's environment
        env = {**env, **head_env}
    cmd = [sys.executable, __file__, "--job", json.dumps(cfg.to_dict()), "--job-out", str(out)] + extra
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})
    return json.loads(out.read_text())


def report(label: str, r: dict) -> None:
    print(f"{label}: fixed {r['fixed_s']:.2f} s (wall {r['wall_s']:.2f} s from init_ray, of which init_ray "
          f"{r['ray_init_s']:.2f} s; driver imports {r['driver_imports_s']:.2f} s apart); phases "
          + ", ".join(f"{k} {v:.2f}" for k, v in r["phases_s"].items()))
    for s in r["spans"]:
        print(f"    {s['start_s']:6.2f} s  +{s['dur_s']:5.2f} s  {s['what'][:80]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=Path, default=HC18, help="folder of images (default: ../shared/data/hc18)")
    p.add_argument("--size", type=int, default=128, help="teachers' input size (square)")
    p.add_argument("--batch", type=int, default=8, help="images in the one batch, and every teacher's batch size")
    p.add_argument("--jobs", type=int, default=3, help="one-batch jobs on the running cluster")
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="the cluster's CPUs")
    p.add_argument("--plain-images", type=int, default=64, help="images for the plain loop's rate")
    p.add_argument("--out", type=Path, default=Path("bench/results/fixed_cost.json"))
    p.add_argument("--settings", nargs="+", default=["lean", "full"], choices=sorted(SETTINGS),
                   help="lean: MONAI imported lean in the actors and the driver (as `nakt annotate` does); full: "
                        "imported in full everywhere (NAKT_LEAN_MONAI=0); preload, preload_monai: lean, on a Ray "
                        "instance whose workers import torch (and MONAI) before they take work "
                        "(RAY_preload_python_modules); kept: lean, with the teachers kept loaded between jobs "
                        "(annotate.keep_teachers_s). Ratios are printed against the first.")
    p.add_argument("--pause", type=float, default=2.0,
                   help="seconds between jobs on the running clusters (a cluster between jobs, as in use)")
    p.add_argument("--full-monai-driver", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--keep-teachers-s", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--job-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NAKT_PROGRESS", "0")
    if args.job:
        return job(args.job, args.job_out, not args.full_monai_driver, args.keep_teachers_s)
    if not args.images.is_dir():
        raise SystemExit(f"image folder {args.images} not found; pass --images")

    work = Path(tempfile.mkdtemp(prefix="nakt-bench-fixed-"))
    ray_cli = str(Path(sys.executable).with_name("ray"))
    try:
        teachers = make_teachers(work / "teachers", args.size)
        many = image_folder(args.images, work / "images_plain", args.plain_images, 1)
        cfg = run_config(work / "plain", many, teachers, args.size, args.batch, 1)
        plain_loop(cfg, work / "plain_warmup")  # imports and first passes, so the timed loop is steady
        plain = plain_loop(cfg, work / "plain_out")
        few = image_folder(args.images, work / "images_one_batch", args.batch, 1)

        def one_batch(i: int, address: str | None):
            c = run_config(work / f"run_{i}", few, teachers, args.size, args.batch, 1).to_dict()
            c["ray"].update(num_cpus=args.cpus, address=address)
            return config.from_dict(c)

        from nakt_ray import config

        def timed(cfg, name: str, setting: str) -> dict:
            r = run_job(cfg, work / f"{name}.json", SETTINGS[setting])
            r["fixed_s"] = r["wall_s"] - r["images"] / plain["images_per_s"]
            r["setting"] = setting
            report(f"{name} ({setting})", r)
            return r

        run_ids = itertools.count()
        fresh = {s: timed(one_batch(next(run_ids), None), f"fresh_{s}", s) for s in args.settings}
        # One running cluster per distinct head environment, all up at once (idle heads cost little), so that the
        # settings' jobs can alternate.
        heads: dict[str, tuple[int, subprocess.Popen]] = {}
        jobs: dict[str, list] = {s: [] for s in args.settings}
        try:
            for s in args.settings:
                head_env = SETTINGS[s][2]
                key = json.dumps(head_env, sort_keys=True)
                if key in heads:
                    continue
                port = free_port()
                heads[key] = port, subprocess.Popen(
                    [ray_cli, "start", "--head", "--block", "--port", str(port), "--num-cpus", str(args.cpus),
                     "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **head_env})
            time.sleep(5 + 5 * len(heads))  # the heads' GCS, raylets and first idle workers
            for i in range(args.jobs):  # the settings alternate, so drift on the machine hits them alike
                for s in args.settings:
                    port = heads[json.dumps(SETTINGS[s][2], sort_keys=True)][0]
                    jobs[s].append(timed(one_batch(next(run_ids), f"127.0.0.1:{port}"), f"job{i}", s))
                    time.sleep(args.pause)
        finally:
            for port, head in heads.values():
                head.terminate()
                head.wait(timeout=60)
                # `ray start` left its address for `ray.init()` to join; gone with the head, it would make a later
                # local start on this machine try to join a dead cluster (`ray stop` removes it, but stops every
                # instance).
                current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
                if current.exists() and current.read_text().strip().endswith(f":{port}"):
                    current.unlink()
        median = {s: sorted(r["fixed_s"] for r in rs)[len(rs) // 2] for s, rs in jobs.items()}
        # every job but a setting's first (for kept, the jobs that found the teachers loaded)
        later = {s: sorted(r["fixed_s"] for r in rs[1:])[(len(rs) - 1) // 2] for s, rs in jobs.items() if len(rs) > 1}
        result = {"host": platform.node(), "cpus": args.cpus, "size": args.size, "batch": args.batch,
                  "teachers": [a for _, a in TEACHERS], "plain_loop": plain, "settings": args.settings,
                  "fresh_instance": fresh, "running_cluster_jobs": jobs,
                  "fixed_s_fresh_instance": {s: r["fixed_s"] for s, r in fresh.items()},
                  "fixed_s_running_cluster_median": median,
                  "fixed_s_running_cluster_median_after_first": later}
        print(f"plain loop {plain['images_per_s']:.1f} images/s. Fixed cost (s):")
        for s in args.settings:
            print(f"  {s:6s} fresh instance {fresh[s]['fixed_s']:6.2f}; running cluster median {median[s]:6.2f} ("
                  + ", ".join(f"{r['fixed_s']:.2f}" for r in jobs[s]) + ")"
                  + (f"; after the first job {later[s]:6.2f}" if s in later else ""))
        x = args.settings[0]
        for y in args.settings[1:]:  # measured side by side: each setting against the first
            print(f"  {y} / {x}: fresh {fresh[y]['fixed_s'] / fresh[x]['fixed_s']:.2f}, running cluster "
                  f"{median[y] / median[x]:.2f}"
                  + (f", after the first job {later[y] / later[x]:.2f}" if x in later and y in later else ""))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
