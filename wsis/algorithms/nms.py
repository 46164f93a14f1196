"""Non-maximum suppression variants of the instance heads, as pure tensor functions."""

from __future__ import annotations

import torch
from torchvision.ops import box_iou


def mask_iou_matrix(masks: torch.Tensor) -> torch.Tensor:
    """IoU between every pair of (N, H, W) binary masks, by one matrix product."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-6), torch.zeros_like(inter))


def matrix_nms(masks: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor,
               kernel: str = "gaussian", sigma: float = 2.0) -> torch.Tensor:
    """Matrix NMS (Wang et al., SOLOv2, NeurIPS 2020): decayed scores, in the input order.

    ``scores`` must be sorted in descending order. For a mask j, every higher-scored mask i of
    the same class decays it by f(IoU_ij) / f(compensate_i), where compensate_i is the largest
    IoU of i with any mask scored above i; decay_j is the minimum over i. Gaussian
    f(x) = exp(-sigma x^2), linear f(x) = 1 - x."""
    n = len(scores)
    if n == 0:
        return scores
    iou = mask_iou_matrix(masks).triu(diagonal=1)
    same = (labels[:, None] == labels[None]).float().triu(diagonal=1)
    decay_iou = iou * same
    compensate = decay_iou.max(dim=0).values[:, None].expand(n, n)   # row i: compensate_i
    if kernel == "gaussian":
        decay = torch.exp(-sigma * (decay_iou ** 2 - compensate ** 2))
    elif kernel == "linear":
        decay = (1 - decay_iou) / (1 - compensate).clamp(min=1e-6)
    else:
        raise ValueError(f"matrix_nms kernel: {kernel}")
    return scores * decay.min(dim=0).values


def fast_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float = 0.5,
             top_k: int = 200, max_detections: int = 100) -> torch.Tensor:
    """Fast NMS (Bolya et al., YOLACT, ICCV 2019): indices of the kept detections.

    Per class, the ``top_k`` best detections are kept iff their largest IoU with any
    higher-scored detection of that class is <= ``iou_threshold`` - a suppressed detection
    may still suppress others, which is what makes it one matrix operation. Then the best
    ``max_detections`` over all classes, highest score first."""
    kept = []
    for c in labels.unique():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[scores[idx].argsort(descending=True)][:top_k]
        iou = box_iou(boxes[idx], boxes[idx]).triu(diagonal=1)
        max_iou = iou.max(dim=0).values if len(idx) else iou.new_zeros(0)
        kept.append(idx[max_iou <= iou_threshold])
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    kept = torch.cat(kept)
    return kept[scores[kept].argsort(descending=True)][:max_detections]
