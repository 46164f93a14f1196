"""Instance pseudo-labels from displacement fields and random-walk scores (Ahn et al. 2019, step 6)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import label as connected_components


def find_centroids(displacement: np.ndarray, iterations: int = 300) -> np.ndarray:
    """Move every pixel ``iterations`` times by the displacement at its current (sub-pixel)
    position, clipped to the grid; returns the rounded end points (2, h, w) as int.

    The positions are kept in ``grid_sample``'s [-1, 1] coordinates (corners aligned, so this
    is plain bilinear interpolation between the 4 neighbours), in float64: one sampling call per
    step for all pixels instead of a dozen gathers."""
    _, h, w = displacement.shape
    field = torch.from_numpy(np.ascontiguousarray(displacement, np.float64))[None]
    # grid coordinate = pixel * scale - 1; a pixel step of D is a grid step of D * scale
    scale = torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)], dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    grid = (torch.stack([xs, ys], -1).reshape(1, 1, -1, 2) * scale - 1.0).contiguous()
    step_scale = scale.flip(0)[:, None]                                      # (dy, dx) order
    for _ in range(iterations):
        moved = F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)
        grid += (moved[0, :, 0] * step_scale).flip(0).T[None, None]
        grid.clamp_(-1.0, 1.0)
    xy = (grid[0, 0] + 1.0) / scale
    xy[:, 0] = xy[:, 0] if w > 1 else 0.0
    xy[:, 1] = xy[:, 1] if h > 1 else 0.0
    return torch.stack([xy[:, 1].round(), xy[:, 0].round()]).long().reshape(2, h, w).numpy()


def cluster_instances(displacement: np.ndarray, centroids: np.ndarray, threshold: float = 2.5) -> np.ndarray:
    """Class-agnostic instance map (h, w) with values 1..I, every pixel in one instance.

    Clusters are the 4-connected components of the region where |D| < threshold; each pixel
    joins the component its centroid lands in. As in the reference code (the component label
    + 1, ranks of its distinct values, one-hot), the pixels whose centroid lands in no cluster
    form one instance of their own, and it comes first: when there are such pixels they are
    instance 1 and the clusters follow in component order; with no weak region at all, the
    whole grid is instance 1."""
    weak = np.hypot(displacement[0], displacement[1]) < threshold
    components = connected_components(weak, connectivity=1)
    landed = components[centroids[0], centroids[1]]
    used = np.unique(landed)
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
    channel inside it, or 0 when its area is under ``min_area_fraction`` of the image.
    Components are 4-connected, as in the reference code; detections are ordered by channel,
    then by their first pixel in raster order.

    One labelling of the whole winner map (regions of equal winner are its components) and
    per-component reductions replace a labelling and full-image masks per channel."""
    h, w = scores.shape[1:]
    if scores.shape[0] == 0:
        return np.zeros((h, w), np.int32), np.zeros(0, np.int64), np.zeros(0, np.float32)
    best, channel = torch.from_numpy(np.ascontiguousarray(scores)).max(0)     # first max wins
    best = best.numpy()
    winner = np.where(best > np.asarray(bg_threshold, scores.dtype), channel.numpy() + 1, 0)  # ties: bg
    components = connected_components(winner, connectivity=1, background=0)
    n = int(components.max())
    flat = components.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    comp_channel = np.zeros(n + 1, np.int64)
    comp_channel[flat] = winner.ravel()
    peak = torch.zeros(n + 1, dtype=torch.from_numpy(best).dtype).scatter_reduce_(
        0, torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(best.ravel()), "amax", include_self=False)
    order = np.lexsort((np.arange(n), comp_channel[1:]))
    rank = np.zeros(n + 1, np.int32)
    rank[order + 1] = np.arange(1, n + 1)
    det_classes = np.asarray(classes, np.int64)[(comp_channel[order + 1] - 1) // max(n_instances, 1)]
    det_scores = np.where(area[order] >= min_area_fraction * h * w, peak.numpy()[order + 1], 0.0)
    return rank[components], det_classes.astype(np.int64), det_scores.astype(np.float32)
