"""What every experiment script shares: its common arguments and its main sequence (check the data, run, write
the JSON first and then the report)."""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

HC18 = Path(__file__).resolve().parents[3] / "shared" / "data" / "hc18"


def add_common_args(p: argparse.ArgumentParser, name: str, size: int) -> None:
    p.add_argument("--data", default=str(HC18), help="labeled folder source (images/, masks/)")
    p.add_argument("--run-dir", default=None, help=f"default runs/{name} (runs/{name}-smoke with --smoke)")
    p.add_argument("--out", default=None, help=f"default results/{name} (results/{name}-smoke with --smoke)")
    p.add_argument("--size", type=int, default=size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--reuse", action="store_true",
                   help="keep the teachers and the annotation set an earlier (e.g. interrupted) run in --run-dir "
                        "finished; every student, search and evaluation runs again")


def main(args: argparse.Namespace, name: str, run: Callable[[argparse.Namespace], dict],
         write_results: Callable[[dict, Path, Path], None], written: str) -> None:
    """Run one experiment from its parsed arguments; ``written`` names its result files for the last line."""
    suffix = "-smoke" if args.smoke else ""
    args.run_dir = args.run_dir or f"runs/{name}{suffix}"
    args.out = args.out or f"results/{name}{suffix}"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("NAKT_PROGRESS", "0")
    if not (Path(args.data) / "images").is_dir() or not (Path(args.data) / "masks").is_dir():
        raise SystemExit(f"no labeled data at {args.data} (expected images/ and masks/); pass --data")
    if (Path(args.run_dir) / "annotations").exists() and not getattr(args, "reuse", False):
        raise SystemExit(f"{args.run_dir} holds an earlier run; remove it or pass another --run-dir")
    t0 = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - t0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{name}.json").write_text(json.dumps(result, indent=2))  # the numbers first, then the report
    write_results(result, Path(args.out), Path(args.run_dir))
    print((Path(args.out) / f"{name}.md").read_text())
    print(f"total {result['wall_s'] / 60:.1f} min; written {args.out}/{written}")
