"""What every ``jobs/`` entrypoint shares: its command line, the Ray cluster it joins, and running a ``nakt`` stage.

A job is ``python jobs/<stage>.py --config run.yaml [--set KEY=VALUE ...] [--resume]``, submitted with
``ray job submit`` (a KubeRay RayJob does the same from its submitter pod) or started by hand. It joins:

1. the address given by ``--ray-address`` or the config's ``ray.address``, when set;
2. else the cluster the job runs on: ``auto`` when ``RAY_ADDRESS`` is set (``ray job submit`` sets it for the
   entrypoint) or when a ``ray start`` instance on this machine has recorded its address;
3. else a local Ray instance, as ``nakt`` does.

Each stage is the ``nakt`` command itself (``nakt_ray.cli.main``), so a job does exactly what the command does.
``--resume`` makes a job idempotent: what finished is kept, what was interrupted is resumed, what never started
starts (so a retried RayJob, or the same submission again, finishes the work instead of failing on it).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Any


def parser(stage: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="run config YAML (docs/config.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set training.epochs=3 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="keep what finished, resume what was interrupted, start the rest")
    p.add_argument("--ray-address", help="Ray address to join (default: ray.address, else the cluster the job "
                                         "runs on, else a local instance)")
    return p


def log(stage: str, message: str) -> None:
    """One line per event on stderr (the job log); stdout carries only results."""
    print(f"[nakt job {stage}] {message}", file=sys.stderr, flush=True)


def ray_address_file() -> Path:
    """Where ``ray start`` records the address of the instance it started (Ray's own lookup for ``auto``)."""
    tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(tmp) / "ray" / "ray_current_cluster"


def cluster_address(configured: str | None, explicit: str | None = None) -> str | None:
    """The Ray address a job joins (see the module docstring); None starts a local instance."""
    if explicit:
        return explicit
    if configured:
        return configured
    if os.environ.get("RAY_ADDRESS") or ray_address_file().is_file():
        return "auto"
    return None


class Job:
    """A parsed job command line, its validated config and the Ray address its stages use."""

    def __init__(self, stage: str, args: argparse.Namespace):
        from nakt_ray import config

        self.stage, self.args = stage, args
        try:
            self.cfg = config.load(args.config, list(args.set))
        except config.ConfigError as err:
            log(stage, f"error: {err}")
            raise SystemExit(2) from None
        self.address = cluster_address(self.cfg.ray.address, args.ray_address)
        where = {None: "a local Ray instance", "auto": "the Ray cluster this job runs on"}.get(
            self.address, f"the Ray cluster at {self.address}")
        log(stage, f"config {args.config}; run_dir {self.cfg.run_dir}; joining {where}")

    def argv(self, command: str, *extra: str) -> list[str]:
        """``nakt <command>`` arguments carrying this job's config, overrides and Ray address."""
        argv = [command, "--config", str(self.args.config)]
        for item in self.args.set:
            argv += ["--set", item]
        if self.address and self.address != self.cfg.ray.address:
            argv += ["--ray-address", self.address]
        return argv + list(extra)


def run_nakt(argv: list[str]) -> int:
    """``nakt <argv>`` in this process (its output goes where this process's goes); returns its exit code."""
    from nakt_ray.cli import main

    return main(argv)


def run_nakt_captured(argv: list[str]) -> tuple[int, str]:
    """``nakt <argv>`` with its stdout captured (and copied to stderr, so the job log still shows it)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        rc = run_nakt(argv)
    text = buffer.getvalue()
    sys.stderr.write(text)
    return rc, text


def last_json(text: str) -> Any:
    """The JSON object a ``nakt`` command printed last; None if none.

    The commands print ``json.dumps(..., indent=2)``, so the object starts at a line's first column; lines that
    Ray forwards from workers (``(pid=...) ...``) may come before or after it.
    """
    decoder = json.JSONDecoder()
    starts = [i for i in range(len(text)) if text[i] == "{" and (i == 0 or text[i - 1] == "\n")]
    for i in reversed(starts):
        try:
            return decoder.raw_decode(text, i)[0]
        except json.JSONDecodeError:
            continue
    return None


def has_command(name: str) -> bool:
    """Whether this nakt-ray's command line has the subcommand ``name`` (``nakt tune`` came later than the rest)."""
    from nakt_ray import cli

    return hasattr(cli, f"cmd_{name.replace('-', '_')}")


def training_resume_flag(model_path: Path) -> list[str] | None:
    """For ``--resume`` jobs: ``["--resume"]`` to continue an interrupted training of ``model_path``, ``[]`` to start
    one, None when it finished (its model file exists and its run is not marked unfinished)."""
    from nakt_ray.training.student import unfinished_run

    if unfinished_run(model_path):
        return ["--resume"]
    return None if Path(model_path).exists() else []
