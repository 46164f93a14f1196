"""Segmentation metrics on label maps (pure numpy)."""

from __future__ import annotations

import numpy as np

IGNORE = 255


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts, rows = ground truth, columns = prediction.

    Pixels whose ground truth is 255 (or otherwise >= num_labels) are ignored."""
    gt = gt.ravel().astype(np.int64)
    pred = pred.ravel().astype(np.int64)
    keep = gt < num_labels
    return np.bincount(num_labels * gt[keep] + pred[keep],
                       minlength=num_labels ** 2).reshape(num_labels, num_labels)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-label IoU = TP / (TP + FP + FN); NaN for labels absent from both GT and prediction."""
    tp = np.diag(conf).astype(np.float64)
    denom = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(conf: np.ndarray) -> float:
    return float(np.nanmean(iou_from_confusion(conf)))


def cam_to_label(cams: np.ndarray, classes, bg_threshold: float) -> np.ndarray:
    """Prepend a constant background score, argmax, map channels back to labels 0..C.

    ``cams`` is (K, H, W) for the image's classes ``classes`` (0-based foreground indices)."""
    h, w = cams.shape[1:]
    scores = np.concatenate([np.full((1, h, w), bg_threshold, cams.dtype), cams], axis=0)
    lut = np.array([0] + [c + 1 for c in classes], np.uint8)
    return lut[scores.argmax(0)]
