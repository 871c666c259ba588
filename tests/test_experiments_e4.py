"""Tests for jobs/experiments/e4_label_sets.py (E4, teachers with different label sets): its data (2D axial slices,
each site's masks in that site's own labels), its per-class table, and its smoke run end to end as a subprocess.
The data tests read ../shared/data/brain_labels (skipped when absent), in place, as E4 does."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from _studies import BRAIN, EXPERIMENTS, load_study, needs, study_env, study_help

from nakt_ray.data.readers import list_cases, read_image, read_mask, read_pixel_spacing

SCRIPT = EXPERIMENTS / "e4_label_sets.py"
needs_data = needs(BRAIN / "labels", "brain label maps", "E4")


e4 = load_study("e4_label_sets")


def test_sites_cover_every_class_with_overlap_and_their_own_names() -> None:
    covered = [cls for *_, labels in e4.SITES.values() for _, cls in labels]
    assert set(covered) == set(e4.CLASSES[1:])                        # every student class has a teacher
    assert len(covered) > len(set(covered))                           # and some have two
    lut = e4.site_lut("site_c")                                      # its own order: cerebellum first
    assert e4.own_labels("site_c")[1] == "cerebellum" and lut[e4.CLASSES.index("cerebellum")] == 1
    assert lut[e4.CLASSES.index("white_matter")] == 4 and lut[e4.CLASSES.index("cortex")] == 0


@needs_data
def test_slices_keep_each_sites_own_labels(tmp_path) -> None:
    summary = e4.make_slices(tmp_path, seed=0, sizes={"site_c": 1, "transferal": 1, "val": 1}, every=4,
                             labels_dir=BRAIN)
    assert set(summary["slices"]) == {"site_c", "transferal", "val"} and min(summary["slices"].values()) >= 10
    assert json.loads((tmp_path / "split.json").read_text())["sites"]["site_c"]["labels"] == e4.own_labels("site_c")
    val = list_cases(tmp_path / "val", require_masks=True)
    own = {c.case_id: c for c in list_cases(tmp_path / "val_site_c", require_masks=True)}
    assert len(val) == summary["slices"]["val"] and set(own) == {c.case_id for c in val}
    lut, seen = e4.site_lut("site_c"), np.zeros(len(e4.CLASSES), bool)
    for case in val:                                                  # the same slice, in the site's own labels
        full = read_mask(case.mask_path, len(e4.CLASSES))
        assert full.ndim == 2 and full.any()                          # a 2D axial slice with brain
        assert np.array_equal(read_mask(own[case.case_id].mask_path, 5), lut[full])
        assert np.array_equal(read_image(own[case.case_id].image_path), read_image(case.image_path))
        seen[np.unique(full)] = True
    assert seen.all()                                                 # every class in some slice of the subject
    assert read_pixel_spacing(val[0].image_path) == (2.0, 2.0)        # distances in mm
    site = [read_mask(c.mask_path, 5) for c in list_cases(tmp_path / "site_c", require_masks=True)]
    assert max(int(m.max()) for m in site) == 4                       # only its 4 classes
    assert not (tmp_path / "transferal" / "masks").exists()           # the pipeline never sees them
    truth = list_cases(tmp_path / "transferal_truth", require_masks=True)
    assert {c.case_id for c in truth} == {c.case_id for c in list_cases(tmp_path / "transferal")}


def test_per_class_table_pairs_students_with_covering_teachers_only() -> None:
    cases = ["a", "b", "c", "d"]
    presence = {"a": {0, 1, 2}, "b": {0, 1}, "c": {0, 1, 2}, "d": {0}}
    # a class absent from a slice scores 1.0 when not predicted, 0.0 when predicted (metrics.dice_per_class)
    student = {c: {cls: 0.8 if e4.CLASSES.index(cls) in presence[c] else 1.0 for cls in e4.CLASSES[1:]}
               for c in cases}
    student["d"]["cortex"] = 0.0                                      # predicts cortex where there is none
    upper = {c: {cls: 0.9 if e4.CLASSES.index(cls) in presence[c] else 1.0 for cls in e4.CLASSES[1:]}
             for c in cases}
    teacher = {c: {"white_matter": 0.7} for c in cases}               # covers white matter only
    table = e4.per_class_table({"student_mean": student, e4.UPPER: upper, "basic_unet_a": teacher}, presence,
                               ["student_mean"], ["basic_unet_a", "segresnet_b"])
    wm, cortex = table["white_matter"], table["cortex"]
    assert wm["slices"] == 3 and cortex["slices"] == 2 and table["ventricles"]["slices"] == 0
    assert wm["teachers"] == ["basic_unet_a"] and cortex["teachers"] == []  # no figure for a class it does not cover
    assert "basic_unet_a" not in cortex["models"] and set(cortex["deltas"]["student_mean"]) == {e4.UPPER}
    assert wm["deltas"]["student_mean"]["basic_unet_a"]["mean"] == pytest.approx(0.1)
    assert wm["deltas"]["student_mean"][e4.UPPER]["mean"] == pytest.approx(-0.1)
    assert cortex["false_positive_slices"]["student_mean"] == 0.5     # d, of b and d (the slices without cortex)
    assert cortex["false_positive_slices"][e4.UPPER] == 0.0


def test_cli_help() -> None:
    proc = study_help(SCRIPT)
    assert proc.returncode == 0 and "--smoke" in proc.stdout and "--reuse" in proc.stdout


@needs_data
@pytest.mark.fault  # a system run (the whole study, tiny: 1-3 min on 2 cores): the tier of its own
def test_smoke_run_end_to_end(tmp_path) -> None:
    """The whole study, tiny: three teachers of different label sets annotate, a student of all classes is
    distilled and scored per class against the upper bound and each covering teacher."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--run-dir", str(tmp_path / "run"), "--out",
                           str(out)], capture_output=True, text=True, timeout=900, env=study_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((out / "e4.json").read_text())
    manifest = json.loads((tmp_path / "run" / "annotations" / "manifest.json").read_text())
    assert manifest["labels"] == list(e4.CLASSES)
    for record in manifest["teachers"]:                               # each teacher's classes, mapped by name
        site = next(s for s, v in e4.SITES.items() if v[0] == record["name"])
        assert record["label_map"] == dict(e4.SITES[site][4])
        assert record["classes"] == [0, *sorted(e4.CLASSES.index(c) for _, c in e4.SITES[site][4])]
    for cls, row in result["table"].items():
        covering = [v[0] for v in e4.SITES.values() if cls in dict(v[4]).values()]
        assert sorted(row["teachers"]) == sorted(covering)
        assert set(row["deltas"]["student_mean"]) == {e4.UPPER, "teachers_ensemble", *covering}
    assert set(result["rule_search"]["val_dice"]) == set(e4.RULES)
    report = (out / "e4.md").read_text()
    assert {"student_mean", e4.PARTIAL} <= set(result["students"]) and "## student_partial" in report
    assert "## student_mean" in report and "| hippocampus_amygdala |" in report
    timings = json.loads((tmp_path / "run" / "timings.json").read_text())
    assert {"data_s", "annotate_s", "student_mean_s", "student_partial_s", "upper_bound_s", "evaluate_s"} <= set(
        timings)
