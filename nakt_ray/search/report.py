"""What a finished search leaves to read: one row per trial (its child run closed with the trial's status), the
results table (``results.md``, ``results.csv``) and plot (``results.png``) in the search's experiment folder.

A row is ``{"trial_id", "status", "epochs", "best", "wall_s", "values", "config", "run_id", "model_path",
"error"}``: ``status`` is ``completed``, ``early-stopped`` (``training.patience``), ``stopped`` (by the scheduler)
or ``error``; ``best`` is the best value of the search's metric over the trial's epochs; ``values`` are the trial's
sampled config values (``{"dotted.key": value}``) and ``config`` its whole :class:`RunConfig`.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from nakt_ray.config import RunConfig
from nakt_ray.config.space import Dist, trial_config, trial_values
from nakt_ray.tracking import TAG_TUNE_STATUS, TAG_TUNE_TRIAL_ID


def result_rows(grid: Any, dists: list[Dist], cfg: RunConfig, base: RunConfig, trials_dir: Path,
                parent_run_id: str) -> list[dict[str, Any]]:
    """One row per trial of the Tune ``ResultGrid`` ``grid`` (creation order): id, status, epochs run, best metric,
    wall time, values, the trial's config (from the trials' ``base``), child run, model file. Each trial's child
    run gets its status as the tag ``nakt.tune_status`` and is closed (FINISHED, or FAILED for an error)."""
    from mlflow.tracking import MlflowClient

    from nakt_ray.tracking import tracking_uri

    client = MlflowClient(tracking_uri(cfg))
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"])
    run_of = {r.data.tags.get(TAG_TUNE_TRIAL_ID): r for r in children}  # the latest run of a trial wins
    metric, better = cfg.tune.metric, (max if cfg.tune.mode == "max" else min)
    rows = []
    for result in grid:
        trial_id = Path(result.path).name
        values = trial_values(dists, result.config, base)
        history = result.metrics_dataframe
        scores = [] if history is None or metric not in history else [float(v) for v in history[metric].dropna()]
        last = result.metrics or {}
        epochs = int(last["epoch"]) + 1 if "epoch" in last else 0
        if result.error is not None:
            status = "error"
        elif last.get("stopped_early"):
            status = "early-stopped"  # training.patience
        elif epochs < cfg.training.epochs:
            status = "stopped"  # by the scheduler (ASHA)
        else:
            status = "completed"
        trial_cfg = trial_config(base, {**values, "run_dir": str(trials_dir / trial_id)})
        model = trial_cfg.student_checkpoint
        run = run_of.get(trial_id)
        rows.append({"trial_id": trial_id, "status": status, "epochs": epochs,
                     "best": better(scores) if scores else float("nan"), "wall_s": float(last.get("time_total_s", 0)),
                     "values": values, "config": trial_cfg, "run_id": run.info.run_id if run else None,
                     "model_path": str(model) if status in ("completed", "early-stopped") and model.exists() else None,
                     "error": str(result.error).splitlines()[0][:300] if result.error is not None else ""})
        if run is not None:
            # A trial stopped by the scheduler had its process ended mid-run (the run reads RUNNING or FAILED): a
            # normal outcome of the search, so FINISHED, with the reason in a tag.
            client.set_tag(run.info.run_id, TAG_TUNE_STATUS, status)
            wanted = "FAILED" if status == "error" else "FINISHED"
            if run.info.status != wanted:
                client.set_terminated(run.info.run_id, wanted)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Results a person reads: table (Markdown, CSV) and plot.


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _columns(rows: list[dict[str, Any]], teachers: list[str]) -> list[str]:
    keys: list[str] = []
    for r in rows:
        for k in r["values"]:
            if k not in keys:
                keys.append(k)
    out = []
    for k in keys:
        out += [f"fusion.weights.{t}" for t in teachers] if k == "fusion.weights" else [k]
    return out


def _cell(row: dict[str, Any], column: str, teachers: list[str]) -> Any:
    if column.startswith("fusion.weights.") and "fusion.weights" in row["values"]:
        w = row["values"]["fusion.weights"]
        return None if w is None else w[teachers.index(column.split(".", 2)[2])] / sum(w)
    return row["values"].get(column)


def write_results(rows: list[dict[str, Any]], teachers: list[str], metric: str, out_dir: Path) -> dict[str, Path]:
    """``results.md``, ``results.csv`` and ``results.png`` in ``out_dir``. Weights are shown normalised (shares)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = _columns(rows, teachers)
    head = ["trial", "status", "epochs", f"best {metric}", "wall s"] + columns
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["trial_id", "status", "epochs", f"best_{metric}", "wall_s", "mlflow_run_id"] + columns)
    for r in rows:
        cells = [_cell(r, c, teachers) for c in columns]
        md.append("| " + " | ".join([r["trial_id"], r["status"], str(r["epochs"]), _fmt(r["best"]),
                                     f"{r['wall_s']:.1f}"] + [_fmt(c) for c in cells]) + " |")
        writer.writerow([r["trial_id"], r["status"], r["epochs"], r["best"], round(r["wall_s"], 2), r["run_id"]]
                        + [json.dumps(c) if isinstance(c, (list, tuple)) else c for c in cells])
    files = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "png": out_dir / "results.png"}
    files["md"].write_text("\n".join(md) + "\n")
    files["csv"].write_text(buf.getvalue())
    plot_results(rows, teachers, metric, files["png"])
    return files


def plot_results(rows: list[dict[str, Any]], teachers: list[str], metric: str, path: Path) -> Path:
    """Best ``metric`` per trial (trial order; hollow markers: stopped early by the scheduler) and against each
    teacher's share of the fusion weights (trials whose rule used weights)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(teachers), figsize=(4 * (1 + len(teachers)), 3.4), squeeze=False)
    ax = axes[0, 0]
    for i, r in enumerate(rows):
        full = r["status"] in ("completed", "early-stopped")
        ax.plot(i, r["best"], "o", color="C0", markerfacecolor="C0" if full else "none")
    ax.set(xlabel="trial (in order)", ylabel=f"best {metric}", title=f"{metric} per trial")
    ax.set_xticks(range(len(rows)))
    for t, name in enumerate(teachers):
        ax = axes[0, 1 + t]
        pts = [(_cell(r, f"fusion.weights.{name}", teachers), r["best"]) for r in rows]
        pts = [(w, s) for w, s in pts if w is not None]
        if pts:
            ax.plot([w for w, _ in pts], [s for _, s in pts], "o", color=f"C{t + 1}")
        else:
            ax.text(0.5, 0.5, "no trial with weights", ha="center", va="center", transform=ax.transAxes)
        ax.set(xlabel=f"weight share of {name}", ylabel=f"best {metric}", xlim=(0, 1), title=f"{metric} vs {name}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
