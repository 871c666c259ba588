"""E9 — fusion-weight search (issue 20, point 3): with 12 teachers of which 4 are deliberately poor, does a search
over the fusion weights put the poor ones near zero, and in how many trials? Optuna TPE over the simplex against
random search and against the weighted mean of E3 (weights = each teacher's val Dice), with the students of each,
on HC18 (or any labeled folder: --data, --dataset-name, --labels).

    .venv/bin/python jobs/experiments/e9_weight_search.py --smoke                    # same path, tiny: ~4-6 min
    .venv/bin/python jobs/experiments/e9_weight_search.py --pool-dir runs/e6         # the study, E6's pool reused
    .venv/bin/python jobs/experiments/e9_weight_search.py --reuse                    # keep every finished part

Cost on 2 cores, 96x96 (estimated from E3's and E6's stage costs and the smoke, 2026-12-07; the study not run
yet. The smoke: 6.1 min on a host busy with two other studies, ~4 min on a quieter one, 12 s again with --reuse):
4 poor teachers ~6 min (E3's 75-122 s each for 320 steps; the few-image ones take the same steps on smaller
batches), one annotation by the 12 of the transferal split (178 images) and of val (58) ~4 min, the 12 teachers on
val ~1 min, the two searches of 64 trials ~2 min (a trial: ~0.5 s of Tune's round trip, actors reused, plus one
re-fusion of val's maps, ~0.02 s at the smoke's 8 images of 64x64, ~0.3 s expected at 58 of 96x96), three students
~100 s each (~6 min), the test evaluation of 15 models and the ensemble ~3 min: ~22 min with E6's pool reused
(target <= 35 min; up to twice that as the host drifts), ~12 min more to train the pool here.

Protocol (``jobs/experiments/protocol.py``, ``--seed`` 0: E3's split, val 58 images, transferal 178, test 116):
  pool          E6's pool (``e6_teacher_count.teacher_names`` and ``bootstrap``, same seeds): ``--teachers`` (8)
                teachers, architectures cycling segresnet, timm_unet, attention_unet, unet, each on its own
                bootstrap of 60 images of the pooled sites, 40 epochs of batch 8, ``min_steps`` 320, teacher k's
                training seed ``--seed`` + k. ``--pool-dir`` (an E6 run folder, e.g. runs/e6) lends its finished
                teachers: one whose bootstrap there lists the same images as here is used as it is; the others
                are trained here.
  poor          four more teachers, the same budget, their architectures mixed: ``--poor-few`` (2, timm_unet and
                unet) on a bootstrap of ``--few-images`` (4) images of the pooled sites; ``--poor-shift`` (2,
                segresnet and attention_unet) on a bootstrap of 60 images of the pooled sites turned into
                "another site": intensities inverted and gamma-transformed, ``(1 - x) ** --shift-gamma`` (2.0), so
                that they see real images as out of their domain. Their bootstrap salts follow the pool's (8-11).
  annotation    one run of all 12 over the transferal split (masks never read) and one over val, every teacher's
                map stored; nothing below runs a teacher again.
  val Dice      ``evaluate`` of each teacher on val (original resolution): the weights of ``weighted_mean`` as in
                E3 (floored at 0.001) and the choice of the best teacher.
  search        a fusion-level search: Ray Tune over ``fusion.weights: {simplex: 12}`` (decoded by
                ``nakt_ray.config.space.trial_values``: the normalised -log of 12 uniform draws, as ``nakt tune``
                does), built by nakt's own ``search.tune.build_search_alg`` (Optuna TPE, seeded; ``--random-trials``
                more with Tune's BasicVariantGenerator, the same seed), one trial at a time, ``--trials`` (64)
                each. A trial's objective is the foreground Dice (mean over val's cases, on the preprocessed grid)
                of the hard label of val's stored maps re-fused with its weights (``weighted_mean``, the maths of
                ``nakt fuse``). Unlike ``nakt tune``, no trial trains a student: 12 weights need many trials and a
                student costs ~100 s a trial (64 trials: ~2 h on 2 cores), where a re-fusion of val costs well
                under a second; the student is trained once, on the best weights. Per trial: the weights, the
                objective and the poor teachers' share of the weights; per search: the first trial at which the
                best-so-far trial's poor share is below 0.05 and 0.01, and the final best weights.
  fusion refs   the same objective for ``mean``, the val-Dice weights, the pool alone (weight 0 for the poor)
                and each teacher alone.
  students      three timm_unet students (E3's: 24 epochs of batch 8, lr 1e-3) on the transferal set re-fused at
                training time with ``mean``, the val-Dice weights and TPE's best weights; then ``evaluate`` on test
                of the 12 teachers, their ensemble (mean of probabilities) and the students, with per-case
                differences paired over the test cases (E3's ``paired_deltas``).
Results: ``results/e9/`` (``e9.md``, ``e9.json``, ``e9.png``) and the MLflow store ``<run-dir>/mlflow.db``
(experiment ``e9``: every training, an ``e9-search-<alg>`` run per search with its trials as steps, and the
``e9-summary`` run). ``--reuse`` keeps the teachers, the annotation sets, the val scores, a search of the same
teachers, trials and seed, the students whose weights are unchanged, and the test evaluation of the same models.
``--smoke``: 4 pool teachers and 2 poor (one of each kind), 8-image bootstraps, 10 transferal, 8 val and 12 test
images, 2 epochs, 8 trials per search, 64x64 (timm_unet's smallest size).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e6_teacher_count as e6  # noqa: E402  (this folder: E6's pool, reused)
from _common import add_common_args, dataset_name  # noqa: E402
from _common import main as common_main  # noqa: E402

NAME = "e9"
FEW, SHIFT = "few", "shift"
FEW_ARCHS = ("timm_unet", "unet")
SHIFT_ARCHS = ("segresnet", "attention_unet")
THRESHOLDS = (0.05, 0.01)
ALGS = {"optuna": "TPE", "random": "random"}  # tune.search_alg -> its name in the report
ENSEMBLE = "teachers_ensemble"  # evaluation.evaluate.ENSEMBLE (the reports read without importing nakt_ray)
STUDENTS = {"student_mean": "mean", "student_val_dice": "val-Dice weights", "student_searched": "TPE's best weights"}
METRIC = "val_dice"


# --- pure helpers ------------------------------------------------------------------------------------------------

def poor_teachers(few: int, shift: int, start: int) -> list[tuple[str, str, str]]:
    """``[(name, arch, kind)]`` of the poor teachers, numbered on from the pool's ``start``: first ``few`` on few
    images (``FEW_ARCHS`` cycled), then ``shift`` on the shifted domain (``SHIFT_ARCHS`` cycled)."""
    kinds = [(FEW, FEW_ARCHS[j % len(FEW_ARCHS)]) for j in range(few)]
    kinds += [(SHIFT, SHIFT_ARCHS[j % len(SHIFT_ARCHS)]) for j in range(shift)]
    return [(f"t{start + j}_{kind}_{arch}", arch, kind) for j, (kind, arch) in enumerate(kinds)]


def shift_intensity(image: np.ndarray, gamma: float) -> np.ndarray:
    """"Another site": intensities ``x`` scaled to [0, 1] by the dtype's range, inverted and gamma-transformed,
    ``(1 - x) ** gamma``, back in the same integer dtype."""
    top = float(np.iinfo(image.dtype).max)
    x = image.astype(np.float64) / top
    return np.clip(np.rint((1.0 - x) ** gamma * top), 0, top).astype(image.dtype)


def normalise(weights: list[float]) -> list[float]:
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def poor_share(weights: list[float], poor: list[int]) -> float:
    """The share of the total weight that falls on the teachers at the indices ``poor``."""
    return float(sum(weights[k] for k in poor) / sum(weights))


def best_so_far(trials: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """After each trial (in order), the best trial so far: ``{"trial", "objective", "poor_share"}`` (1-based trial
    numbers; a tie keeps the earlier; a NaN objective never leads)."""
    out, best = [], None
    for i, t in enumerate(trials, start=1):
        if t["objective"] == t["objective"] and (best is None or t["objective"] > best["objective"]):
            best = {"trial": i, "objective": float(t["objective"]), "poor_share": float(t["poor_share"])}
        out.append(dict(best) if best else {"trial": None, "objective": float("nan"), "poor_share": float("nan")})
    return out


def first_trial_below(curve: list[dict[str, Any]], threshold: float) -> int | None:
    """The first trial number after which the best-so-far trial's poor share is below ``threshold`` (None: never)."""
    return next((i for i, c in enumerate(curve, start=1) if c["poor_share"] < threshold), None)


def settled_below(curve: list[dict[str, Any]], threshold: float) -> int | None:
    """The first trial number from which on the best-so-far trial's poor share stays below ``threshold`` to the
    last trial (None: the final best is not below it); a later best with a larger share undoes an earlier drop."""
    settled = None
    for i, c in enumerate(curve, start=1):
        if not c["poor_share"] < threshold:
            settled = None
        elif settled is None:
            settled = i
    return settled


def fused_dice(maps: np.ndarray, truth: np.ndarray, weights: list[float] | None) -> float:
    """The search's objective: val's stored maps ``[N, T, C, H, W]`` (uint8 or float16, as stored) fused by
    ``weighted_mean`` with ``weights`` (None: ``mean``) as ``nakt fuse`` does (dequantise, fuse, argmax), then the
    hard label's foreground Dice against ``truth`` ``[N, H, W]``: mean over classes 1.., then over cases."""
    from nakt_ray.annotation.parquet import dequantize
    from nakt_ray.fusion import fuse_teachers, hard_label
    from nakt_ray.metrics import dice_per_class

    probs = [dequantize(maps[:, t]) for t in range(maps.shape[1])]
    soft = fuse_teachers(probs, None, "mean" if weights is None else "weighted_mean", weights)
    dice = dice_per_class(hard_label(soft), truth, maps.shape[2])  # [N, C]
    return float(dice[:, 1:].mean(axis=1).mean())


# --- data --------------------------------------------------------------------------------------------------------

def shift_domain(src: Path, out: Path, gamma: float) -> Path:
    """A copy of the labeled folder ``src`` as another site: each image through :func:`shift_intensity`, written
    under ``out/images`` with its name; the masks linked unchanged."""
    from PIL import Image

    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for p in sorted((src / "images").iterdir()):
        target = out / "images" / p.name
        if not target.exists():
            Image.fromarray(shift_intensity(np.asarray(Image.open(p)), gamma)).save(target)
        mask = out / "masks" / p.name
        if (src / "masks" / p.name).exists() and not mask.exists():
            mask.symlink_to((src / "masks" / p.name).resolve())
    return out


def pool_checkpoint(pool_dir: Path | None, name: str, bootstrap: Path) -> Path | None:
    """The finished model file of teacher ``name`` in an E6 run folder, if it is there and was trained on the same
    bootstrap (its ``bootstraps/<name>/images`` lists the same files as ``bootstrap``); refused if it differs."""
    if pool_dir is None or not (pool_dir / "teachers" / name / "model.pt").exists():
        return None
    theirs = pool_dir / "bootstraps" / name / "images"
    mine = sorted(p.name for p in (bootstrap / "images").iterdir())
    if not theirs.is_dir() or sorted(p.name for p in theirs.iterdir()) != mine:
        raise SystemExit(f"--pool-dir {pool_dir}: teacher {name} there was not trained on this run's bootstrap "
                         f"({theirs} differs from {bootstrap / 'images'}); was it run with another --seed, "
                         "--bootstrap-size or data?")
    return pool_dir / "teachers" / name / "model.pt"


def stored_maps(annotations: Path, truth_folder: Path, num_classes: int) -> dict[str, Any]:
    """An annotation set's usable rows: ``names`` (teachers), ``maps`` ``[N, T, C, H, W]`` as stored (quantised),
    ``truth`` ``[N, H, W]`` (the mask of the same file name in ``truth_folder/masks``, on the set's grid)."""
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.data.datasets import geometry_of
    from nakt_ray.data.preprocess import preprocess_mask
    from nakt_ray.data.readers import read_mask

    manifest = ann.read_manifest(annotations)
    names = [t["name"] for t in manifest["teachers"]]
    if ann.coverage(manifest) is not None:
        raise SystemExit(f"{annotations}: its teachers predict different label sets; E9 fuses full-coverage maps")
    table = ann.read_table(annotations, ["source", "status", "geometry",
                                         *(ann.prob_column(n) for n in names)]).to_pydict()
    ok = [i for i, status in enumerate(table["status"]) if status == "ok"]
    maps = np.stack([ann.from_bytes([table[ann.prob_column(n)][i] for i in ok], shape, manifest["prob_dtype"])
                     for n, shape in zip(names, ann.teacher_shapes(manifest))], axis=1)
    truth = np.stack([preprocess_mask(read_mask(str(truth_folder / "masks" / Path(table["source"][i]).name),
                                                num_classes), geometry_of(table["geometry"][i])) for i in ok])
    return {"names": names, "maps": maps, "truth": truth, "failed": len(table["status"]) - len(ok)}


# --- the search --------------------------------------------------------------------------------------------------

def run_search(alg: str, trials: int, seed: int, raw: dict, val: dict[str, Any], poor: list[int],
               storage: Path) -> dict[str, Any]:
    """One fusion-level search of ``trials`` trials with ``alg`` (``tune.search_alg``: optuna or random), one at a
    time; returns its trials in creation order with their weights, objective and poor share."""
    from ray import tune

    from nakt_ray import config
    from nakt_ray.config.space import parse_space, trial_values
    from nakt_ray.search.tune import build_search_alg, tune_domains

    space = {"fusion.weights": {"simplex": len(val["names"])}}
    cfg = config.from_dict({**raw, "fusion": {"rule": "weighted_mean", "weights": [1.0] * len(val["names"])},
                            "tune": {"search_alg": alg, "seed": seed, "num_samples": trials,
                                     "max_concurrent_trials": 1, "metric": METRIC, "space": space}})
    dists = parse_space(space)
    search_alg, alg_name = build_search_alg(cfg)  # nakt's own: OptunaSearch(seed) or BasicVariantGenerator(seed)

    def objective(params: dict[str, Any], maps: np.ndarray | None = None,
                  truth: np.ndarray | None = None) -> dict[str, float]:
        weights = trial_values(dists, params, cfg)["fusion.weights"]
        return {METRIC: fused_dice(maps, truth, weights)}

    trainable = tune.with_resources(tune.with_parameters(objective, maps=val["maps"], truth=val["truth"]),
                                    {"cpu": cfg.tune.cpus_per_trial})
    if (storage / alg).exists():
        shutil.rmtree(storage / alg)  # an earlier, unfinished search of this algorithm: start it afresh
    tuner = tune.Tuner(trainable, param_space=tune_domains(dists),
                       tune_config=tune.TuneConfig(metric=METRIC, mode="max", search_alg=search_alg,
                                                   num_samples=trials, max_concurrent_trials=1, reuse_actors=True),
                       run_config=tune.RunConfig(name=alg, storage_path=str(storage.resolve()), verbose=0))
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    rows = []
    for result in grid:  # creation order
        if result.error is not None:
            raise RuntimeError(f"search {alg}: trial {Path(result.path).name} failed: {result.error}")
        weights = trial_values(dists, result.config, cfg)["fusion.weights"]
        rows.append({"trial_id": Path(result.path).name, "weights": weights,
                     "objective": float(result.metrics[METRIC]), "poor_share": poor_share(weights, poor),
                     "trial_s": float(result.metrics.get("time_total_s", float("nan")))})
    curve = best_so_far(rows)
    best = rows[curve[-1]["trial"] - 1]
    return {"alg": alg, "search_alg": alg_name, "seed": seed, "teachers": list(val["names"]), "poor": poor,
            "trials": rows, "best_so_far": curve, "best_trial": curve[-1]["trial"], "best_weights": best["weights"],
            "best_objective": best["objective"], "best_poor_share": best["poor_share"],
            "first_below": {str(th): first_trial_below(curve, th) for th in THRESHOLDS},
            "settled_below": {str(th): settled_below(curve, th) for th in THRESHOLDS}, "wall_s": wall,
            "per_trial_s": wall / max(1, len(rows)), "objective_s": float(np.mean([r["trial_s"] for r in rows]))}


# --- the study ---------------------------------------------------------------------------------------------------

def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run(args: argparse.Namespace) -> dict:
    import protocol
    from e3_multi_teacher import paired_deltas

    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import ENSEMBLE as EVAL_ENSEMBLE
    from nakt_ray.evaluation.evaluate import evaluate
    from nakt_ray.runtime.cluster import init_ray
    from nakt_ray.training.student import train_student, unfinished_run
    from nakt_ray.training.teacher import train_teacher

    assert EVAL_ENSEMBLE == ENSEMBLE
    run_dir = Path(args.run_dir)
    t_run = time.perf_counter()
    state_file, timings_file = run_dir / "state.json", run_dir / "timings.json"
    state = _json(state_file) if args.reuse else {}
    # Seconds per step, kept in the run folder: a step that --reuse skips keeps the time it took when it ran.
    timings: dict[str, float] = _json(timings_file) if args.reuse else {}

    def record(key: str, since: float) -> None:
        timings[key] = time.perf_counter() - since
        timings_file.write_text(json.dumps(timings, indent=1))

    def save() -> None:
        state_file.write_text(json.dumps(state, indent=1))

    splits = protocol.materialise(args.data, run_dir / "splits", seed=args.seed)
    if args.smoke:  # the same splits, cut to a few cases each (the first by name), as E6's smoke
        splits.update({k: protocol.subset(splits[k], n, run_dir / f"{k}_small")
                       for k, n in (("transferal", 10), ("val", 8), ("test", 12))})
    sites = [splits[s] for s in e6.SITES]
    boots = run_dir / "bootstraps"
    pool = [(name, arch, "pool") for name, arch in e6.teacher_names(args.teachers, args.teacher_archs)]
    everyone = pool + poor_teachers(args.poor_few, args.poor_shift, len(pool))
    data: dict[str, Path] = {}
    for k, (name, _, kind) in enumerate(everyone):  # salt k: the pool's are E6's, the poor ones' follow
        if kind == SHIFT:
            src = e6.bootstrap(sites, args.bootstrap_size, boots / f"{name}_source", args.seed, k)
            data[name] = shift_domain(src, boots / name, args.shift_gamma)
        else:
            data[name] = e6.bootstrap(sites, args.few_images if kind == FEW else args.bootstrap_size, boots / name,
                                      args.seed, k)
    pool_dir = Path(args.pool_dir) if args.pool_dir else None
    lent = {name: pool_checkpoint(pool_dir, name, data[name]) for name, _, kind in everyone if kind == "pool"}
    lent = {n: p for n, p in lent.items() if p is not None}
    names = [name for name, _, _ in everyone]
    poor = [k for k, (_, _, kind) in enumerate(everyone) if kind != "pool"]
    train = {"batch_size": 8, "num_workers": 0}
    # the smoke checks the path: one pass an epoch, not the student's default floor of 550 steps
    one_pass = {"min_steps": 0} if args.smoke else {}
    raw = {"run_dir": str(run_dir),
           "data": {"labels": list(args.labels), "transferal": str(splits["transferal"]), "val": str(splits["val"]),
                    "test": str(splits["test"])},
           "preprocess": {"size": [args.size, args.size]},
           "teachers": [{"name": name, "arch": arch, "train_data": str(data[name]), "val_data": str(splits["val"]),
                         **({"checkpoint": str(lent[name])} if name in lent else {})}
                        for name, arch, _ in everyone],
           "student": {"name": "student", "arch": args.student_arch},
           "teacher_training": {**train, "lr": 2e-3, "epochs": args.teacher_epochs,
                                "min_steps": args.teacher_min_steps},
           "training": {**train, "lr": 1e-3, "epochs": args.student_epochs, **one_pass},
           "tracking": {"uri": f"sqlite:///{run_dir.resolve() / 'mlflow.db'}", "experiment": NAME,
                        "registered_model": "e9-student"},
           "ray": {"num_cpus": os.cpu_count()}}
    cfg = config.from_dict(raw)
    init_ray(cfg.ray)
    print(f"E9: {len(pool)} pool teachers ({len(lent)} lent by {pool_dir}), {len(poor)} poor", flush=True)

    # 1. Teachers (E6's budget and per-teacher seeds).
    models, trained = {}, False
    for k, teacher in enumerate(cfg.teachers):
        done = cfg.teacher_checkpoint(teacher)
        if teacher.name in lent or (args.reuse and done.exists()):
            models[teacher.name] = str(done)
            continue
        tcfg = config.from_dict({**raw, "teacher_training": {**raw["teacher_training"], "seed": args.seed + k}})
        t = time.perf_counter()
        models[teacher.name] = str(train_teacher(tcfg, tcfg.teachers[k]))
        record(f"teacher_{teacher.name}_s", t)
        trained = True
    # A teacher trained now, or another model file than the earlier run's (e.g. one --pool-dir lends since): every
    # later step runs again.
    changed = trained or state.get("models", models) != models
    state = {"models": models} if changed else {**state, "models": models}
    save()

    # 2. One annotation of the transferal split and one of val, every teacher's map stored.
    for sub, source in (("annotations", None), ("annotations_val", str(splits["val"]))):
        out = run_dir / sub
        if changed or not (args.reuse and (out / "summary.json").exists()):
            if changed and out.exists():
                shutil.rmtree(out)  # a teacher changed: its maps must be new
            t = time.perf_counter()
            annotate(cfg, transferal=source, output=str(out), resume=args.reuse and (out / "manifest.json").exists())
            record(f"{sub}_s", t)

    # 3. Each teacher on val: the weighted mean's weights and the best teacher.
    if "val_dice" not in state:
        t = time.perf_counter()
        val_report = evaluate(cfg, dict(models), str(splits["val"]), run_dir / "evaluation_val")
        record("teachers_val_s", t)
        state["val_dice"] = {n: float(val_report["models"][n]["dice"]) for n in names}
        save()
    val_dice = state["val_dice"]
    val_weights = [val_dice[n] if val_dice[n] >= 1e-3 else 1e-3 for n in names]  # E3's (NaN compares False)
    best_teacher = max(names, key=lambda n: val_dice[n])

    # 4. The fusion-level searches and references on val's stored maps.
    t = time.perf_counter()
    val = stored_maps(run_dir / "annotations_val", Path(splits["val"]), len(args.labels))
    if val["names"] != names:
        raise SystemExit(f"{run_dir / 'annotations_val'} holds teachers {val['names']}; expected {names}")
    pool_only = [0.0 if k in poor else 1.0 for k in range(len(names))]
    refs = {"mean": {"weights": [1.0 / len(names)] * len(names), "objective": fused_dice(val["maps"], val["truth"],
                                                                                        None)},
            "val_dice_weights": {"weights": normalise(val_weights),
                                 "objective": fused_dice(val["maps"], val["truth"], val_weights)},
            "pool_only": {"weights": normalise(pool_only),
                          "objective": fused_dice(val["maps"], val["truth"], pool_only)}}
    for r in refs.values():
        r["poor_share"] = poor_share(r["weights"], poor)
    alone = {n: fused_dice(val["maps"], val["truth"], [float(j == k) for j in range(len(names))])
             for k, n in enumerate(names)}
    record("fusion_refs_s", t)
    searches = {}
    for alg, n_trials in (("optuna", args.trials), ("random", args.random_trials)):
        if n_trials <= 0:
            continue
        f = run_dir / "search" / f"{alg}.json"
        kept = _json(f) if args.reuse and not changed else {}
        if kept.get("teachers") == names and len(kept.get("trials", [])) == n_trials and kept.get("seed") == args.seed:
            print(f"E9 search {alg}: done earlier ({f})", flush=True)
            searches[alg] = kept
            continue
        print(f"E9 search {alg}: {n_trials} trials", flush=True)
        searches[alg] = run_search(alg, n_trials, args.seed, raw, val, poor, run_dir / "search" / "tune")
        f.write_text(json.dumps(searches[alg], indent=1))
        timings[f"search_{alg}_s"] = searches[alg]["wall_s"]
        timings_file.write_text(json.dumps(timings, indent=1))
    del val

    # 5. Students on the transferal set re-fused with each weighting (at training time, from the stored maps).
    fusions = {"student_mean": {"rule": "mean"},
               "student_val_dice": {"rule": "weighted_mean", "weights": val_weights},
               "student_searched": {"rule": "weighted_mean", "weights": searches["optuna"]["best_weights"]}}
    students = {}
    (run_dir / "students").mkdir(parents=True, exist_ok=True)
    for s, fusion in fusions.items():
        f = run_dir / "students" / f"{s}.json"
        kept = _json(f) if args.reuse and not changed else {}
        if kept.get("fusion") == fusion and Path(kept.get("model_path", "")).exists():
            students[s] = kept
            continue
        scfg = config.from_dict({**raw, "fusion": fusion, "student": {**raw["student"], "name": s}})
        t = time.perf_counter()
        result = train_student(scfg, register=False, run_name=s,
                               resume=args.reuse and not changed and unfinished_run(scfg.student_checkpoint))
        record(f"{s}_s", t)
        m = result["metrics"]
        students[s] = {"name": s, "fusion": fusion, "model_path": result["model_path"],
                       "best_val_dice": m.get("best_val_dice"), "train_wall_s": result["wall_s"]}
        f.write_text(json.dumps(students[s], indent=1))

    # 6. Test: the 12 teachers, their ensemble and the students, paired over the same cases.
    test_models = {**models, **{s: students[s]["model_path"] for s in STUDENTS}}
    ev = run_dir / "evaluation"
    if state.get("test_models") != test_models or not (ev / "evaluation_cases.csv").exists():
        t = time.perf_counter()
        report = evaluate(cfg, test_models, str(splits["test"]), ev, ensemble=names)
        record("evaluate_s", t)
        state.update(test_models=test_models, test={n: {"dice": float(r["dice"]), "dice_ci": r["dice_ci"]}
                                                    for n, r in report["models"].items()}, table=report["table"])
        save()
    pairs = [(s, ref) for s in STUDENTS for ref in (ENSEMBLE, best_teacher)]
    pairs += [("student_searched", "student_mean"), ("student_searched", "student_val_dice"),
              ("student_val_dice", "student_mean")]
    deltas = paired_deltas(ev / "evaluation_cases.csv", pairs)
    kinds = {name: kind for name, _, kind in everyone}
    return {"split_seed": args.seed, "teachers": names, "teacher_archs": {n: a for n, a, _ in everyone},
            "teacher_kinds": kinds, "poor": poor, "lent": {n: str(p) for n, p in lent.items()},
            "pool_dir": str(pool_dir) if pool_dir else None,
            "train_images": {n: len(list((data[n] / "images").iterdir())) for n in names},
            "train_images_distinct": {n: len({p.name.split("_", 1)[1] for p in (data[n] / "images").iterdir()})
                                      for n in names},
            "shift_gamma": args.shift_gamma, "student_arch": args.student_arch, "image_size": args.size,
            "epochs": {"teacher": args.teacher_epochs, "student": args.student_epochs},
            "min_steps": {"teacher": args.teacher_min_steps},
            "cases": {k: len(list((Path(splits[k]) / "images").iterdir())) for k in (*e6.SITES, "transferal", "val",
                                                                                     "test")},
            "val_dice_teachers": val_dice, "val_weights": val_weights, "best_teacher": best_teacher,
            "val_fused_alone": alone, "fusion_refs": refs, "searches": searches, "students": students,
            "models": state["test"], "table": state["table"], "deltas": deltas, "ensemble": ENSEMBLE,
            "thresholds": list(THRESHOLDS), "timings": timings, "smoke": args.smoke,
            "run_s": time.perf_counter() - t_run}


# --- the report --------------------------------------------------------------------------------------------------

def _ci(r: dict) -> str:
    return f"{r['dice']:.4f} | {r['dice_ci'][0]:.4f}-{r['dice_ci'][1]:.4f}"


def _delta(result: dict, model: str, ref: str) -> str:
    x = result["deltas"].get(model, {}).get(ref)
    return f"{x['delta']:+.4f} ({x['delta_ci'][0]:+.4f} to {x['delta_ci'][1]:+.4f})" if x else "-"


def _trial(n: int | None) -> str:
    return "never" if n is None else str(n)


def write_results(result: dict, out: Path, run_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    out.mkdir(parents=True, exist_ok=True)
    names, poor, c = result["teachers"], result["poor"], result["cases"]
    kinds, refs, searches = result["teacher_kinds"], result["fusion_refs"], result["searches"]
    m, ens, best = result["models"], result["ensemble"], result["best_teacher"]
    size, kind = result["image_size"], "smoke" if result["smoke"] else "full"
    tpe = searches["optuna"]
    lines = [f"# E9: fusion-weight search with {len(poor)} poor teachers of {len(names)} ({kind})", "",
             f"{dataset_name(result)}, E3's split (seed {result['split_seed']}), {size}x{size}. "
             f"{len(names) - len(poor)} pool teachers (E6's: bootstraps of the pooled sites) and {len(poor)} poor: "
             f"{sum(kinds[names[k]] == FEW for k in poor)} on a few images, "
             f"{sum(kinds[names[k]] == SHIFT for k in poor)} on a shifted copy of the sites (intensities inverted, "
             f"gamma {result['shift_gamma']}). One annotation of the transferal split ({c['transferal']} images) and "
             f"of val ({c['val']}) by all of them. The searches re-fuse val's stored maps (weighted_mean) per trial "
             "and score the hard label's foreground Dice against val's masks (preprocessed grid); no student per "
             f"trial. Students ({result['student_arch']}, {result['epochs']['student']} epochs) on the transferal "
             f"set re-fused with each weighting; test Dice on {c['test']} images, 95% bootstrap CI; differences "
             "paired over the test cases.", "",
             "## The searches", "",
             "| search | trials | best val Dice of the fused label (trial) | its poor share | best-so-far poor share "
             "first below (stays below from) " + " | ".join(str(th) for th in result["thresholds"])
             + " | wall s | s per trial (in the objective) |",
             "|---|---|---|---|" + "---|" * len(result["thresholds"]) + "---|---|"]
    for alg, s in searches.items():
        lines.append(f"| {ALGS[alg]} ({s['search_alg']}) | {len(s['trials'])} | {s['best_objective']:.4f} "
                     f"({s['best_trial']}) | {s['best_poor_share']:.4f} | "
                     + " | ".join(f"{_trial(s['first_below'][str(th)])} ({_trial(s['settled_below'][str(th)])})"
                                  for th in result["thresholds"])
                     + f" | {s['wall_s']:.0f} | {s['per_trial_s']:.2f} ({s['objective_s']:.2f}) |")
    for key, label in (("mean", "mean (equal weights)"), ("val_dice_weights", "val-Dice weights (E3)"),
                       ("pool_only", "the pool alone (poor weighted 0)")):
        lines.append(f"| {label} | - | {refs[key]['objective']:.4f} | {refs[key]['poor_share']:.4f} | "
                     + " | ".join("-" for _ in result["thresholds"]) + " | - | - |")
    lines += ["", "Trials are numbered from 1 in the order Tune created them; \"first below\": the first trial after "
              "which the best trial so far gives the poor teachers less than that share of the weight; \"stays "
              "below from\": the trial from which on every later best does too (never: the final best does not). "
              "Optuna's TPE samples its first 10 trials at random (its n_startup_trials).", "",
              "## Weights per teacher (shares of the total)", "",
              "| teacher | kind | architecture | training images (distinct) | val Dice | test Dice | 95% CI | fused "
              "alone on val | val-Dice weight | " + " | ".join(f"{ALGS[a]} best" for a in searches) + " |",
              "|---|---|---|---|---|---|---|---|---|" + "---|" * len(searches)]
    for k, n in enumerate(names):
        lent = " (lent)" if n in result["lent"] else ""
        lines.append(f"| {n}{lent} | {kinds[n]} | {result['teacher_archs'][n]} | {result['train_images'][n]} "
                     f"({result['train_images_distinct'][n]}) | {result['val_dice_teachers'][n]:.4f} | {_ci(m[n])} | "
                     f"{result['val_fused_alone'][n]:.4f} | {refs['val_dice_weights']['weights'][k]:.3f} | "
                     + " | ".join(f"{s['best_weights'][k]:.3f}" for s in searches.values()) + " |")
    lines += ["", "## Students", "",
              f"| model | test Dice | 95% CI | minus ensemble | minus best teacher ({best}, by val) | minus "
              "student_mean |", "|---|---|---|---|---|---|"]
    lines.append(f"| teachers' ensemble (all {len(names)}, mean of probabilities) | {_ci(m[ens])} | | | |")
    lines.append(f"| best teacher {best} | {_ci(m[best])} | | | |")
    for s, label in STUDENTS.items():
        st = result["students"][s]
        lines.append(f"| {s} ({label}; best val Dice {st['best_val_dice']:.4f}) | {_ci(m[s])} | "
                     f"{_delta(result, s, ens)} | {_delta(result, s, best)} | {_delta(result, s, 'student_mean')} |")
    lines += ["", f"student_searched minus student_val_dice: "
              f"{_delta(result, 'student_searched', 'student_val_dice')}.", "",
              "## Trials (TPE)", "",
              "| trial | val Dice of the fused label | poor share | best so far | its poor share |",
              "|---|---|---|---|---|"]
    for i, (t, b) in enumerate(zip(tpe["trials"], tpe["best_so_far"]), start=1):
        lines.append(f"| {i} | {t['objective']:.4f} | {t['poor_share']:.4f} | {b['objective']:.4f} | "
                     f"{b['poor_share']:.4f} |")
    lines += ["", "## Cost (s)", "", ", ".join(f"{k[:-2]} {v:.0f}" for k, v in result["timings"].items()) + ".",
              f"This run: {result['run_s'] / 60:.1f} min (parts kept with --reuse count as they were measured "
              "then, in the timings, and about 0 here).", "", "All models on test:", "", result["table"]]
    (out / f"{NAME}.md").write_text("\n".join(lines) + "\n")
    (out / f"{NAME}.json").write_text(json.dumps(result, indent=2))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for i, (alg, s) in enumerate(searches.items()):
        x = range(1, len(s["trials"]) + 1)
        ax.plot(x, [b["objective"] for b in s["best_so_far"]], "-", color=f"C{i}", label=f"{ALGS[alg]} best so far")
        ax.plot(x, [t["objective"] for t in s["trials"]], ".", color=f"C{i}", alpha=0.4, ms=4)
    for j, (key, label) in enumerate((("mean", "mean"), ("val_dice_weights", "val-Dice weights"),
                                      ("pool_only", "pool alone"))):
        ax.axhline(refs[key]["objective"], color=f"C{j + 3}", ls="--", lw=1, label=label)
    ax.set(xlabel="trial", ylabel="val Dice of the fused label", title="objective (dots: trials)")
    ax.legend(fontsize=7)
    ax = axes[1]
    for i, (alg, s) in enumerate(searches.items()):
        x = range(1, len(s["trials"]) + 1)
        ax.plot(x, [b["poor_share"] for b in s["best_so_far"]], "-", color=f"C{i}", label=f"{ALGS[alg]} best so far")
        ax.plot(x, [t["poor_share"] for t in s["trials"]], ".", color=f"C{i}", alpha=0.4, ms=4)
    for th in result["thresholds"]:
        ax.axhline(th, color="grey", ls=":", lw=1)
    ax.axhline(refs["val_dice_weights"]["poor_share"], color="C4", ls="--", lw=1, label="val-Dice weights")
    ax.set_yscale("log")
    ax.set(xlabel="trial", ylabel="weight share of the poor teachers", title="poor teachers' share (dots: trials)")
    ax.legend(fontsize=7)
    ax = axes[2]
    bars = {"val-Dice": refs["val_dice_weights"]["weights"], **{ALGS[a]: s["best_weights"] for a, s in
                                                                searches.items()}}
    width = 0.8 / len(bars)
    for i, (label, w) in enumerate(bars.items()):
        ax.bar(np.arange(len(names)) + (i - (len(bars) - 1) / 2) * width, w, width, label=label,
               color=["C4", "C0", "C1"][i % 3])
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    for k, label in enumerate(ax.get_xticklabels()):
        label.set_color("red" if k in poor else "black")
    for k in poor:
        ax.axvspan(k - 0.45, k + 0.45, color="red", alpha=0.08, lw=0)
    ax.set(ylabel="weight (share)", title="final weights (poor teachers in red)")
    ax.legend(fontsize=7)
    fig.suptitle(f"E9 on {dataset_name(result)}: fusion-weight search with {len(poor)} poor teachers of {len(names)}")
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=120)
    plt.close(fig)

    mlflow.set_tracking_uri(f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
    mlflow.set_experiment(NAME)
    for alg, s in searches.items():
        with mlflow.start_run(run_name=f"{NAME}-search-{alg}"):
            mlflow.log_params({"search_alg": s["search_alg"], "trials": len(s["trials"]), "seed": s["seed"]})
            for i, (t, b) in enumerate(zip(s["trials"], s["best_so_far"]), start=1):
                mlflow.log_metrics({"objective": t["objective"], "poor_share": t["poor_share"],
                                    "best_objective": b["objective"], "best_poor_share": b["poor_share"]}, step=i)
            mlflow.log_dict({"best_weights": dict(zip(names, s["best_weights"]))}, "best_weights.json")
    with mlflow.start_run(run_name=f"{NAME}-summary"):
        mlflow.log_metrics({f"dice.{n}": r["dice"] for n, r in m.items()})
        mlflow.log_metrics({f"delta.{a}.vs.{b}": x["delta"] for a, refs_ in result["deltas"].items()
                            for b, x in refs_.items()})
        mlflow.log_metrics({f"val_fused.{k}": r["objective"] for k, r in refs.items()})
        mlflow.log_metrics({"wall_s": result["wall_s"], **{f"search_{a}_best": s["best_objective"]
                                                            for a, s in searches.items()}})
        mlflow.log_artifacts(str(out), artifact_path="results")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, NAME, size=96)  # --seed: the protocol split's seed (E3's: 0), the bootstraps' and searches'
    p.add_argument("--pool-dir", default=None,
                   help="an E6 run folder (e.g. runs/e6) whose finished pool teachers are used when their bootstrap "
                        "matches; the others are trained here")
    p.add_argument("--teachers", type=int, default=8, help="pool teachers, E6's (--smoke: 4)")
    p.add_argument("--teacher-archs", nargs="+", default=list(e6.ARCH_CYCLE), help="cycled over the pool")
    p.add_argument("--poor-few", type=int, default=2, help="poor teachers on --few-images images (--smoke: 1)")
    p.add_argument("--poor-shift", type=int, default=2, help="poor teachers on a shifted domain (--smoke: 1)")
    p.add_argument("--few-images", type=int, default=4, help="images of a few-image teacher (a bootstrap)")
    p.add_argument("--shift-gamma", type=float, default=2.0, help="the shifted site's images: (1 - x) ** gamma")
    p.add_argument("--trials", type=int, default=64, help="TPE trials (--smoke: 8)")
    p.add_argument("--random-trials", type=int, default=None,
                   help="random-search trials, the baseline (default: --trials; 0: none)")
    p.add_argument("--student-arch", default="timm_unet")
    p.add_argument("--bootstrap-size", type=int, default=60, help="images per pool or shifted teacher (--smoke: 8)")
    p.add_argument("--teacher-epochs", type=int, default=40)
    p.add_argument("--student-epochs", type=int, default=24)
    p.add_argument("--teacher-min-steps", type=int, default=320, help="teacher_training.min_steps (E6's)")
    args = p.parse_args()
    if args.smoke:  # the same path, tiny
        args.teachers = 4 if args.teachers == 8 else args.teachers
        args.poor_few = 1 if args.poor_few == 2 else args.poor_few
        args.poor_shift = 1 if args.poor_shift == 2 else args.poor_shift
        args.trials = 8 if args.trials == 64 else args.trials
        args.size = 64 if args.size == 96 else args.size  # timm_unet's smallest size
        args.bootstrap_size = 8 if args.bootstrap_size == 60 else args.bootstrap_size
        args.teacher_epochs, args.student_epochs, args.teacher_min_steps = 2, 2, 4
    args.random_trials = args.trials if args.random_trials is None else args.random_trials
    if args.teachers < 1 or args.poor_few + args.poor_shift < 1 or args.trials < 1 or args.few_images < 1:
        raise SystemExit("--teachers, --trials and --few-images: at least 1; and at least one poor teacher")
    if args.teachers + args.poor_few + args.poor_shift < 2:
        raise SystemExit("a simplex needs at least 2 teachers")
    common_main(args, NAME, run, write_results, "e9.md, e9.json, e9.png")


if __name__ == "__main__":
    main()
