"""E8 — three teachers from three kinds of source (an nnU-Net v2 folder, a MONAI bundle, a remote endpoint) in one
annotation run, distilled into one student, on HC18 (or any labeled folder: --data, --dataset-name, --labels).

    .venv/bin/python jobs/experiments/e8_mixed_sources.py            # full (96x96): see the cost below
    .venv/bin/python jobs/experiments/e8_mixed_sources.py --smoke    # same path, tiny: 2.3 min on 2 cores
    .venv/bin/python jobs/experiments/e8_mixed_sources.py --reuse    # keep runs/e8's teachers and annotation set

Cost of the full run, measured 2026-12-07 on 2 cores with a test run beside it most of the time: 25.3 min in
all, of which the nnU-Net teacher 284 s (plan and preprocess 25 s, training 254 s), the SegResNet and AttentionUnet
teachers 258 + 224 s, the bundle, MLflow model and the scoring server's start ~17 s, annotation of 178 cases 110 s,
the student 491 s and the evaluation of 116 cases x 6 models 115 s (docs/results.md, E8); alone, an estimated ~16 min.

Protocol (``jobs/experiments/protocol.py``, seed 0, split by subject; 96x96 like E3): one teacher per site, each
reaching the run through a different source kind (``nakt_ray/teachers/kinds/``):
  site_a  nnunet_a          an nnU-Net v2 2D results folder made by nnU-Net's own code (``_nnunet.py``: the
                            site's images on the run's grid as nnU-Net's raw PNG dataset, ``nnUNetv2_plan_and_
                            preprocess``, the plan's network narrowed, ``nnUNetTrainer`` on fold ``all``); the
                            teacher is the folder, run through nnU-Net's predictor (decision 63);
  site_b  segresnet_b       a SegResNet trained by nakt on the site's images on the run's grid, written out as a
                            MONAI bundle (``_sources.write_bundle``) that the ``monai_bundle`` kind loads
                            (decision 61): its NormalizeIntensityd is exactly the z-score the network trained on;
  site_c  attention_unet_c  an AttentionUnet trained by nakt (as E3's teachers), saved as an MLflow model and
                            served by MLflow's own scoring server (``mlflow models serve --env-manager local``) on
                            127.0.0.1, started and stopped by this script; the teacher is a ``kind: remote``
                            YAML pointing at it (decision 62).
One ``annotate`` over the ``transferal`` split (masks never read) with the three; one student (timm_unet, mean fusion =
the default configuration, 24 epochs) distilled from it; ``evaluate`` on ``test`` with the teachers' ensemble (the
mean of their probabilities). Also scored: the bundle's and the served model's own nakt model files
(``*_local``), so the report shows what going through each source kind changed. Every model picks its best epoch on
``val`` (nnU-Net: its final checkpoint). Results: ``results/e8/`` (``e8.md``, ``e8.json``, ``e8.png``) and the
run's MLflow store (``<run_dir>/mlflow.db``, experiment ``e8``: the teachers' and the student's trainings, the
student registered as ``e8-student@candidate``, and a summary run).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import time
from pathlib import Path

from _common import add_common_args, dataset_name  # (the script's folder is on sys.path)
from _common import main as common_main

TEACHERS = {"nnunet_a": ("site_a", "nnunet"), "segresnet_b": ("site_b", "monai_bundle"),
            "attention_unet_c": ("site_c", "remote (mlflow)")}
LOCAL = {"segresnet_b": "segresnet_b_local", "attention_unet_c": "attention_unet_c_local"}
STUDENT = "student"


def run(args: argparse.Namespace) -> dict:
    import _nnunet
    import _sources
    import protocol
    from e3_multi_teacher import paired_deltas

    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import ENSEMBLE, evaluate
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.student import train_student
    from nakt_ray.training.teacher import train_teacher

    run_dir = Path(args.run_dir)
    splits = protocol.materialise(args.data, run_dir / "splits", seed=args.seed)
    if args.smoke:  # the same splits, cut to a few cases each
        splits = {**splits, **{k: protocol.subset(splits[k], n, run_dir / f"{k}_small") for k, n in (
            ("site_a", 12), ("site_b", 12), ("site_c", 12), ("transferal", 16), ("val", 8), ("test", 12))}}
    epochs = dict(teacher=2, student=2, nnunet=1) if args.smoke else dict(
        teacher=args.teacher_epochs, student=args.student_epochs, nnunet=args.nnunet_epochs)
    iterations = 10 if args.smoke else args.nnunet_iterations
    size = (args.size, args.size)
    timings: dict[str, float] = {}
    # nnU-Net's predictor resamples with nnUNet_def_n_proc torch threads (default 8): one per actor on these cores.
    # Set before Ray starts, so the actors inherit it.
    os.environ.setdefault("nnUNet_def_n_proc", "1")

    # 1. site_a: nnU-Net's own teacher, in a process of its own (nnU-Net reads its folders at import).
    t = time.perf_counter()
    nn_json = run_dir / "nnunet.json"
    nn = json.loads(nn_json.read_text()) if args.reuse and nn_json.exists() else None
    if nn is None or not (Path(nn["folder"]) / "fold_all" / "checkpoint_final.pth").is_file():
        shutil.rmtree(run_dir / "nnunet", ignore_errors=True)
        nn = _nnunet.make_teacher(splits["site_a"], run_dir / "nnunet", size=args.size, labels=list(args.labels),
                                  epochs=epochs["nnunet"], iterations=iterations,
                                  max_features=16 if args.smoke else args.nnunet_max_features,
                                  dataset_id=args.nnunet_dataset_id, log=run_dir / "logs" / "nnunet.log")
        nn_json.write_text(json.dumps(nn, indent=2))
    timings["nnunet_a_s"] = time.perf_counter() - t

    # 2-3. site_b and site_c: nakt teachers. site_b (and its validation split) on the run's grid, as site_a's, so
    # that the bundle's per-image z-score sees what training saw; site_c as E3's teachers (the run z-scores first).
    grid = {k: run_dir / f"{k}_grid" for k in ("site_b", "val")}
    for k, folder in grid.items():
        if not (args.reuse and (folder / "images").is_dir()):
            shutil.rmtree(folder, ignore_errors=True)
            _nnunet.write_folder(Path(splits[k]), folder, size, list(args.labels))
    train_common = {"batch_size": 8, "num_workers": 0, "lr": 2e-3}
    # the smoke checks the path: one pass an epoch, not the student's default floor of 550 steps
    one_pass = {"min_steps": 0} if args.smoke else {}
    base = {
        "run_dir": str(run_dir),
        "data": {"labels": list(args.labels), "transferal": str(splits["transferal"]),
                 "val": str(splits["val"]), "test": str(splits["test"])},
        "preprocess": {"size": list(size)},
        "student": {"name": STUDENT, "arch": args.student_arch},
        "teacher_training": {**train_common, "epochs": epochs["teacher"]},
        "training": {**train_common, "epochs": epochs["student"], "lr": 1e-3, **one_pass},
        "tracking": {"experiment": "e8", "registered_model": "e8-student"},
        "ray": {"num_cpus": os.cpu_count()},
    }
    tcfg = config.from_dict({**base, "teachers": [
        {"name": LOCAL["segresnet_b"], "arch": "segresnet", "train_data": str(grid["site_b"]),
         "val_data": str(grid["val"])},
        {"name": LOCAL["attention_unet_c"], "arch": "attention_unet", "train_data": str(splits["site_c"]),
         "val_data": str(splits["val"])}]})
    init_ray(tcfg.ray)
    local = {}
    for teacher, name in zip(tcfg.teachers, ("segresnet_b", "attention_unet_c")):
        t = time.perf_counter()
        done = tcfg.teacher_checkpoint(teacher)
        local[name] = done if args.reuse and done.exists() else train_teacher(tcfg, teacher)
        timings[f"{name}_train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    bundle = run_dir / "sources" / "segresnet_b_bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    _sources.write_bundle(local["segresnet_b"], bundle)
    timings["segresnet_b_bundle_s"] = time.perf_counter() - t
    t = time.perf_counter()
    served = run_dir / "sources" / "attention_unet_c_mlflow"
    shutil.rmtree(served, ignore_errors=True)
    description = _sources.write_mlflow_model(local["attention_unet_c"], served)
    timings["attention_unet_c_mlflow_model_s"] = time.perf_counter() - t

    t = time.perf_counter()
    with _sources.mlflow_server(served, run_dir / "logs" / "mlflow_serve.log", port=args.port) as url:
        timings["server_start_s"] = time.perf_counter() - t
        remote = _sources.remote_yaml(run_dir / "sources" / "attention_unet_c.yaml", url, "attention_unet_c", "1",
                                      description)
        sources = {"nnunet_a": nn["folder"], "segresnet_b": str(bundle), "attention_unet_c": str(remote)}
        cfg = config.from_dict({**base, "teachers": [{"name": n, "checkpoint": s} for n, s in sources.items()]})
        teachers = list(TEACHERS)
        t = time.perf_counter()
        summary = annotate(cfg, resume=args.reuse and (run_dir / "annotations" / "manifest.json").exists())
        timings["annotate_s"] = time.perf_counter() - t
        t = time.perf_counter()
        result = train_student(cfg)  # the default configuration, registered (alias candidate)
        timings["student_s"] = time.perf_counter() - t
        models = {**sources, STUDENT: result["model_path"], **{LOCAL[n]: str(local[n]) for n in LOCAL}}
        t = time.perf_counter()
        report = evaluate(cfg, models, str(splits["test"]), run_dir / "evaluation", ensemble=teachers)
        timings["evaluate_s"] = time.perf_counter() - t
    pairs = [(STUDENT, ref) for ref in (*teachers, ENSEMBLE)] + [(n, LOCAL[n]) for n in LOCAL]
    cases_csv = run_dir / "evaluation" / "evaluation_cases.csv"
    manifest = json.loads((run_dir / "annotations" / "manifest.json").read_text())
    return {"teachers": teachers, "kinds": {n: TEACHERS[n][1] for n in teachers}, "sources": sources,
            "student_arch": args.student_arch, "ensemble": ENSEMBLE, "models": report["models"],
            "deltas": paired_deltas(cases_csv, pairs), "conversion": conversion(cases_csv),
            "table": report["table"], "failed_test": report.get("failed", []),
            "annotation": {"summary": summary, "agreement": agreement(run_dir / "annotations", teachers),
                           "manifest_cases": manifest.get("num_cases"),
                           "manifest_teachers": [{k: r.get(k) for k in ("name", "kind", "fingerprint", "labels")}
                                                 for r in manifest["teachers"]]},
            "student": {"train_wall_s": result["wall_s"], "best_val_dice": result["metrics"].get("best_val_dice"),
                        "model_uri": result["model_uri"]},
            "nnunet": nn, "timings": timings, "image_size": args.size, "epochs": epochs,
            "nnunet_iterations": iterations,
            "cases": {k: len(list((Path(splits[k]) / "images").iterdir())) for k in (
                "site_a", "site_b", "site_c", "transferal", "test")},
            "smoke": args.smoke}


def conversion(cases_csv: Path) -> dict[str, dict]:
    """Per converted teacher: the largest per-case Dice difference from its own nakt model file over the test cases,
    and how many cases differ at all (none when the source kind hands the network the same input as the file and
    returns its output unchanged, up to uint8 storage)."""
    with open(cases_csv) as f:
        rows = list(csv.DictReader(f))
    out = {}
    for name, ref in LOCAL.items():
        diffs = [abs(float(r[f"dice__{name}"]) - float(r[f"dice__{ref}"])) for r in rows
                 if r[f"dice__{name}"] not in ("", "nan") and r[f"dice__{ref}"] not in ("", "nan")]
        out[name] = {"reference": ref, "max_abs_case_diff": max(diffs) if diffs else None,
                     "cases_differing": sum(d > 1e-9 for d in diffs), "cases": len(diffs)}
    return out


def agreement(annotations: Path, teachers: list[str]) -> dict:
    """How the three teachers agree on the transferal set: the stored mean pairwise foreground Dice per case
    (``agreement``), summarised, and each pair's mean foreground Dice of their arg-max maps."""
    import numpy as np

    from nakt_ray.annotation import parquet as ann

    manifest = ann.read_manifest(annotations)
    table = ann.read_table(annotations, columns=["status", "agreement",
                                                 *(ann.prob_column(t) for t in teachers)]).to_pydict()
    ok = np.array([s == "ok" for s in table["status"]])
    stored = np.array(table["agreement"], dtype=np.float64)[ok]
    shapes = dict(zip([r["name"] for r in manifest["teachers"]], ann.teacher_shapes(manifest)))
    labels = {t: ann.from_bytes(table[ann.prob_column(t)], shapes[t], manifest["prob_dtype"]).argmax(1)[ok]
              for t in teachers}
    pairs = {}
    for i, a in enumerate(teachers):
        for b in teachers[i + 1:]:
            fa, fb = labels[a] > 0, labels[b] > 0
            inter, total = (fa & fb).sum((1, 2)), fa.sum((1, 2)) + fb.sum((1, 2))
            dice = np.where(total > 0, 2 * inter / np.maximum(total, 1), 1.0)
            pairs[f"{a} / {b}"] = float(dice.mean())
    q = np.percentile(stored, [5, 50]) if len(stored) else [float("nan")] * 2
    return {"cases": int(ok.sum()), "mean": float(stored.mean()) if len(stored) else None, "p5": float(q[0]),
            "median": float(q[1]), "below_0.8": int((stored < 0.8).sum()), "pairs": pairs}


def write_results(result: dict, out: Path, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    m, d, ens, teachers = result["models"], result["deltas"], result["ensemble"], result["teachers"]
    kind = "smoke" if result["smoke"] else "full"

    def dice(name: str) -> str:
        r = m[name]
        return f"{r['dice']:.4f} | {r['dice_ci'][0]:.4f}-{r['dice_ci'][1]:.4f}"

    def delta(name: str, ref: str) -> str:
        x = d.get(name, {}).get(ref)
        return f"{x['delta']:+.4f} ({x['delta_ci'][0]:+.4f} to {x['delta_ci'][1]:+.4f})" if x else "-"

    nn, ann_ = result["nnunet"], result["annotation"]
    s, a = ann_["summary"], ann_["agreement"]
    plan = nn["plan"]
    lines = [f"# E8: teachers from three source kinds, one student ({kind})", "",
             f"{dataset_name(result)}, split by subject (seed 0), {result['image_size']}x{result['image_size']}; "
             "one teacher per site, each a different source kind; the student "
             f"({result['student_arch']}, mean fusion, {result['epochs']['student']} epochs) distilled from one "
             f"annotation run over the transferal split ({result['cases']['transferal']} cases). Dice on the test "
             f"split ({result['cases']['test']} cases) at the original resolution, 95% bootstrap CI; differences "
             "paired over the same cases.", "",
             "| model | source kind | site (cases) | test Dice | 95% CI | student minus this |",
             "|---|---|---|---|---|---|"]
    sites = {"nnunet_a": "site_a", "segresnet_b": "site_b", "attention_unet_c": "site_c"}
    for t in teachers:
        lines.append(f"| teacher {t} | {result['kinds'][t]} | {sites[t]} ({result['cases'][sites[t]]}) | {dice(t)} | "
                     f"{delta('student', t)} |")
    lines.append(f"| teachers' ensemble (mean of probabilities) | all three | | {dice(ens)} | "
                 f"{delta('student', ens)} |")
    lines.append(f"| student ({result['student_arch']}) | nakt model file | transferal | {dice('student')} | |")
    lines += ["", "The converted teachers against their own nakt model files (the same weights, fed the run's input "
              "as a nakt file is):", "",
              "| teacher | reference | test Dice | reference Dice | teacher minus reference | largest per-case |"
              " cases differing |", "|---|---|---|---|---|---|---|"]
    for t, c in result["conversion"].items():
        lines.append(f"| {t} ({result['kinds'][t]}) | {c['reference']} | {m[t]['dice']:.4f} | "
                     f"{m[c['reference']]['dice']:.4f} | {delta(t, c['reference'])} | "
                     f"{c['max_abs_case_diff']:.4f} | {c['cases_differing']} of {c['cases']} |")
    lines += ["", "The served model gets the run's input unchanged, so it should equal its file. The bundle z-scores "
              "each image on the run's grid, as its network was trained (site_b on the grid); its nakt file gets the "
              "run's input, z-scored at full size and then resized (a standard deviation ~0.96 of the grid's on "
              "HC18), so there the two differ by that input, not by the bundle."]
    pairs = "; ".join(f"{k} {v:.3f}" for k, v in a["pairs"].items())
    lines += ["", "## Annotation", "",
              f"Every case accounted for: {result['cases']['transferal']} transferal images, manifest "
              f"{ann_['manifest_cases']} cases, {s['cases_read']} read, {s['annotated']} annotated, {s['failed']} "
              f"failed (reasons in `annotations/errors.json`); pools {s.get('pools')}; "
              f"{s['wall_s']:.0f} s ({s.get('images_per_s')} images/s). Test: {len(result['failed_test'])} cases "
              "failed in evaluation.", "",
              f"Agreement (mean pairwise foreground Dice of the teachers' arg-max maps, per case): mean "
              f"{a['mean']:.3f}, median {a['median']:.3f}, 5th percentile {a['p5']:.3f}, {a['below_0.8']} of "
              f"{a['cases']} cases below 0.8. By pair: {pairs}.", "",
              "Teachers in the manifest: " + "; ".join(f"{r['name']} ({r['kind']}, {r['fingerprint']})"
                                                       for r in ann_["manifest_teachers"]) + ".", "",
              "## Sources", "",
              f"- nnunet_a: nnU-Net v2 2D, plan kept (patch {plan['patch_size']}, {plan['n_stages']} stages, batch "
              f"{plan['batch_size']}, spacing {plan['spacing']}, {', '.join(plan['normalization'])}), features "
              f"narrowed to {plan['features_per_stage']}; nnUNetTrainer, fold all, epochs: {nn['epochs']} x "
              f"{nn['iterations']} iterations; {nn['cases']} cases on the run's grid. Steps (s): "
              + ", ".join(f"{k} {v:.0f}" for k, v in nn["timings"].items()) + ".",
              f"- segresnet_b: nakt SegResNet, written as a MONAI bundle ({result['sources']['segresnet_b']}).",
              "- attention_unet_c: nakt AttentionUnet as an MLflow pytorch model behind `mlflow models serve "
              "--env-manager local` on 127.0.0.1 (no credential: the scoring server has none).", "",
              f"Student: best val Dice {result['student']['best_val_dice']:.4f}, trained in "
              f"{result['student']['train_wall_s']:.0f} s, {result['student']['model_uri']}.", "",
              "## Timings (on reuse, a kept step counts ~0)", "",
              "| step | s |", "|---|---|", *(f"| {k.removesuffix('_s')} | {v:.0f} |" for k, v in
                                           result["timings"].items()),
              f"| total | {result['wall_s']:.0f} |", "", "All models:", "", result["table"]]
    (out / "e8.md").write_text("\n".join(lines) + "\n")
    (out / "e8.json").write_text(json.dumps(result, indent=2))

    names = [*teachers, ens, STUDENT, *LOCAL.values()]
    labels = [*(f"T {t}\n({result['kinds'][t]})" for t in teachers), "ensemble", "student",
              *(f"{n}\n(nakt file)" for n in LOCAL.values())]
    fig, ax = plt.subplots(figsize=(8.5, 4))
    ys = [m[n]["dice"] for n in names]
    errs = [[y - m[n]["dice_ci"][0] for n, y in zip(names, ys)], [m[n]["dice_ci"][1] - y for n, y in zip(names, ys)]]
    ax.bar(range(len(names)), ys, yerr=errs, capsize=3,
           color=["C0"] * len(teachers) + ["C1", "C2"] + ["C7"] * len(LOCAL))
    ax.axhline(m[STUDENT]["dice"], color="grey", ls="--", lw=1, label="student")
    ax.set_xticks(range(len(names)), labels, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="test Dice (95% CI)", title=f"E8 on {dataset_name(result)}: teachers from three source kinds",
           ylim=(max(0.0, min(ys) - 0.1), 1.0))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "e8.png", dpi=120)

    mlflow.set_tracking_uri(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    mlflow.set_experiment("e8")
    with mlflow.start_run(run_name="e8-summary"):
        mlflow.set_tags({f"source.{t}": result["kinds"][t] for t in teachers})
        mlflow.log_metrics({f"dice.{name}": r["dice"] for name, r in m.items()})
        mlflow.log_metrics({f"delta.{name}.vs.{ref}": x["delta"] for name, refs in d.items()
                            for ref, x in refs.items()})
        mlflow.log_metrics({"agreement_mean": a["mean"], "annotated": s["annotated"], "failed": s["failed"],
                            "wall_s": result["wall_s"], **{k: v for k, v in result["timings"].items()}})
        mlflow.log_artifacts(str(out), artifact_path="results")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, "e8", size=96)
    p.add_argument("--student-arch", default="timm_unet", help="the student's architecture (E3's)")
    p.add_argument("--teacher-epochs", type=int, default=40, help="the two nakt-trained teachers (as E3)")
    p.add_argument("--student-epochs", type=int, default=24)
    p.add_argument("--nnunet-epochs", type=int, default=12, help="nnU-Net epochs (--smoke: 1)")
    p.add_argument("--nnunet-iterations", type=int, default=50, help="nnU-Net iterations per epoch (--smoke: 10)")
    p.add_argument("--nnunet-max-features", type=int, default=64,
                   help="features per stage at most in nnU-Net's planned network (--smoke: 16)")
    p.add_argument("--nnunet-dataset-id", type=int, default=808, help="nnU-Net's dataset number (its folders are "
                                                                       "under <run-dir>/nnunet)")
    p.add_argument("--port", type=int, default=0, help="the scoring server's port on 127.0.0.1 (0: a free one)")
    common_main(p.parse_args(), "e8", run, write_results, "e8.md, e8.json, e8.png")


if __name__ == "__main__":
    main()
