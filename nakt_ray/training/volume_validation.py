"""Validation of a 3D model during training: sliding-window inference on whole preprocessed volumes, Dice and IoU
per class on the preprocessed grid.

A 3D model sees patches; a validation volume is larger, so it is predicted by MONAI's ``sliding_window_inference``
with the patch as window and gaussian blending (as the 3D teachers annotate, ``teachers/inference.py``). Scores
are per volume (every voxel of the volume at once, not per slice) on the preprocessed grid, in voxels: HD95 and
NSD in mm on the original grid are the evaluation's work (``nakt evaluate``), not the training loop's.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["SW_OVERLAP", "predict_volume", "validate_volumes"]

# Window overlap while validating: MONAI's default. nnU-Net predicts with 0.5; 0.25 needs about half the windows,
# which matters when the validation runs every epoch on CPU cores.
SW_OVERLAP = 0.25


def predict_volume(model: torch.nn.Module, x: torch.Tensor, patch_size: Sequence[int], sw_batch_size: int = 2,
                   amp_dtype: torch.dtype | None = None, overlap: float = SW_OVERLAP) -> torch.Tensor:
    """Logits ``[B, K, D, H, W]`` of ``model`` over whole volumes ``x`` ``[B, C_in, D, H, W]``, window by window
    (``patch_size``, gaussian blending; a volume smaller than the window is padded and cropped back)."""
    from monai.inferers import sliding_window_inference  # importing MONAI costs seconds: only when used

    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = sliding_window_inference(x, roi_size=tuple(int(s) for s in patch_size), sw_batch_size=sw_batch_size,
                                       predictor=model, overlap=overlap, mode="gaussian")
    return (out.as_tensor() if hasattr(out, "as_tensor") else out).float()


def validate_volumes(model: torch.nn.Module, batches: Iterable[dict[str, Any]], labels: Sequence[str],
                     patch_size: Sequence[int], device: torch.device, sw_batch_size: int = 2,
                     amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean per-volume ``val_dice`` and ``val_iou`` (foreground classes) and ``val_dice_<label>`` per foreground
    class over ``batches`` of whole volumes (``image`` ``[1, C_in, D, H, W]``, ``label`` ``[1, D, H, W]``; numpy).

    A class absent from both a volume's prediction and its label scores 1 there (``metrics.dice_per_class``).
    """
    from nakt_ray.metrics import dice_per_class, foreground_mean, iou_per_class

    num_classes = len(labels)
    dice, iou = [], []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            x = torch.from_numpy(np.array(batch["image"], dtype=np.float32)).to(device)  # a writable copy
            # max's indices: argmax over the class axis is ~5x slower on the CPU (the same class, first on ties)
            pred = predict_volume(model, x, patch_size, sw_batch_size, amp_dtype).max(1).indices.cpu().numpy()
            label = np.asarray(batch["label"])
            # The metrics score the last two axes of each map: a volume [D, H, W] as one map [D * H, W] is scored
            # over all its voxels at once.
            flat_pred = pred.reshape(len(pred), -1, pred.shape[-1])
            flat_label = label.reshape(len(label), -1, label.shape[-1]).astype(np.int64)
            dice.append(dice_per_class(flat_pred, flat_label, num_classes))
            iou.append(iou_per_class(flat_pred, flat_label, num_classes))
    model.train()
    if not dice:
        return {"val_dice": float("nan"), "val_iou": float("nan")}
    d, j = np.concatenate(dice), np.concatenate(iou)  # [volumes, C]
    out = {"val_dice": float(np.mean(foreground_mean(d))), "val_iou": float(np.mean(foreground_mean(j)))}
    out.update({f"val_dice_{name}": float(d[:, c].mean()) for c, name in enumerate(labels) if c > 0})
    return out
