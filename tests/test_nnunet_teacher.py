"""nnU-Net v2 results folders as teachers (``nakt_ray/teachers/kinds/nnunet.py``) and whole-image teachers
(``RawTeacher.whole_image`` in ``nakt_ray/teachers/inference.py``).

Real folders are made by nnU-Net's own code in a subprocess (``tests/_nnunet_folder.py``: a tiny synthetic dataset,
``nnUNetv2_plan_and_preprocess``, one short epoch of ``nnUNetTrainer`` per fold; ~30 s per folder on 2 cores), a 2D
configuration with two folds and a 3D one; the teacher's maps are compared with nnU-Net's own predictor on the same
arrays, alone and inside real ``annotate()`` runs (2D images, 3D volumes). Those tests skip when nnunetv2 is not
installed; the folder checks made before nnU-Net is imported, the missing-package error and the whole-image mechanism
run without it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _nnunet_folder import SPACING_3D

from nakt_ray import config
from nakt_ray.errors import ConfigError, TeacherLoadError, TeacherOutputError
from nakt_ray.teachers.description import InferenceOptions, build_description
from nakt_ray.teachers.inference import LoadedTeacher, RawTeacher
from nakt_ray.teachers.registry import load_teacher, source_kind

ROOT = Path(__file__).resolve().parents[1]
HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None
needs_nnunet = pytest.mark.skipif(not HAS_NNUNET, reason="nnunetv2 is not installed (pip install -c constraints.txt "
                                                         "-e '.[nnunet]'): no real nnU-Net folder can be made")
LABELS_2D = ("background", "head", "ventricle")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread in this process while these tests run: on 2 shared, busy cores, nnU-Net's predictor with
    torch's default 2 threads took 45x longer per volume than with 1 (3.2 s against 0.07 s, measured), as the
    annotation actors run it (one thread each)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------------------
# Whole-image teachers (no nnU-Net needed)


class _Recorder:
    """A whole-image forward: probabilities of a fixed rule at the input's size (or ``shrink`` pixels less), and
    what it was handed."""

    def __init__(self, shrink: int = 0):
        self.calls: list[tuple[tuple[int, ...], object]] = []
        self.shrink = shrink

    def __call__(self, x: torch.Tensor, spacing=None) -> torch.Tensor:
        self.calls.append((tuple(x.shape), spacing))
        fg = torch.sigmoid(x[:, :1] - 0.5)
        out = torch.cat([1 - fg, fg], 1)
        return out[..., self.shrink:, :] if self.shrink else out


def _whole_image_teacher(forward, options: InferenceOptions | None = None, size=(16, 16)) -> LoadedTeacher:
    desc = build_description({"labels": ["background", "fg"], "in_channels": 1, "input_size": list(size),
                              "outputs": "probabilities"})
    raw = RawTeacher(forward, desc, "0" * 16, {}, autocast=False, whole_image=True)
    teacher = LoadedTeacher("whole", "mem", "test", raw, torch.device("cpu"), options or InferenceOptions())
    teacher.probe()
    return teacher


def test_a_whole_image_teacher_gets_images_as_they_are_with_their_spacing():
    rec = _Recorder()
    teacher = _whole_image_teacher(rec, InferenceOptions(tta_flips=(-1,)))
    assert rec.calls[0] == ((1, 1, 16, 16), None)  # the probe, at the declared window
    x = torch.rand(2, 1, 37, 53)
    out = teacher.predict(x, spacing=(0.5, 0.7))
    # Not resampled to input_size (16, 16): the forward saw 37 x 53, twice (TTA), with the spacing.
    assert rec.calls[-2:] == [((2, 1, 37, 53), (0.5, 0.7))] * 2
    expected = torch.sigmoid(x - 0.5)
    torch.testing.assert_close(out[:, 1:], expected)
    # A volume for a 2D whole-image teacher: slice by slice, each slice with its two axes' spacing.
    teacher.predict(torch.rand(1, 1, 3, 20, 24), spacing=(2.0, 0.5, 0.7))
    assert rec.calls[-1] == ((3, 1, 20, 24), (0.5, 0.7))


def test_a_whole_image_teacher_must_answer_at_the_images_size_and_tiles_by_itself():
    rec = _Recorder()
    teacher = _whole_image_teacher(rec)
    rec.shrink = 2
    with pytest.raises(TeacherOutputError, match="spatial size"):
        teacher.predict(torch.rand(1, 1, 30, 30))
    with pytest.raises(TeacherLoadError, match="tiles whole images itself.*remove sliding_window"):
        _whole_image_teacher(_Recorder(), InferenceOptions(sliding_window=True))


# ----------------------------------------------------------------------------------------------------------------
# Hand-made folders: detection, consent, the checks made before nnU-Net is imported


def _fake_folder(root: Path, labels: dict | None = None, folds=(0,), dataset: bool = True) -> Path:
    """The files of a results folder, not a model: enough for what is checked before nnunetv2 is imported."""
    folder = root / "Dataset900_Fake" / "nnUNetTrainer__nnUNetPlans__2d"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps({"dataset_name": "Dataset900_Fake", "configurations": {}}))
    if dataset:
        (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "x"}, "file_ending": ".png",
                                                         "labels": labels or {"background": 0, "head": 1}}))
    for f in folds:
        (folder / f"fold_{f}").mkdir()
        (folder / f"fold_{f}" / "checkpoint_final.pth").write_bytes(b"not read before the checks")
    return folder


def test_nnunet_folders_and_yamls_are_detected_and_may_take_trust_pickle(tmp_path):
    folder = _fake_folder(tmp_path)
    spec = tmp_path / "site.yaml"
    spec.write_text(yaml.safe_dump({"nnunet": str(folder), "folds": [0]}))
    for source in (folder, folder.parent, spec):
        assert source_kind(source) == "nnunet"
        config.build(config.TeacherConfig, {"name": "t", "checkpoint": str(source), "trust_pickle": True}, "t")
    other = tmp_path / "plain"
    other.mkdir()
    with pytest.raises(ConfigError, match="nnU-Net folder"):
        config.build(config.TeacherConfig, {"name": "t", "checkpoint": str(other), "trust_pickle": True}, "t")


@pytest.mark.parametrize("case, words", [
    ("no dataset.json", r"dataset.json' does not exist"),
    ("missing fold", r"has no fold_3/checkpoint_final.pth; folds holding checkpoint_final.pth: \['0'\]"),
    ("best only", (r"has no fold_<n>/checkpoint_final.pth; there are \['fold_0/checkpoint_best.pth'\]: choose with "
                   "'checkpoint:'")),
    ("regions", r"defines regions \['tumour'\]"),
    ("gap", r"must give 'background' the value 0 and the other labels 1..K-1"),
    ("raw dataset", r"is an nnU-Net raw dataset \(imagesTr/\)"),
    ("two models", r"holds 2 nnU-Net model folders"),
    ("bad yaml", r"config key 'folds\[0\]'"),
])
def test_bad_folders_are_clear_errors_before_nnunet_runs(tmp_path, case, words):
    labels = {"regions": {"background": 0, "tumour": [1, 2], "edema": 1},
              "gap": {"background": 0, "head": 2}}.get(case)
    folder = _fake_folder(tmp_path, labels=labels, dataset=case != "no dataset.json")
    source = folder
    if case == "missing fold":
        source = tmp_path / "t.yaml"
        source.write_text(yaml.safe_dump({"nnunet": str(folder), "folds": [0, 3]}))
    if case == "bad yaml":
        source = tmp_path / "t.yaml"
        source.write_text(yaml.safe_dump({"nnunet": str(folder), "folds": ["first"]}))
    if case == "best only":
        (folder / "fold_0" / "checkpoint_final.pth").rename(folder / "fold_0" / "checkpoint_best.pth")
    if case == "raw dataset":
        (folder / "imagesTr").mkdir()
    if case == "two models":
        shutil.copytree(folder, folder.parent / "nnUNetTrainer__nnUNetPlans__3d_fullres")
        source = folder.parent
    with pytest.raises(TeacherLoadError, match=words) as info:
        load_teacher("site", source)
    assert "teacher 'site'" in str(info.value)


def test_without_nnunetv2_the_error_says_how_to_install_it(tmp_path):
    folder = _fake_folder(tmp_path)
    code = ("import sys; sys.modules['nnunetv2'] = None\n"  # what an environment without the package sees
            "from nakt_ray.teachers.registry import load_teacher\n"
            f"load_teacher('site', {str(folder)!r})\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode != 0
    assert "TeacherLoadError" in done.stderr and "needs nnunetv2" in done.stderr
    assert "pip install 'nakt-ray[nnunet]'" in done.stderr


# ----------------------------------------------------------------------------------------------------------------
# Real folders made by nnU-Net


def _make_folder(root: Path, dims: int, folds: list[int]) -> Path:
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "_nnunet_folder.py"), str(root), "--dims", str(dims),
                           "--folds", *map(str, folds), "--iterations", "120"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def folder_2d(tmp_path_factory) -> Path:
    if not HAS_NNUNET:
        pytest.skip(needs_nnunet.kwargs["reason"])
    return _make_folder(tmp_path_factory.mktemp("nnunet2d"), 2, [0, 1])


@pytest.fixture(scope="module")
def folder_3d(tmp_path_factory) -> Path:
    if not HAS_NNUNET:
        pytest.skip(needs_nnunet.kwargs["reason"])
    return _make_folder(tmp_path_factory.mktemp("nnunet3d"), 3, [0])


def _transferal(folder: Path) -> Path:
    return folder.parents[2] / "transferal"  # <root>/results/<dataset>/<model folder>


def nnunet_predicts(folder: Path, folds, images: list[np.ndarray], spacing: list[float]) -> list[np.ndarray]:
    """nnU-Net's own prediction: its predictor initialised from the folder as nnU-Net does, on nnU-Net's arrays
    ``(c, x, y, z)`` (a 2D image as ``(c, 1, H, W)``); returns the probabilities ``(K, ...)`` of each."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    with contextlib.redirect_stdout(io.StringIO()):
        predictor = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(folder), use_folds=folds)
    return [predictor.predict_single_npy_array(img.astype(np.float32), {"spacing": list(spacing)}, None, None,
                                               True)[1] for img in images]


def _png_images(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    return [np.asarray(Image.open(p), dtype=np.float32) for p in sorted((_transferal(folder) / "images").glob("*.png"))]


@pytest.mark.fault  # a system run: real nnU-Net folders made by nnU-Net's own commands (~1 min)
def test_a_2d_folder_predicts_what_nnunet_predicts_one_fold_or_two(folder_2d, tmp_path):
    images = _png_images(folder_2d)
    x = torch.from_numpy(np.stack(images))[:, None]  # [B, 1, H, W]
    teacher = load_teacher("site", folder_2d)         # every fold: 0 and 1
    assert teacher.kind == "nnunet" and teacher.labels == LABELS_2D and teacher.whole_image
    assert teacher.details["folds"] == ["0", "1"] and teacher.details["checkpoint_read"] == ["weights_only"]
    both = teacher.predict(x).numpy()
    own = np.stack(nnunet_predicts(folder_2d, None, [img[None, None] for img in images], [999, 1, 1]))[:, :, 0]
    np.testing.assert_allclose(both, own, atol=1e-6)
    # One fold, chosen in a teacher YAML, against nnU-Net's fold 0 alone; averaging two folds changes the maps.
    spec = tmp_path / "fold0.yaml"
    spec.write_text(yaml.safe_dump({"nnunet": str(folder_2d), "folds": [0]}))
    one = load_teacher("site", spec)
    fold0 = one.predict(x).numpy()
    own0 = np.stack(nnunet_predicts(folder_2d, (0,), [img[None, None] for img in images], [999, 1, 1]))[:, :, 0]
    np.testing.assert_allclose(fold0, own0, atol=1e-6)
    assert np.abs(fold0 - both).max() > 1e-3
    assert one.fingerprint != teacher.fingerprint
    # A spacing given by the run is nnU-Net's spacing of the image: half the trained one resamples it.
    half = teacher.predict(x[:2], spacing=(0.5, 0.5)).numpy()
    own_half = np.stack(nnunet_predicts(folder_2d, None, [img[None, None] for img in images[:2]], [999, 0.5, 0.5]))
    np.testing.assert_allclose(half, own_half[:, :, 0], atol=1e-6)
    assert np.abs(half - both[:2]).max() > 1e-3


@pytest.mark.fault  # a system run: real nnU-Net folders made by nnU-Net's own commands (~1 min)
def test_the_fingerprint_covers_plans_dataset_json_and_weights(folder_2d, tmp_path):
    base = load_teacher("site", folder_2d).fingerprint
    copy = shutil.copytree(folder_2d, tmp_path / folder_2d.name)
    assert load_teacher("site", copy).fingerprint == base  # the content, not the path
    for rel in ("plans.json", "dataset.json", "fold_1/checkpoint_final.pth"):
        moved = shutil.copytree(folder_2d, tmp_path / rel.replace("/", "_") / folder_2d.name)
        if rel.endswith(".json"):
            (moved / rel).write_text(json.dumps(json.loads((moved / rel).read_text()), indent=1))
        else:
            checkpoint = torch.load(moved / rel, weights_only=False)
            checkpoint["network_weights"] = {k: v + 1e-3 if v.is_floating_point() else v
                                             for k, v in checkpoint["network_weights"].items()}
            torch.save(checkpoint, moved / rel)
        assert load_teacher("site", moved).fingerprint != base, rel


@pytest.mark.fault  # a system run: real nnU-Net folders made by nnU-Net's own commands (~1 min)
def test_labels_that_do_not_fit_and_code_in_a_folder_are_refused(folder_2d, tmp_path):
    two = shutil.copytree(folder_2d, tmp_path / "two" / folder_2d.name)
    data = json.loads((two / "dataset.json").read_text())
    data["labels"] = {"background": 0, "head": 1}
    (two / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(TeacherLoadError, match=r"names 2 labels \['background', 'head'\] but the weights of fold_0 "
                                               "predict 3 classes"):
        load_teacher("site", two)
    # A checkpoint that pickles a class (here pathlib's) is not loaded without consent; with it, it is.
    pickled = shutil.copytree(folder_2d, tmp_path / "pickled" / folder_2d.name)
    checkpoint = torch.load(pickled / "fold_0" / "checkpoint_final.pth", weights_only=False)
    checkpoint["note"] = Path("anything")
    torch.save(checkpoint, pickled / "fold_0" / "checkpoint_final.pth")
    with pytest.raises(TeacherLoadError, match=r"holds pathlib.*set trust_pickle: true"):
        load_teacher("site", pickled)
    with pytest.warns(UserWarning, match="unpickling"):
        trusted = load_teacher("site", pickled, trust_pickle=True)
    assert "unpickled (trust_pickle)" in trusted.details["checkpoint_read"]
    # plans.json naming something for nnU-Net to import that is not a network: refused, nothing imported.
    code = shutil.copytree(folder_2d, tmp_path / "code" / folder_2d.name)
    plans = json.loads((code / "plans.json").read_text())
    plans["configurations"]["2d"]["architecture"]["network_class_name"] = "nakt_ray_test_never_imported.Net"
    (code / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(TeacherLoadError, match="network_class_name is 'nakt_ray_test_never_imported.Net'.*"
                                               "dynamic_network_architectures"):
        load_teacher("site", code)


@pytest.mark.fault  # a system run: real nnU-Net folders made by nnU-Net's own commands (~1 min)
def test_a_3d_folder_predicts_what_nnunet_predicts_at_the_trained_or_a_given_spacing(folder_3d):
    from nakt_ray.data.volumes import read_volume

    paths = sorted((_transferal(folder_3d) / "images").glob("*.nii.gz"))[:2]
    volumes = [read_volume(p)[0] for p in paths]  # [D, H, W], the files' order: nnU-Net's (SimpleITK) order
    teacher = load_teacher("site", folder_3d)
    assert teacher.spatial_dims == 3 and teacher.labels == ("background", "ball")
    trained = teacher.details["trained_spacing"]
    assert trained == [1.25, 1.0, 2.0]  # (d, h, w): nnU-Net planned it transposed, coarsest axis first
    for spacing in (None, (1.5, 1.2, 2.6)):
        ours = teacher.predict(torch.from_numpy(np.stack(volumes))[:, None], spacing=spacing).numpy()
        own = np.stack(nnunet_predicts(folder_3d, None, [v[None] for v in volumes], list(spacing or trained)))
        np.testing.assert_allclose(ours, own, atol=1e-6)
        assert (ours.argmax(1) == 1).sum() > 0  # the ball is found: the comparison is not of empty maps


# ----------------------------------------------------------------------------------------------------------------
# Annotation runs with an nnU-Net teacher


@pytest.fixture(scope="module")
def annotated_2d(ray_session, folder_2d, tmp_path_factory):
    from nakt_ray.annotation.pipeline import annotate

    tmp = tmp_path_factory.mktemp("nnunet_run2d")
    h, w = _png_images(folder_2d)[0].shape
    raw = {"run_dir": str(tmp / "run"), "data": {"labels": list(LABELS_2D), "transferal": str(_transferal(folder_2d))},
           # the images as they are (size and intensities): nnU-Net gets what its own prediction gets
           "preprocess": {"size": [h, w], "normalize": "none"},
           "teachers": [{"name": "site", "checkpoint": str(folder_2d)}], "annotate": {"pools": "shared"},
           "tracking": {"experiment": "tests", "registered_model": "test-student"}}
    cfg = config.from_dict(raw)
    return cfg, annotate(cfg)


@pytest.mark.fault  # a system run: real nnU-Net folders made by nnU-Net's own commands (~1 min)
def test_an_nnunet_teacher_annotates_as_nnunet_predicts_2d(annotated_2d, folder_2d):
    from nakt_ray.annotation import parquet as ann

    cfg, summary = annotated_2d
    assert summary["annotated"] == 6 and summary["failed"] == 0
    record = ann.read_manifest(cfg.annotations_dir)["teachers"][0]
    assert record["kind"] == "nnunet" and record["details"]["folds"] == ["0", "1"]
    rows = sorted(ann.read_table(cfg.annotations_dir).to_pylist(), key=lambda r: r["case_id"])
    shape = _png_images(folder_2d)[0].shape
    images = [ann.from_bytes([r["image"]], (1, *shape), "float16")[0].astype(np.float32) for r in rows]
    stored = np.stack([ann.from_bytes([r[ann.prob_column("site")]], (3, *shape), "uint8")[0] for r in rows])
    own = np.stack(nnunet_predicts(folder_2d, None, [img[:, None] for img in images], [999, 1, 1]))[:, :, 0]
    assert np.abs(stored / 255.0 - own).max() <= 1 / 255 + 1e-6  # uint8 storage: within one step
    agree = (stored.argmax(1) == own.argmax(1)).mean()
    print(f"2D hard-label agreement with nnU-Net's own prediction: {agree:.6f} of {own.argmax(1).size} pixels")
    assert agree >= 0.999 and len(np.unique(own.argmax(1))) >= 2  # not all background


@pytest.mark.fault  # a system run: real nnU-Net folders made by nnU-Net's own commands (~1 min)
@pytest.mark.parametrize("grid", [None, (2.0, 1.5, 2.5)], ids=["files-grid", "coarser-run-grid"])
def test_an_nnunet_teacher_annotates_volumes_as_nnunet_predicts_3d(ray_session, folder_3d, tmp_path, grid):
    """The run hands nnU-Net each case on the run's grid with that grid's spacing: the files' own grid (the arrays
    nnU-Net reads from the files), or a coarser one than nnU-Net trained at (1.25, 1.0, 2.0), which nnU-Net must
    then resample from (a teacher told no spacing would take the trained one and answer on the wrong scale)."""
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.annotation import volume_store as vs
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.data.volumes import read_volume

    src = _transferal(folder_3d)
    # No reorientation and raw intensities; no resampling (the arrays nnU-Net reads) or to the coarser grid.
    volume = {"spacing": list(grid) if grid else None, "orientation": None, "modality": "none",
              "crop_nonzero": False, "patch_size": [16, 16, 16]}
    raw = {"run_dir": str(tmp_path / "run"), "data": {"labels": ["background", "ball"], "transferal": str(src)},
           "volume": volume, "teachers": [{"name": "site", "checkpoint": str(folder_3d)}],
           "student": {"arch": "unet", "arch_args": {"spatial_dims": 3, "channels": [4, 8], "strides": [2],
                                                     "num_res_units": 0}},
           "tracking": {"experiment": "tests", "registered_model": "test-student"}}
    cfg = config.from_dict(raw)
    out = tmp_path / "ann"
    summary = annotate(cfg, output=str(out))
    assert summary["annotated"] == 6 and summary["failed"] == 0
    table = ann.read_table(out).to_pydict()
    equal = equal_file = total = 0
    for i, case in enumerate(table["case_id"]):
        group = vs.open_case(out, table["store"][i])
        stored = np.asarray(group[vs.teacher_key("site")][...])
        handed = np.asarray(group["image"][...], dtype=np.float32)  # what the run handed the teacher (float16)
        array, geometry = read_volume(src / "images" / f"{case}.nii.gz")
        if grid is None:
            own, own_file = nnunet_predicts(folder_3d, None, [handed, array[None]], list(geometry.spacing))
            equal_file += int((stored.argmax(0) == own_file.argmax(0)).sum())
        else:
            assert handed.shape[1:] != array.shape  # resampled by the run
            own, = nnunet_predicts(folder_3d, None, [handed], list(grid))
            trained, = nnunet_predicts(folder_3d, None, [handed], list(SPACING_3D))
            differ = (own.argmax(0) != trained.argmax(0)).sum()
            assert differ > 0, "the grid's spacing changes nnU-Net's answer, so the test can tell it was passed"
        assert stored.shape == own.shape
        assert np.abs(stored / 255.0 - own).max() <= 1 / 255 + 1e-6  # uint8 storage: within one step
        equal += int((stored.argmax(0) == own.argmax(0)).sum())
        total += own[0].size
    print(f"3D hard-label agreement with nnU-Net's own prediction ({'files' if grid is None else grid} grid): "
          f"{equal / total:.6f} of {total} voxels" + (f" (on the float32 files: {equal_file / total:.6f})"
                                                    if grid is None else ""))
    assert equal / total >= 0.999 and (grid is not None or equal_file / total >= 0.99)
