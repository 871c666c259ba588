"""The one training loop: in the driver (num_workers=0) and with a real Ray Train worker."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY_UNET, tiny_raw_config

from nakt_ray import config
from nakt_ray.data.datasets import labeled_split
from nakt_ray.metrics import dice_per_class, foreground_mean
from nakt_ray.models.model_file import load_model, model_spec
from nakt_ray.training.loop import fit


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
    # each loss part is named for what it is: train_dice_loss is 1 - soft Dice, val_dice a Dice score
    assert {"train_dice_loss", "train_ce_loss", "train_kl_loss", "train_hard_loss"} <= set(result.metrics)
    assert not {"train_dice", "train_ce", "train_kl", "train_hard"} & set(result.metrics)
    # The written model is the best epoch's: its validation Dice is the best one reported, not the last one.
    dices = []
    with torch.no_grad():
        for batch in val_ds.iter_torch_batches(batch_size=4):
            pred, label = model(batch["image"]).argmax(1).numpy(), batch["target"].argmax(1).numpy()
            dices.extend(foreground_mean(dice_per_class(pred, label, 2)))
    assert float(sum(dices) / len(dices)) == pytest.approx(result.metrics["best_val_dice"], abs=1e-6)
    assert result.metrics["best_val_dice"] >= result.metrics["val_dice"]


# (rows, batch_size, workers, epochs, min_steps) -> (steps of one pass, passes per epoch)
PASSES = [
    ((36, 8, 0, 24, 0), (5, 1)),      # no floor: one pass, whatever the set
    ((36, 8, 0, 24, 550), (5, 5)),    # E7's 36-image set: 120 steps a pass per epoch -> 5 passes, 600 steps
    ((178, 8, 0, 24, 550), (23, 1)),  # E3's 178 images already give 552 steps: unchanged
    ((12, 8, 1, 40, 320), (2, 4)),    # a 12-image site: 8 + 4 rows a pass
    ((36, 8, 2, 24, 550), (3, 8)),    # two DDP workers: shards of 18 rows, 3 steps each
    ((3, 8, 4, 10, 25), (1, 3)),      # fewer rows than workers: a shard still makes one step
]


@pytest.mark.parametrize("case, want", PASSES)
def test_min_steps_sets_the_passes_of_an_epoch_not_the_epochs(case, want):
    from nakt_ray.training.loop import passes_per_epoch, steps_per_pass

    rows, batch, workers, epochs, min_steps = case
    tc = config.TrainingConfig(batch_size=batch, num_workers=workers, epochs=epochs, min_steps=min_steps)
    assert (steps_per_pass(tc, rows), passes_per_epoch(tc, rows)) == want
    assert tc.epochs * want[0] * want[1] >= min_steps  # the floor holds
    assert min_steps == 0 or tc.epochs * want[0] * (want[1] - 1) < min_steps  # with the fewest passes that do


def test_min_steps_without_a_row_count_is_refused():
    from nakt_ray.training.loop import passes_per_epoch

    assert passes_per_epoch(config.TrainingConfig(), None) == 1
    with pytest.raises(ValueError, match="min_steps is 50.*training rows"):
        passes_per_epoch(config.TrainingConfig(min_steps=50), None)


def test_fit_with_min_steps_repeats_the_set_within_each_epoch(ray_session, tmp_path, synthetic_dirs):
    """6 cases in batches of 4 are 2 steps a pass; a floor of 9 steps over 2 epochs makes 3 passes an epoch. The
    epochs, and with them the cosine schedule, stay as configured."""
    raw = tiny_raw_config(tmp_path, teachers=[{"name": "t", "arch": "unet", "arch_args": TINY_UNET,
                                               "train_data": str(synthetic_dirs["site_a"])}])
    raw["teacher_training"].update(epochs=2, lr=0.01, min_steps=9)
    cfg = config.from_dict(raw)
    train_ds, _, n = labeled_split(cfg, str(synthetic_dirs["site_a"]), 4)
    spec = model_spec(cfg, "t", "unet", TINY_UNET, "teacher", {"train_data": "site_a"})
    result = fit(spec, train_ds, cfg.teacher_training, out_path=tmp_path / "model.pt", storage=tmp_path / "rt",
                 name="t", rows=n)
    assert (result.metrics["steps"], result.metrics["passes"], result.metrics["epoch"]) == (6, 3, 1)
    assert result.metrics["lr"] == pytest.approx(0.01 * 0.05)  # the end of a 2-epoch cosine schedule


def test_a_held_set_is_reshuffled_whole_and_a_streaming_one_through_four_batches(ray_session, monkeypatch):
    from nakt_ray.training import loop as training
    from nakt_ray.training.loop import shuffle_rows

    rows = [{"image": torch.zeros(1, 16, 16).numpy()} for _ in range(50)]
    held = ray_session.data.from_items(rows).materialize()
    assert shuffle_rows(held, batch_size=4, workers=1) == 50  # the whole set
    assert shuffle_rows(held, batch_size=4, workers=2) == 25  # each worker's shard
    streaming = ray_session.data.from_items(rows).map_batches(lambda b: b)  # a lazy pipeline, not held
    assert shuffle_rows(streaming, batch_size=4, workers=1) == 16  # 4 batches
    monkeypatch.setattr(training, "SHUFFLE_BYTES", 30 * 1024)  # ~30 rows of 1 KiB: the buffer is capped by bytes
    assert 16 < shuffle_rows(held, batch_size=4, workers=1) <= 30


def test_annotation_sets_are_decoded_in_tasks_of_megabytes_not_in_training_batches():
    from nakt_ray.training.student_data import DECODE_BYTES, decode_rows, decoded_row_bytes

    manifest = {"image_shape": [1, 128, 128], "label_shape": [2, 128, 128], "prob_dtype": "uint8"}
    assert decoded_row_bytes(manifest) == 4 * 128 * 128 + 2 * 128 * 128
    assert decode_rows(manifest, batch_size=8) == DECODE_BYTES // (6 * 128 * 128)  # 170 rows, not 8
    huge = {"image_shape": [3, 4096, 4096], "label_shape": [4, 4096, 4096], "prob_dtype": "float16"}
    assert decode_rows(huge, batch_size=2) == 2  # never below a training batch
