"""Tests for nakt_ray/teachers/: each source kind against the original model, the registry (order, duplicates,
unknown sources, a kind registered by a test), every error path (load time and prediction time), sliding window
and flip TTA. Tiny models are built here; MLflow uses a SQLite store under a temporary folder."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY_UNET, make_teacher
from torch import nn

from nakt_ray import zoo
from nakt_ray.errors import TeacherLoadError, TeacherOutputError
from nakt_ray.models.model_file import fingerprint, load_model
from nakt_ray.teachers.description import InferenceOptions, TeacherDescription
from nakt_ray.teachers.inference import RawTeacher
from nakt_ray.teachers.registry import (
    load_teacher,
    register_teacher_source,
    source_kind,
    teacher_source_kinds,
    unregister_teacher_source,
)
from nakt_ray.tracking import TAG_IN_CHANNELS, TAG_INPUT_SIZE, TAG_LABELS, TAG_OUTPUTS, TAG_PREPROCESS

# Tracing a MONAI UNet warns about shape checks that become constants; harmless at a fixed input size.
pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
              pytest.mark.filterwarnings("ignore:ONNX export mode is set to TrainingMode.EVAL:UserWarning")]

SIZE = (32, 32)
LABELS = ["background", "head"]


class ConvNet(nn.Module):
    """Two 3x3 convolutions, no normalisation: fully convolutional, each output pixel sees a 5x5 neighbourhood."""

    def __init__(self, classes: int = 2, stride: int = 1, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, stride=stride), nn.ReLU(),
                                  nn.Conv2d(8, classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Softmaxed(ConvNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).softmax(1)


class AlwaysNaN(ConvNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) * float("nan")


class NaNOnBrightInput(ConvNet):
    """Finite on the load-time probe, NaN once the input exceeds 50: only the per-predict check can catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return torch.where(x.abs().amax() > 50, y * float("nan"), y)


class FlipSymmetric(ConvNet):
    """Equivariant to a width flip by construction: f(flip(x)) = flip(f(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.body(x) + self.body(x.flip([3])).flip([3]))


def softmax_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).softmax(1)


def description(**overrides) -> dict:
    return {"labels": LABELS, "in_channels": 1, "input_size": list(SIZE), "outputs": "logits", **overrides}


def write_scripted(folder: Path, model: nn.Module, desc: dict | None, file: str = "model.ts") -> Path:
    """Save ``model`` as TorchScript with its description YAML beside it (none if ``desc`` is None)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file
    torch.jit.script(model.eval()).save(str(path))
    if desc is not None:
        (folder / f"{file}.yaml").write_text(yaml.safe_dump(desc))
    return path


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    torch.manual_seed(0)
    return zoo.create_model("unet", 1, 2, SIZE, **TINY_UNET).eval()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(3, 1, *SIZE, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------------------------------------------
# Each source gives the original model's probabilities


def test_nakt_model_file(tmp_path, batch):
    path = make_teacher(tmp_path / "a.pt", "a")
    model, spec = load_model(path)
    teacher = load_teacher("a", str(path))
    assert (teacher.kind, teacher.labels, teacher.input_size, teacher.outputs) == ("nakt", spec.labels, SIZE, "logits")
    assert teacher.preprocess == spec.preprocess and teacher.fingerprint == fingerprint(path)
    torch.testing.assert_close(teacher.predict(batch), softmax_of(model, batch), atol=1e-4, rtol=0)
    record = json.loads(json.dumps(teacher.describe()))
    assert record["name"] == "a" and record["details"]["arch"] == "unet" and record["input_size"] == [32, 32]


@pytest.mark.parametrize("form", ["ts_with_sidecar", "pt_archive", "teacher_yaml"])
def test_torchscript(tmp_path, unet, batch, form):
    path = tmp_path / ("model.pt" if form == "pt_archive" else "model.ts")
    torch.jit.trace(unet, torch.zeros(1, 1, *SIZE)).save(str(path))
    if form == "teacher_yaml":
        source = tmp_path / "teacher.yaml"
        source.write_text(yaml.safe_dump(description(file=path.name, preprocess={"normalize": "minmax"})))
    else:
        source = path
        Path(f"{path}.yaml").write_text(yaml.safe_dump(description()))
    teacher = load_teacher("ts", str(source))
    assert teacher.kind == "torchscript" and teacher.labels == tuple(LABELS) and len(teacher.fingerprint) == 16
    if form == "teacher_yaml":  # size and channels of the preprocessing come from the description
        assert (teacher.preprocess.size, teacher.preprocess.normalize, teacher.preprocess.in_channels) == \
            (SIZE, "minmax", 1)
    torch.testing.assert_close(teacher.predict(batch), softmax_of(unet, batch), atol=1e-4, rtol=0)


def test_onnx_dynamic_batch(tmp_path, unet, batch):
    path = tmp_path / "model.onnx"
    # The TorchScript-based exporter takes ~0.4 s here; dynamo=True works as well but takes ~6 s.
    torch.onnx.export(unet, (torch.zeros(1, 1, *SIZE),), str(path), input_names=["image"], output_names=["logits"],
                      opset_version=17, dynamo=False, dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    Path(f"{path}.yaml").write_text(yaml.safe_dump(description()))
    teacher = load_teacher("onnx", str(path))
    assert teacher.kind == "onnx" and teacher.details["input_name"] == "image"
    assert teacher.details["fixed_batch"] is None
    torch.testing.assert_close(teacher.predict(batch), softmax_of(unet, batch), atol=1e-3, rtol=0)


def test_logits_declared_as_logits_and_probabilities_declared_as_probabilities(tmp_path, batch):
    model = Softmaxed()
    teacher = load_teacher("p", str(write_scripted(tmp_path, model, description(outputs="probabilities"))))
    with torch.no_grad():  # no second softmax on a model that already returns probabilities
        torch.testing.assert_close(teacher.predict(batch), model(batch), atol=1e-5, rtol=0)


def test_logits_declared_but_output_sums_to_one_warns(tmp_path):
    with pytest.warns(UserWarning, match="teacher 'p'.*may be probabilities"):
        load_teacher("p", str(write_scripted(tmp_path, Softmaxed(), description())))


# ----------------------------------------------------------------------------------------------------------------
# MLflow: a student nakt registered (its own flavor: weights only, never unpickled), pickled models refused unless
# the teacher trusts them (one with a payload among them), and a trusted pickled model described by its tags, or by
# its run's tags plus the signature


class Payload(ConvNet):
    """Stands in for a model file from an attacker: unpickling it creates ``marker`` (any code could run there)."""

    def __init__(self, marker: Path):
        super().__init__()
        self.marker = str(marker)

    def __reduce_ex__(self, protocol):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory, unet):
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from nakt_ray.config import PreprocessConfig
    from nakt_ray.models.mlflow_format import log_and_register_model
    from nakt_ray.models.model_file import ModelSpec
    from nakt_ray.tracking import use_uri

    root = tmp_path_factory.mktemp("mlflow")
    before = mlflow.get_tracking_uri()
    use_uri(f"sqlite:///{root}/mlflow.db")  # (leaves MLFLOW_TRACKING_URI as it was: later tests read it)
    exp = mlflow.create_experiment("teachers", artifact_location=str(root / "artifacts"))
    example = np.zeros((1, 1, *SIZE), dtype=np.float32)
    with torch.no_grad():
        signature = infer_signature(example, unet(torch.from_numpy(example)).numpy())
    with mlflow.start_run(experiment_id=exp) as described:
        mlflow.pytorch.log_model(unet, name="model", serialization_format="pickle", pip_requirements=["torch"],
                                 registered_model_name="t", signature=signature)
        mlflow.set_tags({TAG_LABELS: json.dumps(["bg", "fg"]), TAG_OUTPUTS: "logits"})  # size: the signature
    with mlflow.start_run(experiment_id=exp) as bare:  # no tags, no signature: nothing gives the input size
        mlflow.pytorch.log_model(unet, name="model", serialization_format="pickle", pip_requirements=["torch"])
    marker = root / "payload-ran"
    with mlflow.start_run(experiment_id=exp):
        mlflow.pytorch.log_model(Payload(marker), name="model", serialization_format="pickle",
                                 pip_requirements=["torch"], registered_model_name="evil", signature=signature)
    marker.unlink(missing_ok=True)  # only a load may create it
    spec = ModelSpec(name="s", arch="unet", arch_args=TINY_UNET, labels=tuple(LABELS),
                     preprocess=PreprocessConfig(size=SIZE), role="student")
    with mlflow.start_run(experiment_id=exp) as student:
        log_and_register_model(unet, spec, "s", "candidate", {"nakt.teachers": "a,b"})
    client = MlflowClient()
    client.set_registered_model_alias("t", "champion", "1")
    client.set_registered_model_alias("evil", "prod", "1")
    for tag, value in {TAG_LABELS: json.dumps(LABELS), TAG_IN_CHANNELS: "1", TAG_INPUT_SIZE: json.dumps(SIZE),
                       TAG_OUTPUTS: "logits", TAG_PREPROCESS: json.dumps({"normalize": "zscore"})}.items():
        for name in ("t", "evil"):
            client.set_model_version_tag(name, "1", tag, value)
    yield {"described": described.info.run_id, "bare": bare.info.run_id, "student": student.info.run_id,
           "marker": marker}
    use_uri(before)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail on any unpickling: pickle's loaders, mlflow.pytorch.load_model, and torch.load without weights_only."""
    import pickle

    import mlflow.pytorch

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for attr in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, attr, refuse)
    monkeypatch.setattr(mlflow.pytorch, "load_model", refuse)
    torch_load = torch.load

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        return torch_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", weights_only_load)


@pytest.mark.parametrize("uri", ["models:/evil@prod", "models:/t@champion", "runs:/{described}/model"])
def test_a_pickled_mlflow_model_is_refused_unless_trusted(mlflow_store, uri):
    uri = uri.format(**mlflow_store)
    with pytest.raises(TeacherLoadError, match=r"(?s)^teacher 'm' .*not nakt's own 'nakt' flavor.*runs any code.*"
                                               r"trust_pickle: true on teacher 'm'"):
        load_teacher("m", uri)
    assert not mlflow_store["marker"].exists(), "the payload ran: the model was unpickled"


def test_a_trusted_pickle_runs_its_payload(mlflow_store):
    """What trust_pickle means: the payload's code runs on load (here it returns no model, so the load fails)."""
    with pytest.warns(UserWarning, match=r"teacher 'm'.*unpickling.*trust_pickle: true"), \
            pytest.raises(TeacherLoadError, match=r"^teacher 'm' .*'NoneType'"):
        load_teacher("m", "models:/evil@prod", trust_pickle=True)
    assert mlflow_store["marker"].exists()
    mlflow_store["marker"].unlink()


@pytest.mark.filterwarnings("ignore:.*trust_pickle:UserWarning")
@pytest.mark.parametrize("uri", ["models:/s@candidate", "models:/s/1", "runs:/{student}/model"])
def test_a_registered_student_is_a_teacher_without_unpickling(mlflow_store, unet, batch, uri, no_unpickling):
    import mlflow

    uri = uri.format(**mlflow_store)
    assert list(mlflow.models.get_model_info(uri).flavors) == ["nakt"]  # no pytorch / python_function pickle
    teacher = load_teacher("stu", uri)
    assert teacher.details["flavor"] == "nakt" and teacher.details["inferred"] == []
    assert teacher.labels == tuple(LABELS) and teacher.input_size == SIZE and teacher.preprocess.size == SIZE
    torch.testing.assert_close(teacher.predict(batch), softmax_of(unet, batch), atol=1e-5, rtol=0)
    with pytest.raises(TeacherLoadError, match="something was unpickled"):  # the guard itself works
        load_teacher("t", "models:/t@champion", trust_pickle=True)


def test_a_nakt_flavor_reads_only_a_file_of_its_own_model(mlflow_store):
    from nakt_ray.errors import CheckpointError
    from nakt_ray.models.mlflow_format import flavor_config, load_registered

    entry, _ = flavor_config("models:/s@candidate")
    for bad in ("../../evil/model.pt", "/etc/passwd", ".."):  # an MLmodel edited to point elsewhere
        with pytest.raises(CheckpointError, match="expected a file name in the model directory"):
            load_registered("models:/s@candidate", entry={**entry, "model_file": bad})
    with pytest.raises(CheckpointError, match="format 'nakt-model' version 99"):
        load_registered("models:/s@candidate", entry={**entry, "format_version": 99})
    with pytest.raises(CheckpointError, match=r"flavors \['python_function', 'pytorch'\], not 'nakt'"):
        load_registered("models:/t@champion")


@pytest.mark.parametrize("uri", ["models:/t@champion", "models:/t/1"])
def test_mlflow_registered_version(mlflow_store, unet, batch, uri):
    with pytest.warns(UserWarning, match="unpickling an MLflow model with flavors"):
        teacher = load_teacher("reg", uri, trust_pickle=True)
    assert teacher.kind == "mlflow" and teacher.labels == tuple(LABELS) and teacher.details["version"] == "1"
    assert teacher.details["inferred"] == [] and teacher.preprocess.size == SIZE
    assert teacher.details["run_id"] == mlflow_store["described"] and len(teacher.fingerprint) == 16
    assert teacher.details["flavor"] == "pytorch (pickle, trusted)"
    torch.testing.assert_close(teacher.predict(batch), softmax_of(unet, batch), atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:.*trust_pickle:UserWarning")
def test_mlflow_run_uses_run_tags_and_signature(mlflow_store, unet, batch):
    teacher = load_teacher("run", f"runs:/{mlflow_store['described']}/model", trust_pickle=True)
    assert teacher.labels == ("bg", "fg") and teacher.input_size == SIZE and teacher.in_channels == 1
    assert teacher.details["inferred"] == ["input_size", "in_channels"] and teacher.preprocess is None
    torch.testing.assert_close(teacher.predict(batch), softmax_of(unet, batch), atol=1e-4, rtol=0)


@pytest.mark.filterwarnings("ignore:.*trust_pickle:UserWarning")
def test_mlflow_without_input_size_names_the_tags(mlflow_store):
    with pytest.raises(TeacherLoadError, match=rf"teacher 'bare'.*{TAG_INPUT_SIZE}"):
        load_teacher("bare", f"runs:/{mlflow_store['bare']}/model", trust_pickle=True)


def test_trust_pickle_is_only_for_mlflow_teachers_and_monai_bundles(tmp_path):
    from nakt_ray import config
    from nakt_ray.errors import ConfigError

    raw = {"run_dir": str(tmp_path), "teachers": [{"name": "a", "trust_pickle": True}]}
    with pytest.raises(ConfigError, match=r"teachers\[0\]\.trust_pickle'.*neither an MLflow URI.*nor a MONAI"):
        config.from_dict(raw)
    for source in ("models:/t@prod", str(tmp_path / "bundle.zip")):
        raw["teachers"][0]["checkpoint"] = source
        assert config.from_dict(raw).teachers[0].trust_pickle is True
    (tmp_path / "bundle" / "configs").mkdir(parents=True)
    raw["teachers"][0]["checkpoint"] = str(tmp_path / "bundle")
    assert config.from_dict(raw).teachers[0].trust_pickle is True
    raw["teachers"][0]["checkpoint"] = "models:/t@prod"
    with pytest.raises(ConfigError, match="trust_pickle"):
        config.from_dict({**raw, "teachers": [{"name": "a", "checkpoint": "models:/t@prod", "trust_pickle": "yes"}]})


# ----------------------------------------------------------------------------------------------------------------
# Errors: each names the teacher


def _scripted(model: nn.Module, **desc) -> Callable[[Path], Path]:
    return lambda folder: write_scripted(folder, model, description(**desc))


def _yaml_source(file: str, **extra) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        write_scripted(folder, ConvNet(), None)
        (folder / "teacher.yaml").write_text(yaml.safe_dump(description(file=file, **extra)))
        return folder / "teacher.yaml"
    return make


def _junk(path: Path) -> Path:
    path.write_bytes(b"not a model")
    return path


ERRORS = [
    ("wrong_class_count", _scripted(ConvNet(), labels=["background", "a", "b"]),
     r"returns 2 classes but its labels declare 3"),
    ("downsampling_model", _scripted(ConvNet(stride=2)), r"spatial size \(16, 16\) for an input of \(32, 32\)"),
    ("logits_declared_probabilities", _scripted(ConvNet(), outputs="probabilities"),
     r"declared probabilities but the output looks like logits"),
    ("nan_output", _scripted(AlwaysNaN()), r"NaN or infinite"),
    ("unknown_yaml_key", _scripted(ConvNet(), colour="blue"), r"unknown config key 'colour'"),
    ("bad_yaml_value", _scripted(ConvNet(), outputs="softmax"), r"'outputs'.*'softmax'"),
    ("missing_yaml", lambda folder: write_scripted(folder, ConvNet(), None), r"no description file"),
    ("missing_model_file", lambda folder: folder / "nowhere.pt", r"'.*nowhere.pt' does not exist"),
    ("yaml_names_missing_file", _yaml_source("gone.ts"), r"gone.ts' does not exist"),
    ("not_a_model", lambda folder: _junk(folder / "junk.pt"),
     r"(?s)cannot be read as a nakt model.*a teacher source is"),
]


@pytest.mark.parametrize("make, match", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_errors_name_the_teacher(tmp_path, make, match):
    source = make(tmp_path)
    with pytest.raises(TeacherLoadError, match=r"^teacher 'bad' \(") as err:
        load_teacher("bad", str(source))
    assert str(source) in str(err.value)
    assert err.match(match)


def test_output_is_checked_on_every_predict(tmp_path, batch):
    teacher = load_teacher("late", str(write_scripted(tmp_path, NaNOnBrightInput(), description())))
    teacher.predict(batch)
    with pytest.raises(TeacherOutputError, match=r"^teacher 'late' \(.*model.ts\): .*NaN") as err:
        teacher.predict(batch + 100)
    assert not isinstance(err.value, TeacherLoadError)  # loading went fine; this batch's output did not


def test_a_wrong_class_count_at_predict_time_is_an_output_error(tmp_path, batch):
    teacher = load_teacher("late", str(write_scripted(tmp_path, ConvNet(), description())))
    teacher._forward = lambda x: x.new_zeros((x.shape[0], 3, *x.shape[-2:]))
    with pytest.raises(TeacherOutputError, match="returns 3 classes but its labels declare 2"):
        teacher.predict(batch)


# ----------------------------------------------------------------------------------------------------------------
# The registry of source kinds


def test_built_in_kinds_and_their_order(tmp_path):
    assert teacher_source_kinds() == ["mlflow", "onnx", "torchscript", "remote", "nnunet", "teacher_yaml",
                                      "monai_bundle", "nakt"]
    path = make_teacher(tmp_path / "a.pt", "a")
    scripted = write_scripted(tmp_path, ConvNet(), description())
    (tmp_path / "teacher.yaml").write_text(yaml.safe_dump(description(file="model.ts")))
    assert [source_kind(s) for s in (path, scripted, tmp_path / "teacher.yaml", "models:/t@champion")] == \
        ["nakt", "torchscript", "torchscript", "mlflow"]  # a teacher YAML is recorded as the kind it names


def test_a_duplicate_kind_raises():
    with pytest.raises(ValueError, match="teacher source kind 'onnx' is already registered"):
        register_teacher_source("onnx", lambda source: False, lambda name, source, device: None, "anything")
    with pytest.raises(ValueError, match="'nope' is not registered; registered kinds: mlflow, onnx"):
        unregister_teacher_source("nope")


@pytest.mark.parametrize("where", ["missing_file", "folder", "unknown_uri"])
def test_an_unknown_source_lists_every_kind_and_what_it_expects(tmp_path, where):
    source, reason = {"missing_file": (str(tmp_path / "gone.pt"), r"file '.*gone.pt' does not exist"),
                      "folder": (str(tmp_path), r"'.*' is a folder, which no teacher source kind reads"),
                      "unknown_uri": ("http://example.org/model", "no teacher source kind reads URIs")}[where]
    with pytest.raises(TeacherLoadError, match=rf"^teacher 'u' \(.*\): {reason}") as err:
        load_teacher("u", source)
    message = str(err.value)
    for kind, expects in [("mlflow", "models:/NAME@ALIAS"), ("onnx", "a .onnx file with model.onnx.yaml beside it"),
                          ("torchscript", "TorchScript"), ("teacher_yaml", "'file:'"), ("nakt", "a nakt model file")]:
        assert f"{kind}: " in message and expects in message.split(f"{kind}: ", 1)[1]
    with pytest.raises(TeacherLoadError, match=reason):
        source_kind(source, "u")


@pytest.fixture
def registry_restored():
    """Unregister whatever a test registers, so no kind leaks into other tests."""
    before = teacher_source_kinds()
    yield
    for kind in set(teacher_source_kinds()) - set(before):
        unregister_teacher_source(kind)
    assert teacher_source_kinds() == before


def _conv_kind(model: nn.Module, loads: list[str]):
    def load(name: str, source: str, device: torch.device) -> RawTeacher:
        loads.append(source)
        desc = TeacherDescription(labels=tuple(LABELS), in_channels=1, input_size=SIZE, outputs="logits")
        return RawTeacher(model.eval().to(device), desc, "0" * 16, {"source": source})
    return load


def test_a_registered_kind_is_picked_by_load_teacher(registry_restored, tmp_path, batch):
    model, loads = ConvNet(seed=4), []
    register_teacher_source("echo", lambda source: source.startswith("echo:"), _conv_kind(model, loads),
                            "an echo:NAME URI (a test kind)")
    assert teacher_source_kinds()[-2:] == ["echo", "nakt"]  # after the built-ins, but before the catch-all nakt
    teacher = load_teacher("e", "echo:conv")
    assert (teacher.kind, teacher.details, loads) == ("echo", {"source": "echo:conv"}, ["echo:conv"])
    torch.testing.assert_close(teacher.predict(batch), softmax_of(model, batch), atol=1e-5, rtol=0)
    with pytest.raises(TeacherLoadError, match=r"echo: an echo:NAME URI \(a test kind\)"):
        load_teacher("u", str(tmp_path / "gone.pt"))


def test_a_file_kind_registered_later_is_asked_before_the_nakt_catch_all(registry_restored, tmp_path, batch):
    model, loads = ConvNet(seed=5), []
    register_teacher_source("fancy", lambda source: source.endswith(".fancy"), _conv_kind(model, loads),
                            "a .fancy file (a test kind)")
    (tmp_path / "m.fancy").write_bytes(b"anything")
    assert load_teacher("f", str(tmp_path / "m.fancy")).kind == "fancy"
    assert source_kind(make_teacher(tmp_path / "a.pt", "a")) == "nakt"


@pytest.mark.parametrize("kwargs", [{"overlap": 1.0}, {"tta_flips": (0,)}, {"tta_flips": (-1, -1)},
                                    {"blend": "mean"}, {"amp": "fp8"}, {"sw_batch_size": 0}])
def test_inference_options_are_validated(kwargs):
    with pytest.raises(ValueError, match=f"InferenceOptions.{next(iter(kwargs))}"):
        InferenceOptions(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Sliding window and test-time augmentation


def test_sliding_window_matches_full_size_prediction_in_the_interior(tmp_path):
    model = ConvNet()
    source = str(write_scripted(tmp_path, model, description()))
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))  # 2x the teacher's input size
    options = InferenceOptions(sliding_window=True, overlap=0.5)
    windowed = load_teacher("sw", source, options=options).predict(x)
    assert windowed.shape == (2, 2, 64, 64)
    direct = softmax_of(model, x)
    # Window borders see zero padding instead of neighbours; the Gaussian blend keeps their weight small.
    diff = (windowed - direct)[..., 2:-2, 2:-2].abs()
    assert diff.mean() < 1e-3 and diff.max() < 0.05
    resampled = load_teacher("rs", source).predict(x)  # without sliding window: resampled to 32x32 and back
    assert resampled.shape == (2, 2, 64, 64) and (resampled - direct).abs().mean() > 10 * diff.mean()
    small = load_teacher("sw", source, options=options).predict(x[..., :24, :20])  # padded to the window
    assert small.shape == (2, 2, 24, 20)
    torch.testing.assert_close(small.sum(1), torch.ones(2, 24, 20), atol=1e-4, rtol=0)


def test_flip_tta(tmp_path, batch):
    assert InferenceOptions(tta_flips=(-1, -2)).flip_sets() == [(), (-1,), (-2,), (-1, -2)]
    tta = InferenceOptions(tta_flips=(-1,))
    symmetric = str(write_scripted(tmp_path / "sym", FlipSymmetric(), description()))
    torch.testing.assert_close(load_teacher("s", symmetric, options=tta).predict(batch),
                               load_teacher("s", symmetric).predict(batch), atol=1e-5, rtol=0)
    plain_model = ConvNet()
    plain = str(write_scripted(tmp_path / "plain", plain_model, description()))
    augmented = load_teacher("p", plain, options=tta).predict(batch)
    expected = 0.5 * (softmax_of(plain_model, batch) + softmax_of(plain_model, batch.flip(-1)).flip(-1))
    torch.testing.assert_close(augmented, expected, atol=1e-5, rtol=0)
    assert (augmented - load_teacher("p", plain).predict(batch)).abs().max() > 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Volumes: 3D teachers, and 2D teachers slice by slice


class ConvNet3d(nn.Module):
    """Two 3x3x3 convolutions: fully convolutional in 3D."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv3d(1, 4, 3, padding=1)
        self.b = nn.Conv3d(4, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_3d_teacher_sliding_window_and_tta_over_depth(tmp_path):
    model = ConvNet3d()
    source = str(write_scripted(tmp_path, model, description(input_size=[16, 16, 16])))
    x = torch.randn(1, 1, 24, 32, 28, generator=torch.Generator().manual_seed(1))
    sw = load_teacher("v", source, options=InferenceOptions(sliding_window=True, overlap=0.5))
    assert sw.spatial_dims == 3 and sw.input_size == (16, 16, 16)
    windowed = sw.predict(x)
    assert windowed.shape == (1, 2, 24, 32, 28)
    direct = softmax_of(model, x)
    # In 3D a larger share of voxels lies near a window face (zero padding instead of neighbours).
    diff = (windowed - direct)[..., 2:-2, 2:-2, 2:-2].abs()
    assert diff.mean() < 5e-3 and diff.max() < 0.15
    resampled = load_teacher("r", source).predict(x)  # trilinear to 16^3 and back
    assert resampled.shape == (1, 2, 24, 32, 28) and (resampled - direct).abs().mean() > 3 * diff.mean()
    tta = load_teacher("t", source, options=InferenceOptions(sliding_window=True, overlap=0.5, tta_flips=(-3,)))
    expected = 0.5 * (windowed + sw.predict(x.flip(-3)).flip(-3))
    torch.testing.assert_close(tta.predict(x), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"inputs must be \[B, 1, D, H, W\]"):
        sw.predict(x[:, :, 0])


def test_2d_teacher_predicts_a_volume_slice_by_slice_along_its_axis(tmp_path):
    model = ConvNet()
    source = str(write_scripted(tmp_path, model, description()))
    x = torch.randn(2, 1, 5, 32, 32, generator=torch.Generator().manual_seed(3))
    axial = load_teacher("a", source).predict(x)
    assert axial.shape == (2, 2, 5, 32, 32)
    for k in range(5):
        torch.testing.assert_close(axial[:, :, k], softmax_of(model, x[:, :, k]), atol=1e-5, rtol=0)
    y = torch.randn(1, 1, 32, 3, 32, generator=torch.Generator().manual_seed(4))
    coronal = load_teacher("c", source, options=InferenceOptions(slice_axis=1)).predict(y)
    for k in range(3):
        torch.testing.assert_close(coronal[:, :, :, k], softmax_of(model, y[:, :, :, k]), atol=1e-5, rtol=0)
    with pytest.raises(TeacherLoadError, match="flips the depth axis .* but this is a 2D model"):
        load_teacher("f", source, options=InferenceOptions(tta_flips=(-3,)))


def test_3d_description_is_validated(tmp_path):
    with pytest.raises(TeacherLoadError, match="input_size"):
        load_teacher("x", str(write_scripted(tmp_path / "a", ConvNet3d(), description(input_size=[16, 16, 16, 16]))))
    bad = description(input_size=[16, 16, 16], volume={"spacing": [2, 2, 2], "patch_size": [32, 32, 32]})
    with pytest.raises(TeacherLoadError, match="volume.patch_size"):
        load_teacher("x", str(write_scripted(tmp_path / "b", ConvNet3d(), bad)))
    good = description(input_size=[16, 16, 16], volume={"spacing": [2, 2, 2]})
    teacher = load_teacher("x", str(write_scripted(tmp_path / "c", ConvNet3d(), good)))
    assert teacher.volume.patch_size == (16, 16, 16) and teacher.describe()["volume"]["spacing"] == [2.0, 2.0, 2.0]
