from __future__ import annotations

import pytest
import torch
from conftest import make_teacher

from nakt_ray.models.model_file import CheckpointError, load_model, read_spec


def test_round_trip_needs_nothing_but_the_path(tmp_path):
    path = make_teacher(tmp_path / "t.pt", "t", num_classes=3, seed=3)
    spec = read_spec(path)
    assert spec.arch == "unet" and spec.labels == ("background", "c1", "c2") and spec.preprocess.size == (32, 32)
    model, spec2 = load_model(path)
    assert spec2 == spec and not model.training
    torch.manual_seed(3)
    reference = spec.build().eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "none.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="junk.pt.*cannot be read"):
        load_model(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, other)
    with pytest.raises(CheckpointError, match="other.pt.*not a nakt model file"):
        load_model(other)


def test_weights_that_do_not_fit_the_spec(tmp_path):
    path = make_teacher(tmp_path / "t.pt", "t")
    payload = torch.load(path, weights_only=True)
    payload["spec"]["arch_args"]["channels"] = [8, 16]
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="weights do not fit architecture 'unet'"):
        load_model(path)
