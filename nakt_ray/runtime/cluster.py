"""Starting (or joining) Ray the same way in every entry point."""
from __future__ import annotations

import logging
import os
import warnings

from nakt_ray.config import RayConfig
from nakt_ray.runtime import console

# Every Ray worker process runs this before it unpickles anything: it installs an import hook (importing nothing),
# so a worker that meets a timm model (or imports timm itself) can import torchvision where the PyPI CUDA build does
# not load against CPU torch, and a worker that never does pays nothing (decision 36).
WORKER_SETUP_HOOK = "nakt_ray._torchvision_compat.install_import_hook"

# Ray Data 2.60 shares a cluster's CPUs between the live dataset executions through one coordinator actor, in
# whole CPUs (on 2 CPUs, three executions get 2 // 3 == 0 each). An execution whose process was killed (a Tune
# trial stopped by ASHA, a killed Train worker) keeps its share until its request expires, 180 s by default, and
# on a small machine the next execution starves that long ("Cluster resources are not enough to run any task").
# Live executions renew their request every 10 s, so 45 s is safe for them and bounds the stall.
DATA_REQUEST_EXPIRE = ("RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S", "45")
# nakt's environment switches that workers read (runtime/lean_imports.py).
FORWARDED_ENV = ("NAKT_LEAN_MONAI",)

# CPUs asked by light Ray Data tasks (reads, filters, writes, fusion). Ray's default for a task is a whole CPU,
# which on a 2-core machine beside actor pools or Train workers leaves such tasks waiting (measured: a Parquet
# write waited 18 s for its CPU while the pipeline had finished; a Parquet read stalled a Train epoch 1 min 44 s).
LIGHT_CPU = 0.25


def init_ray(cfg: RayConfig | None = None, **overrides) -> None:
    """Start a local Ray instance, or connect to ``cfg.address``; a no-op when Ray is already initialised.

    Local instances run without token authentication (``RAY_AUTH_MODE=disabled`` unless the caller set it).
    """
    import ray

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    env_vars = {DATA_REQUEST_EXPIRE[0]: os.environ.get(*DATA_REQUEST_EXPIRE)}
    # The job's own switches reach its workers, also on a running cluster whose raylet has another environment.
    env_vars.update({k: os.environ[k] for k in FORWARDED_ENV if k in os.environ})
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # Capped light-task pools (annotation.pools.light_task_pool) on small inputs: Ray warns that the cap exceeds the
    # blocks.
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks for")
    kwargs = dict(
        address=cfg.address,
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK, "env_vars": env_vars},
    )
    if cfg.address is not None:  # a running cluster decides its own resources
        kwargs.pop("num_cpus")
        kwargs.pop("num_gpus")
    kwargs.update(overrides)
    ray.init(**kwargs)
    # Under a `nakt` command Ray's output (its loggers, C++ logs, workers' output forwarded by log_to_driver) goes
    # to <run_dir>/logs/ray.log unless --verbose (nakt_ray/runtime/console.py); say there where Ray's own logs are.
    console.note_ray_session()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("NAKT_PROGRESS", "1") != "0"
    ctx.print_on_execution_start = False


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
