"""Score maps -> label maps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def scores_to_label(scores: np.ndarray, classes, bg_threshold: float) -> np.ndarray:
    """Prepend a constant background score, argmax, map channels back to labels 0..C.

    ``scores`` is (K, H, W) for the image's classes ``classes`` (0-based foreground indices)."""
    h, w = scores.shape[1:]
    full = np.concatenate([np.full((1, h, w), bg_threshold, scores.dtype), scores], axis=0)
    lut = np.array([0] + [c + 1 for c in classes], np.uint8)
    return lut[full.argmax(0)]


def resize_scores(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W) bilinear; unchanged when the size already matches (CAMs made at
    a ``data.max_side`` processing size, compared with full-size ground truth)."""
    if tuple(scores.shape[1:]) == tuple(size):
        return scores
    if scores.shape[0] == 0:
        return np.zeros((0,) + tuple(size), scores.dtype)
    x = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))[None]
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)[0].numpy()


def upsample_normalised(scores: np.ndarray, size: tuple[int, int],
                        out_size: tuple[int, int] | None = None) -> np.ndarray:
    """(C, h, w) stride-4 scores -> (C, H, W): bilinear x4, cropped to the image, divided by
    the global maximum (Ahn et al. 2019, steps 5-6). ``size`` is the (processing) image size the
    scores were computed at; ``out_size`` (default ``size``), the image's original size when
    ``data.max_side`` shrank it, gets a further bilinear resize."""
    out_size = tuple(size if out_size is None else out_size)
    if scores.shape[0] == 0:
        return np.zeros((0,) + out_size, np.float32)
    x = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))[None]
    up = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)[0, :, :size[0], :size[1]]
    if out_size != tuple(up.shape[1:]):
        up = F.interpolate(up[None], size=out_size, mode="bilinear", align_corners=False)[0]
    peak = float(up.max())
    return (up / peak if peak > 0 else up).numpy()
