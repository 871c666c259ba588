"""E6 — teacher count (issue 20, point 4): student Dice against the number of teachers T, with the teachers'
ensemble and the best single teacher at each T, on HC18 (or any labeled folder: --data, --dataset-name, --labels).
Where does adding teachers stop helping, and does the student keep up with the ensemble as T grows?

    .venv/bin/python jobs/experiments/e6_teacher_count.py --smoke     # same path, tiny: ~5 min
    .venv/bin/python jobs/experiments/e6_teacher_count.py             # the study: ~50 min (2 idle cores)
    .venv/bin/python jobs/experiments/e6_teacher_count.py --reuse     # keep the pool, the annotation set, done cells

Cost on 2 cores, 96x96 (2026-12-07: the smoke measured, 4.5 min on a busy host, 0.5 min with --reuse and every
cell done; the study estimated from E3's stage costs, not run yet): 8 teachers ~12 min (E3's segresnet 98 s,
timm_unet 122 s, attention_unet 75 s for 40 epochs of a 60-image site; the small unet ~60 s), one annotation of
178 images by 8 teachers and the pool's val and test scores ~3 min, 16 students (3 draws at T = 1, 2, 3, 4, 6, one
at T = 8) ~100 s each, ~27 min, 16 cell evaluations (72 model passes over the 116 test images) ~9 min: ~50 min on
idle cores, up to twice that as the host drifts. ``--draws 2`` gives 11 cells, ~38 min.

Protocol (``jobs/experiments/protocol.py``, ``--seed`` 0: E3's split, so val (58 images) and test (116) are E3's):
  pool          ``--teachers`` (8) teachers, architectures cycling segresnet, timm_unet, attention_unet, unet; each
                trained on its own bootstrap of the pooled site images (site_a + site_b + site_c, 186 images): as
                many images as one E3 site (``--bootstrap-size`` 60), drawn with replacement by (seed, teacher);
                E3's budget: 40 epochs of batch 8, ``teacher_training.min_steps`` 320 as E7, each teacher with its
                own training seed (init and shuffles differ too, not only the bootstrap). Trained once.
  annotation    one run of the whole pool over the ``transferal`` split (178 images, masks never read): every
                teacher's map is stored, no teacher runs again.
  draws         ``--draws`` (3) orders of the pool, seeded; draw d's T teachers are the first T of order d, so for
                one draw a larger T adds teachers to a smaller one's (T is compared along a draw, as E7 nests its
                regimes); the orders are chosen so that no two draws give the same teachers at any T below the
                pool size (at T = 1 the draws are three different single teachers). T = pool size has one draw.
  cells         one per (T, draw), in ``<run-dir>/cells/T<T>/draw<d>``: a student (timm_unet, 24 epochs of batch 8,
                E3's default student: no min_steps) on the maps fused by ``weighted_mean`` with weight 1 for the
                drawn teachers and 0 for the others, re-fused at training time from the stored maps (for T = pool
                size this is the plain mean); then ``evaluate`` on test of the drawn teachers, their ensemble (mean
                of probabilities) and the student, with per-case differences paired over the test cases (E3's
                ``paired_deltas``): student minus ensemble, student minus the best drawn teacher (by val Dice),
                ensemble minus best teacher.
  pool scores   every pool teacher once on val (which picks the best teacher of a draw) and once on test.
Per T, the mean over draws of student, ensemble and best-teacher Dice and of the paired differences (per draw in
brackets; with one draw, the 95% paired bootstrap CI); "saturation": the smallest T whose mean Dice is within
0.005 of the largest mean over T. Results: ``results/e6/`` (``e6.md``, ``e6.json``, ``e6.png``), every cell's
``cell.json`` in its folder, and the MLflow store ``<run-dir>/mlflow.db`` (experiment ``e6``: every training, and
the ``e6-summary`` run). ``--smoke``: 4 teachers, T in 1, 2, 4, one draw, 2 epochs, 8-image bootstraps, 10
transferal, 8 val and 12 test images, 64x64 (timm_unet's smallest size).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, dataset_name  # noqa: E402  (this folder)
from _common import main as common_main  # noqa: E402

SITES = ("site_a", "site_b", "site_c")
ARCH_CYCLE = ("segresnet", "timm_unet", "attention_unet", "unet")
T_VALUES = (1, 2, 3, 4, 6, 8)
ENSEMBLE = "teachers_ensemble"  # evaluation.evaluate.ENSEMBLE (the reports read without importing nakt_ray)
# a cell's models in its summary: the student, the drawn teachers' ensemble, the best drawn teacher (by val Dice)
# and the mean of the drawn teachers' own Dice
STUDENT, BEST, MEAN_TEACHER = "student", "best_teacher", "mean_teacher"
ROWS = (STUDENT, ENSEMBLE, BEST, MEAN_TEACHER)
DELTAS = {"student_vs_ensemble": (STUDENT, ENSEMBLE), "student_vs_best": (STUDENT, BEST),
          "ensemble_vs_best": (ENSEMBLE, BEST)}
SATURATION_MARGIN = 0.005  # "adding teachers stops helping": within this much of the best mean over T


def teacher_names(n: int, archs: list[str]) -> list[tuple[str, str]]:
    """``[(name, arch)]`` of a pool of ``n``: the architectures cycle, ``t0_segresnet, t1_timm_unet, ...``."""
    return [(f"t{k}_{archs[k % len(archs)]}", archs[k % len(archs)]) for k in range(n)]


def bootstrap(sources: list[Path], n: int, out: Path, seed: int, salt: int) -> Path:
    """``n`` images drawn with replacement from the images of ``sources`` (folders with images/ and masks/),
    seeded by ``(seed, salt)``, as a folder of links at ``out``; the i-th draw is named ``<i:03d>_<name>``, so an
    image drawn twice is two cases (each with its mask)."""
    pool = sorted((src, p.name) for src in sources for p in (src / "images").iterdir())
    rng = random.Random(seed * 7919 + 1000 + salt)
    picks = [pool[rng.randrange(len(pool))] for _ in range(n)]
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for i, (src, name) in enumerate(picks):
            link = out / sub / f"{i:03d}_{name}"
            if (src / sub / name).exists() and not link.exists():
                link.symlink_to((src / sub / name).resolve())
    return out


def draw_orders(n: int, ts: list[int], draws: int, seed: int) -> list[list[int]]:
    """``draws`` orders of the pool ``range(n)``, seeded: draw d's T teachers are ``order[:T]``. No two orders give
    the same set of teachers at any T < n in ``ts`` (so the draws of a T are different teachers); refused when
    there are not that many different sets."""
    room = min((math.comb(n, t) for t in ts if t < n), default=draws)
    if draws > room:
        raise SystemExit(f"--draws {draws}: a pool of {n} has only {room} different sets of teachers at some T in "
                         f"{ts}; ask for at most {room} draws")
    rng = random.Random(seed * 7919 + 6)
    orders: list[list[int]] = []
    for _ in range(100_000):
        if len(orders) == draws:
            break
        order = list(range(n))
        rng.shuffle(order)
        if not any(set(order[:t]) == set(o[:t]) for o in orders for t in ts if t < n):
            orders.append(order)
    if len(orders) < draws:
        raise SystemExit(f"--draws {draws}: found only {len(orders)} draws whose teachers differ at every T in {ts}")
    return orders


def cells_of(ts: list[int], orders: list[list[int]], n: int) -> list[tuple[int, int, list[int]]]:
    """``[(T, draw, teachers)]``: every draw at each T below ``n``, one cell (draw 0) at T = ``n``; the teachers
    as pool indices, sorted."""
    return [(t, d, sorted(order[:t])) for t in ts for d, order in enumerate(orders) if t < n or d == 0]


def fusion_weights(members: list[int], n: int) -> list[float]:
    """``weighted_mean`` weights over the pool: 1 for a drawn teacher, 0 for the others (the others' stored maps
    are read and weighed 0: the fused label is the mean of the drawn teachers')."""
    return [1.0 if k in members else 0.0 for k in range(n)]


def cell_id(t: int, d: int) -> str:
    return f"T{t}/draw{d}"


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run_pool(args: argparse.Namespace, cfg: Any, raw: dict, splits: dict[str, Path], progress: dict) -> dict:
    """Train the pool's teachers (each with its own seed), annotate the transferal split once with all of them,
    score every teacher on val and test. Finished parts are kept with --reuse (``pool.json``)."""
    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import evaluate
    from nakt_ray.training.teacher import train_teacher

    run_dir, state_file = Path(args.run_dir), Path(args.run_dir) / "pool.json"
    timings = progress.setdefault("timings", {})
    models, trained = {}, False
    for k, teacher in enumerate(cfg.teachers):
        done = cfg.teacher_checkpoint(teacher)
        if args.reuse and done.exists():
            models[teacher.name] = str(done)
            continue
        tcfg = config.from_dict({**raw, "teacher_training": {**raw["teacher_training"], "seed": args.seed + k}})
        t = time.perf_counter()
        models[teacher.name] = str(train_teacher(tcfg, tcfg.teachers[k]))
        timings[f"teacher_{teacher.name}_s"] = time.perf_counter() - t
        trained = True
        state_file.write_text(json.dumps(progress, indent=1))
    ann = run_dir / "annotations"
    t = time.perf_counter()
    # Once, with every teacher's map stored: each cell re-fuses its drawn teachers' maps at training time.
    annotate(cfg, resume=args.reuse and (ann / "manifest.json").exists())
    timings.setdefault("annotate_s", time.perf_counter() - t)
    if trained or "val_dice" not in progress or "test" not in progress:
        t = time.perf_counter()
        val = evaluate(cfg, dict(models), str(splits["val"]), run_dir / "evaluation_val")
        timings["pool_val_s"] = time.perf_counter() - t
        t = time.perf_counter()
        test = evaluate(cfg, dict(models), str(splits["test"]), run_dir / "evaluation_test")
        timings["pool_test_s"] = time.perf_counter() - t
        progress["val_dice"] = {n: float(val["models"][n]["dice"]) for n in models}
        progress["test"] = {n: {"dice": float(test["models"][n]["dice"]), "dice_ci": test["models"][n]["dice_ci"]}
                            for n in models}
    progress["models"] = models
    state_file.write_text(json.dumps(progress, indent=1))
    return progress


def run_cell(args: argparse.Namespace, cfg: Any, raw: dict, splits: dict[str, Path], pool: dict, t: int, d: int,
             members: list[int]) -> dict:
    """One (T, draw) cell: the student on the drawn teachers' maps, then the drawn teachers, their ensemble and the
    student on test. A finished student is kept with --reuse (``student.json``); an interrupted one resumes."""
    from e3_multi_teacher import paired_deltas

    from nakt_ray import config
    from nakt_ray.evaluation.evaluate import ENSEMBLE as EVAL_ENSEMBLE
    from nakt_ray.evaluation.evaluate import evaluate
    from nakt_ray.training.student import train_student, unfinished_run

    assert EVAL_ENSEMBLE == ENSEMBLE
    t_cell = time.perf_counter()
    cell = Path(args.run_dir) / "cells" / f"T{t}" / f"draw{d}"
    cell.mkdir(parents=True, exist_ok=True)
    names = [cfg.teachers[k].name for k in members]
    s = f"student_T{t}_d{d}"
    weights = fusion_weights(members, len(cfg.teachers))
    scfg = config.from_dict({**raw, "fusion": {"rule": "weighted_mean", "weights": weights},
                             "student": {**raw["student"], "name": s}})
    student_file = cell / "student.json"
    student = _json(student_file) if args.reuse else {}
    if student.get("weights") != weights or not Path(student.get("model_path", "")).exists():
        tt = time.perf_counter()
        result = train_student(scfg, register=False, run_name=f"{s}",
                               resume=args.reuse and unfinished_run(scfg.student_checkpoint))
        m = result["metrics"]
        student = {"name": s, "model_path": result["model_path"], "weights": weights,
                   "steps": int(m.get("steps", 0)) * (int(m.get("epoch", -1)) + 1),
                   "best_val_dice": m.get("best_val_dice"), "train_wall_s": result["wall_s"],
                   "wall_s": time.perf_counter() - tt}
        student_file.write_text(json.dumps(student, indent=1))  # a finished student survives an interruption
    tt = time.perf_counter()
    models = {**{n: pool["models"][n] for n in names}, s: student["model_path"]}
    report = evaluate(cfg, models, str(splits["test"]), cell / "evaluation", ensemble=names)
    evaluate_s = time.perf_counter() - tt
    best = max(names, key=lambda n: pool["val_dice"][n])  # chosen on val: the test split picks nothing
    raw_deltas = paired_deltas(cell / "evaluation" / "evaluation_cases.csv",
                               [(s, ENSEMBLE), (s, best), (ENSEMBLE, best)])
    alias = {STUDENT: s, ENSEMBLE: ENSEMBLE, BEST: best}
    r = report["models"]
    dice = {STUDENT: r[s]["dice"], ENSEMBLE: r[ENSEMBLE]["dice"], BEST: r[best]["dice"],
            MEAN_TEACHER: sum(r[n]["dice"] for n in names) / len(names)}
    result = {"T": t, "draw": d, "teachers": names, "best_teacher": best,
              "val_dice_teachers": {n: pool["val_dice"][n] for n in names},
              "dice": dice, "dice_ci": {k: r[alias[k]]["dice_ci"] for k in (STUDENT, ENSEMBLE, BEST)},
              "dice_teachers": {n: r[n]["dice"] for n in names},
              "deltas": {k: raw_deltas[alias[a]][alias[b]] for k, (a, b) in DELTAS.items()},
              "student": student, "timings": {"student_s": student["wall_s"], "evaluate_s": evaluate_s},
              "cell_s": time.perf_counter() - t_cell}
    (cell / "cell.json").write_text(json.dumps(result, indent=1))
    return result


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarise(cells: list[dict]) -> dict[str, dict]:
    """Per T (keys ``"1"``, ``"2"``, ...; JSON keys), over its draws: the mean and per-draw Dice of the student,
    the ensemble, the best teacher and the mean drawn teacher; each paired difference's mean, per draw, and with one
    draw its 95% CI; and the drawn teachers."""
    out: dict[str, dict] = {}
    for t in sorted({c["T"] for c in cells}):
        tc = sorted((c for c in cells if c["T"] == t), key=lambda c: c["draw"])
        per = {k: [c["dice"][k] for c in tc] for k in ROWS}
        deltas = {}
        for k in DELTAS:
            v = [c["deltas"][k]["delta"] for c in tc]
            deltas[k] = {"mean": _mean(v), "per_draw": v,
                         "ci": tc[0]["deltas"][k]["delta_ci"] if len(tc) == 1 else None}
        out[str(t)] = {"draws": len(tc), "teachers": [c["teachers"] for c in tc],
                       "dice": {k: _mean(v) for k, v in per.items()}, "dice_per_draw": per, "deltas": deltas}
    return out


def saturation(summary: dict[str, dict], key: str, margin: float = SATURATION_MARGIN) -> int | None:
    """The smallest T whose mean Dice of ``key`` is within ``margin`` of the largest mean over T."""
    means = {int(t): row["dice"][key] for t, row in summary.items() if math.isfinite(row["dice"][key])}
    if not means:
        return None
    top = max(means.values())
    return min(t for t, v in means.items() if v >= top - margin)


def run(args: argparse.Namespace) -> dict:
    import protocol

    from nakt_ray import config
    from nakt_ray.runtime.cluster import init_ray

    run_dir = Path(args.run_dir)
    if (run_dir / "cells").exists() and not args.reuse:
        raise SystemExit(f"{run_dir} holds an earlier E6 run; pass --reuse to keep its pool and finished cells, or "
                         "remove it or pass another --run-dir")
    t0 = time.perf_counter()
    splits = protocol.materialise(args.data, run_dir / "splits", seed=args.seed)
    if args.smoke:  # the same splits, cut to a few cases each (the first by name)
        splits.update({k: protocol.subset(splits[k], n, run_dir / f"{k}_small")
                       for k, n in (("transferal", 10), ("val", 8), ("test", 12))})
    pool_names = teacher_names(args.teachers, args.teacher_archs)
    data = {name: bootstrap([splits[s] for s in SITES], args.bootstrap_size, run_dir / "bootstraps" / name,
                            args.seed, k) for k, (name, _) in enumerate(pool_names)}
    train = {"batch_size": 8, "num_workers": 0}
    # the smoke checks the path: one pass an epoch, not the student's default floor of 550 steps
    one_pass = {"min_steps": 0} if args.smoke else {}
    raw = {"run_dir": str(run_dir),
           "data": {"labels": list(args.labels), "transferal": str(splits["transferal"]), "val": str(splits["val"]),
                    "test": str(splits["test"])},
           "preprocess": {"size": [args.size, args.size]},
           "teachers": [{"name": name, "arch": arch, "train_data": str(data[name]), "val_data": str(splits["val"])}
                        for name, arch in pool_names],
           "student": {"name": "student", "arch": args.student_arch},
           "teacher_training": {**train, "lr": 2e-3, "epochs": args.teacher_epochs,
                                "min_steps": args.teacher_min_steps},
           "training": {**train, "lr": 1e-3, "epochs": args.student_epochs, **one_pass},
           "tracking": {"uri": f"sqlite:///{run_dir.resolve() / 'mlflow.db'}", "experiment": "e6",
                        "registered_model": "e6-student"},
           "ray": {"num_cpus": os.cpu_count()}}
    cfg = config.from_dict(raw)
    orders = draw_orders(args.teachers, args.t_values, args.draws, args.seed)
    init_ray(cfg.ray)
    progress = _json(run_dir / "pool.json") if args.reuse else {}
    print(f"E6 pool: {len(pool_names)} teachers, {args.bootstrap_size} bootstrap images each", flush=True)
    pool = run_pool(args, cfg, raw, splits, progress)
    cells = []
    for t, d, members in cells_of(args.t_values, orders, args.teachers):
        done = run_dir / "cells" / f"T{t}" / f"draw{d}" / "cell.json"
        if args.reuse and done.exists() and _json(done).get("teachers") == [cfg.teachers[k].name for k in members]:
            print(f"E6 cell {cell_id(t, d)}: done earlier ({done})", flush=True)
            cells.append(_json(done))
            continue
        print(f"E6 cell {cell_id(t, d)}: starting ({', '.join(cfg.teachers[k].name for k in members)})", flush=True)
        cells.append(run_cell(args, cfg, raw, splits, pool, t, d, members))
        print(f"E6 cell {cell_id(t, d)}: {cells[-1]['cell_s'] / 60:.1f} min", flush=True)
    summary = summarise(cells)
    teachers = [name for name, _ in pool_names]
    return {"split_seed": args.seed, "teachers": teachers, "teacher_archs": dict(pool_names),
            "student_arch": args.student_arch, "t_values": list(args.t_values), "draws": args.draws,
            "orders": [[teachers[k] for k in o] for o in orders], "bootstrap_size": args.bootstrap_size,
            "bootstrap_unique": {n: len({p.name.split("_", 1)[1] for p in (data[n] / "images").iterdir()})
                                 for n in teachers},
            "epochs": {"teacher": args.teacher_epochs, "student": args.student_epochs},
            "min_steps": {"teacher": args.teacher_min_steps}, "image_size": args.size,
            "cases": {k: len(list((Path(splits[k]) / "images").iterdir())) for k in (*SITES, "transferal", "val",
                                                                                     "test")},
            "val_dice_teachers": pool["val_dice"], "test_teachers": pool["test"], "pool_timings": pool["timings"],
            "cells": cells, "summary": summary,
            "saturation": {k: saturation(summary, k) for k in (STUDENT, ENSEMBLE, BEST)},
            "saturation_margin": SATURATION_MARGIN, "smoke": args.smoke, "run_s": time.perf_counter() - t0}


def _d(x: dict) -> str:
    """A paired difference of a T: mean, then the per-draw values, or with one draw its 95% CI."""
    if x["ci"] is not None:
        return f"{x['mean']:+.4f} ({x['ci'][0]:+.4f} to {x['ci'][1]:+.4f})"
    return f"{x['mean']:+.4f} ({', '.join(f'{v:+.3f}' for v in x['per_draw'])})"


def write_results(result: dict, out: Path, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    summary, c = result["summary"], result["cases"]
    kind = "smoke" if result["smoke"] else f"{len(result['cells'])} cells"
    size = result["image_size"]
    sat = result["saturation"]
    lines = [f"# E6: teacher count, students vs the teachers' ensemble ({kind})", "",
             f"{dataset_name(result)}, E3's split (seed {result['split_seed']}), {size}x{size}. A pool of "
             f"{len(result['teachers'])} teachers ({', '.join(dict.fromkeys(result['teacher_archs'].values()))}, "
             f"cycled), each trained {result['epochs']['teacher']} epochs (min_steps {result['min_steps']['teacher']}"
             f") on its own bootstrap of {result['bootstrap_size']} images of the pooled sites ({c['site_a']} + "
             f"{c['site_b']} + {c['site_c']}); one annotation of the transferal split ({c['transferal']} images) by "
             f"all of them. Per T and draw, a {result['student_arch']} student ({result['epochs']['student']} "
             "epochs) on the drawn teachers' maps (weighted_mean, weights 1 for the drawn, 0 for the others). Test "
             f"Dice on {c['test']} images: mean over draws; differences paired over the test cases, then averaged "
             "over draws (per draw in brackets; with one draw, its 95% paired bootstrap CI). Best teacher: the drawn "
             f"teacher with the best val Dice ({c['val']} images).", "",
             "| T | draws | student | teachers' ensemble | best teacher | mean drawn teacher | student minus "
             "ensemble | student minus best teacher | ensemble minus best teacher |", "|---" * 9 + "|"]
    for t, row in summary.items():
        dm, dd = row["dice"], row["deltas"]
        lines.append(f"| {t} | {row['draws']} | {dm[STUDENT]:.4f} | {dm[ENSEMBLE]:.4f} | {dm[BEST]:.4f} | "
                     f"{dm[MEAN_TEACHER]:.4f} | {_d(dd['student_vs_ensemble'])} | {_d(dd['student_vs_best'])} | "
                     f"{_d(dd['ensemble_vs_best'])} |")
    lines += ["", f"Saturation (smallest T within {result['saturation_margin']} of the best mean over T): student "
              f"T = {sat[STUDENT]}, ensemble T = {sat[ENSEMBLE]}, best teacher T = {sat[BEST]}.", "",
              "## Cells", "", "| T | draw | teachers | student | ensemble | best teacher | student minus ensemble "
              "(95% CI) | student steps | student s | evaluation s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for cl in result["cells"]:
        x, dm = cl["deltas"]["student_vs_ensemble"], cl["dice"]
        lines.append(f"| {cl['T']} | {cl['draw']} | {', '.join(cl['teachers'])} | {dm[STUDENT]:.4f} | "
                     f"{dm[ENSEMBLE]:.4f} | {dm[BEST]:.4f} ({cl['best_teacher']}) | {x['delta']:+.4f} "
                     f"({x['delta_ci'][0]:+.4f} to {x['delta_ci'][1]:+.4f}) | {cl['student']['steps']} | "
                     f"{cl['timings']['student_s']:.0f} | {cl['timings']['evaluate_s']:.0f} |")
    lines += ["", "## Teacher pool", "", "| teacher | architecture | bootstrap images (distinct) | val Dice | "
              "test Dice | 95% CI | training s |", "|---|---|---|---|---|---|---|"]
    pt = result["pool_timings"]
    for n in result["teachers"]:
        te = result["test_teachers"][n]
        train_s = pt.get(f"teacher_{n}_s")
        lines.append(f"| {n} | {result['teacher_archs'][n]} | {result['bootstrap_size']} "
                     f"({result['bootstrap_unique'][n]}) | {result['val_dice_teachers'][n]:.4f} | {te['dice']:.4f} | "
                     f"{te['dice_ci'][0]:.4f}-{te['dice_ci'][1]:.4f} | "
                     f"{'-' if train_s is None else f'{train_s:.0f}'} |")
    cells_s = sum(cl["cell_s"] for cl in result["cells"])
    lines += ["", "## Cost (s)", "",
              "Pool: " + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in pt.items()) + f". Cells: {cells_s:.0f} in all "
              f"(students {sum(cl['timings']['student_s'] for cl in result['cells']):.0f}, evaluations "
              f"{sum(cl['timings']['evaluate_s'] for cl in result['cells']):.0f}).",
              f"This run: {result['run_s'] / 60:.1f} min (parts done earlier and kept with --reuse count as they "
              "were measured then, in the tables, and about 0 here)."]
    (out / "e6.md").write_text("\n".join(lines) + "\n")
    (out / "e6.json").write_text(json.dumps(result, indent=2))

    ts = [int(t) for t in summary]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    for i, (key, label) in enumerate(((STUDENT, "student"), (ENSEMBLE, "teachers' ensemble"),
                                      (BEST, "best teacher (by val)"))):
        ax.plot(ts, [summary[str(t)]["dice"][key] for t in ts], "-o", color=f"C{i}", label=label, ms=4)
        for t in ts:
            ys = summary[str(t)]["dice_per_draw"][key]
            ax.plot([t + (i - 1) * 0.08] * len(ys), ys, ".", color=f"C{i}", alpha=0.5, ms=5)
    ax.set(xlabel="teachers T", ylabel="test Dice", title="Dice vs T (lines: mean over draws; dots: draws)")
    ax.set_xticks(ts)
    ax.legend(fontsize=8)
    ax = axes[1]
    for cl in result["cells"]:
        x = cl["deltas"]["student_vs_ensemble"]
        xpos = cl["T"] + (cl["draw"] - 1) * 0.1
        ax.errorbar([xpos], [x["delta"]], yerr=[[x["delta"] - x["delta_ci"][0]], [x["delta_ci"][1] - x["delta"]]],
                    fmt="o", color="C0", ms=4, capsize=2)
    ax.plot(ts, [summary[str(t)]["deltas"]["student_vs_ensemble"]["mean"] for t in ts], "-", color="C0", lw=1)
    ax.axhline(0.0, color="grey", ls="--", lw=1)
    ax.set(xlabel="teachers T", ylabel="student minus ensemble (paired)", title="per draw, 95% paired CI")
    ax.set_xticks(ts)
    fig.suptitle(f"E6 on {dataset_name(result)}: student, ensemble and best teacher by teacher count")
    fig.tight_layout()
    fig.savefig(out / "e6.png", dpi=120)
    plt.close(fig)

    mlflow.set_tracking_uri(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    mlflow.set_experiment("e6")
    with mlflow.start_run(run_name="e6-summary"):
        for t, row in summary.items():
            mlflow.log_metrics({f"dice.T{t}.{k}": v for k, v in row["dice"].items()})
            mlflow.log_metrics({f"delta.T{t}.{k}": v["mean"] for k, v in row["deltas"].items()})
        mlflow.log_metrics({"wall_s": result["wall_s"], "cells": len(result["cells"])})
        mlflow.log_artifacts(str(out), artifact_path="results")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, "e6", size=96)  # --seed: the protocol split's seed (E3's: 0), the bootstraps' and draws'
    p.add_argument("--teachers", type=int, default=8, help="teachers in the pool (--smoke: 4)")
    p.add_argument("--t-values", nargs="+", type=int, default=list(T_VALUES),
                   help="teacher counts T (default: %(default)s; --smoke: 1 2 4)")
    p.add_argument("--draws", type=int, default=3, help="draws per T below the pool size (--smoke: 1)")
    p.add_argument("--teacher-archs", nargs="+", default=list(ARCH_CYCLE), help="cycled over the pool")
    p.add_argument("--student-arch", default="timm_unet")
    p.add_argument("--bootstrap-size", type=int, default=60,
                   help="images per teacher, drawn with replacement from the pooled sites (one E3 site; --smoke: 8)")
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--student-epochs", type=int, default=24)
    p.add_argument("--teacher-min-steps", type=int, default=320,
                   help="teacher_training.min_steps (E7's: the steps of a 60-image site in 40 epochs of batch 8)")
    args = p.parse_args()
    if args.smoke:  # the same path, tiny
        args.teachers = 4 if args.teachers == 8 else args.teachers
        args.t_values = [1, 2, 4] if args.t_values == list(T_VALUES) else args.t_values
        args.draws = 1 if args.draws == 3 else args.draws
        args.size = 64 if args.size == 96 else args.size  # timm_unet's smallest size
        args.bootstrap_size = 8 if args.bootstrap_size == 60 else args.bootstrap_size
        args.teacher_epochs, args.student_epochs, args.teacher_min_steps = 2, 2, 4
    args.t_values = sorted(set(args.t_values))
    if not args.t_values or not all(1 <= t <= args.teachers for t in args.t_values):
        raise SystemExit(f"--t-values {args.t_values}: expected counts from 1 to the pool size ({args.teachers})")
    if args.draws < 1 or args.bootstrap_size < 1:
        raise SystemExit("--draws and --bootstrap-size: expected at least 1")
    common_main(args, "e6", run, write_results, "e6.md, e6.json, e6.png")


if __name__ == "__main__":
    main()
