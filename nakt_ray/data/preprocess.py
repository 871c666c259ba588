"""The one preprocessing definition used by teachers and students, and its inverse.

``preprocess_image`` turns an image of any size into the model's input (channels converted, intensities
normalised, resized or letterboxed to ``size``) and returns the geometry it applied. ``preprocess_mask`` applies
the same geometry to a label map. ``restore`` maps a model's probability maps back to the original image size, so
predictions can be compared with original masks and written at the original resolution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nakt_ray.config import PreprocessConfig


@dataclass(frozen=True)
class Geometry:
    """Where the original image sits inside the model input.

    The original ``orig_h x orig_w`` image was resized to ``inner_h x inner_w`` and placed at
    (``top``, ``left``) inside the ``out_h x out_w`` input (zero offsets and inner = out for ``resize``).
    """

    orig_h: int
    orig_w: int
    out_h: int
    out_w: int
    inner_h: int
    inner_w: int
    top: int
    left: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def geometry_for(orig_h: int, orig_w: int, cfg: PreprocessConfig) -> Geometry:
    out_h, out_w = cfg.size
    if cfg.mode == "resize":
        return Geometry(orig_h, orig_w, out_h, out_w, out_h, out_w, 0, 0)
    scale = min(out_h / orig_h, out_w / orig_w)
    inner_h, inner_w = max(1, min(out_h, round(orig_h * scale))), max(1, min(out_w, round(orig_w * scale)))
    return Geometry(orig_h, orig_w, out_h, out_w, inner_h, inner_w, (out_h - inner_h) // 2, (out_w - inner_w) // 2)


def _to_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    if image.shape[0] == in_channels:
        return image
    if in_channels == 1:  # ITU-R BT.601 luma
        return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None].astype(np.float32)
    return np.repeat(image[:1], in_channels, axis=0)


def _normalize(image: np.ndarray, how: str) -> np.ndarray:
    if how == "zscore":
        return (image - image.mean()) / max(float(image.std()), 1e-6)
    if how == "minmax":
        lo, hi = float(image.min()), float(image.max())
        return (image - lo) / max(hi - lo, 1e-6)
    return image


def _resize(t: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")
    downscale = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=downscale)


def preprocess_image(image: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, Geometry]:
    """Image ``[C, H, W]`` (any C in 1 or 3, any H, W) -> model input ``[in_channels, *size]`` float32."""
    image = _normalize(_to_channels(image.astype(np.float32, copy=False), cfg.in_channels), cfg.normalize)
    geom = geometry_for(image.shape[-2], image.shape[-1], cfg)
    inner = _resize(torch.from_numpy(np.ascontiguousarray(image))[None], (geom.inner_h, geom.inner_w), "bilinear")[0]
    if cfg.mode == "resize":
        return inner.numpy().astype(np.float32, copy=False), geom
    out = torch.full((image.shape[0], geom.out_h, geom.out_w), float(image.min()), dtype=torch.float32)
    out[:, geom.top:geom.top + geom.inner_h, geom.left:geom.left + geom.inner_w] = inner
    return out.numpy(), geom


def preprocess_mask(mask: np.ndarray, geom: Geometry) -> np.ndarray:
    """Label map ``[H, W]`` -> ``[out_h, out_w]`` uint8 with the same geometry (nearest neighbour, pad = 0)."""
    t = torch.from_numpy(mask.astype(np.float32))[None, None]
    inner = _resize(t, (geom.inner_h, geom.inner_w), "nearest")[0, 0]
    out = torch.zeros((geom.out_h, geom.out_w), dtype=torch.float32)
    out[geom.top:geom.top + geom.inner_h, geom.left:geom.left + geom.inner_w] = inner
    return out.numpy().astype(np.uint8)


def restore(probs: np.ndarray | torch.Tensor, geom: Geometry) -> np.ndarray:
    """Probabilities ``[C, out_h, out_w]`` at the model's size -> ``[C, orig_h, orig_w]`` float32 (bilinear)."""
    t = torch.as_tensor(probs, dtype=torch.float32)
    t = t[:, geom.top:geom.top + geom.inner_h, geom.left:geom.left + geom.inner_w][None]
    return _resize(t, (geom.orig_h, geom.orig_w), "bilinear")[0].numpy()
