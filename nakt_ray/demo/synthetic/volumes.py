"""Synthetic 3D sites and dataset folders: the phantom (``phantom.py``) imaged by scanners that differ in contrast,
noise, bias, voxel spacing, slice thickness and orientation (``render.py``), written as NIfTI volumes.

Sites (:data:`VOLUME_SITES`; all image the same field of view, so a thicker slice means fewer slices):

=============  ========================  ======================  ==========================================
site           contrast                  spacing (d, h, w) mm    other
=============  ========================  ======================  ==========================================
mr_t1          T1-like (fat bright)      2.5 x 2.5 x 2.5         Rician noise, mild bias
mr_t2          T2-like (lesion bright)   5.0 x 2.2 x 2.2         thick slices, oblique (tilted 15 degrees)
ct             Hounsfield units          3.0 x 2.5 x 2.5         Gaussian noise, no bias
mr_pd          PD-like, low contrast     3.5 x 2.5 x 2.5         held out: no teacher's site (the default
                                                                  transferal site), strongest bias and noise
=============  ========================  ======================  ==========================================

Folders written by :func:`make_volume_folders` (``<case>.nii.gz``; images float32, masks uint8 class indices)::

    <root>/<site>/images, <root>/<site>/masks     one per teacher site (cases of that site only)
    <root>/transferal/images                       unlabeled: cases of every site, the held-out one included
    <root>/transferal_truth/masks                  the transferal masks, apart: the pipeline never reads them
    <root>/val/images, masks; <root>/test/...      cases of every site (case id = <split>_<site>_<i>)
    <root>/volumes.json                            how they were made: seed, sites, labels, every case

Each case draws from its own generator seeded by (seed, folder, case index), so case i does not depend on how many
cases are written and the same seed gives bit-identical files. A case is rendered on a fine grid (each axis of
the site's grid subdivided so that voxels are at most 1.25 mm), blurred by the site's point-spread function and
sampled on the site's grid, where the noise is added; its mask is the anatomy evaluated at the site's voxel
centres. Image and mask share one geometry.
"""
from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nakt_ray.data.volumes import VolumeGeometry, write_volume
from nakt_ray.demo.synthetic.phantom import (
    GENERATION_LABELS,
    PHANTOM_LABELS,
    draw_anatomy,
    evaluate_anatomy,
    phantom_mask,
)
from nakt_ray.demo.synthetic.render import NOISE_KINDS, Contrast, acquire

__all__ = ["DEFAULT_SHAPE", "HELD_OUT_SITE", "REFERENCE_SPACING_MM", "TEACHER_SITES", "VOLUME_SITES", "VolumeSite",
           "generate_volume", "make_volume_folders", "site_geometry"]

REFERENCE_SPACING_MM = 2.5
DEFAULT_SHAPE = (56, 56, 56)
"""The field of view in voxels of :data:`REFERENCE_SPACING_MM`: (140 mm)^3 by default; each site's grid covers it
with its own spacing."""
FINE_SPACING_MM = 1.25
# ITK's identity direction in nakt's (d, h, w) order: d runs superior (z), h posterior (y), w left (x).
AXIAL = ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0))


@dataclass(frozen=True)
class VolumeSite:
    """How one scanner images the phantom.

    ``contrast``: generation label (``phantom.GENERATION_LABELS``) -> (mean, std), ``unit`` says in what;
    ``spacing`` and ``fwhm_mm`` ``(d, h, w)`` mm: voxel size and the PSF's full width at half maximum (slice
    thickness on ``d``); ``noise_std`` in the contrast's unit; ``bias_strength``: std of the log-gain;
    ``jitter``: relative per-case std of every label's mean; ``tilt_deg``: rotation of the grid about ``w``
    (0: an axial scan; otherwise oblique, and the direction matrix says so).
    """

    name: str
    contrast: Mapping[int, tuple[float, float]]
    unit: str
    spacing: tuple[float, float, float]
    fwhm_mm: tuple[float, float, float]
    noise_std: float
    noise: str = "rician"
    bias_strength: float = 0.0
    jitter: float = 0.05
    tilt_deg: float = 0.0
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"site {self.name!r}: noise={self.noise!r}; expected one of {list(NOISE_KINDS)}")
        missing = sorted(set(range(len(GENERATION_LABELS))) - set(self.contrast))
        if missing:
            raise ValueError(f"site {self.name!r}: contrast has no (mean, std) for generation label(s) {missing}")
        if min(self.spacing) <= 0 or min(self.fwhm_mm) < 0:
            raise ValueError(f"site {self.name!r}: spacing {self.spacing} and fwhm_mm {self.fwhm_mm}; expected "
                             "positive mm values")


# Labels: 0 air, 1 large organ, 2 small organ, 3 vessel, 4 lesion, 5 soft tissue, 6 fat, 7 bone.
VOLUME_SITES: dict[str, VolumeSite] = {s.name: s for s in (
    VolumeSite("mr_t1", {0: (0.0, 0.0), 1: (0.62, 0.03), 2: (0.40, 0.03), 3: (0.14, 0.02), 4: (0.28, 0.03),
                         5: (0.47, 0.04), 6: (0.90, 0.04), 7: (0.22, 0.04)}, "MR a.u.",
               (2.5, 2.5, 2.5), (2.5, 2.5, 2.5), noise_std=0.03, bias_strength=0.2,
               notes="T1-like: fat bright, vessel dark (flow void), lesion darker than its organ"),
    VolumeSite("mr_t2", {0: (0.0, 0.0), 1: (0.30, 0.03), 2: (0.66, 0.04), 3: (0.08, 0.02), 4: (0.88, 0.04),
                         5: (0.42, 0.04), 6: (0.74, 0.04), 7: (0.18, 0.04)}, "MR a.u.",
               (5.0, 2.2, 2.2), (5.0, 2.2, 2.2), noise_std=0.04, bias_strength=0.3, tilt_deg=15.0,
               notes="T2-like: fluid-filled lesion bright; thick slices; oblique acquisition"),
    VolumeSite("ct", {0: (-1000.0, 5.0), 1: (110.0, 10.0), 2: (165.0, 12.0), 3: (230.0, 15.0), 4: (45.0, 10.0),
                      5: (40.0, 15.0), 6: (-100.0, 15.0), 7: (700.0, 80.0)}, "HU",
               (3.0, 2.5, 2.5), (3.0, 2.5, 2.5), noise_std=18.0, noise="gaussian", bias_strength=0.0,
               jitter=0.04, notes="portal-venous CT: contrasted organs and vessel, hypodense lesion"),
    VolumeSite("mr_pd", {0: (0.0, 0.0), 1: (0.56, 0.04), 2: (0.70, 0.04), 3: (0.22, 0.03), 4: (0.76, 0.04),
                         5: (0.62, 0.05), 6: (0.84, 0.05), 7: (0.34, 0.05)}, "MR a.u.",
               (3.5, 2.5, 2.5), (3.5, 2.5, 2.5), noise_std=0.05, bias_strength=0.4,
               notes="PD-like: low tissue contrast, lesion bright; no teacher sees it"),
)}
TEACHER_SITES: tuple[str, ...] = ("mr_t1", "mr_t2", "ct")
HELD_OUT_SITE = "mr_pd"


def _tilt(deg: float) -> np.ndarray:
    """Rotation by ``deg`` in the (d, h) plane, about w (columns = the grid's axes in the anatomical frame)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def site_geometry(site: VolumeSite, shape: Sequence[int] = DEFAULT_SHAPE) -> VolumeGeometry:
    """The site's grid over the field of view ``shape`` x :data:`REFERENCE_SPACING_MM`, centred on the physical
    origin (LPS), axial (ITK identity) and tilted by ``site.tilt_deg``."""
    fov = np.asarray(shape, dtype=float) * REFERENCE_SPACING_MM
    spacing = np.asarray(site.spacing, dtype=float)
    n = np.maximum(4, np.round(fov / spacing)).astype(int)
    direction = np.asarray(AXIAL) @ _tilt(site.tilt_deg)
    origin = -direction @ (spacing * (n - 1) / 2.0)
    return VolumeGeometry.create(n, spacing, origin, direction)


def _case_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(stream.encode())], spawn_key=(index,)))


def _jittered(site: VolumeSite, rng: np.random.Generator) -> Contrast:
    """The site's contrast with every label's mean scaled by ``1 + N(0, jitter)`` (one patient, one session)."""
    out = {}
    for label, (mean, std) in sorted(site.contrast.items()):
        scale = 1.0 + site.jitter * float(rng.standard_normal())
        out[label] = (mean + abs(mean) * (scale - 1.0), std)   # as mean * scale, and air stays below fat in HU
    return out


def generate_volume(site: VolumeSite, rng: np.random.Generator, shape: Sequence[int] = DEFAULT_SHAPE
                    ) -> tuple[np.ndarray, np.ndarray, VolumeGeometry]:
    """One case of ``site``: ``(image float32 [D, H, W], mask uint8 [D, H, W], geometry)``; the mask's classes are
    ``phantom.PHANTOM_LABELS``."""
    grid = site_geometry(site, shape)
    anatomy = draw_anatomy(rng, np.asarray(shape, dtype=float) * REFERENCE_SPACING_MM)
    rotation = _tilt(site.tilt_deg)
    factor = np.maximum(1, np.ceil(np.asarray(grid.spacing) / FINE_SPACING_MM - 1e-6)).astype(int)
    fine_shape = np.asarray(grid.shape) * factor
    fine_spacing = np.asarray(grid.spacing) / factor
    # the fine grid has the site grid's extent and centre; its first voxel centre sits inside the first coarse voxel
    fine = VolumeGeometry.create(fine_shape, fine_spacing,
                                 grid.direction_matrix @ (fine_spacing * (1 - fine_shape) / 2.0), grid.direction_matrix)
    labels = evaluate_anatomy(anatomy, fine.shape, fine.spacing, rotation)
    image, g = acquire(labels, fine, _jittered(site, rng), rng=rng, fwhm_mm=site.fwhm_mm, noise_std=site.noise_std,
                       bias_strength=site.bias_strength, noise=site.noise, acquisition_spacing=None,
                       output_shape=grid.shape)
    assert np.allclose(g.affine(), grid.affine(), atol=1e-6), "the fine grid must resample onto the site grid"
    if site.noise == "rician":
        image = np.maximum(image, 0.0)
    mask = phantom_mask(evaluate_anatomy(anatomy, grid.shape, grid.spacing, rotation))
    return image.astype(np.float32), mask, grid


def _write_case(root: Path, folder: str, mask_folder: str, case_id: str, site: VolumeSite,
                rng: np.random.Generator, shape: Sequence[int]) -> dict[str, Any]:
    image, mask, geometry = generate_volume(site, rng, shape)
    write_volume(root / folder / "images" / f"{case_id}.nii.gz", image, geometry)
    write_volume(root / mask_folder / "masks" / f"{case_id}.nii.gz", mask, geometry)
    return {"case_id": case_id, "site": site.name, "shape": list(geometry.shape),
            "spacing": list(geometry.spacing), "classes_present": sorted(int(v) for v in np.unique(mask))}


def make_volume_folders(root: str | Path, *, sites: Sequence[str] = TEACHER_SITES, cases_per_site: int = 8,
                        seed: int = 0, shape: Sequence[int] = DEFAULT_SHAPE, held_out: str = HELD_OUT_SITE,
                        transferal_cases: int = 16, val_cases: int = 4, test_cases: int = 12) -> dict[str, Any]:
    """Write the synthetic 3D data set under ``root`` (layout in the module docstring) and return its summary:
    ``root``, ``labels`` (class names, background first), ``sites`` (teacher site -> folder), ``held_out``,
    ``transferal``, ``transferal_truth``, ``val``, ``test`` (folders) and ``cases`` (folder -> case ids).

    ``sites``: the teacher sites, each a folder of ``cases_per_site`` labeled cases; transferal, val and test
    cycle through ``sites`` + ``held_out`` case by case. ``shape``: the field of view in voxels of
    :data:`REFERENCE_SPACING_MM` (each site's grid covers it at its own spacing). Same arguments, same bytes.
    """
    names = list(sites) + ([held_out] if held_out and held_out not in sites else [])
    unknown = [n for n in names if n not in VOLUME_SITES]
    if unknown:
        raise ValueError(f"unknown site(s) {unknown}; expected names from {sorted(VOLUME_SITES)}")
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape={tuple(shape)}: expected (D, H, W) with every side >= 8")
    for key, n in (("cases_per_site", cases_per_site), ("transferal_cases", transferal_cases),
                   ("val_cases", val_cases), ("test_cases", test_cases), ("seed", seed)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{key}={n!r}: expected a non-negative integer")
    root = Path(root)
    cases: dict[str, list[dict[str, Any]]] = {}
    for name in sites:
        cases[name] = [_write_case(root, name, name, f"{name}_{i:03d}", VOLUME_SITES[name],
                                   _case_rng(seed, name, i), shape) for i in range(cases_per_site)]
    for split, n, mask_folder in (("transferal", transferal_cases, "transferal_truth"), ("val", val_cases, "val"),
                                  ("test", test_cases, "test")):
        cases[split] = []
        for i in range(n):
            site = VOLUME_SITES[names[i % len(names)]]
            cases[split].append(_write_case(root, split, mask_folder, f"{split}_{site.name}_{i:03d}", site,
                                            _case_rng(seed, split, i), shape))
    summary = {
        "generator": "nakt_ray.demo.synthetic.volumes",
        "root": str(root), "seed": int(seed), "shape": [int(s) for s in shape],
        "reference_spacing_mm": REFERENCE_SPACING_MM,
        "labels": list(PHANTOM_LABELS), "generation_labels": list(GENERATION_LABELS),
        "sites": {n: str(root / n) for n in sites}, "held_out": held_out,
        "transferal": str(root / "transferal"), "transferal_truth": str(root / "transferal_truth"),
        "val": str(root / "val"), "test": str(root / "test"),
        "cases": {k: [c["case_id"] for c in v] for k, v in cases.items()},
    }
    meta = dict(summary, site_parameters={n: asdict(VOLUME_SITES[n]) for n in names}, case_details=cases)
    root.mkdir(parents=True, exist_ok=True)
    (root / "volumes.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n")
    return summary
