"""Reviewed masks as strong supervision for the stages that make the pseudo-labels.

A reviewed image (``wsis review import``) has exact instances: these pure functions turn them
into what each upstream stage learns from, in place of what it would infer from CAMs:
- ``instance_relation_labels``: ir_label's relation labels (classes, background) and the
  instance map whose boundaries IRNet's pair losses learn (pairs in two instances are
  negative, even of one class);
- ``centroid_displacements``: the displacement each pixel should have, to its instance's
  centroid (the field IRNet's displacement branch is meant to predict, Ahn et al. 2019, sec. 3.2);
- ``class_targets``: the share of each class-map cell that each class covers, for the CAM
  classifier's per-pixel loss (``pixel_class_loss``).

Mixing a few pixel-annotated images into weakly supervised training follows Papandreou et al.
(ICCV 2015, "Weakly- and semi-supervised learning of a DCNN for semantic image segmentation"):
per-pixel losses on the annotated images beside the image-level loss on all.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from wsis.coco import rle_decode

IGNORE = 255                 # class relation labels: no relation is learned here
INSTANCE_IGNORE = 65535      # instance maps (uint16): pixel in several instances


def reviewed_instances(entry: dict, size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A review store entry's instances: masks (N, H, W) bool and classes (N,) int64, at the
    image's size or resized (nearest) to ``size`` (the processing size, ``data.max_side``)."""
    h, w = entry["height"], entry["width"]
    instances = entry["instances"]
    masks = np.array([rle_decode(r["segmentation"]) for r in instances], bool).reshape(-1, h, w)
    classes = np.array([int(r["class"]) for r in instances], np.int64)
    if size is not None and tuple(size) != (h, w):
        masks = np.array([np.asarray(Image.fromarray(m).resize((size[1], size[0]), Image.NEAREST)) for m in masks],
                         bool).reshape(-1, *size)
    return masks, classes


def instance_map(masks: np.ndarray) -> np.ndarray:
    """(H, W) uint16: 0 in no instance, k in instance k (1-based) alone, INSTANCE_IGNORE where
    instances overlap. At most 65534 instances."""
    if len(masks) >= INSTANCE_IGNORE:
        raise ValueError(f"{len(masks)} instances: an instance map holds at most {INSTANCE_IGNORE - 1}")
    count = masks.sum(0)
    out = np.zeros(masks.shape[1:], np.uint16)
    for k, m in enumerate(masks, start=1):
        out[m] = k
    out[count > 1] = INSTANCE_IGNORE
    return out


def instance_relation_labels(masks: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ir_label's outputs from exact instances: (class labels (H, W) uint8, 0 background,
    c + 1 class c, IGNORE where instances overlap; ``instance_map``)."""
    instances = instance_map(masks)
    lut = np.zeros(INSTANCE_IGNORE + 1, np.uint8)
    lut[1:len(classes) + 1] = np.asarray(classes) + 1
    lut[INSTANCE_IGNORE] = IGNORE
    return lut[instances], instances


def region_labels(instances: np.ndarray) -> np.ndarray:
    """An instance map as IRNet's pair-loss labels (uint8: 0 background, 1..254 regions, 255
    ignored): what matters is which pixels share a label, so instance k becomes
    (k - 1) mod 254 + 1; two instances share a label only if 254 others lie between them in
    the numbering, which no image with fewer than 255 instances has."""
    out = ((instances.astype(np.int64) - 1) % 254 + 1).astype(np.uint8)
    out[instances == 0] = 0
    out[instances == INSTANCE_IGNORE] = IGNORE
    return out


def centroid_displacements(instances: np.ndarray) -> np.ndarray:
    """(H, W, 2) float32 (dy, dx) in pixels: from each pixel of instance k to the centroid of k
    (its mean pixel position), 0 on background, NaN where instances overlap (no target)."""
    h, w = instances.shape
    flat = instances.ravel().astype(np.int64)
    valid = (flat != INSTANCE_IGNORE)
    n = int(flat[valid].max(initial=0)) + 1
    ys, xs = np.divmod(np.arange(h * w), w)
    count = np.bincount(flat[valid], minlength=n).astype(np.float64)
    cy = np.bincount(flat[valid], ys[valid], minlength=n) / np.maximum(count, 1)
    cx = np.bincount(flat[valid], xs[valid], minlength=n) / np.maximum(count, 1)
    out = np.full((h * w, 2), np.nan, np.float32)
    k = flat[valid]
    out[valid, 0] = cy[k] - ys[valid]
    out[valid, 1] = cx[k] - xs[valid]
    out[valid & (flat == 0)] = 0.0
    return out.reshape(h, w, 2)


def class_channels(masks: np.ndarray, classes: np.ndarray, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """(H, W, K + 1) uint8: one channel per class present (1 where some instance of it is),
    then a channel of ones (the image, as against a crop's padding); and the K classes."""
    present = sorted(set(int(c) for c in classes))
    if any(not 0 <= c < num_classes for c in present):
        raise ValueError(f"classes {present} outside 0..{num_classes - 1}")
    h, w = masks.shape[1:]
    out = np.zeros((h, w, len(present) + 1), np.uint8)
    for j, c in enumerate(present):
        out[..., j] = masks[np.asarray(classes) == c].any(0)
    out[..., -1] = 1
    return out, present


def class_targets(channels: np.ndarray, present: list[int], num_classes: int, grid: tuple[int, int]) -> torch.Tensor:
    """(C + 1, gh, gw) float32 from a crop's ``class_channels``: the share of each cell of the
    class-map grid that each class covers, then the share that is image (not padding)."""
    x = torch.from_numpy(np.ascontiguousarray(channels)).permute(2, 0, 1).float()[None]
    pooled = F.adaptive_avg_pool2d(x, grid)[0]
    out = torch.zeros((num_classes + 1,) + tuple(grid))
    out[present] = pooled[:-1]
    out[-1] = pooled[-1]
    return out


def pixel_class_loss(class_maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy of the class maps (B, C, h, w logits) against the share
    of each cell each class covers (``class_targets``, B x (C + 1) x h x w), averaged over
    the classes and the cells that are mostly image; zero when no cell is (no reviewed image
    in the batch). Cells are weighted alike whatever the batch holds, so a batch with one
    reviewed image teaches its pixels as much as one with many."""
    if targets.shape[-2:] != class_maps.shape[-2:]:
        targets = F.adaptive_avg_pool2d(targets, class_maps.shape[-2:])
    valid = (targets[:, -1] > 0.5).to(class_maps.dtype)          # (B, h, w)
    n = valid.sum()
    if n == 0:
        return class_maps.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(class_maps, targets[:, :-1], reduction="none").mean(1)
    return (bce * valid).sum() / n
