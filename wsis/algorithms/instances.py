"""Instance pseudo-labels from displacement fields and random-walk scores (Ahn et al. 2019, step 6)."""

from __future__ import annotations

import numpy as np
from skimage.measure import label as connected_components


def bilinear_sample(field: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample (C, h, w) ``field`` at float coordinates inside the grid -> (C, n)."""
    h, w = field.shape[1:]
    y0 = np.clip(np.floor(ys).astype(np.int64), 0, h - 1)
    x0 = np.clip(np.floor(xs).astype(np.int64), 0, w - 1)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = ys - y0, xs - x0
    return (field[:, y0, x0] * (1 - fy) * (1 - fx) + field[:, y0, x1] * (1 - fy) * fx
            + field[:, y1, x0] * fy * (1 - fx) + field[:, y1, x1] * fy * fx)


def find_centroids(displacement: np.ndarray, iterations: int = 300) -> np.ndarray:
    """Move every pixel ``iterations`` times by the displacement at its current (sub-pixel)
    position, clipped to the grid; returns the rounded end points (2, h, w) as int."""
    _, h, w = displacement.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    ys, xs = ys.ravel(), xs.ravel()
    field = displacement.astype(np.float64)
    for _ in range(iterations):
        dy, dx = bilinear_sample(field, ys, xs)
        ys = np.clip(ys + dy, 0, h - 1)
        xs = np.clip(xs + dx, 0, w - 1)
    return np.stack([np.round(ys), np.round(xs)]).astype(np.int64).reshape(2, h, w)


def cluster_instances(displacement: np.ndarray, centroids: np.ndarray, threshold: float = 2.5) -> np.ndarray:
    """Class-agnostic instance map (h, w): 1..I, 0 where the centroid lands in no cluster.

    Clusters are the 4-connected components of the region where |D| < threshold; each pixel
    joins the component its centroid lands in."""
    weak = np.hypot(displacement[0], displacement[1]) < threshold
    components = connected_components(weak, connectivity=1)
    landed = components[centroids[0], centroids[1]]
    used = np.unique(landed[landed > 0])
    lut = np.zeros(components.max() + 1, np.int64)
    lut[used] = np.arange(1, len(used) + 1)
    return lut[landed]


def instance_seeds(cams: np.ndarray, instance_map: np.ndarray) -> np.ndarray:
    """(K * I, h, w): the CAM of each class restricted to each instance; channel k * I + i."""
    n = int(instance_map.max())
    onehot = instance_map[None] == np.arange(1, n + 1)[:, None, None]      # (I, h, w)
    return (cams[:, None] * onehot[None]).reshape(-1, *instance_map.shape).astype(np.float32)


def detections(scores: np.ndarray, classes, n_instances: int, bg_threshold: float,
               min_area_fraction: float = 0.01):
    """Split the argmax of [bg_threshold, scores] into connected components, one detection each.

    ``scores`` (K * I, H, W) are normalised random-walk values, channel k * I + i for class
    ``classes[k]``. Returns (instance map (H, W) int32 with 0 = none and n = detection n,
    detection classes (N,), detection scores (N,)); a detection's score is the max of its
    channel inside it, or 0 when its area is under ``min_area_fraction`` of the image."""
    h, w = scores.shape[1:]
    out = np.zeros((h, w), np.int32)
    det_classes, det_scores = [], []
    if scores.shape[0] == 0:
        return out, np.zeros(0, np.int64), np.zeros(0, np.float32)
    full = np.concatenate([np.full((1, h, w), bg_threshold, scores.dtype), scores])
    winner = full.argmax(0)
    for ch in np.unique(winner[winner > 0]):
        parts = connected_components(winner == ch, connectivity=2)
        for part in range(1, parts.max() + 1):
            mask = parts == part
            area = int(mask.sum())
            score = float(scores[ch - 1][mask].max()) if area >= min_area_fraction * h * w else 0.0
            det_classes.append(int(classes[(ch - 1) // max(n_instances, 1)]))
            det_scores.append(score)
            out[mask] = len(det_scores)
    return out, np.array(det_classes, np.int64), np.array(det_scores, np.float32)
