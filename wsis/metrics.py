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


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision/recall curve with precision made monotone (VOC 2010+ metric,
    not the 11-point 2007 one). ``recall`` must be non-decreasing."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]          # envelope: best precision at recall >= r
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def mean_ap(aps: np.ndarray) -> float:
    """Mean over the classes that have ground truth (NaN entries); 0 when none has."""
    return 0.0 if np.isnan(aps).all() else float(np.nanmean(aps))


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between every mask of a (N, H, W) and of b (M, H, W) -> (N, M)."""
    a = a.reshape(len(a), -1).astype(np.float32)
    b = b.reshape(len(b), -1).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def instance_ap(predictions, ground_truths, num_classes: int, iou_thresholds=(0.25, 0.5, 0.7, 0.75)) -> dict:
    """VOC instance-segmentation AP per class at each IoU threshold.

    ``predictions``: per image (masks (N, H, W) bool, classes (N,), scores (N,));
    ``ground_truths``: per image (masks (M, H, W) bool, classes (M,)). Detections of a class are
    ranked by score over the whole set; each is matched to its highest-IoU ground truth of that
    class, and is a true positive if that IoU reaches the threshold and the ground truth was not
    matched before. Returns {threshold: array (num_classes,) with NaN where a class has no GT}.
    """
    per_class = {}
    for c in range(num_classes):
        ranked = []          # (score, image index, best-IoU per GT row)
        n_gt = 0
        for k, ((pm, pc, ps), (gm, gc)) in enumerate(zip(predictions, ground_truths)):
            g = gm[gc == c]
            n_gt += len(g)
            sel = pc == c
            if not sel.any():
                continue
            ious = mask_iou(pm[sel], g) if len(g) else np.zeros((int(sel.sum()), 0))
            for score, row in zip(ps[sel], ious):
                ranked.append((float(score), k, row))
        ranked.sort(key=lambda t: -t[0])
        per_class[c] = (ranked, n_gt)
    out = {}
    for t in iou_thresholds:
        aps = np.full(num_classes, np.nan)
        for c, (ranked, n_gt) in per_class.items():
            if n_gt == 0:
                continue
            matched: set[tuple[int, int]] = set()
            tp = np.zeros(len(ranked))
            for i, (_, k, row) in enumerate(ranked):
                if len(row) == 0:
                    continue
                j = int(row.argmax())
                if row[j] >= t and (k, j) not in matched:
                    matched.add((k, j))
                    tp[i] = 1
            ctp = np.cumsum(tp)
            recall = ctp / n_gt
            precision = ctp / np.arange(1, len(ranked) + 1)
            aps[c] = average_precision(recall, precision) if len(ranked) else 0.0
        out[t] = aps
    return out
