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


class InstanceAP:
    """VOC instance-segmentation AP per class, accumulated one image at a time.

    ``add`` takes one image's predictions and ground truth, computes the IoU of each prediction
    with the ground truths of its class, and keeps only (score, image index, IoU row) per
    prediction and the ground-truth count per class; the masks can be dropped afterwards, so
    memory grows with the number of detections, not with their pixels.

    Detections of a class are ranked by score over the whole set (ties keep the order in
    which they were added); each is matched to its highest-IoU ground truth of that class,
    and is a true positive if that IoU reaches the threshold and the ground truth was not
    matched before. ``result`` returns {threshold: array (num_classes,)} with NaN where a
    class has no ground truth.
    """

    def __init__(self, num_classes: int, iou_thresholds=(0.25, 0.5, 0.7, 0.75)):
        self.num_classes = num_classes
        self.iou_thresholds = tuple(iou_thresholds)
        self.detections: list[list[tuple[float, int, np.ndarray]]] = [[] for _ in range(num_classes)]
        self.num_gt = np.zeros(num_classes, np.int64)
        self.num_images = 0

    def add(self, pred_masks: np.ndarray, pred_classes: np.ndarray, pred_scores: np.ndarray,
            gt_masks: np.ndarray, gt_classes: np.ndarray) -> None:
        """One image: predicted masks (N, H, W) bool, classes (N,), scores (N,); ground-truth
        masks (M, H, W) bool, classes (M,). Classes outside 0..num_classes-1 are ignored."""
        k = self.num_images
        self.num_images += 1
        pred_classes, gt_classes = np.asarray(pred_classes), np.asarray(gt_classes)
        present = np.unique(np.concatenate([pred_classes, gt_classes]).astype(np.int64))
        for c in present[(present >= 0) & (present < self.num_classes)]:
            g = gt_masks[gt_classes == c]
            self.num_gt[c] += len(g)
            sel = pred_classes == c
            if not sel.any():
                continue
            ious = mask_iou(pred_masks[sel], g) if len(g) else np.zeros((int(sel.sum()), 0))
            for score, row in zip(pred_scores[sel], ious):
                self.detections[c].append((float(score), k, row.copy()))

    def result(self) -> dict:
        out = {}
        ranked = [sorted(d, key=lambda t: -t[0]) for d in self.detections]
        for t in self.iou_thresholds:
            aps = np.full(self.num_classes, np.nan)
            for c in range(self.num_classes):
                if self.num_gt[c] == 0:
                    continue
                matched: set[tuple[int, int]] = set()
                tp = np.zeros(len(ranked[c]))
                for i, (_, k, row) in enumerate(ranked[c]):
                    if len(row) == 0:
                        continue
                    j = int(row.argmax())
                    if row[j] >= t and (k, j) not in matched:
                        matched.add((k, j))
                        tp[i] = 1
                ctp = np.cumsum(tp)
                recall = ctp / self.num_gt[c]
                precision = ctp / np.arange(1, len(ranked[c]) + 1)
                aps[c] = average_precision(recall, precision) if len(ranked[c]) else 0.0
            out[t] = aps
        return out


def instance_ap(predictions, ground_truths, num_classes: int, iou_thresholds=(0.25, 0.5, 0.7, 0.75)) -> dict:
    """``InstanceAP`` over lists: ``predictions`` per image (masks, classes, scores),
    ``ground_truths`` per image (masks, classes)."""
    acc = InstanceAP(num_classes, iou_thresholds)
    for (pm, pc, ps), (gm, gc) in zip(predictions, ground_truths):
        acc.add(pm, pc, ps, gm, gc)
    return acc.result()
