"""Evaluation: per-case scoring (Dice, IoU, HD95, NSD) at original size, the report and its files, model labels,
the output rule, and whole runs through Ray Data and the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import make_teacher, tiny_raw_config

from nakt_ray import config
from nakt_ray.annotation import parquet as ann
from nakt_ray.errors import ConfigError
from nakt_ray.evaluation.evaluate import ENSEMBLE, evaluate, model_label, models_from_args, score_batch
from nakt_ray.evaluation.report import FILES, METRICS, check_output, summarize


def test_score_batch_at_original_resolution():
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:20] = 1
    from nakt_ray.data.preprocess import Geometry, preprocess_mask

    geom = Geometry(20, 30, 32, 32, 32, 32, 0, 0)
    small = preprocess_mask(mask, geom)
    perfect = ann.quantize(np.stack([1.0 - small, small]).astype(np.float32))
    wrong = ann.quantize(np.stack([small, 1.0 - small]).astype(np.float32))
    batch = {"case_id": np.array(["c"], object), "error": np.array([""], object),
             "geometry": np.array([json.dumps(geom.to_dict())], object), "mask": np.array([mask.tobytes()], object),
             "mask_shape": np.array([[20, 30]]), "prob__good": perfect[None], "prob__bad": wrong[None]}
    out = score_batch(batch, models=["good", "bad"], ensemble=["good", "bad"], num_classes=2)
    assert out["dice__good"][0] == pytest.approx(1.0, abs=0.02)
    assert out["dice__bad"][0] == pytest.approx(0.0, abs=0.02)
    assert 0.0 <= out[f"dice__{ENSEMBLE}"][0] <= 1.0
    # boundary metrics at the original 20x30 size, per class ([B, C], background not scored) and as the mean
    assert (out["hd95__good"][0], out["nsd__good"][0]) == (0.0, 1.0)
    assert out["hd95_class__good"].shape == (1, 2) and np.isnan(out["hd95_class__good"][0, 0])
    assert out["hd95__bad"][0] > 5 and out["nsd__bad"][0] < 0.6  # "bad" segments the background
    for m in METRICS:
        np.testing.assert_allclose(out[f"{m}__bad"], out[f"{m}_class__bad"][:, 1])


def _case(mask: np.ndarray, probs: dict[str, np.ndarray], case_id: str = "c") -> dict[str, np.ndarray]:
    """A decoded one-case batch whose preprocessed size equals the original (so ``restore`` is the identity)."""
    from nakt_ray.data.preprocess import Geometry

    h, w = mask.shape
    geom = Geometry(h, w, h, w, h, w, 0, 0)
    return {"case_id": np.array([case_id], object), "error": np.array([""], object),
            "geometry": np.array([json.dumps(geom.to_dict())], object), "mask": np.array([mask.tobytes()], object),
            "mask_shape": np.array([[h, w]]),
            **{ann.prob_column(n): ann.quantize(p.astype(np.float32))[None] for n, p in probs.items()}}


def test_score_batch_three_classes_with_one_missed():
    """Class 2 is in the truth but not in the prediction: its HD95 is undefined (NaN), the case's HD95 is that of
    class 1 alone, its NSD is 0 for class 2."""
    truth = np.zeros((30, 40), np.uint8)
    truth[5:15, 5:15] = 1
    truth[20:26, 25:35] = 2
    pred = np.zeros_like(truth)
    pred[5:15, 8:18] = 1  # class 1 moved 3 px, class 2 missed
    onehot = np.stack([pred == c for c in range(3)]).astype(np.float32)
    out = score_batch(_case(truth, {"m": onehot}), models=["m"], ensemble=[], num_classes=3)
    np.testing.assert_allclose(out["hd95_class__m"][0, 1:], [3.0, np.nan])
    assert out["hd95__m"][0] == pytest.approx(3.0)
    assert out["nsd_class__m"][0, 2] == 0.0 and out["nsd__m"][0] == pytest.approx(out["nsd_class__m"][0, 1] / 2)
    assert out["dice_class__m"][0, 2] == 0.0 and out["dice__m"][0] == pytest.approx(0.7 / 2)


def test_score_batch_in_mm_uses_each_case_pixel_size():
    """The same 3-px shift along the columns is 3 px, or 1.5 mm at 0.5 mm columns (2 mm rows do not enter)."""
    truth = np.zeros((30, 40), np.uint8)
    truth[5:15, 5:15] = 1
    pred = np.zeros_like(truth)
    pred[5:15, 8:18] = 1
    batch = _case(truth, {"m": np.stack([pred == 0, pred == 1]).astype(np.float32)})
    batch["spacing"] = np.array([[2.0, 0.5]])
    px = score_batch(batch, models=["m"], ensemble=[], num_classes=2)
    mm = score_batch(batch, models=["m"], ensemble=[], num_classes=2, in_mm=True)
    assert px["hd95__m"][0] == pytest.approx(3.0) and mm["hd95__m"][0] == pytest.approx(1.5)
    np.testing.assert_allclose(px["dice__m"], mm["dice__m"])


def _rows(n: int, rng: np.random.Generator) -> list[dict]:
    """Scored cases of models "a" and "b" on 3 classes; HD95 of class 2 undefined in every third case."""
    rows = []
    for i in range(n):
        row = {"case_id": f"case{i:02d}"}
        for name in ("a", "b"):
            for m in METRICS:
                per_class = rng.random(3) * (20 if m == "hd95" else 1)
                per_class[0] = np.nan if m in ("hd95", "nsd") else per_class[0]
                if m == "hd95" and i % 3 == 0:
                    per_class[2] = np.nan
                row[f"{m}_class__{name}"] = per_class
                row[f"{m}__{name}"] = np.nanmean(per_class[1:])
        rows.append(row)
    return rows


def test_summary_is_the_same_whatever_the_row_order_and_follows_the_seed():
    """Ray Data returns rows in an order that changes between runs; the bootstrap must not see it."""
    rows = _rows(30, np.random.default_rng(0))
    labels = ["background", "liver", "tumour"]
    first = summarize(rows, ["a", "b"], labels)
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    assert json.dumps(summarize(shuffled, ["a", "b"], labels)) == json.dumps(first)
    other_seed = summarize(rows, ["a", "b"], labels, seed=1)
    assert other_seed["a"]["dice"] == first["a"]["dice"] and other_seed["a"]["dice_ci"] != first["a"]["dice_ci"]
    a = first["a"]
    for m in METRICS:  # every metric has its CI, for the class mean and per class
        assert a[f"{m}_ci"][0] <= a[m] <= a[f"{m}_ci"][1]
        assert all(c[f"{m}_ci"][0] <= c[m] <= c[f"{m}_ci"][1] for c in a["classes"].values())
    assert set(a["classes"]) == {"liver", "tumour"} and a["n"] == 30
    # undefined HD95 (every third case of class 2) is counted and left out of the mean
    tumour = a["classes"]["tumour"]
    assert (tumour["hd95_n"], tumour["hd95_undefined"]) == (20, 10)
    assert tumour["hd95"] == pytest.approx(np.mean([r["hd95_class__a"][2] for r in rows[1::3] + rows[2::3]]))
    assert (a["hd95_n"], a["hd95_undefined"]) == (30, 0)


@pytest.mark.parametrize("source, label", [
    ("models:/liver-seg@champion", "liver-seg@champion"),
    ("models:/liver-seg/3", "liver-seg/3"),
    ("runs:/0123abcd/model", "0123abcd"),
    ("runs/demo/teachers/unet_a/model.pt", "unet_a"),
    ("/abs/student/model.pt", "student"),
    ("model.pt", "model"),
    ("s3://bucket/teachers/t2/model.ts", "t2"),
])
def test_model_label(source, label):
    assert model_label(source) == label
    assert models_from_args([source]) == {label: source}


def test_models_from_args_names_and_duplicates():
    assert models_from_args(["best=models:/seg@champion", "s3://b/k=v/model.pt"]) == {
        "best": "models:/seg@champion", "k=v": "s3://b/k=v/model.pt"}  # "=" inside a path is no name
    with pytest.raises(ValueError, match="name them apart with NAME=SOURCE"):
        models_from_args(["a/t1/model.pt", "b/t1/model.pt"])  # one would silently replace the other's row


def test_check_output_refuses_a_non_empty_folder(tmp_path):
    assert check_output(tmp_path / "new") == tmp_path / "new"  # a new folder, or an empty one, is fine
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty")
    held = tmp_path / "held"
    held.mkdir()
    (held / "evaluation.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"not empty \(evaluation.json\); pass --overwrite"):
        check_output(held)
    assert check_output(held, overwrite=True) == held
    with pytest.raises(FileExistsError, match="is a file"):
        check_output(held / "evaluation.json", overwrite=True)


def test_cli_evaluate_refuses_an_earlier_evaluation_before_starting_ray(tmp_path):
    """The demo's evaluation folder is not replaced by a later ``nakt evaluate``: refused at once (exit 2), before
    Ray starts or an MLflow run opens, and left as it was."""
    cfg_path = tmp_path / "run.yaml"
    teacher = {"name": "t1", "checkpoint": str(make_teacher(tmp_path / "t1.pt", "t1"))}
    raw = tiny_raw_config(tmp_path, teachers=[teacher])
    raw["data"]["test"] = str(tmp_path / "test")
    for sub in ("images", "masks"):  # an existing test set: the inputs are checked before the output folder
        (tmp_path / "test" / sub).mkdir(parents=True)
    cfg_path.write_text(yaml.safe_dump(raw))
    earlier = tmp_path / "run" / "evaluation"
    earlier.mkdir(parents=True)
    (earlier / "evaluation.md").write_text("the demo's table\n")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "NAKT_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "nakt_ray.cli", "evaluate", "--config", str(cfg_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"output folder '{earlier}' is not empty (evaluation.md); pass --overwrite" in proc.stderr
    assert (earlier / "evaluation.md").read_text() == "the demo's table\n"
    assert sorted(p.name for p in earlier.iterdir()) == ["evaluation.md"]
    assert not (tmp_path / "run" / "mlflow.db").exists()  # no run was opened
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_evaluate_writes_tables(ray_session, tmp_path, synthetic_dirs):
    cfg = config.from_dict(tiny_raw_config(tmp_path))
    models = {"t1": str(make_teacher(tmp_path / "t1.pt", "t1", seed=1)),
              "t2": str(make_teacher(tmp_path / "t2.pt", "t2", seed=2))}
    report = evaluate(cfg, models, str(synthetic_dirs["mixed"]), tmp_path / "eval", ensemble=["t1", "t2"])
    assert set(report["models"]) == {"t1", "t2", ENSEMBLE}
    for r in report["models"].values():
        assert r["n"] == 6 and 0.0 <= r["dice"] <= 1.0 and r["dice_ci"][0] <= r["dice"] <= r["dice_ci"][1]
        for m in ("iou", "nsd"):  # every metric with its CI, for the class mean and for the class "head"
            assert r[f"{m}_ci"][0] <= r[m] <= r[f"{m}_ci"][1]
            assert r["classes"]["head"][f"{m}_ci"][0] <= r["classes"]["head"][m] <= r["classes"]["head"][f"{m}_ci"][1]
        assert r["hd95_n"] + r["hd95_undefined"] == 6
        assert r["hd95_n"] == 0 or r["hd95_ci"][0] <= r["hd95"] <= r["hd95_ci"][1]
    md = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "| t1 |" in md and "units: px" in md and "| HD95 (px) | NSD at 2 px |" in md
    assert "| t2 | head |" in md and "HD95 undefined" in md  # per class, and the rule for an undefined HD95
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["models"]["t2"]["n"] == 6 and saved["units"] == "px" and saved["bootstrap"]["seed"] == 0
    with open(tmp_path / "eval" / "evaluation_cases.csv") as f:
        header = f.readline().strip().split(",")
    assert {"dice__t1", "hd95__t1", "nsd__teachers_ensemble", "iou__t2__head", "hd95__t2__head"} <= set(header)
    # the same evaluation again: byte for byte the same files (seeded bootstrap over cases in case_id order)
    evaluate(cfg, models, str(synthetic_dirs["mixed"]), tmp_path / "again", ensemble=["t1", "t2"])
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "eval" / name).read_bytes(), name
    with pytest.raises(ConfigError, match=r"teacher 'x' labels \['c1', 'c2'\]"):  # labels the run does not have
        evaluate(cfg, {"x": str(make_teacher(tmp_path / "x.pt", "x", num_classes=3))}, str(synthetic_dirs["mixed"]),
                 tmp_path / "eval2")


def test_model_refs_run_configured_teachers_as_annotation_does(tmp_path):
    from nakt_ray.annotation.pools import TeacherRef, teacher_ref
    from nakt_ray.evaluation.evaluate import model_refs
    from nakt_ray.teachers.description import InferenceOptions

    cfg = config.from_dict(tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "checkpoint": "a.pt", "sliding_window": True, "overlap": 0.5, "tta_flips": [-1], "amp": "none",
         "actors": 2, "batch_size": 3, "num_cpus": 1.0, "num_gpus": 0.5}]))
    t1, student = model_refs(cfg, {"t1": "b.pt", "student": "s.pt"}, batch_size=5)
    assert t1 == teacher_ref(cfg, cfg.teachers[0], "b.pt")  # the annotation pipeline's own conversion
    assert t1.options == InferenceOptions(sliding_window=True, overlap=0.5, tta_flips=(-1,), amp="none")
    assert (t1.checkpoint, t1.actors, t1.batch_size, t1.num_cpus, t1.num_gpus) == ("b.pt", 2, 3, 1.0, 0.5)
    assert student == TeacherRef("student", "s.pt", batch_size=5)  # not a teacher of the run: plain inference
    assert teacher_ref(cfg, cfg.teachers[0]).checkpoint == "a.pt"


def _direct_dice(cfg, path, data, options):
    """Per-case teacher Dice computed without Ray: decode, ``LoadedTeacher.predict`` with ``options``, the stored
    (quantised) maps, then the same scoring as ``evaluate``."""
    import torch

    from nakt_ray.data.datasets import decode_batch
    from nakt_ray.data.readers import list_cases
    from nakt_ray.teachers.registry import load_teacher

    cases = list_cases(data, require_masks=True)
    batch = decode_batch({"case_id": np.array([c.case_id for c in cases], object),
                          "image_path": np.array([c.image_path for c in cases], object),
                          "mask_path": np.array([c.mask_path for c in cases], object)},
                         preprocess=cfg.preprocess, num_classes=2, keep_mask=True)
    teacher = load_teacher("t", path, "cpu", options)
    batch["prob__t"] = ann.quantize(teacher.predict(torch.from_numpy(batch["image"])).numpy())
    dice = score_batch(batch, models=["t"], ensemble=[], num_classes=2)["dice__t"]
    return dict(zip(batch["case_id"], dice))


def test_evaluate_runs_each_teacher_with_its_inference_options(ray_session, tmp_path, synthetic_dirs):
    """A configured teacher is scored as it annotates: with its sliding window and TTA flips. The same file under a
    name that is not a configured teacher runs plainly (resampled, no TTA), and the two give other Dice."""
    import csv

    from nakt_ray.teachers.description import InferenceOptions

    # Input size 16 on 32x32 images: sliding window tiles where plain inference resamples; a random-weight UNet
    # is not flip-symmetric, so the width flip changes its maps too.
    path = str(make_teacher(tmp_path / "t.pt", "t", seed=2, size=(16, 16)))
    cfg = config.from_dict(tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "checkpoint": path, "sliding_window": True, "tta_flips": [-1], "batch_size": 4}]))
    data = str(synthetic_dirs["mixed"])
    evaluate(cfg, {"t1": path, "plain": path}, data, tmp_path / "eval")
    with open(tmp_path / "eval" / "evaluation_cases.csv") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    with_options = _direct_dice(cfg, path, data, InferenceOptions(sliding_window=True, tta_flips=(-1,)))
    without = _direct_dice(cfg, path, data, InferenceOptions())
    assert set(rows) == set(with_options) and len(rows) == 6
    # The options matter on this input (else the test could not fail) ...
    assert max(abs(with_options[c] - without[c]) for c in rows) > 0.03
    for case, row in rows.items():  # ... and evaluate() applies them to the teacher, and only to it
        assert float(row["dice__t1"]) == pytest.approx(with_options[case], abs=0.01), case
        assert float(row["dice__plain"]) == pytest.approx(without[case], abs=0.01), case


def test_cli_evaluate_labels_a_registered_model_and_overwrites_only_when_asked(ray_session, tmp_path,
                                                                                synthetic_dirs, capsys):
    """``--model models:/NAME@ALIAS`` is labelled NAME@ALIAS (in the tables and, made MLflow-safe, in the run's
    metrics); a second run into the same folder is refused; with ``--overwrite`` it gives the same JSON."""
    from mlflow.tracking import MlflowClient

    from nakt_ray import cli, tracking
    from nakt_ray.models.model_file import load_model
    from nakt_ray.training.student import register_student

    raw = tiny_raw_config(tmp_path, teachers=[{"name": "t1", "checkpoint": str(tmp_path / "t1.pt")}])
    raw["data"]["test"] = str(synthetic_dirs["mixed"])
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = config.from_dict(raw)
    seg = make_teacher(tmp_path / "seg.pt", "seg", seed=3)
    with tracking.stage_run(cfg, "train-student"):  # registered as nakt registers its students
        register_student(seg, load_model(seg)[1], "seg", "champion", {})
    file_model = str(make_teacher(tmp_path / "t1" / "model.pt", "t1", seed=1))
    out = tmp_path / "eval"
    argv = ["evaluate", "--config", str(cfg_path), "--model", "models:/seg@champion", "--model", file_model,
            "--output", str(out)]

    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "| seg@champion |" in table and "| t1 |" in table and "| models: |" not in table
    first = (out / "evaluation.json").read_text()
    assert set(json.loads(first)["models"]) == {"seg@champion", "t1"}
    client = MlflowClient(tracking.tracking_uri(cfg))
    experiment = client.get_experiment_by_name("tests").experiment_id
    (run,) = client.search_runs([experiment], "tags.`nakt.stage` = 'evaluate'")
    assert {"dice.seg_champion", "iou.seg_champion", "nsd.seg_champion", "dice.t1"} <= set(run.data.metrics)
    assert sorted(a.path for a in client.list_artifacts(run.info.run_id, "evaluation")) == [
        f"evaluation/{name}" for name in sorted(FILES)]

    (out / "notes.txt").write_text("mine")
    assert cli.main(argv) == 2  # refused: the folder holds an evaluation
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli.main([*argv, "--overwrite"]) == 0
    assert (out / "evaluation.json").read_text() == first  # seeded: the same CIs, byte for byte
    assert (out / "notes.txt").read_text() == "mine"  # --overwrite replaces the evaluation's files, nothing else
