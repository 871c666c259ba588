"""Benchmark: the teachers' agreement of an annotation batch, every pair at once against pair by pair, side by side.

    .venv/bin/python bench/agreement.py                       # T = 1, 3, 6, 12; 2 and 8 classes (2D rows)
    .venv/bin/python bench/agreement.py --out agreement.json

Cost on 2 CPU cores: under a minute.

The agreement of a case is the mean over teacher pairs of their foreground Dice (``fusion.pairwise_dice_partial``,
stored per row by annotation and re-fusion). It was computed pair by pair, ``T (T - 1) / 2`` passes over the pixels
in Python (issue 20: O(T^2) per case); ``fusion.quality.agreement_from_labels`` gives every pair's overlap per class
as one matrix product. ``pair_by_pair`` below is the replaced code, kept here to compare against; both run on the
same arrays, ``--repeats`` times each, and the median of each is reported with their ratio and a check that
the values agree. Printed and written as JSON with ``--out``. (Volumes accumulate their overlaps slab by slab in
``annotation/volume_store.py`` and are not measured here.)
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from nakt_ray.fusion.partial import pairwise_dice_partial, union_labels
from nakt_ray.metrics import dice_per_class


def pair_by_pair(arrays: list[np.ndarray], cov: np.ndarray, spatial_dims: int = 2) -> np.ndarray:
    """The agreement as computed before (``pairwise_dice_partial`` up to commit 44b9162)."""
    labels = [union_labels(p.argmax(axis=-1 - spatial_dims), cov[t]) for t, p in enumerate(arrays)]
    scores = []
    for a in range(len(arrays)):
        for b in range(a + 1, len(arrays)):
            shared = cov[a] & cov[b]
            shared[0] = False
            if shared.any():
                la = np.where(shared[labels[a]], labels[a], 0)
                lb = np.where(shared[labels[b]], labels[b], 0)
                scores.append(dice_per_class(la, lb, cov.shape[1], spatial_dims)[..., shared].mean(axis=-1))
    return np.mean(scores, axis=0) if scores else np.ones(arrays[0].shape[:-1 - spatial_dims])


def case(teachers: int, classes: int, shape: tuple[int, ...], batch: int, seed: int) -> list[np.ndarray]:
    """Teachers that mostly agree (a shared random label map, each flipping ~10% of pixels), as uint8-like maps."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, (batch, *shape))
    out = []
    for _ in range(teachers):
        labels = np.where(rng.random(truth.shape) < 0.1, rng.integers(0, classes, truth.shape), truth)
        probs = np.moveaxis(np.eye(classes, dtype=np.float32)[labels], -1, 1) * 0.9 + 0.1 / classes
        out.append(probs)
    return out


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    times, value = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), np.asarray(value)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teachers", type=int, nargs="+", default=[1, 3, 6, 12])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    setups = [("2D rows: 32 x 96x96, 2 classes", 2, (96, 96), 32, 2),
              ("2D rows: 8 x 256x256, 8 classes", 8, (256, 256), 8, 2)]
    rows = []
    print(f"{'setup':<34}{'T':>4}{'pair by pair s':>16}{'all at once s':>15}{'speed-up':>10}{'max |diff|':>12}")
    for name, classes, shape, batch, dims in setups:
        for t in args.teachers:
            arrays = case(t, classes, shape, batch, seed=t)
            cov = np.ones((t, classes), bool)
            old_s, old = timed(lambda: pair_by_pair(arrays, cov, dims), args.repeats)
            new_s, new = timed(lambda: pairwise_dice_partial(arrays, cov), args.repeats)
            diff = float(np.abs(old - new).max())
            rows.append({"setup": name, "teachers": t, "pair_by_pair_s": old_s, "all_at_once_s": new_s,
                         "speedup": old_s / new_s, "max_abs_diff": diff})
            print(f"{name:<34}{t:>4}{old_s:>16.4f}{new_s:>15.4f}{old_s / new_s:>9.1f}x{diff:>12.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"machine": platform.platform(), "repeats": args.repeats, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
