"""Tests for jobs/experiments/e7_small_data.py (E7, small data, issue 21): how a cell draws its images, what each
candidate changes, the per-regime summary and goal check, and the smoke run end to end as a subprocess (reads
../shared/data/hc18 in place; skipped when absent)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _studies import EXPERIMENTS, HC18, load_study, needs, study_env, study_help

from nakt_ray import config

SCRIPT = EXPERIMENTS / "e7_small_data.py"
needs_data = needs(HC18 / "masks", "HC18", "E7")


e7 = load_study("e7_small_data")


def _split(tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "split"
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        for i in range(n):
            (folder / sub / f"{i:03d}_HC.png").write_bytes(b"x")
    return folder


def _names(folder: Path, sub: str = "images") -> set[str]:
    return {p.name for p in (folder / sub).iterdir()}


def test_a_seed_draws_nested_subsets_with_their_masks(tmp_path) -> None:
    split = _split(tmp_path, 40)
    small = e7.draw(split, 12, tmp_path / "s0_12", seed=0, salt=0)
    large = e7.draw(split, 24, tmp_path / "s0_24", seed=0, salt=0)
    assert len(_names(small)) == 12 and _names(small) < _names(large)  # a smaller regime is part of a larger one
    assert _names(small, "masks") == _names(small)                     # each image with its mask
    assert (small / "images" / next(iter(_names(small)))).resolve().parent == (split / "images").resolve()
    again = e7.draw(split, 12, tmp_path / "again", seed=0, salt=0)
    assert _names(again) == _names(small)                               # deterministic
    assert _names(e7.draw(split, 12, tmp_path / "s1", seed=1, salt=0)) != _names(small)    # the seed draws
    assert _names(e7.draw(split, 12, tmp_path / "b", seed=0, salt=1)) != _names(small)     # each split its own
    assert len(_names(e7.draw(split, 60, tmp_path / "all", seed=0, salt=0))) == 40         # cut to what there is


def test_the_default_candidate_is_the_configuration_before_e7_and_steps_the_one_after() -> None:
    d = e7.candidate_overrides("default", 550, "/tta")
    assert d["fusion"]["rule"] == config.FusionConfig().rule == "mean"
    assert d["training"] == {"min_steps": 0, "augment_strength": config.TrainingConfig().augment_strength}
    assert d["student"]["annotations"] is None
    # decision 74: the student's floor became the default, so `steps` is today's configuration
    today = config.from_dict({"teachers": [{"name": "t", "arch": "unet"}]})
    steps = e7.candidate_overrides("steps", today.training.min_steps, "/tta")
    assert steps["fusion"]["rule"] == today.fusion.rule and steps["student"]["annotations"] is None
    assert today.training.min_steps == config.STUDENT_MIN_STEPS == 550
    assert steps["training"] == {"min_steps": 550, "augment_strength": today.training.augment_strength}
    a = e7.candidate_overrides("all", 550, "/tta")
    assert (a["fusion"]["rule"], a["training"]["min_steps"], a["student"]["annotations"]) == ("staple", 550, "/tta")
    assert e7.candidate_overrides("vote", 550, "/tta")["fusion"]["rule"] == "majority_vote"
    assert e7.candidate_overrides("tta", 550, "/tta")["training"]["min_steps"] == 0
    st = e7.candidate_overrides("steps_tta", 550, "/tta")
    assert (st["fusion"]["rule"], st["training"]["min_steps"], st["student"]["annotations"]) == ("mean", 550, "/tta")
    assert e7.parse_regime("12/36") == (12, 36)
    with pytest.raises(SystemExit, match="SITE/TRANSFERAL"):
        e7.parse_regime("12x36")


def _cell(seed: int, best: str, dice: dict[str, float], deltas: dict[str, dict[str, float]]) -> dict:
    return {"regime": "12/36", "seed": seed, "teachers": ["ta", "tb"], "best_teacher": best, "cases": {}, "dice": dice,
            "deltas": {m: {r: {"delta": v} for r, v in refs.items()} for m, refs in deltas.items()}}


def test_summary_averages_over_seeds_with_each_cells_best_teacher_and_checks_the_goal() -> None:
    c0 = _cell(0, "ta", {"ta": 0.80, "tb": 0.70, "teachers_ensemble": 0.82, "student_default": 0.80,
                         "student_steps": 0.83},
               {"teachers_ensemble": {"ta": 0.02}, "student_default": {"teachers_ensemble": -0.02, "ta": 0.0},
                "student_steps": {"teachers_ensemble": 0.01, "ta": 0.03, "student_default": 0.03}})
    c1 = _cell(1, "tb", {"ta": 0.70, "tb": 0.90, "teachers_ensemble": 0.88, "student_default": 0.86,
                         "student_steps": 0.87},
               {"teachers_ensemble": {"tb": -0.02}, "student_default": {"teachers_ensemble": -0.02, "tb": -0.04},
                "student_steps": {"teachers_ensemble": -0.01, "tb": -0.03, "student_default": 0.01}})
    row = e7.summarise([c1, c0], ["default", "steps"])["12/36"]
    assert row["seeds"] == [0, 1]
    assert row["dice"][e7.BEST] == pytest.approx(0.85)           # ta in seed 0, tb in seed 1 (by val)
    assert row["dice_per_seed"]["student_steps"] == [0.83, 0.87]
    steps, default = row["deltas"]["student_steps"], row["deltas"]["student_default"]
    assert steps[e7.ENSEMBLE]["mean"] == pytest.approx(0.0) and steps[e7.BEST]["per_seed"] == [0.03, -0.03]
    assert steps["student_default"]["mean"] == pytest.approx(0.02) and "student_default" not in default
    assert row["goal"]["student_steps"] == {"vs_ensemble": True, "vs_best_teacher": True, "met": True}
    assert row["goal"]["student_default"] == {"vs_ensemble": False, "vs_best_teacher": False, "met": False}
    assert row["ensemble_vs_best"]["mean"] == pytest.approx(0.0)


def test_cli_help() -> None:
    proc = study_help(SCRIPT)
    assert proc.returncode == 0 and "--smoke" in proc.stdout and "--reuse" in proc.stdout and "--seeds" in proc.stdout


@needs_data
@pytest.mark.fault  # a system run (the whole study, tiny: ~4 min on 2 cores): the tier of its own
def test_smoke_run_end_to_end_and_reuse_skips_the_done_cell(tmp_path) -> None:
    """One tiny cell: three teachers with a step floor, two annotation runs (with and without TTA), six students,
    the evaluation and the summary; then --reuse finds the cell done and trains nothing."""
    out, run = tmp_path / "out", tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--data", str(HC18), "--run-dir", str(run), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=study_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((out / "e7.json").read_text())
    (cell,) = result["cells"]
    assert cell["cases"]["site_a"] == 6 and cell["cases"]["transferal"] == 10 and cell["cases"]["test"] == 12
    students = cell["students"]
    assert set(students) == {f"student_{c}" for c in e7.DEFAULT_CANDIDATES}
    assert students["student_default"]["passes"] == 1 and students["student_steps"]["passes"] == 2
    assert students["student_steps"]["steps"] >= result["min_steps"]["student"] > students["student_default"]["steps"]
    assert students["student_tta"]["tta"] and not students["student_vote"]["tta"]
    cell_dir = run / "cells" / "s6-t10" / "seed0"
    for folder, flips in (("annotations", []), ("annotations_tta", [-1, -2])):
        manifest = json.loads((cell_dir / folder / "manifest.json").read_text())
        assert [t["inference"]["tta_flips"] for t in manifest["teachers"]] == [flips] * 3
    row = result["summary"]["6/10"]
    assert set(row["goal"]) == set(students) and {e7.BEST, e7.ENSEMBLE} <= set(row["dice"])
    assert "## Regime 6/10" in (out / "e7.md").read_text() and (out / "e7.png").stat().st_size > 0
    again = subprocess.run([*cmd, "--reuse"], capture_output=True, text=True, timeout=600, env=study_env(),
                           cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    assert "done earlier" in again.stdout
    assert json.loads((out / "e7.json").read_text())["cells"] == [cell]
