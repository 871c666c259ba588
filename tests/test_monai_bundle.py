"""MONAI bundles as teachers (``nakt_ray/teachers/kinds/monai_bundle.py``): real bundle folders written here (metadata
with channel_def, an inference config with a MONAI UNet, preprocessing and a SlidingWindowInferer, weights saved
from that network), and their zips, loaded through the registry and compared with running the network directly
with the same preprocessing and inferer; a bundle teaching in a real ``annotate()``; the errors.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_scripted_teacher, tiny_raw_config

from nakt_ray.errors import TeacherLoadError
from nakt_ray.teachers.description import InferenceOptions
from nakt_ray.teachers.registry import load_teacher, source_kind

LABELS = ("background", "head", "ventricle")
ROI = {2: [32, 24], 3: [16, 16, 8]}  # MONAI's (x, y[, z]) order: the teacher's input_size is the reverse
NET = {"_target_": "UNet", "in_channels": 1, "channels": [4, 8], "strides": [2], "num_res_units": 0}
INTENSITY = {2: {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0},
             3: {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1.0, "a_max": 2.0, "b_min": 0.0,
                 "b_max": 1.0, "clip": True}}


def bundle_config(dims: int, labels: tuple[str, ...] = LABELS, roi: list[int] | None = None) -> dict:
    """An inference config laid out as the Model Zoo's are, with parts a teacher never builds (device, network,
    imports, postprocessing, evaluator) next to the ones it does."""
    transforms = [{"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"}]
    if dims == 3:
        transforms += [{"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                       {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.25, 2.0], "mode": "bilinear"}]
    transforms += [INTENSITY[dims], {"_target_": "EnsureTyped", "keys": "image"}]
    return {
        "imports": ["$import glob", "$import os"],
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {**NET, "spatial_dims": dims, "out_channels": len(labels)},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi or ROI[dims], "sw_batch_size": 2,
                    "overlap": 0.5, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "network": "@network"},
        "run": ["$@evaluator.run()"],
    }


def bundle_metadata(dims: int, labels: tuple[str, ...] = LABELS) -> dict:
    return {"name": f"tiny_{dims}d", "version": "0.1.0", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": ROI[dims]}},
        "outputs": {"pred": {"type": "image", "num_channels": len(labels), "spatial_shape": ROI[dims],
                             "channel_def": {str(i): name for i, name in enumerate(labels)}}}}}


def network(dims: int, classes: int = len(LABELS), channels: list[int] | None = None, seed: int = 0):
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    args = {k: v for k, v in NET.items() if k != "_target_"}
    return UNet(**{**args, "channels": channels or args["channels"]}, spatial_dims=dims, out_channels=classes).eval()


def write_bundle(root: Path, dims: int = 2, *, labels: tuple[str, ...] = LABELS, roi: list[int] | None = None,
                 edit: Callable[[dict, dict], None] | None = None, weights: torch.nn.Module | None = None,
                 config_format: str = "json") -> Path:
    """A bundle folder: configs/metadata.json, configs/inference.json (or .yaml), models/model.pt (a fixed-seed
    UNet's state dict); ``edit(config, metadata)`` changes the configs before they are written."""
    config, meta = bundle_config(dims, labels, roi), bundle_metadata(dims, labels)
    if edit is not None:
        edit(config, meta)
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    dump = json.dumps(config, indent=2) if config_format == "json" else yaml.safe_dump(config)
    (root / "configs" / f"inference.{config_format}").write_text(dump)
    torch.save((weights or network(dims, len(labels))).state_dict(), root / "models" / "model.pt")
    return root


def zip_bundle(folder: Path) -> Path:
    """The bundle zipped as the Model Zoo ships it: one top folder named after the bundle."""
    return Path(shutil.make_archive(str(folder.parent / f"{folder.name}_v0.1.0"), "zip", root_dir=folder.parent,
                                    base_dir=folder.name))


def direct(x: torch.Tensor, net: torch.nn.Module, dims: int, roi: list[int]) -> torch.Tensor:
    """The bundle's pipeline written out by hand on nakt's ``[B, C, (D,) H, W]``: into MONAI's (x, y[, z]) axis
    order, the intensity transform per image, the SlidingWindowInferer, softmax, and back."""
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import ScaleIntensity, ScaleIntensityRange

    order = (0, 1, *range(x.ndim - 1, 1, -1))
    xm = x.permute(order)
    scale = (ScaleIntensity(minv=0.0, maxv=1.0) if dims == 2
             else ScaleIntensityRange(a_min=-1.0, a_max=2.0, b_min=0.0, b_max=1.0, clip=True))
    xm = torch.stack([torch.as_tensor(scale(img)) for img in xm])
    with torch.no_grad():
        out = SlidingWindowInferer(roi_size=roi, sw_batch_size=2, overlap=0.5, mode="gaussian")(xm, net)
    return torch.as_tensor(out).softmax(1).permute(order)


def test_a_2d_bundle_folder_and_its_zip_predict_what_the_bundle_does(tmp_path):
    folder = write_bundle(tmp_path / "tiny_2d", 2)
    archive = zip_bundle(folder)
    assert source_kind(folder) == source_kind(archive) == "monai_bundle"
    teacher = load_teacher("b2", folder)
    assert teacher.kind == "monai_bundle" and teacher.labels == LABELS and teacher.outputs == "logits"
    assert teacher.input_size == (24, 32) and teacher.in_channels == 1  # (H, W): roi_size [32, 24] reversed
    assert teacher.preprocess is not None and teacher.preprocess.normalize == "none"
    assert teacher.details["preprocessing_applied"] == ["ScaleIntensityd", "EnsureTyped"]
    assert teacher.details["preprocessing_left_to_run"] == ["LoadImaged", "EnsureChannelFirstd"]
    assert teacher.details["inferer"]["roi_size"] == [32, 24] and "trusted_code" not in teacher.details
    net = network(2)
    net.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 24, 32, generator=gen) * 3 + 1
    assert (teacher.predict(x) - direct(x, net, 2, ROI[2])).abs().max() < 1e-5
    # A larger image through the bundle's model itself: the inferer really tiles it (40 x 56 in windows of 24 x 32).
    big = torch.randn(2, 1, 40, 56, generator=gen)
    with torch.no_grad():
        assert (teacher.module(big).softmax(1) - direct(big, net, 2, ROI[2])).abs().max() < 1e-5
    zipped = load_teacher("b2z", archive)
    assert zipped.fingerprint == teacher.fingerprint and len(teacher.fingerprint) == 16
    assert torch.equal(zipped.predict(x), teacher.predict(x))
    other = write_bundle(tmp_path / "other", 2, weights=network(2, seed=5))
    assert load_teacher("o", other).fingerprint != teacher.fingerprint  # the weights are part of it
    # The same network as models/model.ts (the Model Zoo ships both): loaded without building network_def.
    (other / "models" / "model.pt").unlink()
    torch.jit.script(net).save(str(other / "models" / "model.ts"))
    scripted = load_teacher("ts", other)
    assert scripted.details["weights_file"] == "models/model.ts"
    assert (scripted.predict(x) - teacher.predict(x)).abs().max() < 1e-5


def test_a_3d_bundle_predicts_what_the_bundle_does_and_says_its_geometry(tmp_path):
    folder = write_bundle(tmp_path / "tiny_3d", 3, config_format="yaml")
    teacher = load_teacher("b3", zip_bundle(folder))
    assert teacher.details["config_file"] == "configs/inference.yaml"
    assert teacher.input_size == (8, 16, 16) and teacher.spatial_dims == 3
    assert teacher.volume is not None and teacher.volume.spacing == (2.0, 1.25, 1.5)  # pixdim (x, y, z) reversed
    assert teacher.volume.orientation == "RAS" and teacher.volume.modality == "none"
    assert set(teacher.details["preprocessing_left_to_run"]) == {"LoadImaged", "EnsureChannelFirstd", "Orientationd",
                                                                 "Spacingd"}
    net = network(3)
    net.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 8, 16, 16, generator=gen)
    assert (teacher.predict(x) - direct(x, net, 3, ROI[3])).abs().max() < 1e-5
    big = torch.randn(1, 1, 12, 20, 18, generator=gen)
    with torch.no_grad():
        assert (teacher.module(big).softmax(1) - direct(big, net, 3, ROI[3])).abs().max() < 1e-5
    # Tiled by the run (sliding_window: true): each window goes through the bundle's pipeline on its own.
    tiled = load_teacher("b3t", folder, options=InferenceOptions(sliding_window=True, overlap=0.5))
    probs = tiled.predict(big)
    assert probs.shape == (1, 3, 12, 20, 18) and (probs.sum(1) - 1).abs().max() < 1e-4


def _drop_channel_def(config: dict, meta: dict) -> None:
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]


def _two_names(config: dict, meta: dict) -> None:
    pred = meta["network_data_format"]["outputs"]["pred"]
    pred["channel_def"] = {"0": "background", "1": "head"}
    del pred["num_channels"]


def _torch_transform(config: dict, meta: dict) -> None:
    config["preprocessing"]["transforms"].append({"_target_": "torch.nn.Identity"})


def _monai_loader(config: dict, meta: dict) -> None:
    config["preprocessing"]["transforms"].append({"_target_": "monai.utils.module.instantiate", "__path": "os.getcwd",
                                                  "__mode": "default"})


def _sigmoid(config: dict, meta: dict) -> None:
    config["postprocessing"]["transforms"][0] = {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}


def _no_inference_config(config: dict, meta: dict) -> None:
    config.clear()


ERRORS = [
    # (edit, weights, what the message must say)
    (_drop_channel_def, None, ["metadata.json", "network_data_format.outputs.pred.channel_def", "background first"]),
    (_two_names, None, ["channel_def names 2 channels", "returns 3"]),
    (None, "wider", ["model.pt", "does not fit the network_def", "size mismatch"]),
    (_torch_transform, None, ["runs code outside MONAI", "torch.nn.Identity", "trust_pickle: true"]),
    (_monai_loader, None, ["runs code outside MONAI", "monai.utils.module", "trust_pickle: true"]),
    (_sigmoid, None, ["sigmoid", "multi-label"]),
]


@pytest.mark.parametrize("edit, weights, words", ERRORS, ids=["no-channel-def", "channels-vs-network",
                                                              "weights-do-not-fit", "torch-target", "monai-loader",
                                                              "sigmoid"])
def test_bad_bundles_are_clear_errors(tmp_path, edit, weights, words):
    wider = network(2, channels=[8, 16]) if weights == "wider" else None
    folder = write_bundle(tmp_path / "bad", 2, edit=edit, weights=wider)
    with pytest.raises(TeacherLoadError) as info:
        load_teacher("bad", folder)
    message = str(info.value)
    assert message.startswith(f"teacher 'bad' ({folder})")
    for word in words:
        assert word in message, message


def test_code_in_the_parts_a_teacher_builds_needs_trust_and_nothing_runs_before(tmp_path):
    marker = tmp_path / "ran"

    def touching(config: dict, meta: dict) -> None:  # an expression with a call, where network_def reads it
        config["dims"] = f"$open(r'{marker}', 'w').close() or 2"
        config["network_def"]["spatial_dims"] = "@dims"

    folder = write_bundle(tmp_path / "code", 2, edit=touching)
    with pytest.raises(TeacherLoadError, match="expression") as info:
        load_teacher("c", folder)
    assert "dims" in str(info.value) and not marker.exists()
    with pytest.warns(UserWarning, match="trust_pickle: true"):
        trusted = load_teacher("c", folder, trust_pickle=True)
    assert marker.exists() and trusted.details["trusted_code"]
    # Literals, references and arithmetic on them are not code: no trust needed.
    plain = write_bundle(tmp_path / "plain", 2, edit=lambda c, m: c.update(
        widths=[4], network_def={**c["network_def"], "channels": "$@widths + [8]"}))
    assert load_teacher("p", plain).labels == LABELS
    # A Torch transform is loaded when the teacher trusts the bundle.
    with pytest.warns(UserWarning, match="torch.nn.Identity"):
        load_teacher("t", write_bundle(tmp_path / "torch", 2, edit=_torch_transform), trust_pickle=True)


def test_a_bundle_without_weights_or_inference_config_says_what_it_lacks(tmp_path):
    folder = write_bundle(tmp_path / "b", 2)
    (folder / "models" / "model.pt").unlink()
    with pytest.raises(TeacherLoadError, match="no weights"):
        load_teacher("w", folder)
    folder = write_bundle(tmp_path / "c", 2)
    (folder / "configs" / "inference.json").unlink()
    with pytest.raises(TeacherLoadError, match=r"no inference config \(looked for configs/inference.json"):
        load_teacher("i", folder)
    with pytest.raises(TeacherLoadError, match="monai_bundle: a MONAI bundle folder"):
        load_teacher("x", tmp_path / "c" / "models")  # a folder that is no bundle: the kinds are listed


@pytest.fixture(scope="module")
def bundle_run(ray_session, tmp_path_factory):
    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.demo import synthetic

    tmp = tmp_path_factory.mktemp("bundle_run")
    data = synthetic.write_folder(tmp / "data", 4, "mixed", seed=4, size=(40, 48))
    labels = ("background", "head")
    bundle = zip_bundle(write_bundle(tmp / "site_bundle", 2, labels=labels, roi=[32, 32]))
    teachers = [{"name": "bundle", "checkpoint": str(bundle)},
                {"name": "script", "checkpoint": str(make_scripted_teacher(tmp / "t.ts", "t", seed=1))}]
    raw = tiny_raw_config(tmp, teachers=teachers)
    raw["data"] = {"labels": list(labels), "transferal": str(data)}
    raw["annotate"] = {"pools": "shared"}
    cfg = config.from_dict(raw)
    return cfg, annotate(cfg), bundle


def test_a_bundle_teaches_in_a_real_annotation_run(bundle_run):
    from nakt_ray.annotation import parquet as ann

    cfg, summary, bundle = bundle_run
    assert summary["annotated"] == 4 and summary["failed"] == 0
    teacher = load_teacher("bundle", bundle)
    record = {t["name"]: t for t in ann.read_manifest(cfg.annotations_dir)["teachers"]}["bundle"]
    assert record["kind"] == "monai_bundle" and record["fingerprint"] == teacher.fingerprint
    assert record["details"]["preprocessing_applied"] == ["ScaleIntensityd", "EnsureTyped"]
    rows = ann.read_table(cfg.annotations_dir).to_pylist()
    images = np.stack([ann.from_bytes([r["image"]], (1, 32, 32), "float16")[0] for r in rows]).astype(np.float32)
    stored = np.stack([ann.from_bytes([r[ann.prob_column("bundle")]], (2, 32, 32), "uint8")[0] for r in rows])
    local = teacher.predict(torch.from_numpy(images)).numpy() * 255
    # The actors saw the float32 image, the table keeps float16: 2/255 covers both roundings.
    assert np.abs(stored.astype(np.float32) - local).max() <= 2.0
    assert record["details"]["axis_order"].startswith("reversed")
