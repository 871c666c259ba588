"""Storage locations (nakt_ray/storage.py): local paths and object-store URIs through pyarrow filesystems; an
annotation set written to and read from a URI, and Ray Train checkpoints on a URI storage_path.

No object store is reachable here, so URIs are ``file://`` ones: the same code path as ``s3://`` / ``gs://``
(``pyarrow.fs.FileSystem.from_uri``, Ray Data and Ray Train taking the URI), with the working directory checked
for the ``file:`` folder that any ``pathlib`` use of a URI would leave behind.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import TINY_UNET, make_scripted_teacher, tiny_raw_config

from nakt_ray.runtime import storage


@pytest.mark.parametrize("location, names, expected", [
    ("s3://bucket/runs/a", ("annotations", "x.parquet"), "s3://bucket/runs/a/annotations/x.parquet"),
    ("s3://bucket/runs/a/", ("x",), "s3://bucket/runs/a/x"),
    ("s3://bucket/a?region=eu-west-1&endpoint_override=minio:9000", ("m.json",),
     "s3://bucket/a/m.json?region=eu-west-1&endpoint_override=minio:9000"),
    ("gs://bucket/a", ("m.json",), "gs://bucket/a/m.json"),
    ("runs/a", ("m.json",), str(Path("runs/a/m.json"))),
])
def test_join_keeps_a_uri_a_uri(location, names, expected):
    assert storage.join(location, *names) == expected
    assert storage.is_uri(location) == ("://" in location)


def test_file_uri_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = f"file://{tmp_path}/bucket/set"
    assert storage.is_empty(root) and not storage.exists(root) and storage.list_files(root) == []
    storage.make_dirs(root)
    storage.write_text(storage.join(root, "a.json"), '{"a": 1}')
    storage.write_text(storage.join(root, "b.parquet"), "not really")
    assert storage.list_files(root, ".json") == [f"file://{tmp_path}/bucket/set/a.json"]
    assert json.loads(storage.read_text(storage.join(root, "a.json"))) == {"a": 1}
    assert storage.size(storage.join(root, "b.parquet")) == 10 and not storage.is_empty(root)
    assert storage.absolute(root) == root and storage.absolute("x") == str(tmp_path / "x")
    storage.delete_file(storage.join(root, "b.parquet"))
    assert storage.list_files(root) == [f"file://{tmp_path}/bucket/set/a.json"]
    assert (tmp_path / "bucket" / "set" / "a.json").is_file() and not (tmp_path / "file:").exists()


def test_unknown_scheme_is_refused_naming_the_location():
    with pytest.raises(ValueError, match=r"storage location 'nosuch://b/k' is not a path or a URI"):
        storage.exists("nosuch://b/k")


@pytest.mark.slow
@pytest.mark.fault  # a system run (annotation + Ray Train on URIs): second tier, keeps make test short
@pytest.mark.timeout(600)  # annotation + a one-worker Ray Train run: minutes on a loaded 2-core machine
def test_annotations_and_ray_train_storage_on_uris(ray_session, tmp_path, synthetic_dirs, monkeypatch):
    from mlflow.tracking import MlflowClient

    from nakt_ray import config
    from nakt_ray.annotation import parquet as ann
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.cli import main
    from nakt_ray.training.student import train_student

    bucket = tmp_path / "bucket"
    raw = tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "checkpoint": str(make_scripted_teacher(tmp_path / "t1.ts", "t1", seed=1))},
        {"name": "t2", "checkpoint": str(make_scripted_teacher(tmp_path / "t2.ts", "t2", seed=2))}],
        student={"name": "s", "arch": "unet", "arch_args": TINY_UNET},
        training={"epochs": 1, "batch_size": 4, "num_workers": 1, "cpus_per_worker": 0.5})
    raw["data"]["transferal"] = str(synthetic_dirs["mixed"])
    raw["annotate"] = {"output": f"file://{bucket}/annotations", "decode_batch_size": 3, "rows_per_file": 3}
    raw["ray"] = {"storage_path": f"file://{bucket}/ray_train"}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    # 1. `nakt annotate` writes the set (Parquet by Ray Data; manifest, summary, errors by pyarrow) to the URI
    assert main(["annotate", "--config", str(path)]) == 0
    uri = raw["annotate"]["output"]
    assert sorted(p.name for p in (bucket / "annotations").iterdir() if not p.name.endswith(".parquet")) == [
        "errors.json", "manifest.json", "summary.json"]
    assert ann.parquet_files(uri) and all(f.startswith(uri + "/") for f in ann.parquet_files(uri))
    ids = ann.read_table(uri, columns=["case_id"]).column("case_id").to_pylist()
    assert sorted(ids) == sorted(p.stem for p in (synthetic_dirs["mixed"] / "images").iterdir())
    cfg = config.load(path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                                "tags.`nakt.stage` = 'annotate'")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "annotations")} == {
        "annotations/manifest.json", "annotations/summary.json", "annotations/errors.json"}

    # a finished set on a URI is refused without --resume, and resumes with nothing left to do
    with pytest.raises(FileExistsError, match="is not empty"):
        annotate(cfg)
    assert annotate(cfg, resume=True)["resumed_cases"] == len(ids)

    # 2. the student reads the set from the URI; Ray Train (one worker) writes its checkpoints to the URI storage
    result = train_student(cfg)
    checkpoints = [c for c in (bucket / "ray_train" / result["ray_train_name"]).glob("checkpoint_*") if c.is_dir()]
    assert checkpoints and all((c / "model.pt").is_file() for c in checkpoints)
    assert Path(result["model_path"]).is_file() and result["metrics"]["epoch"] == 0
    tags = client.get_model_version_by_alias("test-student", "candidate").tags
    assert tags["nakt.annotations"] == uri

    # nothing went through pathlib: a URI used as a path would have left a relative 'file:' folder here
    assert list(cwd.iterdir()) == []
