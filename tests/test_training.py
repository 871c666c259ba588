"""The one training loop: in the driver (num_workers=0) and with a real Ray Train worker."""
from __future__ import annotations

import pytest
import torch

from nakt_ray import config
from nakt_ray.checkpoint import load_model
from nakt_ray.teachers import labeled_split, model_spec
from nakt_ray.metrics import dice_per_class, foreground_mean
from nakt_ray.training import fit

from conftest import TINY_UNET, tiny_raw_config


@pytest.mark.parametrize("num_workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_fit_trains_and_writes_a_loadable_model(ray_session, tmp_path, synthetic_dirs, num_workers):
    raw = tiny_raw_config(tmp_path, teachers=[{"name": "t", "arch": "unet", "arch_args": TINY_UNET,
                                               "train_data": str(synthetic_dirs["site_a"])}])
    raw["teacher_training"].update(epochs=4, num_workers=num_workers, lr=0.01)
    cfg = config.from_dict(raw)
    train_ds, failed, n = labeled_split(cfg, str(synthetic_dirs["site_a"]), 4)
    assert (n, failed) == (6, [])
    val_ds = labeled_split(cfg, str(synthetic_dirs["mixed"]), 4)[0]
    spec = model_spec(cfg, "t", "unet", TINY_UNET, "teacher", {"train_data": "site_a"})
    result = fit(spec, train_ds, cfg.teacher_training, out_path=tmp_path / "model.pt", storage=tmp_path / "rt",
                 name="t", val_ds=val_ds)
    model, loaded = load_model(result.model_path)
    assert loaded == spec
    assert 0.0 <= result.metrics["val_dice"] <= 1.0
    assert result.metrics["train_loss"] > 0 and result.metrics["epoch"] == 3
    # The written model is the best epoch's: its validation Dice is the best one reported, not the last one.
    dices = []
    with torch.no_grad():
        for batch in val_ds.iter_torch_batches(batch_size=4):
            pred, label = model(batch["image"]).argmax(1).numpy(), batch["target"].argmax(1).numpy()
            dices.extend(foreground_mean(dice_per_class(pred, label, 2)))
    assert float(sum(dices) / len(dices)) == pytest.approx(result.metrics["best_val_dice"], abs=1e-6)
    assert result.metrics["best_val_dice"] >= result.metrics["val_dice"]
