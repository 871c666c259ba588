"""Remote teachers (nakt_ray/teachers/kinds/remote.py) against real servers on 127.0.0.1: an Open Inference Protocol
v2 server (tests/_oip_server.py, FastAPI + uvicorn: KServe's and MLServer's servers do not install here) and MLflow's
own scoring server (``mlflow.pyfunc.scoring_server``, the app ``mlflow models serve`` runs), each in a thread of this
process. The same weights also run locally as TorchScript, the reference every remote answer is compared with."""
from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _oip_server import Faults, Served, oip_app, serve_in_thread
from conftest import tiny_raw_config

from nakt_ray.annotation.pools import TeacherPredictor
from nakt_ray.errors import TeacherLoadError
from nakt_ray.teachers.description import InferenceOptions
from nakt_ray.teachers.kinds import remote
from nakt_ray.teachers.registry import load_teacher, source_kind

SIZE = (32, 32)
DESCRIPTION = {"labels": ["background", "head"], "in_channels": 1, "input_size": list(SIZE), "outputs": "logits"}
QUICK = {"retries": 1, "backoff_s": 0.01, "timeout_s": 5}  # failing tests stay fast
TOKEN = "s3cret-token-value"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """One small convolutional net as TorchScript with its description (the local teacher, and what the OIP server
    runs), and the module itself (what the MLflow model pickles). Plain torch, not a zoo net: importing MONAI would
    cost seconds here and in every actor, and the protocol does not care what the net is."""
    tmp = tmp_path_factory.mktemp("remote")
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 2, 3, padding=1)).eval()
    ts = tmp / "model.ts"
    torch.jit.trace(model, torch.zeros(1, 1, *SIZE)).save(str(ts))
    Path(f"{ts}.yaml").write_text(yaml.safe_dump(DESCRIPTION))
    return tmp, ts, model


def _serve_oip(weights, faults: Faults | None = None, **kw) -> Served:
    served = Served()
    return serve_in_thread(oip_app(weights[1], 2, SIZE, faults=faults, served=served, **kw), served)


@pytest.fixture
def oip(weights):
    served = _serve_oip(weights)
    yield served
    served.stop()


def _yaml(path: Path, url: str, protocol: str = "oip", **keys) -> Path:
    data = {"kind": "remote", "protocol": protocol, "url": url, **({"model": "seg"} if protocol == "oip" else {}),
            **DESCRIPTION, **keys}
    path.write_text(yaml.safe_dump(data))
    return path


def _images(n: int, marked: tuple[int, ...] = (), size=(40, 56), seed=0) -> np.ndarray:
    """``n`` random images ``[n, 1, H, W]`` (mean ~0); the ``marked`` ones constant, 5 and more (above a fault
    threshold; distinct, as cases are)."""
    x = np.random.default_rng(seed).normal(size=(n, 1, *size)).astype(np.float32)
    for i in marked:
        x[i] = 5.0 + 0.1 * i
    return x


def _local(weights, options: InferenceOptions | None = None):
    return load_teacher("local", weights[1], options=options)


# ---------------------------------------------------------------------------------------------------------------
# The teacher YAML


@pytest.mark.parametrize("keys, message", [
    ({"token": "abc"}, r"\['token'\]: a credential is never read from the teacher YAML"),
    ({"api_key": "abc"}, r"credential is never read"),
    ({"url": "http://h:1/?token=abc"}, r"config key 'url': holds a user, password, query"),
    ({"url": "https://user:pw@h:1"}, r"config key 'url': holds a user, password"),
    ({"url": "ftp://h"}, r"config key 'url': got 'ftp://h'; expected an http:// or https:// URL"),
    ({"url": "http://h:1/v2/models/seg"}, r"config key 'url'.*without /v2/models"),
    ({"model": None}, r"config key 'model' is required with protocol: oip"),
    ({"protocol": "grpc"}, r"config key 'protocol': got 'grpc'; expected one of 'oip', 'mlflow'"),
    ({"credential_env": "A", "credential_file": "b"}, r"credential_env or credential_file, not both"),
    ({"concurency": 4}, r"unknown key 'concurency'; did you mean 'concurrency'"),
    ({"concurrency": 0}, r"config key 'concurrency': got 0; expected an integer >= 1"),
    ({"labels": ["head"]}, r"config key 'labels'"),
    ({"file": "model.ts"}, r"a remote teacher has url:, not file:"),
])
def test_bad_teacher_yaml_is_refused_naming_the_key(tmp_path, keys, message):
    keys = {"url": "http://127.0.0.1:9", **keys}
    source = _yaml(tmp_path / "t.yaml", keys.pop("url"), **keys)
    assert remote.detect(str(source)) and source_kind(source) == "remote"
    with pytest.raises(TeacherLoadError, match=rf"teacher 'r' \({source}\): .*{message}"):
        load_teacher("r", source)


def test_a_teacher_yaml_with_file_is_still_the_file_kind(weights, tmp_path):
    described = tmp_path / "described.yaml"
    described.write_text(yaml.safe_dump({"file": str(weights[1]), **DESCRIPTION}))
    assert not remote.detect(str(described)) and source_kind(described) == "torchscript"


# ---------------------------------------------------------------------------------------------------------------
# Equal to the local model


def test_oip_teacher_predicts_what_the_local_model_does(weights, oip, tmp_path):
    """Resampling (40x56 -> 32x32), flip TTA, and a batch split into requests of 2 sent 3 at a time: the same
    probabilities as the same weights run locally."""
    options = InferenceOptions(tta_flips=(-1,))
    source = _yaml(tmp_path / "oip.yaml", oip.url, max_batch=2, concurrency=3)
    teacher = load_teacher("oip", source, options=options)
    x = torch.from_numpy(_images(6))
    diff = (teacher.predict(x) - _local(weights, options).predict(x)).abs().max().item()
    assert diff <= 1 / 255, diff
    assert teacher.kind == "remote" and teacher.module is None
    assert teacher.fingerprint == remote.endpoint_fingerprint("oip", oip.url, "seg", "1")
    assert teacher.details["version"] == "1" and teacher.details["platform"] == "pytorch_torchscript"
    # 2 flips x 6 images in requests of 2 (after 3 requests at load: a zero image, then the probe's two batches)
    assert [n for _, p, _, n in oip.log if p.endswith("/infer")][3:] == [2] * 6


@pytest.fixture(scope="module")
def mlflow_model(weights):
    """The same weights as an MLflow pyfunc model (``mlflow.pytorch``, with a tensor signature)."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    x = _images(2, size=SIZE)
    with torch.no_grad():
        y = weights[2](torch.from_numpy(x)).numpy()
    path = weights[0] / "pyfunc"
    mlflow.pytorch.save_model(weights[2], str(path), serialization_format="pickle", signature=infer_signature(x, y),
                              pip_requirements=["torch"])
    return path


def _serve_mlflow(model_dir: Path, token: str) -> Served:
    """MLflow's own scoring server (the app ``mlflow models serve`` runs) behind a gateway that wants ``token``."""
    from mlflow.pyfunc import load_model, scoring_server
    from starlette.responses import JSONResponse

    app = scoring_server.init(load_model(str(model_dir)))

    @app.middleware("http")
    async def gateway(request, call_next):
        if request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)
        return await call_next(request)

    return serve_in_thread(app)


def _secret(tmp_path: Path, value: str) -> Path:
    """A file as Kubernetes mounts a Secret's key (with a trailing newline)."""
    secret = tmp_path / "secret" / "token"
    secret.parent.mkdir(exist_ok=True)
    secret.write_text(value + "\n")
    return secret


def test_mlflow_scoring_server_teacher_predicts_what_the_local_model_does(weights, mlflow_model, tmp_path):
    """Behind a gateway that wants the credential, read from a mounted-Secret-like file."""
    import mlflow

    served = _serve_mlflow(mlflow_model, TOKEN)
    try:
        secret = _secret(tmp_path, TOKEN)
        source = _yaml(tmp_path / "mlflow.yaml", served.url, "mlflow", model="head-seg", version="7",
                       credential_file=str(secret), max_batch=3)
        teacher = load_teacher("mlf", source)
        images = torch.from_numpy(_images(5))
        diff = (teacher.predict(images) - _local(weights).predict(images)).abs().max().item()
        assert diff <= 1 / 255, diff
        assert teacher.fingerprint == remote.endpoint_fingerprint("mlflow", served.url, "head-seg", "7")
        assert teacher.details["mlflow_version"] == mlflow.__version__
        assert teacher.details["credential"] == f"file {secret}" and TOKEN not in json.dumps(teacher.describe())
        secret.write_text("wrong")  # the server refuses another credential: a clear error, before any work
        with pytest.raises(TeacherLoadError, match=rf"endpoint {served.url}: {served.url}/ping answered HTTP 401: "
                                                   r"Unauthorized; the credential was refused"):
            load_teacher("mlf", source)
    finally:
        served.stop()


# ---------------------------------------------------------------------------------------------------------------
# The credential, TLS, metadata


def test_credential_from_the_environment_refused_missing_and_never_shown(weights, tmp_path, monkeypatch):
    faults = Faults(token=TOKEN)
    served = _serve_oip(weights, faults)
    try:
        source = _yaml(tmp_path / "t.yaml", served.url, credential_env="NAKT_TEST_TOKEN", retries=3)
        with pytest.raises(TeacherLoadError, match="the environment variable NAKT_TEST_TOKEN is not set"):
            load_teacher("t", source)
        monkeypatch.setenv("NAKT_TEST_TOKEN", "not-the-token")
        with pytest.raises(TeacherLoadError, match=r"HTTP 401: Unauthorized; the credential was refused") as err:
            load_teacher("t", source)
        assert "not-the-token" not in str(err.value)
        assert served.log == [("GET", "/v2/health/ready", 401, 0)]  # refused once: never retried
        monkeypatch.setenv("NAKT_TEST_TOKEN", TOKEN)
        predictor = TeacherPredictor(str(source), "t", in_channels=1)
        details = predictor.teacher.details
        assert details["credential"] == "env NAKT_TEST_TOKEN" and TOKEN not in json.dumps(predictor.teacher.describe())
        assert TOKEN not in repr(predictor.teacher._forward.http)
        faults.token = "rotated"  # the server stops taking the credential mid-run: no error rows, the run stops
        with pytest.raises(TeacherLoadError, match=r"teacher 't' .*HTTP 401.*the credential was refused"):
            predictor({"image": _images(2, size=SIZE), "error": np.array(["", ""], dtype=object)})
    finally:
        served.stop()


def test_a_rotated_secret_is_read_again_when_the_server_refuses_the_old_one(weights, tmp_path):
    faults = Faults(token="first")
    served = _serve_oip(weights, faults)
    try:
        secret = _secret(tmp_path, "first")
        predictor = TeacherPredictor(str(_yaml(tmp_path / "t.yaml", served.url, credential_file=str(secret))), "r",
                                     in_channels=1)
        faults.token = "second"  # Kubernetes rotates the Secret: the server and the mounted file change
        secret.write_text("second\n")
        assert list(_predict_batch(predictor, _images(2, size=SIZE))["error"]) == ["", ""]
        assert served.count("/infer", 401) == 1 and served.count("/infer", 200) == 1 + 3  # (3 at load)
    finally:
        served.stop()


def test_tls_is_verified_by_default_and_a_private_ca_can_be_named(weights, tmp_path):
    cert, key = _self_signed(tmp_path)
    served = serve_in_thread(oip_app(weights[1], 2, SIZE), certfile=str(cert), keyfile=str(key))
    try:
        assert served.url.startswith("https://")
        with pytest.raises(TeacherLoadError, match=r"TLS failed for .*certificate verify failed.*set ca_file"):
            load_teacher("tls", _yaml(tmp_path / "t.yaml", served.url, **QUICK))
        teacher = load_teacher("tls", _yaml(tmp_path / "ca.yaml", served.url, ca_file=cert.name))
        assert teacher.details["tls"] == f"ca_file {cert}"
    finally:
        served.stop()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


@pytest.mark.parametrize("server, keys, message", [
    ({}, {"model": "other"}, r"/v2/models/other answered HTTP 404: Model other \(version None\) not found"),
    ({}, {"version": 2}, r"/v2/models/seg/versions/2 answered HTTP 404"),
    ({"versions": ("1", "2")}, {}, r"model 'seg' has versions \['1', '2'\]; pin one with version:"),
    ({"input_shape": [-1, 3, 32, 32]}, {}, r"input 'image' has 3 channels .*the description says in_channels 1"),
    ({"input_shape": [-1, 1, 64, 64]}, {}, r"input 'image' is fixed at \[64, 64\]; .*input_size \[32, 32\]"),
    ({}, {"input_name": "pixels"}, r"the model has no input 'pixels'; its inputs: \['image'\]"),
    ({"faults": Faults(wrong_shape=True)}, {}, r"returns spatial size \(16, 16\) for an input of \(32, 32\)"),
])
def test_a_server_that_does_not_fit_the_description_fails_at_load(weights, tmp_path, server, keys, message):
    served = _serve_oip(weights, **server)
    try:
        with pytest.raises(TeacherLoadError, match=rf"teacher 'm' \(.*\): .*{message}"):
            load_teacher("m", _yaml(tmp_path / "t.yaml", served.url, **{"retries": 3, **keys}))
        assert served.count("/v2/models", 404) <= 1  # a 4xx is never retried
    finally:
        served.stop()


def test_an_unreachable_server_stops_the_run_before_any_work(tmp_path, synthetic_dirs):
    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    source = _yaml(tmp_path / "t.yaml", url, **QUICK)
    raw = tiny_raw_config(tmp_path, teachers=[{"name": "far", "checkpoint": str(source)}])
    raw["data"]["transferal"] = str(synthetic_dirs["mixed"])
    cfg = config.from_dict(raw)
    t0 = time.monotonic()
    with pytest.raises(TeacherLoadError, match=rf"teacher 'far' \({source}\): endpoint {url}: cannot connect to "
                                               rf"{url}/v2/health/ready: Connection refused \(after 2 tries\)"):
        annotate(cfg)
    assert time.monotonic() - t0 < 10
    assert not list(Path(cfg.annotations_dir).glob("*.parquet"))


# ---------------------------------------------------------------------------------------------------------------
# Failures at prediction time: error rows, every case once


def _predict_batch(predictor: TeacherPredictor, x: np.ndarray) -> dict:
    return predictor({"image": x, "error": np.array([""] * len(x), dtype=object)})


def _infer_log(served: Served) -> list[tuple[int, int]]:
    """(status, images answered) of every inference request."""
    return sorted((s, n) for _, p, s, n in served.log if p.endswith("/infer"))


@pytest.mark.parametrize("max_batch, expected_log", [
    # one image a request, 4 at a time: each case sent once (the failed ones tried twice), nothing sent again
    (1, [(200, 1)] * 4 + [(500, 0)] * 4),
    # requests of 2: [0, 1] and [4, 5] fail, [2, 3] is kept; then 0, 1, 4, 5 alone (1 and 4 fail again)
    (2, [(200, 1)] * 2 + [(200, 2)] + [(500, 0)] * 8),
])
def test_a_case_whose_request_fails_after_its_retries_is_an_error_row(weights, tmp_path, max_batch, expected_log):
    served = _serve_oip(weights, Faults(fail_above=3.0))
    try:
        source = _yaml(tmp_path / "t.yaml", served.url, max_batch=max_batch, concurrency=4, **QUICK)
        predictor = TeacherPredictor(str(source), "r", in_channels=1)
        served.log.clear()
        x = _images(6, marked=(1, 4), size=SIZE)
        out = _predict_batch(predictor, x)
        infer = f"{served.url}/v2/models/seg/versions/1/infer"
        assert [i for i, e in enumerate(out["error"]) if e] == [1, 4]
        assert out["error"][1] == (f"predict: teacher 'r' ({source}): endpoint {served.url}: {infer} answered HTTP "
                                   "500: injected failure (after 2 tries)")
        local = _predict_batch(TeacherPredictor(str(weights[1]), "l", in_channels=1), x)
        good = [0, 2, 3, 5]
        assert np.abs(out["prob__r"][good].astype(int) - local["prob__l"][good].astype(int)).max() <= 1
        assert out["prob__r"][[1, 4]].max() == 0
        assert _infer_log(served) == sorted(expected_log)
    finally:
        served.stop()


def test_late_answers_wrong_shapes_and_a_vanished_server_give_error_rows(weights, tmp_path):
    served = _serve_oip(weights, Faults(slow_above=4.0, slow_s=2.0, shape_above=2.0))
    try:
        source = _yaml(tmp_path / "t.yaml", served.url, max_batch=1, concurrency=4, timeout_s=0.5, retries=1,
                       backoff_s=0.01)
        predictor = TeacherPredictor(str(source), "r", in_channels=1)
        x = _images(4, marked=(2,), size=SIZE)
        x[0] = 3.0  # answered at half the size (and 2, marked, too late)
        served.log.clear()
        errors = list(_predict_batch(predictor, x)["error"])
        assert [i for i, e in enumerate(errors) if e] == [0, 2]
        assert errors[0].endswith("the model returns spatial size (16, 16) for an input of (32, 32); a segmentation "
                                  "teacher must return one value per input pixel")
        assert errors[2].endswith(f"no answer from {served.url}/v2/models/seg/versions/1/infer within 0.5 s "
                                  "(after 2 tries)")
        assert served.count("/infer") <= 3  # 1 and 3 once, 0 once (its wrong answer kept); 2 never answered
    finally:
        served.stop()
    errors = list(_predict_batch(predictor, x[:2])["error"])  # the server is gone: each case says so
    assert all(e.endswith("Connection refused (after 2 tries)") for e in errors), errors


@pytest.mark.slow
def test_annotation_through_both_protocols_equals_the_local_teacher(ray_session, weights, mlflow_model, tmp_path,
                                                                    synthetic_dirs):
    """One pipeline run, four teachers of the same weights: local TorchScript, OIP, MLflow (with a credential) and
    an OIP server that fails on one case. The remote maps equal the local one; the failed case is an error row;
    every case is in the set once; no credential in the manifest."""
    from conftest import corrupt_copy
    from PIL import Image

    from nakt_ray import config
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.data.readers import list_cases

    src = corrupt_copy(synthetic_dirs["mixed"], tmp_path / "transferal", [])
    Image.fromarray(np.full((40, 56), 255, np.uint8)).save(src / "images" / "white.png")
    oip, flaky, mlf = (_serve_oip(weights), _serve_oip(weights, Faults(fail_above=200.0)),
                       _serve_mlflow(mlflow_model, TOKEN))
    try:
        endpoint = {"max_batch": 2, "concurrency": 2}
        raw = tiny_raw_config(tmp_path, teachers=[
            {"name": "local", "checkpoint": str(weights[1]), "batch_size": 4},
            {"name": "oip", "checkpoint": str(_yaml(tmp_path / "oip.yaml", oip.url, **endpoint)), "batch_size": 4},
            {"name": "mlf", "checkpoint": str(_yaml(tmp_path / "mlf.yaml", mlf.url, "mlflow", model="m", **endpoint,
                                                    credential_file=str(_secret(tmp_path, TOKEN)))),
             "batch_size": 4},
            {"name": "flaky", "checkpoint": str(_yaml(tmp_path / "flaky.yaml", flaky.url, **endpoint, **QUICK)),
             "batch_size": 4}])
        raw["data"]["transferal"] = str(src)
        raw["preprocess"] = {"size": list(SIZE), "normalize": "none"}  # the white image keeps its mean 255
        raw["annotate"] = {"decode_batch_size": 4, "pools": "shared"}
        cfg = config.from_dict(raw)
        summary = annotate(cfg)
    finally:
        for served in (oip, flaky, mlf):
            served.stop()
    assert (summary["cases_read"], summary["annotated"], summary["failed"]) == (7, 6, 1)
    table = ann.read_table(cfg.annotations_dir).to_pydict()
    assert sorted(table["case_id"]) == sorted(c.case_id for c in list_cases(src))  # each case once
    white = table["case_id"].index("white")
    assert table["status"][white] == "error"
    assert table["error"][white].startswith("predict: teacher 'flaky' (") and "HTTP 500" in table["error"][white]
    ok = [i for i, s in enumerate(table["status"]) if s == "ok"]
    maps = {t: ann.from_bytes([table[ann.prob_column(t)][i] for i in ok], (2, *SIZE), "uint8").astype(int)
            for t in ("local", "oip", "mlf")}
    assert np.abs(maps["oip"] - maps["local"]).max() <= 1 and np.abs(maps["mlf"] - maps["local"]).max() <= 1
    manifest = ann.read_manifest(cfg.annotations_dir)
    assert [t["kind"] for t in manifest["teachers"]] == ["torchscript", "remote", "remote", "remote"]
    assert TOKEN not in json.dumps(manifest)
    errors = json.loads((Path(cfg.annotations_dir) / "errors.json").read_text())
    assert [(e["case_id"], e["stage"]) for e in errors] == [("white", "predict")]
