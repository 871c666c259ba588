"""Tests for nakt_ray.data.privacy: pseudonymous case ids, and a whole pipeline run on DICOM files named after
their patient that leaves no patient identifier in any output file, file name, log line or MLflow record."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_scripted_teacher, tiny_raw_config
from PIL import Image

from nakt_ray.data.privacy import (
    KEY_ENV,
    KEY_FILE_ENV,
    cases_for,
    pseudonym,
    pseudonym_key,
    pseudonymize,
    scrub,
)
from nakt_ray.data.readers import Case
from nakt_ray.errors import ConfigError

KEY = b"0123456789abcdef-test-key"
# Surnames of 8+ letters: the leak check searches every output's bytes, weights and optimizer states included, and a
# 3-letter surname ("POE") once turned up by chance in a torch optimizer state (2^-24 per byte position).
PATIENTS = [("DOEBERMANN^JOHN", "PAT48213"), ("ROEHRICHT^JANE", "PAT77102"), ("POELLINGER^EDGAR", "PAT11809"),
            ("MOERSBERG^ANNA", "PAT55190"), ("LOEWENTHAL^PETER", "PAT90331"), ("KOESTLINGER^MARIA", "PAT30427")]


def test_pseudonyms_are_keyed_stable_and_keep_the_slice():
    a = pseudonym("PAT48213_DOE", KEY)
    assert a == pseudonym("PAT48213_DOE", KEY) and a.startswith("case-") and len(a) == 25
    assert a != pseudonym("PAT48213_DOE", b"another key of 16+ bytes")
    assert a != pseudonym("PAT48214_DOE", KEY)
    assert pseudonym("PAT48213_DOE#0012", KEY) == a + "#0012"


def test_pseudonymize_keeps_the_files_and_records_the_original():
    cases = [Case("b/PAT2", "/d/images/b/PAT2.dcm", "/d/masks/b/PAT2.png"), Case("a/PAT1", "/d/images/a/PAT1.dcm")]
    out = pseudonymize(cases, KEY)
    assert sorted(c.original_id for c in out) == ["a/PAT1", "b/PAT2"]
    assert [c.case_id for c in out] == sorted(c.case_id for c in out)
    by_original = {c.original_id: c for c in out}
    assert by_original["b/PAT2"].image_path == "/d/images/b/PAT2.dcm"
    assert all("PAT" not in c.case_id for c in out)
    assert cases_for(cases, enabled=False) is cases


def test_the_key_comes_from_the_environment_only(tmp_path):
    assert pseudonym_key({KEY_ENV: KEY.decode()}) == KEY
    (tmp_path / "key").write_text(KEY.decode() + "\n")
    assert pseudonym_key({KEY_FILE_ENV: str(tmp_path / "key")}) == KEY
    with pytest.raises(ConfigError, match=f"{KEY_ENV}.*{KEY_FILE_ENV}"):
        pseudonym_key({})
    with pytest.raises(ConfigError, match="at least 16"):
        pseudonym_key({KEY_ENV: "short"})
    with pytest.raises(ConfigError, match="cannot be read"):
        pseudonym_key({KEY_FILE_ENV: str(tmp_path / "missing")})


def test_scrub_replaces_paths_names_and_the_original_id():
    msg = ("decode: DataError: cannot read DICOM file '/data/images/PAT48213_DOE.dcm': not a valid DICOM file; "
           "its mask /data/masks/PAT48213_DOE.png; case PAT48213_DOE")
    out = scrub(msg, "case-abc", "PAT48213_DOE", "/data/images/PAT48213_DOE.dcm", "/data/masks/PAT48213_DOE.png")
    assert "PAT48213" not in out and "DOE" not in out and out.count("case-abc") == 3


def write_patient_dicom(path: Path, pixels: np.ndarray, name: str, patient_id: str) -> None:
    """A grey DICOM file carrying the patient's name and id, as exports from a PACS do."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = name, patient_id, "US"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def patient_folder(src: Path, dst: Path, patients: list[tuple[str, str]], corrupt: int | None = None) -> Path:
    """The synthetic folder ``src`` as DICOM images named ``<id>_<family name>.dcm`` with PNG masks."""
    images = sorted((src / "images").iterdir())
    for k, (name, pid) in enumerate(patients):
        stem = f"{pid}_{name.split('^')[0]}"
        image = np.asarray(Image.open(images[k]).convert("L"))
        if k == corrupt:
            (dst / "images").mkdir(parents=True, exist_ok=True)
            (dst / "images" / f"{stem}.dcm").write_bytes(b"not a DICOM file " + pid.encode())
        else:
            write_patient_dicom(dst / "images" / f"{stem}.dcm", image, name, pid)
        mask = next((src / "masks").glob(images[k].stem + ".*"))
        (dst / "masks").mkdir(parents=True, exist_ok=True)
        Image.open(mask).save(dst / "masks" / f"{stem}.png")
    return dst


def identifiers_in(root: Path, secrets: list[str]) -> list[str]:
    """Every file under ``root`` whose path or bytes contain one of ``secrets`` (SQLite, Parquet, JSON alike)."""
    found = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        data = p.read_bytes()
        for s in secrets:
            if s in str(p.relative_to(root)) or s.encode() in data:
                found.append(f"{p.relative_to(root)}: {s}")
    return found


@pytest.mark.slow
def test_a_pseudonymous_pipeline_run_leaves_no_patient_identifier(ray_session, tmp_path, synthetic_dirs, capfd,
                                                                    monkeypatch):
    from nakt_ray import config
    from nakt_ray.annotation.pipeline import annotate
    from nakt_ray.evaluation.evaluate import evaluate
    from nakt_ray.inference.predict import predict_folder
    from nakt_ray.training.student import train_student

    monkeypatch.setenv(KEY_ENV, KEY.decode())
    transferal = patient_folder(synthetic_dirs["mixed"], tmp_path / "transferal", PATIENTS, corrupt=2)
    test = patient_folder(synthetic_dirs["site_a"], tmp_path / "test", PATIENTS[3:] + PATIENTS[:3])
    # the inputs really carry the identifiers, in file names and in the DICOM headers
    secrets = sorted({s for name, pid in PATIENTS for s in (pid, name, name.split("^")[0])})
    assert identifiers_in(tmp_path / "transferal", secrets)
    raw = tiny_raw_config(tmp_path, teachers=[
        {"name": "t1", "checkpoint": str(make_scripted_teacher(tmp_path / "t1.ts", "t1", seed=1))},
        {"name": "t2", "checkpoint": str(make_scripted_teacher(tmp_path / "t2.ts", "t2", seed=2))}])
    raw["data"].update(transferal=str(transferal), test=str(test), pseudonymize=True)
    cfg = config.from_dict(raw)
    out = tmp_path / "out"

    summary = annotate(cfg)
    assert (summary["annotated"], summary["failed"]) == (5, 1)  # the corrupt file is an error row, by pseudonym
    student = train_student(cfg)
    report = evaluate(cfg, {"t1": str(tmp_path / "t1.ts"), "student": student["model_path"]}, str(test),
                      out / "evaluation")
    predicted = predict_folder(student["model_path"], test, out / "predictions", pseudonymize=True)
    assert predicted["counts"] == {"cases": 6, "ok": 6, "failed": 0}
    assert report

    logs = capfd.readouterr()
    leaks = identifiers_in(Path(cfg.run_dir), secrets) + identifiers_in(out, secrets)
    leaks += [f"console: {s}" for s in secrets if s in logs.out + logs.err]
    assert not leaks, leaks
    # and the ids are the same pseudonyms in every output (annotation, evaluation, prediction file names)
    names = {p.name.split("_mask")[0] for p in (out / "predictions").glob("*_mask.png")}
    assert all(n.startswith("case-") for n in names) and len(names) == 6
