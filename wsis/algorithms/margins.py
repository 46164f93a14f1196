"""How clearly the instance walk's argmax won on each detection: array math of instance
synthesis, stored by ins_seg beside the instances and read by the review queue's confidence
(wsis.review.confidence, its ``margin`` signal)."""

from __future__ import annotations

import numpy as np


def instance_margins(scores: np.ndarray, instance_map: np.ndarray, bg_threshold: float) -> np.ndarray:
    """Mean over each instance's pixels of best - second best of [bg_threshold, scores].

    ``scores`` (C, H, W) are the normalised walk scores ins_seg takes its argmax over;
    ``instance_map`` (H, W) holds 1..N. Returns (N,) float32."""
    n = int(instance_map.max())
    if n == 0 or scores.shape[0] == 0:
        return np.zeros(n, np.float32)
    h, w = instance_map.shape
    full = np.concatenate([np.full((1, h, w), bg_threshold, np.float32), scores.astype(np.float32)])
    if full.shape[0] == 1:
        return np.zeros(n, np.float32)
    top2 = -np.partition(-full, 1, axis=0)[:2]
    gap = (top2[0] - top2[1]).ravel()
    labels = instance_map.ravel()
    sums = np.bincount(labels, gap, minlength=n + 1)[1:]
    counts = np.bincount(labels, minlength=n + 1)[1:]
    return (sums / np.maximum(counts, 1)).astype(np.float32)
