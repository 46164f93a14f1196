"""Instance pseudo-labels from displacement fields and random-walk scores (Ahn et al. 2019, step 6)."""

from __future__ import annotations

from typing import NamedTuple

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
    return join_landing_component(connected_components(weak, connectivity=1), centroids)


def join_landing_component(components: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each pixel gets the component (h, w; 0 = none) its end point lands in, renumbered
    1..I in component order over the components some pixel lands in; landing on 0 is one
    more instance, and it comes first (the reference's component label + 1, compressed)."""
    landed = components[centroids[0], centroids[1]]
    used = np.unique(landed)
    lut = np.zeros(components.max() + 1, np.int64)
    lut[used] = np.arange(1, len(used) + 1)
    return lut[landed]


def cluster_endpoints(centroids: np.ndarray, voters: np.ndarray) -> np.ndarray:
    """Class-agnostic instance map (h, w) with values 1..I from the end points themselves.

    The cells where at least one ``voters`` pixel (h, w) bool, e.g. the CAM foreground, ends
    its walk are grouped into 8-connected clusters, and every pixel joins the cluster its end
    point lands in; pixels landing outside every cluster form one instance of their own, first,
    as in ``cluster_instances``.

    Why: ``cluster_instances`` groups the region where |D| < threshold, which assumes objects
    much wider than the threshold (VOC: ~25 stride-4 cells against 2.5). On objects a few
    cells across, that region covers most of each object and the flat background between
    them, so neighbouring objects join one cluster whatever the field says. Their end points
    stay apart as long as the field points to separate centres."""
    landing = np.zeros(centroids.shape[1:], bool)
    landing[centroids[0][voters], centroids[1][voters]] = True
    return join_landing_component(connected_components(landing, connectivity=2), centroids)


def instance_seeds(cams: np.ndarray, instance_map: np.ndarray) -> np.ndarray:
    """(K * I, h, w): the CAM of each class restricted to each instance; channel k * I + i."""
    n = int(instance_map.max())
    onehot = instance_map[None] == np.arange(1, n + 1)[:, None, None]      # (I, h, w)
    return (cams[:, None] * onehot[None]).reshape(-1, *instance_map.shape).astype(np.float32)


SCORES = ("peak", "mean")


def detections(scores: np.ndarray, classes, n_instances: int, bg_threshold: float,
               min_area_fraction: float = 0.01, score: str = "peak"):
    """Split the argmax of [bg_threshold, scores] into connected components, one detection each.

    ``scores`` (K * I, H, W) are normalised random-walk values, channel k * I + i for class
    ``classes[k]``. Returns (instance map (H, W) int32 with 0 = none and n = detection n,
    detection classes (N,), detection scores (N,)); a detection's score is its channel's
    value inside it, reduced by ``score``, or 0 when its area is under ``min_area_fraction``
    of the image:

    - "peak", the reference code's: the max. Each channel is normalised to a max of 1, so
      every whole instance scores 1 and only fragments rank below; AP then orders the ties
      arbitrarily.
    - "mean": the mean over the detection, which ranks masks by how sure the walk is of their
      whole extent, as SOLOv2 rescores its masks by their mean soft value ("maskness",
      Wang et al. 2020). A mask that spreads over a neighbour's pixels, where its channel is
      lower, scores lower.
    Components are 4-connected, as in the reference code; detections are ordered by channel,
    then by their first pixel in raster order.

    One labelling of the whole winner map (regions of equal winner are its components) and
    per-component reductions replace a labelling and full-image masks per channel."""
    if score not in SCORES:
        raise ValueError(f"detection score '{score}' is not one of {', '.join(SCORES)}")
    h, w = scores.shape[1:]
    if scores.shape[0] == 0:
        return np.zeros((h, w), np.int32), np.zeros(0, np.int64), np.zeros(0, np.float32)
    best, channel = torch.from_numpy(np.ascontiguousarray(scores)).max(0)     # first max wins
    best = best.numpy()
    winner = np.where(best > np.asarray(bg_threshold, scores.dtype), channel.numpy() + 1, 0)  # ties: bg
    components = connected_components(winner, connectivity=1, background=0)
    n = int(components.max())
    flat = components.ravel()
    pixels = np.bincount(flat, minlength=n + 1)
    area = pixels[1:]
    comp_channel = np.zeros(n + 1, np.int64)
    comp_channel[flat] = winner.ravel()
    if score == "peak":
        value = torch.zeros(n + 1, dtype=torch.from_numpy(best).dtype).scatter_reduce_(
            0, torch.from_numpy(flat.astype(np.int64)), torch.from_numpy(best.ravel()), "amax",
            include_self=False).numpy()
    else:
        value = np.bincount(flat, weights=best.ravel(), minlength=n + 1) / np.maximum(pixels, 1)
    order = np.lexsort((np.arange(n), comp_channel[1:]))
    rank = np.zeros(n + 1, np.int32)
    rank[order + 1] = np.arange(1, n + 1)
    det_classes = np.asarray(classes, np.int64)[(comp_channel[order + 1] - 1) // max(n_instances, 1)]
    det_scores = np.where(area[order] >= min_area_fraction * h * w, value[order + 1], 0.0)
    return rank[components], det_classes.astype(np.int64), det_scores.astype(np.float32)


class Synthesis(NamedTuple):
    """One image's instance pseudo-labels and what they were made from."""
    instances: np.ndarray        # (H, W) int32 at out_size: 0 none, n detection n
    classes: np.ndarray          # (N,) class of each detection
    scores: np.ndarray           # (N,) float32 score of each detection (0: under min area)
    score_maps: np.ndarray       # (K * I, H, W) normalised random-walk scores
    clusters: np.ndarray         # (h, w) class-agnostic instance map of the displacement clusters
    centroids: np.ndarray | None  # (2, h, w) end point of each cell's centroid search (None: clusters given)


def synthesize_instances(cams: np.ndarray, classes, boundary: np.ndarray, displacement: np.ndarray,
                         cfg: dict, device: str, size: tuple[int, int],
                         out_size: tuple[int, int] | None = None, clusters: np.ndarray | None = None) -> Synthesis:
    """One image's instance pseudo-labels (Ahn et al. 2019, step 6), from its stride-4 CAMs
    (K, h, w) of ``classes``, boundary map (h, w) and displacement field (2, h, w), with the
    config's ``ins_seg`` and ``random_walk`` settings.

    The end points of the field are clustered (``ins_seg.clustering``: "weak_region", the
    paper's |D| < cluster_threshold regions, or "endpoints", ``cluster_endpoints`` over the
    CAM foreground; ``clusters`` (h, w), if given, stands in for them); each cluster's CAM
    seeds are random-walked for 2^exp_times steps (``ins_seg.exp_times``, or the walk's own
    when it is -1), upsampled to the processing size ``size`` (then ``out_size``, the original
    size) and split into detections (``detections``, scored by ``ins_seg.score``)."""
    from .labels import upsample_normalised
    from .random_walk import random_walk
    c, rw = cfg["ins_seg"], cfg["random_walk"]
    centroids = None
    if clusters is None:
        centroids = find_centroids(displacement, c["centroid_iterations"])
        if c["clustering"] == "endpoints":
            clusters = cluster_endpoints(centroids, cams.max(0, initial=0.0) > c["bg_threshold"])
        else:
            clusters = cluster_instances(displacement, centroids, c["cluster_threshold"])
    exp_times = rw["exp_times"] if c["exp_times"] < 0 else c["exp_times"]
    walked = random_walk(instance_seeds(cams, clusters), boundary, rw["radius"], rw["beta"], exp_times,
                         rw["tolerance"], device)
    score_maps = upsample_normalised(walked, size, out_size)
    inst, det_classes, det_scores = detections(score_maps, classes, int(clusters.max()), c["bg_threshold"],
                                               c["min_area_fraction"], c["score"])
    return Synthesis(inst, det_classes, det_scores, score_maps, clusters, centroids)
