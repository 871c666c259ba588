"""Submit a shell command to a running Ray cluster as a Ray job, wait for it, print one JSON line
(``submission_id``, ``status``, ``message``, ``logs``). Used by tests/test_jobs_cluster.py.

    python tests/_ray_job.py GCS_ADDRESS 'ENTRYPOINT' '{"env_vars": {...}}' TIMEOUT_S

This drives the Ray Jobs API's job manager (``JobManager``: a ``JobSupervisor`` actor on the head runs the
entrypoint in a shell with ``RAY_ADDRESS`` set, records its status in the GCS, keeps its log), which is what
``ray job submit`` reaches through the dashboard's HTTP endpoint. That endpoint is only served by the full dashboard,
whose dependencies come with ``ray[default]`` (aiohttp_cors, grpcio, opencensus, opentelemetry, prometheus_client);
nakt-ray installs ``ray[data,train,tune]`` only, so here the job manager is driven directly. With ``ray[default]``
the test uses the ``ray job submit`` command instead.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time


async def submit_and_wait(address: str, entrypoint: str, runtime_env: dict, timeout: float) -> dict:
    import ray
    from ray.dashboard.modules.job.job_manager import JobManager

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    node = ray._private.worker._global_node
    manager = JobManager(ray._private.worker.global_worker.gcs_client, node.get_logs_dir_path())
    submission_id = await manager.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    deadline = time.monotonic() + timeout
    status = await manager.get_job_status(submission_id)
    while not status.is_terminal():
        if time.monotonic() > deadline:
            manager.stop_job(submission_id)
            break
        await asyncio.sleep(0.5)
        status = await manager.get_job_status(submission_id)
    info = await manager.get_job_info(submission_id)
    return {"submission_id": submission_id, "status": str(status.value), "message": info.message,
            "logs": manager.get_job_logs(submission_id)}


def main() -> None:
    address, entrypoint, runtime_env, timeout = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(asyncio.run(submit_and_wait(address, entrypoint, runtime_env, timeout))))


if __name__ == "__main__":
    main()
