"""Labeled dataset folders: ``images/<case>.<fmt>``, ``masks/<case>.png`` and ``synthetic.json``, the description
that says how they were made (generator, site, seed, the site statistics, every case's id and size).

Each case draws from its own generator, seeded by (seed, site, case index): case i of a folder does not depend on
how many cases are written, and two sites with the same seed do not share geometry.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from nakt_ray.demo.synthetic.cases import generate_case
from nakt_ray.demo.synthetic.sites import MIXED, SITES, SiteStyle, check_num_classes, get_site

__all__ = ["IMAGE_FORMATS", "write_folder"]

IMAGE_FORMATS: tuple[str, ...] = ("png", "jpg", "tif", "bmp")
"""File formats :func:`write_folder` can write images in (masks are always PNG)."""


def _case_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """Independent generator for case ``index``: a case does not depend on how many cases are written, and
    different sites with the same seed do not share geometry."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(stream.encode())], spawn_key=(index,)))


def write_folder(
    out_dir: str | os.PathLike[str],
    num_cases: int,
    site: str | SiteStyle,
    seed: int,
    num_classes: int = 2,
    fmt: str = "png",
    rgb: bool = False,
    prefix: str = "",
    size: tuple[int, int] | None = None,
) -> Path:
    """Write a synthetic dataset folder: ``images/<case>.<fmt>``, ``masks/<case>.png`` and ``synthetic.json``.

    Case ids are ``{prefix}{site}_{i:04d}`` (for ``site="mixed"`` the site drawn for that case). Masks are lossless
    PNG: 0/255 when ``num_classes == 2`` (as in HC18), the class index otherwise. Same arguments give
    byte-identical files; case i does not depend on ``num_cases``. Existing files with the same names are
    overwritten, other files are left alone.

    Args:
        out_dir: folder to create or fill.
        num_cases: number of cases (>= 0).
        site: a preset name from :data:`SITES`, ``"mixed"`` (each case from a random preset) or a SiteStyle.
        seed: non-negative base seed.
        num_classes: 2 or 3, see :func:`generate_case`.
        fmt: image file format, one of :data:`IMAGE_FORMATS` (JPEG at quality 95).
        rgb: write 3-channel images (grey with the site's slight colour tint, like a screenshot).
        prefix: prepended to every case id.
        size: optional fixed (height, width) for every case, overriding the site's size ranges.

    Returns:
        ``out_dir`` as a Path.
    """
    check_num_classes(num_classes)
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"fmt={fmt!r}: expected one of {list(IMAGE_FORMATS)}")
    if isinstance(num_cases, bool) or not isinstance(num_cases, (int, np.integer)) or num_cases < 0:
        raise ValueError(f"num_cases={num_cases!r}: expected a non-negative integer")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r}: expected a non-negative integer")
    if size is not None and (len(size) != 2 or min(size) < 16):
        raise ValueError(f"size={size!r}: expected (height, width) with both >= 16")
    if any(c in prefix for c in "/\\"):
        raise ValueError(f"prefix={prefix!r}: expected no path separators")

    if isinstance(site, SiteStyle):
        styles = {site.name: site}
        stream = site.name
    elif site == MIXED:
        styles = dict(SITES)
        stream = MIXED
    else:
        styles = {site: get_site(site)}
        stream = site
    if size is not None:
        hw = (int(size[0]), int(size[0])), (int(size[1]), int(size[1]))
        styles = {n: dataclasses.replace(s, height_range=hw[0], width_range=hw[1]) for n, s in styles.items()}
    names = sorted(styles)

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(int(num_cases)):
        rng = _case_rng(int(seed), stream, i)
        name = names[int(rng.integers(len(names)))] if len(names) > 1 else names[0]
        style = styles[name]
        image, label = generate_case(rng, style, num_classes)
        case_id = f"{prefix}{name}_{i:04d}"
        if rgb:
            tint = np.asarray(style.rgb_tint, dtype=np.float32)
            pixels = np.clip(np.rint(image[..., None].astype(np.float32) * tint), 0, 255).astype(np.uint8)
        else:
            pixels = image
        save_kwargs = {"quality": 95} if fmt == "jpg" else {}
        Image.fromarray(pixels).save(out / "images" / f"{case_id}.{fmt}", **save_kwargs)
        mask = label * np.uint8(255) if num_classes == 2 else label
        Image.fromarray(mask).save(out / "masks" / f"{case_id}.png")
        cases.append({"case_id": case_id, "site": name, "height": image.shape[0], "width": image.shape[1]})

    meta = {
        "generator": "nakt_ray.demo.synthetic",  # the package (its public API), not this module: datasets compare it
        "site": site.name if isinstance(site, SiteStyle) else site,
        "seed": int(seed),
        "num_cases": int(num_cases),
        "num_classes": int(num_classes),
        "fmt": fmt,
        "rgb": bool(rgb),
        "prefix": prefix,
        "size": list(size) if size is not None else None,
        "mask_values": "0/255" if num_classes == 2 else "class index",
        "styles": {n: dataclasses.asdict(s) for n, s in styles.items()},
        "cases": cases,
    }
    (out / "synthetic.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return out
