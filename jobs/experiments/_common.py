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
HC18_LABELS = ["background", "head"]


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    """``--dataset-name`` and ``--labels``: what the reports call the data and its classes."""
    p.add_argument("--dataset-name", default=None,
                   help="the data's name in the reports and plots (default: HC18 for the default --data, else "
                        "the --data folder's name)")
    p.add_argument("--labels", default=None, metavar="BACKGROUND,CLASS,...",
                   help="class names, background first, comma-separated, one per mask value (default: "
                        "background,head for HC18, else background,foreground)")


def resolve_dataset(args: argparse.Namespace) -> None:
    """Fill in ``args.dataset_name`` and ``args.labels`` (a list) from the flags, else from ``--data``: HC18's own
    names for HC18, the folder's name and a generic foreground class for any other folder."""
    is_hc18 = Path(args.data).resolve() == HC18.resolve()
    if not args.dataset_name:
        args.dataset_name = "HC18" if is_hc18 else Path(args.data).resolve().name
    if isinstance(args.labels, str):
        args.labels = [x.strip() for x in args.labels.split(",") if x.strip()]
    if not args.labels:
        args.labels = list(HC18_LABELS) if is_hc18 else ["background", "foreground"]
    if len(args.labels) < 2:
        raise SystemExit(f"--labels: got {args.labels}; expected at least two class names, background first")


def add_common_args(p: argparse.ArgumentParser, name: str, size: int) -> None:
    p.add_argument("--data", default=str(HC18), help="labeled folder source (images/, masks/)")
    add_dataset_args(p)
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
    resolve_dataset(args)
    if (Path(args.run_dir) / "annotations").exists() and not getattr(args, "reuse", False):
        raise SystemExit(f"{args.run_dir} holds an earlier run; remove it or pass another --run-dir")
    t0 = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - t0
    result.update(dataset=args.dataset_name, labels=args.labels)  # the reports name the data and classes by these
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{name}.json").write_text(json.dumps(result, indent=2))  # the numbers first, then the report
    write_results(result, Path(args.out), Path(args.run_dir))
    print((Path(args.out) / f"{name}.md").read_text())
    print(f"total {result['wall_s'] / 60:.1f} min; written {args.out}/{written}")


def dataset_name(result: dict) -> str:
    """The data's name in a report (results written before the flag existed were all HC18)."""
    return result.get("dataset") or "HC18"
