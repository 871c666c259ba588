"""E5 data: MR-like head volumes of four contrasts made from 20 real brain label maps, split by subject.

    .venv/bin/python jobs/experiments/brain_mr.py --out runs/data/brain_mr --seed 0        # whole set: ~30 s
    .venv/bin/python jobs/experiments/brain_mr.py --out runs/data/brain_mr-smoke --smoke   # 6 subjects: ~10 s

Cost, measured on 2 shared CPU cores (load ~1.5 from other work): the whole set, 20 subjects -> 53 volumes
(~100 x 90 x 90 voxels at 2 mm), 28.6 s wall, 158 MiB of .nii.gz (float32 images), 0.43 GiB peak memory;
``--smoke`` (6 subjects, 15 volumes) 10 s. Per image: reading a 256^3 map ~0.4 s, rendering ~0.4 s.

Reads ``../shared/data/brain_labels/labels/subjectNN.nii.gz`` (SynthSeg's 20 training label maps: 256^3 at 1 mm,
FreeSurfer brain labels plus unnamed head tissue; see its SOURCE.txt) through ``read_label_volume``, in place:
nothing of it is copied into the repository. Each map becomes images with the generative model of
``nakt_ray/demo/synthetic/render.py`` (per-label Gaussian intensities, a smooth bias field, blur to the site's
resolution, Rician noise), one contrast family per site (:data:`SITES`):

    site_t1   T1-like (MPRAGE: white matter bright, CSF dark), 1 mm isotropic        teacher site
    site_t2   T2-like (CSF bright, white matter dark), 1 x 1 x 2 mm axial              teacher site
    site_pd   PD-like (low grey/white contrast), 1.3 mm isotropic, noisier             teacher site
    lowres    T1-like spin echo (lower contrast), 1 x 1 x 5 mm axial slices           no teacher's site

Every image is rendered at 1 mm on a crop around the brain (its bounding box + 20 mm), sampled on the site's
acquisition grid where the noise is added, and resampled linearly to 2 mm; masks are the grouped labels (table
:data:`BRAIN_TABLE`: 7 classes + background) resampled to the same 2 mm grid by nearest neighbour. Head tissue
(FreeSurfer's non-brain labels and the unnamed head classes) gets intensities, so images look like head MRI, and is
background in the masks; so is the CSF outside the ventricles (label 24; see the table's comment).

Split by subject (seed, :data:`SPLIT_SIZES`), written under ``--out``:

    site_t1/, site_t2/, site_pd/   images/ + masks/ subjectNN.nii.gz: each teacher's data, its own contrast
    transferal/images/             subjectNN_<site>.nii.gz, every site's contrast; unlabeled
    transferal_truth/masks/        its masks, apart: the pipeline never reads them
    val/images, val/masks          subjectNN_<site>.nii.gz, every site's contrast
    test/<site>/images, masks      subjectNN.nii.gz: each test subject in every contrast, one folder per contrast
    split.json                     subjects per split, classes, the grouping, site parameters, seconds taken
"""
from __future__ import annotations

import argparse
import json
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nakt_ray.data.volumes import VolumeGeometry, read_label_volume, write_volume
from nakt_ray.demo.synthetic.render import acquire, resample

BRAIN_LABELS = Path(__file__).resolve().parents[3] / "shared" / "data" / "brain_labels"
OUTPUT_SPACING_MM = 2.0
CROP_MARGIN_MM = 20.0
CROP_MULTIPLE_MM = 10   # crop extents divisible by 2 mm (the output) and 5 mm (lowres' slices)

CLASSES: tuple[str, ...] = ("background", "white_matter", "cortex", "ventricles", "deep_grey_matter",
                            "cerebellum", "brain_stem", "hippocampus_amygdala")

# The grouping, one row per brain label: (FreeSurfer label, structure, mask class, tissue whose intensity it gets).
# Every label of labels_table.txt is here once; its class is a name of CLASSES ("background" = not a target).
# 24 (CSF) is background: in these maps it is mostly the extra-cerebral CSF sheet between cortex and skull
# (416 ml in subject01 against 66 ml of ventricles), a thin shell at 2 mm whose outer edge is set by non-target
# head classes; the ventricles are the CSF target. 25/57 are not in labels_table.txt (FreeSurfer "Left/Right-
# Lesion", in these maps voxels of the white matter next to the lateral ventricles): white matter, with a
# lesion's intensity.
BRAIN_TABLE: tuple[tuple[int, str, str, str], ...] = (
    (2, "left cerebral white matter", "white_matter", "wm"),
    (41, "right cerebral white matter", "white_matter", "wm"),
    (25, "left lesion (not in labels_table.txt)", "white_matter", "lesion"),
    (57, "right lesion (not in labels_table.txt)", "white_matter", "lesion"),
    (3, "left cerebral cortex", "cortex", "gm"),
    (42, "right cerebral cortex", "cortex", "gm"),
    (4, "left lateral ventricle", "ventricles", "csf"),
    (43, "right lateral ventricle", "ventricles", "csf"),
    (5, "left inferior lateral ventricle", "ventricles", "csf"),
    (44, "right inferior lateral ventricle", "ventricles", "csf"),
    (14, "3rd ventricle", "ventricles", "csf"),
    (15, "4th ventricle", "ventricles", "csf"),
    (24, "CSF (mostly extra-cerebral)", "background", "csf"),
    (10, "left thalamus", "deep_grey_matter", "thalamus"),
    (49, "right thalamus", "deep_grey_matter", "thalamus"),
    (11, "left caudate", "deep_grey_matter", "caudate"),
    (50, "right caudate", "deep_grey_matter", "caudate"),
    (12, "left putamen", "deep_grey_matter", "putamen"),
    (51, "right putamen", "deep_grey_matter", "putamen"),
    (13, "left pallidum", "deep_grey_matter", "pallidum"),
    (52, "right pallidum", "deep_grey_matter", "pallidum"),
    (26, "left accumbens area", "deep_grey_matter", "accumbens"),
    (58, "right accumbens area", "deep_grey_matter", "accumbens"),
    (28, "left ventral DC", "deep_grey_matter", "ventral_dc"),
    (60, "right ventral DC", "deep_grey_matter", "ventral_dc"),
    (7, "left cerebellum white matter", "cerebellum", "cb_wm"),
    (46, "right cerebellum white matter", "cerebellum", "cb_wm"),
    (8, "left cerebellum cortex", "cerebellum", "cb_gm"),
    (47, "right cerebellum cortex", "cerebellum", "cb_gm"),
    (16, "brain-stem", "brain_stem", "brainstem"),
    (17, "left hippocampus", "hippocampus_amygdala", "hippocampus"),
    (53, "right hippocampus", "hippocampus_amygdala", "hippocampus"),
    (18, "left amygdala", "hippocampus_amygdala", "amygdala"),
    (54, "right amygdala", "hippocampus_amygdala", "amygdala"),
)
# Non-target labels below 100 named by SOURCE.txt, with the tissue they look like; every label >= 100 is an
# unnamed head class ("head": each gets its own intensity per site, drawn from the site's head range).
OTHER_TISSUE: dict[int, str] = {0: "air", 30: "vessel", 62: "vessel", 72: "csf", 85: "wm"}

TISSUES = ("wm", "gm", "csf", "lesion", "thalamus", "caudate", "putamen", "pallidum", "accumbens", "ventral_dc",
           "cb_wm", "cb_gm", "brainstem", "hippocampus", "amygdala", "vessel")


@dataclass(frozen=True)
class BrainSite:
    """One contrast family: ``means`` tissue -> mean intensity (0-1 a.u.; air is 0), ``std`` the within-label
    std, ``head_range`` where the unnamed head classes' means are drawn, ``acquisition_mm`` (in-plane, slice)
    voxel and PSF size with slices across the superior-inferior axis, ``noise_std`` Rician noise at that
    acquisition grid, ``bias_strength`` std of the log-gain, ``jitter`` relative per-image std of every mean."""

    name: str
    family: str
    means: dict[str, float]
    head_range: tuple[float, float]
    acquisition_mm: tuple[float, float]
    noise_std: float
    bias_strength: float
    std: float = 0.03
    jitter: float = 0.05


def _means(*values: float) -> dict[str, float]:
    return dict(zip(TISSUES, values, strict=True))


#                         wm    gm   csf  lesn  thal  caud  put   pall  acc   vDC   cbwm  cbgm  bstem hipp  amyg  vess
SITES: dict[str, BrainSite] = {s.name: s for s in (
    BrainSite("site_t1", "T1-like (MPRAGE)",
              _means(0.80, 0.50, 0.12, 0.42, 0.68, 0.55, 0.62, 0.72, 0.56, 0.72, 0.78, 0.50, 0.75, 0.50, 0.52, 0.30),
              (0.15, 0.9), (1.0, 1.0), noise_std=0.04, bias_strength=0.25),
    BrainSite("site_t2", "T2-like (TSE)",
              _means(0.32, 0.50, 0.95, 0.80, 0.40, 0.50, 0.42, 0.32, 0.50, 0.38, 0.33, 0.52, 0.36, 0.56, 0.55, 0.10),
              (0.1, 0.8), (1.0, 2.0), noise_std=0.05, bias_strength=0.3),
    BrainSite("site_pd", "PD-like",
              _means(0.62, 0.78, 0.88, 0.85, 0.70, 0.78, 0.74, 0.66, 0.78, 0.68, 0.62, 0.78, 0.65, 0.80, 0.80, 0.20),
              (0.3, 0.9), (1.3, 1.3), noise_std=0.06, bias_strength=0.3),
    BrainSite("lowres", "T1-like spin echo, thick slices",
              _means(0.70, 0.55, 0.22, 0.45, 0.64, 0.57, 0.60, 0.66, 0.57, 0.65, 0.68, 0.55, 0.66, 0.55, 0.56, 0.30),
              (0.15, 0.95), (1.0, 5.0), noise_std=0.04, bias_strength=0.3),
)}
TEACHER_SITES = ("site_t1", "site_t2", "site_pd")
SPLIT_SIZES: dict[str, int] = {"site_t1": 3, "site_t2": 3, "site_pd": 3, "transferal": 6, "val": 2, "test": 3}
SMOKE_SIZES: dict[str, int] = {"site_t1": 1, "site_t2": 1, "site_pd": 1, "transferal": 1, "val": 1, "test": 1}


def class_lut(top: int = 1024) -> np.ndarray:
    """FreeSurfer label -> class index (uint8 [top]); every label not in :data:`BRAIN_TABLE` is 0."""
    lut = np.zeros(top, np.uint8)
    for label, _, cls, _ in BRAIN_TABLE:
        lut[label] = CLASSES.index(cls)
    return lut


def site_contrast(site: BrainSite, labels_present: np.ndarray, rng: np.random.Generator) -> dict[int, tuple]:
    """Label -> (mean, std) for one image of ``site``: the site's tissue means (the unnamed head classes drawn
    from the site's own generator, the same for every subject), each scaled by ``1 + N(0, jitter)`` from ``rng``."""
    tissue = {label: t for label, _, _, t in BRAIN_TABLE} | OTHER_TISSUE
    head_rng = np.random.default_rng(zlib.crc32(site.name.encode()))
    head = {label: float(head_rng.uniform(*site.head_range)) for label in range(100, 1024)}
    out: dict[int, tuple] = {}
    for label in (int(v) for v in labels_present):
        if label in tissue:
            name = tissue[label]
            mean = 0.0 if name == "air" else site.means[name]
        elif label >= 100:
            mean = head[label]
        else:
            raise ValueError(f"label {label} is neither in BRAIN_TABLE nor a known non-target label; expected the "
                             "label set of ../shared/data/brain_labels (add it to BRAIN_TABLE or OTHER_TISSUE)")
        scale = 1.0 + site.jitter * float(rng.standard_normal())
        out[label] = (mean * scale, 0.0 if mean == 0.0 else site.std * (2.0 if label >= 100 else 1.0))
    return out


def crop_to_brain(labels: np.ndarray, geometry: VolumeGeometry) -> tuple[np.ndarray, VolumeGeometry]:
    """The map on a box around its brain (target classes): the bounding box + :data:`CROP_MARGIN_MM`, extents
    rounded up to :data:`CROP_MULTIPLE_MM`; voxels outside the file are background."""
    brain = class_lut()[labels] > 0
    spacing = np.asarray(geometry.spacing)
    lo = np.array([np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != ax)))[[0, -1]] for ax in range(3)])
    size = np.ceil(((lo[:, 1] - lo[:, 0] + 1) * spacing + 2 * CROP_MARGIN_MM) / CROP_MULTIPLE_MM) * CROP_MULTIPLE_MM
    size = np.round(size / spacing).astype(int)
    start = (lo[:, 0] + lo[:, 1] + 1) // 2 - size // 2
    out = np.zeros(tuple(size), labels.dtype)
    src = [slice(max(0, s), min(n, s + k)) for s, k, n in zip(start, size, labels.shape, strict=True)]
    dst = [slice(r.start - s, r.stop - s) for r, s in zip(src, start, strict=True)]
    out[tuple(dst)] = labels[tuple(src)]
    origin = geometry.affine() @ np.append(start.astype(float), 1.0)
    return out, VolumeGeometry.create(size, spacing, origin[:3], geometry.direction_matrix)


def render_subject(labels: np.ndarray, geometry: VolumeGeometry, site: BrainSite, rng: np.random.Generator
                   ) -> tuple[np.ndarray, np.ndarray, VolumeGeometry]:
    """One image of a cropped 1 mm map in ``site``'s contrast: ``(image float32, mask uint8, geometry)`` on the
    2 mm grid of the same extent."""
    slice_axis = int(np.argmax(np.abs(geometry.direction_matrix[2])))   # the array axis closest to S-I (LPS z)
    inplane, thick = site.acquisition_mm
    acq = tuple(thick if a == slice_axis else inplane for a in range(3))
    extent = np.asarray(geometry.shape) * np.asarray(geometry.spacing)
    out_shape = np.maximum(1, np.round(extent / OUTPUT_SPACING_MM)).astype(int)
    contrast = site_contrast(site, np.flatnonzero(np.bincount(labels.ravel())), rng)
    image, grid = acquire(labels, geometry, contrast, rng=rng, fwhm_mm=acq, noise_std=site.noise_std,
                          bias_strength=site.bias_strength, noise="rician",
                          acquisition_spacing=None if acq == tuple(geometry.spacing) else acq, output_shape=out_shape)
    nearest, _ = resample(labels, geometry, shape=out_shape, nearest=True)
    return image, class_lut()[nearest], grid


def split_subjects(subjects: list[str], seed: int, sizes: dict[str, int]) -> dict[str, list[str]]:
    """Subjects shuffled with ``seed`` and cut in the order of ``sizes``; the rest is ``unused``."""
    if sum(sizes.values()) > len(subjects):
        raise ValueError(f"split sizes {sizes} need {sum(sizes.values())} subjects; {len(subjects)} found")
    order = [subjects[i] for i in np.random.default_rng(seed).permutation(len(subjects))]
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = sorted(order[start:start + n])
        start += n
    out["unused"] = sorted(order[start:])
    return out


def make_brain_set(out: str | Path, *, seed: int = 0, labels_dir: str | Path = BRAIN_LABELS,
                   sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """Write the E5 data set under ``out`` (layout in the module docstring) and return what ``split.json``
    holds. ``sizes``: subjects per split (keys of :data:`SPLIT_SIZES`; missing keys mean 0)."""
    t0 = time.perf_counter()
    sizes = {k: int((sizes if sizes is not None else SPLIT_SIZES).get(k, 0)) for k in SPLIT_SIZES}
    maps = sorted((Path(labels_dir) / "labels").glob("subject*.nii.gz"))
    if not maps:
        raise SystemExit(f"no label maps at {Path(labels_dir) / 'labels'} (expected subjectNN.nii.gz)")
    split = split_subjects([p.name.removesuffix(".nii.gz") for p in maps], seed, sizes)
    out = Path(out)
    written: list[str] = []

    def save(folder: Path, case: str, image: np.ndarray, grid: VolumeGeometry, mask: np.ndarray,
             mask_folder: Path) -> None:
        write_volume(folder / "images" / f"{case}.nii.gz", image, grid)
        write_volume(mask_folder / "masks" / f"{case}.nii.gz", mask, grid)
        written.append(f"{folder.name}/{case}")

    for split_name, subjects in split.items():
        for subject in subjects if split_name != "unused" else ():
            labels, geometry = crop_to_brain(*read_label_volume(Path(labels_dir) / "labels" / f"{subject}.nii.gz"))
            number = int(subject.removeprefix("subject"))
            rng_of = {s: np.random.default_rng([seed, number, zlib.crc32(s.encode())]) for s in SITES}
            if split_name in TEACHER_SITES:
                image, mask, grid = render_subject(labels, geometry, SITES[split_name], rng_of[split_name])
                save(out / split_name, subject, image, grid, mask, out / split_name)
                continue
            for site in SITES:
                image, mask, grid = render_subject(labels, geometry, SITES[site], rng_of[site])
                if split_name == "transferal":
                    save(out / "transferal", f"{subject}_{site}", image, grid, mask, out / "transferal_truth")
                elif split_name == "val":
                    save(out / "val", f"{subject}_{site}", image, grid, mask, out / "val")
                else:
                    save(out / "test" / site, subject, image, grid, mask, out / "test" / site)
    seconds = time.perf_counter() - t0
    summary = {
        "seed": seed, "labels_dir": str(labels_dir), "subjects": split, "sizes": sizes,
        "classes": list(CLASSES), "output_spacing_mm": OUTPUT_SPACING_MM,
        "grouping": {c: [row[0] for row in BRAIN_TABLE if row[2] == c] for c in CLASSES},
        "other_tissue": {str(k): v for k, v in OTHER_TISSUE.items()},
        "sites": {k: asdict(v) for k, v in SITES.items()}, "teacher_sites": list(TEACHER_SITES),
        "folders": {"teachers": {s: str(out / s) for s in TEACHER_SITES}, "transferal": str(out / "transferal"),
                    "transferal_truth": str(out / "transferal_truth"), "val": str(out / "val"),
                    "test": {s: str(out / "test" / s) for s in SITES}},
        "volumes": len(written), "seconds": round(seconds, 1),
        "bytes": sum(p.stat().st_size for p in out.rglob("*.nii.gz")),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "split.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/data/brain_mr", help="folder to write (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="split and rendering seed (default 0)")
    p.add_argument("--labels-dir", default=str(BRAIN_LABELS), help="default ../shared/data/brain_labels")
    p.add_argument("--smoke", action="store_true", help="one subject per split (6 subjects)")
    args = p.parse_args(argv)
    summary = make_brain_set(args.out, seed=args.seed, labels_dir=args.labels_dir,
                             sizes=SMOKE_SIZES if args.smoke else SPLIT_SIZES)
    print(json.dumps(summary["subjects"], indent=1))
    print(f"{summary['volumes']} volumes ({summary['bytes'] / 2**20:.0f} MiB) in {summary['seconds']:.0f} s; "
          f"written {args.out}/ (split in {args.out}/split.json)")


if __name__ == "__main__":
    main()
