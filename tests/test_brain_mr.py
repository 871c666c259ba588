"""Tests for jobs/experiments/brain_mr.py (E5's data): the grouping table against the data's own label list, and a
run on real label maps (skipped when ../shared/data/brain_labels is absent)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nakt_ray.data.volumes import grid_difference, read_label_volume, read_volume

REPO = Path(__file__).resolve().parents[1]
BRAIN = REPO / ".." / "shared" / "data" / "brain_labels"
needs_data = pytest.mark.skipif(not (BRAIN / "labels").is_dir(),
                                reason=f"no brain label maps at {BRAIN.resolve()} (the shared data folder of "
                                       "the workplace; E5 reads it there and never copies it)")


def _module():
    spec = importlib.util.spec_from_file_location("brain_mr", REPO / "jobs" / "experiments" / "brain_mr.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


bm = _module()


def test_table_groups_each_label_once_into_eight_classes() -> None:
    labels = [row[0] for row in bm.BRAIN_TABLE]
    assert len(labels) == len(set(labels)) and not set(labels) & set(bm.OTHER_TISSUE)
    assert len(bm.CLASSES) == 8 and bm.CLASSES[0] == "background"
    used = {row[2] for row in bm.BRAIN_TABLE}
    assert used <= set(bm.CLASSES) and used >= set(bm.CLASSES[1:])     # every class gets at least one label
    assert {row[3] for row in bm.BRAIN_TABLE} <= set(bm.TISSUES)
    lut = bm.class_lut()
    assert lut[2] == lut[41] == bm.CLASSES.index("white_matter") and lut[24] == 0 and lut[507] == 0
    for site in bm.SITES.values():
        assert set(site.means) == set(bm.TISSUES)
    assert set(bm.TEACHER_SITES) < set(bm.SITES)


@needs_data
def test_table_covers_labels_table_txt() -> None:
    """Every label named in the data's labels_table.txt is in the table exactly once (background included as a
    decision), and every value of a real map is either in the table or a known non-target label."""
    rows = [ln.split(None, 1) for ln in (BRAIN / "labels_table.txt").read_text().splitlines()]
    named = {int(r[0]) for r in rows if r and r[0].isdigit()}
    assert len(named) == 33
    table = [row[0] for row in bm.BRAIN_TABLE]
    assert all(table.count(label) == 1 for label in named - {0}) and 0 in bm.OTHER_TISSUE
    lab, _ = read_label_volume(BRAIN / "labels" / "subject01.nii.gz")
    values = {int(v) for v in np.flatnonzero(np.bincount(lab.ravel()))}
    assert {v for v in values if v < 100} <= set(table) | set(bm.OTHER_TISSUE)


def test_split_is_by_subject_and_seeded() -> None:
    subjects = [f"subject{i:02d}" for i in range(1, 21)]
    a = bm.split_subjects(subjects, 0, bm.SPLIT_SIZES)
    assert a == bm.split_subjects(subjects, 0, bm.SPLIT_SIZES) != bm.split_subjects(subjects, 1, bm.SPLIT_SIZES)
    flat = [s for v in a.values() for s in v]
    assert sorted(flat) == subjects                                    # each subject in exactly one split
    assert {k: len(v) for k, v in a.items() if k != "unused"} == bm.SPLIT_SIZES
    with pytest.raises(ValueError, match="need"):
        bm.split_subjects(subjects[:5], 0, bm.SPLIT_SIZES)


@needs_data
def test_real_subjects_render_to_plausible_2mm_pairs(tmp_path) -> None:
    summary = bm.make_brain_set(tmp_path, seed=0, labels_dir=BRAIN, sizes={"site_t1": 1, "test": 1})
    assert summary["volumes"] == 1 + len(bm.SITES)
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["subjects"] == summary["subjects"] and split["classes"] == list(bm.CLASSES)
    teacher = split["subjects"]["site_t1"][0]
    test = split["subjects"]["test"][0]
    assert teacher != test and split["seconds"] > 0
    _, ig = read_volume(tmp_path / "site_t1" / "images" / f"{teacher}.nii.gz")
    mask, mg = read_label_volume(tmp_path / "site_t1" / "masks" / f"{teacher}.nii.gz")
    assert grid_difference(ig, mg) is None and np.allclose(ig.spacing, 2.0)
    assert all(70 <= n <= 128 for n in ig.shape)                       # a 1 mm head crop at 2 mm
    counts = np.bincount(mask.ravel(), minlength=len(bm.CLASSES))
    assert np.all(counts[1:] > 0) and len(counts) == len(bm.CLASSES)
    ml = counts * 8 / 1000                                             # 2 mm voxels -> ml
    assert set(np.argsort(ml[1:])[-2:] + 1) == {1, 2}                  # white matter and cortex the largest
    assert 300 < ml[1] + ml[2] < 1300 and 5 < ml[7] < 30               # ml: cerebrum, hippocampus + amygdala
    # the test subject in every contrast, one folder each, one mask for all; the contrasts really differ
    means = {}
    for site in bm.SITES:
        img, g = read_volume(tmp_path / "test" / site / "images" / f"{test}.nii.gz")
        m, mg = read_label_volume(tmp_path / "test" / site / "masks" / f"{test}.nii.gz")
        assert grid_difference(g, mg) is None
        means[site] = [float(img[m == k].mean()) for k in (1, 2, 3)]   # white matter, cortex, ventricles
    assert means["site_t1"][0] > means["site_t1"][1] > means["site_t1"][2]
    assert means["site_t2"][0] < means["site_t2"][1] < means["site_t2"][2]
    # the thick-slice site is smoother across its slices (S-I, array axis h here) than within them
    img, _ = read_volume(tmp_path / "test" / "lowres" / "images" / f"{test}.nii.gz")
    across = np.abs(np.diff(img, axis=1)).mean()
    within = np.abs(np.diff(img, axis=2)).mean()
    assert across < 0.8 * within


def test_cli_help() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "experiments" / "brain_mr.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--out" in proc.stdout and "--seed" in proc.stdout
