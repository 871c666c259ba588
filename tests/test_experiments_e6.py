"""Tests for jobs/experiments/e6_teacher_count.py (E6, teacher count, issue 20 point 4): the teachers' bootstraps,
the draws of teachers per T, the fusion weights that pick the drawn teachers' maps, the per-T summary, and the smoke
run end to end as a subprocess (reads ../shared/data/hc18 in place; skipped when absent)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _studies import EXPERIMENTS, HC18, load_study, needs, study_env, study_help

from nakt_ray.fusion import FUSION_RULES

SCRIPT = EXPERIMENTS / "e6_teacher_count.py"
needs_data = needs(HC18 / "masks", "HC18", "E6")


e6 = load_study("e6_teacher_count")


def _split(root: Path, prefix: str, n: int) -> Path:
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            (root / sub / f"{prefix}{i:02d}_HC.png").write_bytes(b"x")
    return root


def test_a_bootstrap_draws_from_every_site_with_replacement_each_draw_a_case_with_its_mask(tmp_path) -> None:
    sites = [_split(tmp_path / s, s[-1], 5) for s in ("site_a", "site_b", "site_c")]
    boot = e6.bootstrap(sites, 30, tmp_path / "b0", seed=0, salt=0)
    images = sorted(p.name for p in (boot / "images").iterdir())
    assert len(images) == 30 and images == sorted(p.name for p in (boot / "masks").iterdir())
    originals = [n.split("_", 1)[1] for n in images]
    assert len(set(originals)) < 30                                  # with replacement: some drawn twice
    assert {o[0] for o in originals} == {"a", "b", "c"}               # from the pooled sites
    first = boot / "images" / images[0]
    assert first.resolve().parent.parent.parent == tmp_path and first.resolve().name == originals[0]
    assert sorted(p.name for p in (e6.bootstrap(sites, 30, tmp_path / "again", 0, 0) / "images").iterdir()) == images
    other = sorted(p.name for p in (e6.bootstrap(sites, 30, tmp_path / "b1", 0, 1) / "images").iterdir())
    assert other != images                                            # each teacher its own draw


def test_draws_are_nested_over_t_and_differ_between_draws_at_every_t_below_the_pool() -> None:
    ts = [1, 2, 3, 4, 6, 8]
    orders = e6.draw_orders(8, ts, 3, seed=0)
    assert orders == e6.draw_orders(8, ts, 3, seed=0) and all(sorted(o) == list(range(8)) for o in orders)
    cells = e6.cells_of(ts, orders, 8)
    assert [(t, d) for t, d, _ in cells if t == 8] == [(8, 0)]      # the whole pool: one cell
    assert len(cells) == 5 * 3 + 1
    for t in (1, 2, 3, 4, 6):
        sets = [tuple(m) for tt, _, m in cells if tt == t]
        assert len(sets) == 3 and len(set(sets)) == 3 and all(len(m) == t for m in sets)
    by = {(t, d): set(m) for t, d, m in cells}
    assert all(by[(1, d)] < by[(2, d)] < by[(4, d)] < by[(6, d)] for d in range(3))   # a draw adds teachers
    with pytest.raises(SystemExit, match="at most 4"):
        e6.draw_orders(4, [1, 2, 4], 5, seed=0)


def test_the_weights_fuse_exactly_the_drawn_teachers_maps() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 2, 4, 4))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    members = [1, 3]
    w = e6.fusion_weights(members, 5)
    assert w == [0.0, 1.0, 0.0, 1.0, 0.0]
    np.testing.assert_allclose(FUSION_RULES["weighted_mean"](probs, w), probs[members].mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(FUSION_RULES["weighted_mean"](probs, e6.fusion_weights([2], 5)), probs[2], atol=1e-6)


def _cell(t: int, d: int, student: float, ens: float, best: float, delta: float) -> dict:
    return {"T": t, "draw": d, "teachers": [f"t{k}" for k in range(t)],
            "dice": {e6.STUDENT: student, e6.ENSEMBLE: ens, e6.BEST: best, e6.MEAN_TEACHER: best - 0.01},
            "deltas": {k: {"delta": delta, "delta_ci": [delta - 0.01, delta + 0.01]} for k in e6.DELTAS}}


def test_summary_averages_over_draws_and_gives_the_ci_only_for_a_single_draw() -> None:
    cells = [_cell(1, 0, 0.80, 0.82, 0.82, -0.02), _cell(1, 1, 0.84, 0.86, 0.86, -0.04),
             _cell(2, 0, 0.85, 0.86, 0.86, -0.01), _cell(2, 1, 0.87, 0.88, 0.86, 0.01),
             _cell(4, 0, 0.864, 0.89, 0.86, 0.0)]
    summary = e6.summarise(list(reversed(cells)))
    assert list(summary) == ["1", "2", "4"] and summary["1"]["draws"] == 2
    assert summary["1"]["dice"][e6.STUDENT] == pytest.approx(0.82)
    assert summary["1"]["dice_per_draw"][e6.ENSEMBLE] == [0.82, 0.86]
    d = summary["1"]["deltas"]["student_vs_ensemble"]
    assert d["mean"] == pytest.approx(-0.03) and d["per_draw"] == [-0.02, -0.04] and d["ci"] is None
    assert summary["4"]["deltas"]["student_vs_best"]["ci"] == [-0.01, 0.01]
    assert e6.saturation(summary, e6.STUDENT) == 2          # T = 2's 0.86 is within 0.005 of T = 4's 0.864
    assert e6.saturation(summary, e6.ENSEMBLE) == 4 and e6.saturation(summary, e6.BEST) == 2


def test_cli_help() -> None:
    proc = study_help(SCRIPT)
    assert proc.returncode == 0 and all(f in proc.stdout for f in ("--smoke", "--reuse", "--t-values", "--draws"))


@needs_data
@pytest.mark.fault  # a system run (the whole study, tiny: ~5 min on 2 busy cores): the tier of its own
def test_smoke_run_end_to_end_and_reuse_skips_the_done_cells(tmp_path) -> None:
    """A pool of four teachers on bootstraps, one annotation, a student per T in 1, 2, 4 on the drawn teachers'
    re-fused maps, the evaluations and the summary; then --reuse finds every cell done and trains nothing."""
    out, run = tmp_path / "out", tmp_path / "run"
    cmd = [sys.executable, str(SCRIPT), "--smoke", "--data", str(HC18), "--run-dir", str(run), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=study_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((out / "e6.json").read_text())
    assert len(result["teachers"]) == 4 and result["cases"]["test"] == 12 and result["cases"]["transferal"] == 10
    assert set(result["summary"]) == {"1", "2", "4"}
    assert [(c["T"], c["draw"], len(c["teachers"])) for c in result["cells"]] == [(1, 0, 1), (2, 0, 2), (4, 0, 4)]
    nested = [set(c["teachers"]) for c in result["cells"]]
    assert nested[0] < nested[1] < nested[2] == set(result["teachers"])
    for c in result["cells"]:
        assert c["best_teacher"] in c["teachers"]
        assert c["student"]["weights"] == [float(n in c["teachers"]) for n in result["teachers"]]
        for v in (*c["dice"].values(), *c["dice_teachers"].values()):
            assert 0.0 <= v <= 1.0
        for x in c["deltas"].values():
            assert -1.0 <= x["delta_ci"][0] <= x["delta"] <= x["delta_ci"][1] <= 1.0
    t1 = result["cells"][0]
    assert t1["dice"][e6.ENSEMBLE] == pytest.approx(t1["dice"][e6.BEST])       # an ensemble of one is that teacher
    for row in result["summary"].values():
        assert row["draws"] == 1 and all(0.0 <= v <= 1.0 for v in row["dice"].values())
        assert row["deltas"]["student_vs_ensemble"]["ci"] is not None
    for n in result["teachers"]:
        assert 0.0 <= result["val_dice_teachers"][n] <= 1.0 and 0.0 <= result["test_teachers"][n]["dice"] <= 1.0
        assert not math.isnan(result["test_teachers"][n]["dice"])
    md = (out / "e6.md").read_text()
    for t in ("1", "2", "4"):
        assert any(line.startswith(f"| {t} | 1 | ") for line in md.splitlines())    # the per-T table's row
    assert "## Cells" in md and "## Teacher pool" in md and (out / "e6.png").stat().st_size > 0
    student_dirs = sorted(p.name for p in (run / "student").iterdir())
    assert student_dirs == ["student_T1_d0", "student_T2_d0", "student_T4_d0"]
    again = subprocess.run([*cmd, "--reuse"], capture_output=True, text=True, timeout=600, env=study_env(),
                           cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    reused = [line for line in again.stdout.splitlines() if line.startswith("E6 cell ")]
    assert len(reused) == 3 and all("done earlier" in line for line in reused)
    assert json.loads((out / "e6.json").read_text())["cells"] == result["cells"]
