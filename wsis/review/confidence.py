"""How much to trust each pseudo-instance and each image, and the order to review them in.

Pure functions on arrays. The signals, each in [0, 1], higher = more trustworthy:

- ``score``: the instance's score from ins_seg (the max of its random-walk channel);
- ``margin``: how clearly the walk's argmax won on the instance's pixels, as the mean of
  (best - second best) with the background's constant score counted as a channel, divided by
  its largest possible value 1 - bg_threshold (scores are normalised to max 1);
- ``semantic``: agreement with the semantic pseudo-label of the same image: the fraction of
  the instance's pixels that sem_seg gives the instance's class; per image, the IoU of the
  instances' class map with sem_seg's over the foreground;
- ``cam``: the same agreement with the CAM's own label map (CAMs with the constant
  background score eval_cam.bg_threshold, argmax). The walk spreads the CAM seeds up to
  IRNet's boundaries; where a boundary is weak it floods past the object, and the flood is
  where the walked labels leave the CAM's support (sem_seg floods with it, so only this signal
  sees it: measured on synthetic data, see benchmarks/review_order.py);
- ``model``: when a model has been trained (train_seg), the IoU of the instance with its
  matched prediction of the same class; per image, the matched IoU summed over pairs and
  divided by the pairs plus every unmatched instance on either side (so a missed object or
  a spurious one lowers it).

An instance's confidence is the mean of its signals. An image's confidence is the mean of its
least confident instance (a reviewer must fix the worst one) and its image-level semantic and
model agreement (which also see objects the instances missed); an image with no instance
scores 0, as its tags say something is there. The review queue is images by rising confidence.
"""

from __future__ import annotations

import numpy as np

from wsis.metrics import mask_iou


def match_instances(masks_a: np.ndarray, classes_a, masks_b: np.ndarray, classes_b,
                    min_iou: float = 0.0) -> list[tuple[int, int, float]]:
    """One-to-one pairs (i, j, IoU) of same-class masks with IoU > ``min_iou``, greedily by
    falling IoU."""
    if len(masks_a) == 0 or len(masks_b) == 0:
        return []
    iou = mask_iou(np.asarray(masks_a), np.asarray(masks_b))
    iou[np.asarray(classes_a)[:, None] != np.asarray(classes_b)[None]] = 0.0
    pairs, used_a, used_b = [], set(), set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, iou.shape)
        if iou[i, j] <= min_iou:
            break
        if i in used_a or j in used_b:
            continue
        used_a.add(i)
        used_b.add(j)
        pairs.append((int(i), int(j), float(iou[i, j])))
    return pairs


def matched_quality(pairs, n_a: int, n_b: int) -> float:
    """Sum of matched IoUs over (pairs + unmatched of both sides): 1 only for a perfect
    one-to-one agreement; 1 when both sides are empty."""
    denom = n_a + n_b - len(pairs)
    return 1.0 if denom == 0 else sum(p[2] for p in pairs) / denom


def best_iou_per_instance(pairs, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    for i, _, iou in pairs:
        out[i] = iou
    return out


def label_agreement(masks: np.ndarray, classes, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """(per instance: fraction of its pixels ``labels`` gives its class, per image: IoU of the
    instances' class map with ``labels`` over foreground pixels).

    ``labels`` is a label map (0 background, c + 1 class c): sem_seg's, or the CAM's."""
    per = np.array([(labels[m] == c + 1).mean() if m.any() else 0.0 for m, c in zip(masks, classes)],
                   np.float32)
    inst_map = np.zeros(labels.shape, np.int64)
    for m, c in zip(masks, classes):
        inst_map[m] = c + 1
    fg = (inst_map > 0) | (labels > 0)
    image = 1.0 if not fg.any() else float(((inst_map == labels) & fg).sum() / fg.sum())
    return per, image


def instance_confidence(signals: dict[str, np.ndarray]) -> np.ndarray:
    """Mean of the per-instance signals given (each (N,), in [0, 1])."""
    stacked = np.stack([np.clip(np.asarray(v, np.float64), 0, 1) for v in signals.values()])
    return stacked.mean(0)


def image_confidence(instance_conf: np.ndarray, image_signals: dict[str, float]) -> float:
    if len(instance_conf) == 0:
        return 0.0
    values = [float(instance_conf.min())] + [float(np.clip(v, 0, 1)) for v in image_signals.values()]
    return float(np.mean(values))


def review_order(image_conf: dict[str, float]) -> list[str]:
    """Image ids, least confident first (ties by id, so the order is reproducible)."""
    return sorted(image_conf, key=lambda i: (image_conf[i], i))


def first_last_fraction(values_in_order, fraction: float = 0.1) -> tuple[float, float]:
    """Mean of ``values_in_order`` over the first and over the last ``fraction`` of the queue."""
    v = np.asarray(values_in_order, np.float64)
    k = max(1, int(round(fraction * len(v))))
    return float(v[:k].mean()), float(v[-k:].mean())
