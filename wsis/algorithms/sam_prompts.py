"""Prompts for the Segment Anything Model (SAM) from IRN instances, and the choice of its masks.

Pure functions on arrays; the model itself is in ``wsis.models.sam``. The geometry is SAM's
(Kirillov et al., "Segment Anything", ICCV 2023, and its reference predictor): the image is
resized so that its longer side is the encoder's input size (1024 for the released models),
the shorter side to ``int(side * scale + 0.5)``, and padded at the bottom and right to a
square; point and box coordinates are pixel coordinates (x, y) scaled by the same factors
(the prompt encoder adds the half pixel); a mask prompt is a logit map at a quarter of the
padded input (256 x 256 for 1024).

Per instance, as an annotator would click in CVAT: its box (the mask's extreme pixels,
inclusive), positive points (the displacement centroid, then the highest-CAM pixels of the
instance, spread apart) and negative points (on every other instance). Of SAM's three
candidate masks the one with the best predicted IoU among those that agree with the IRN mask
(IoU >= ``min_agreement``, and a predicted IoU above 0) is taken; when none agrees the IRN mask
stays.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

POINT_PAD = -1   # SAM's label of a padding point (embedded as "not a point")


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) of an image resized so that its longer side is ``long_side``, as SAM does it."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def to_model_frame(xy: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """Pixel coordinates (..., 2) as (x, y) in the original image -> in the resized and padded
    model input (padding is at the bottom and right, so it shifts nothing). Boxes (x0, y0, x1,
    y1) go through as (..., 2, 2)."""
    h, w = original_size
    new_h, new_w = resized_shape(h, w, long_side)
    out = np.asarray(xy, np.float64).copy()
    out[..., 0] *= new_w / w
    out[..., 1] *= new_h / h
    return out


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float boxes (x0, y0, x1, y1) of (N, H, W) non-empty masks, inclusive extremes."""
    boxes = np.zeros((len(masks), 4), np.float64)
    for i, m in enumerate(masks):
        ys = np.flatnonzero(m.any(1))
        xs = np.flatnonzero(m.any(0))
        boxes[i] = xs[0], ys[0], xs[-1], ys[-1]
    return boxes


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(y, x) of the mask pixel farthest from its outside (first in raster order on ties)."""
    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), mask.shape)
    return int(y), int(x)


def grid_to_pixel(cells: np.ndarray, processing_size: tuple[int, int],
                  original_size: tuple[int, int]) -> np.ndarray:
    """Stride-4 cell indices (..., 2) as (row, col) -> the original image's pixel (row, col)
    holding the cell's centre. Cell i covers processing pixels [4i, 4i + 4) (the bilinear x4
    of ``upsample_normalised``); ``data.max_side`` may have shrunk the processing image."""
    scale = np.array(original_size, np.float64) / np.array(processing_size, np.float64)
    pixel = np.floor((4 * np.asarray(cells, np.float64) + 2) * scale).astype(np.int64)
    return np.minimum(pixel, np.array(original_size) - 1)


def displacement_centroid(mask: np.ndarray, endpoints: np.ndarray, processing_size: tuple[int, int]) -> tuple[int, int]:
    """(y, x) in the original image: where most of the instance's stride-4 cells end up when
    they follow IRNet's displacement field (``endpoints`` (2, h, w) from
    ``wsis.algorithms.instances.find_centroids``), i.e. the instance's centroid. A cell belongs
    to the instance when the pixel at its centre does. When that point is off the mask (a
    concave object, or no cell centre on a small one), the mask's most interior pixel."""
    h, w = endpoints.shape[1:]
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    centre = grid_to_pixel(np.stack([rows, cols], -1), processing_size, mask.shape)
    inside = mask[centre[..., 0], centre[..., 1]]
    if inside.any():
        landed = endpoints[0][inside] * w + endpoints[1][inside]
        cell = int(np.argmax(np.bincount(landed, minlength=h * w)))
        y, x = grid_to_pixel(np.array([cell // w, cell % w]), processing_size, mask.shape)
        if mask[y, x]:
            return int(y), int(x)
    return interior_point(mask)


def resample_nearest(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> (H, W): each output pixel takes the input pixel under its centre."""
    h, w = image.shape
    ys = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return image[ys[:, None], xs[None, :]]


def positive_points(mask: np.ndarray, first: tuple[int, int], score: np.ndarray | None, extra: int) -> np.ndarray:
    """(P, 2) points (x, y): ``first`` (the centroid), then up to ``extra`` pixels of the mask
    with the highest ``score`` (the class's CAM), each at least a quarter of the mask's
    equivalent side (sqrt(area) / 4, at least 1 pixel) away from the points before it, so
    that the clicks spread over the object instead of piling up at the CAM's peak."""
    points = [first]
    if score is not None and extra > 0:
        spacing = max(1.0, 0.25 * float(np.sqrt(mask.sum())))
        ys, xs = np.nonzero(mask)
        values = score[ys, xs].astype(np.float64)
        free = np.hypot(ys - first[0], xs - first[1]) >= spacing
        for _ in range(extra):
            if not free.any():
                break
            k = int(np.argmax(np.where(free, values, -np.inf)))
            points.append((int(ys[k]), int(xs[k])))
            free &= np.hypot(ys - ys[k], xs - xs[k]) >= spacing
    return np.array([(x, y) for y, x in points], np.float64)


def point_prompts(positives: list[np.ndarray], negatives_each: int,
                  give_negatives: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, P, 2) and labels (N, P) for N instances: instance i's positive points
    (label 1), then the first ``negatives_each`` positive points of every other instance that
    ``give_negatives`` allows (default all) as negatives (label 0), padded with label -1 to
    the longest list so that all prompts go through the decoder as one batch."""
    n = len(positives)
    give = np.ones(n, bool) if give_negatives is None else np.asarray(give_negatives, bool)
    rows = []
    for i in range(n):
        neg = [positives[j][:negatives_each] for j in range(n) if j != i and give[j]]
        neg = np.concatenate(neg) if neg else np.zeros((0, 2))
        rows.append((positives[i], neg))
    width = max((len(p) + len(q) for p, q in rows), default=0)
    coords = np.zeros((n, width, 2), np.float64)
    labels = np.full((n, width), POINT_PAD, np.int64)
    for i, (p, q) in enumerate(rows):
        coords[i, :len(p)], labels[i, :len(p)] = p, 1
        coords[i, len(p):len(p) + len(q)], labels[i, len(p):len(p) + len(q)] = q, 0
    return coords, labels


# The mask prompt's logit inside (+) and outside (-) the coarse mask. SAM was trained with its
# own previous low-res logits as the mask prompt; a binary mask has none, so it is given as
# logits of this magnitude (sigmoid(8) = 0.9997), zero where a low-res cell is half covered.
MASK_PROMPT_LOGIT = 8.0


def mask_prompt_logits(masks: np.ndarray, long_side: int, logit: float = MASK_PROMPT_LOGIT) -> np.ndarray:
    """(N, H, W) bool masks -> (N, 1, long_side / 4, long_side / 4) float32 mask prompts:
    each mask resized like the image (area resampling), padded at the bottom and right as the
    image is (outside), averaged over 4 x 4 cells to the fraction f it covers of each low-res
    cell, and given as (2 f - 1) * logit."""
    n, h, w = masks.shape
    new_h, new_w = resized_shape(h, w, long_side)
    x = torch.from_numpy(np.ascontiguousarray(masks, np.float32))[:, None]
    x = F.interpolate(x, (new_h, new_w), mode="area")
    x = F.pad(x, (0, long_side - new_w, 0, long_side - new_h))
    covered = F.avg_pool2d(x, 4)
    return ((2.0 * covered - 1.0) * logit).numpy().astype(np.float32)


def mask_ious(candidates: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(N, M) IoU of each of the M candidate masks (N, M, H, W) with its reference (N, H, W)."""
    c = torch.from_numpy(np.ascontiguousarray(candidates)).flatten(2)
    r = torch.from_numpy(np.ascontiguousarray(reference)).flatten(1)[:, None]
    inter = (c & r).sum(-1).double()
    union = (c | r).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), 0.0).numpy()


def select_masks(candidates: np.ndarray, predicted_iou: np.ndarray, reference: np.ndarray,
                 min_agreement: float) -> tuple[np.ndarray, np.ndarray]:
    """For each instance, the index of the candidate with the best predicted IoU among those
    whose IoU with the reference (IRN) mask is at least ``min_agreement`` (and that SAM itself
    rates above 0), or -1 when none is (the IRN mask stays). Returns (chosen (N,) int64, IoU
    with the reference of every candidate (N, M))."""
    agreement = mask_ious(candidates, reference)
    eligible = (agreement >= min_agreement) & (predicted_iou > 0)
    ranked = np.where(eligible, predicted_iou, -np.inf)
    chosen = np.where(eligible.any(1), np.argmax(ranked, 1), -1)
    return chosen.astype(np.int64), agreement


def combine_scores(irn_scores: np.ndarray, predicted_iou: np.ndarray, chosen: np.ndarray,
                   weight: float) -> np.ndarray:
    """The score of each instance: for a refined one the weighted geometric mean
    irn ^ (1 - weight) * iou ^ weight of its IRN score and SAM's predicted IoU of the chosen
    mask (at most 1); a kept IRN mask keeps its IRN score, and a zero IRN score (a
    fragment under ins_seg.min_area_fraction) stays zero."""
    irn = np.asarray(irn_scores, np.float64)
    rows = np.arange(len(chosen))
    iou = np.clip(np.asarray(predicted_iou, np.float64)[rows, np.maximum(chosen, 0)], 0.0, 1.0)
    mixed = np.where(irn > 0, np.power(np.maximum(irn, 0.0), 1.0 - weight) * np.power(iou, weight), 0.0)
    return np.where(chosen >= 0, mixed, irn).astype(np.float32)


def paint_instances(masks: np.ndarray, irn_map: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One instance map (H, W) int32 (0 none, n instance n) from overlapping final masks
    (N, H, W): a pixel claimed by several masks goes to the instance whose IRN mask
    (``irn_map`` == n) holds it, else to the highest-scoring claimant (the lower index on a
    tie). So every instance keeps at least its final mask within its own IRN mask: all of it
    when the IRN mask was kept, and a non-empty part when SAM's mask agreed with it (IoU > 0)."""
    out = np.zeros(irn_map.shape, np.int32)
    order = np.lexsort((-np.arange(len(scores)), np.asarray(scores)))    # rising score, ties: lower index last
    for i in order:
        out[masks[i]] = i + 1
    for i in range(len(masks)):
        own = masks[i] & (irn_map == i + 1)
        out[own] = i + 1
    return out
