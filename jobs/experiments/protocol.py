"""The data protocol of the experiments on a real labeled folder (default: HC18 fetal-head ultrasound).

Images are grouped by *subject* before anything is split: HC18 names a subject's images ``NNN_HC.png``,
``NNN_2HC.png``, ``NNN_3HC.png``, so ``subject_of`` keeps the digits before the first underscore. Subjects (not
images) are shuffled with a fixed seed and cut into disjoint splits by fraction:

    site_a, site_b, site_c  each teacher's private training data (a "hospital")
    transferal              unlabeled for training: its masks are never read (annotation reads images only)
    labeled                 the small labeled target pool for fine-tuning (first n cases taken in a fixed order)
    val                     model selection (best epoch) for every model alike
    test                    held out; every reported figure comes from here

Each split is materialised as a folder source of symbolic links (``<out>/<split>/images|masks``) and the case
lists are written to ``<out>/split.json`` with the seed and fractions, so a run can be checked and repeated.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

SPLITS = {"site_a": 0.10, "site_b": 0.10, "site_c": 0.10, "transferal": 0.30, "labeled": 0.10, "val": 0.10,
          "test": 0.20}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def subject_of(name: str) -> str:
    """``'012_2HC.png'`` -> ``'012'``: the subject an image belongs to (HC18 naming; else the file stem)."""
    stem = Path(name).stem
    m = re.match(r"^(\d+)_", stem)
    return m.group(1) if m else stem


def split_cases(source: str | Path, seed: int = 0, fractions: dict[str, float] | None = None) -> dict[str, list[str]]:
    """Image file names of ``<source>/images`` per split, subjects never shared between splits."""
    fractions = fractions or SPLITS
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1; got {fractions}")
    images = sorted(p.name for p in (Path(source) / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"no images in {str(Path(source) / 'images')!r}")
    subjects: dict[str, list[str]] = {}
    for name in images:
        subjects.setdefault(subject_of(name), []).append(name)
    order = sorted(subjects)
    random.Random(seed).shuffle(order)
    out: dict[str, list[str]] = {k: [] for k in fractions}
    cuts, acc = [], 0.0
    for k, f in fractions.items():
        acc += f
        cuts.append((k, round(acc * len(order))))
    start = 0
    for k, stop in cuts:
        for s in order[start:stop]:
            out[k].extend(subjects[s])
        start = stop
    return out


def materialise(source: str | Path, out: str | Path, seed: int = 0,
                fractions: dict[str, float] | None = None) -> dict[str, Path]:
    """Write each split as a folder of symbolic links under ``out``; returns ``{split: folder}``."""
    source, out = Path(source).resolve(), Path(out)
    splits = split_cases(source, seed, fractions)
    folders = {}
    for name, files in splits.items():
        for sub in ("images", "masks"):
            d = out / name / sub
            d.mkdir(parents=True, exist_ok=True)
            for f in files:
                src = source / sub / f
                if src.exists() and not (d / f).exists():
                    (d / f).symlink_to(src)
        folders[name] = out / name
    (out / "split.json").write_text(json.dumps({"source": str(source), "seed": seed,
                                                "fractions": fractions or SPLITS, "cases": splits}, indent=1))
    return folders


def subset(folder: Path, n: int, out: Path) -> Path:
    """The first ``n`` cases of a split folder (sorted by name) as a folder of their own."""
    files = sorted(p.name for p in (folder / "images").iterdir())[:n]
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for f in files:
            if not (out / sub / f).exists():
                (out / sub / f).symlink_to((folder / sub / f).resolve())
    return out
