"""Pieces shared by the instance-segmentation models: targets on the padded canvas, pasting
predicted masks back to image resolution, losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float boxes x0, y0, x1, y1 (exclusive ends)."""
    if len(masks) == 0:
        return torch.zeros(0, 4, device=masks.device)
    ys = masks.any(dim=2)
    xs = masks.any(dim=1)
    ar_h = torch.arange(masks.shape[1], device=masks.device)
    ar_w = torch.arange(masks.shape[2], device=masks.device)
    y0 = torch.where(ys, ar_h, masks.shape[1]).min(dim=1).values
    y1 = torch.where(ys, ar_h, -1).max(dim=1).values + 1
    x0 = torch.where(xs, ar_w, masks.shape[2]).min(dim=1).values
    x1 = torch.where(xs, ar_w, -1).max(dim=1).values + 1
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def downsample_masks(masks: torch.Tensor, size) -> torch.Tensor:
    """(N, H, W) bool -> (N, h, w) float in {0, 1}: area-average then >= 0.5."""
    if len(masks) == 0:
        return torch.zeros((0,) + tuple(size), device=masks.device)
    m = F.interpolate(masks[:, None].float(), size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    return (m >= 0.5).float()


def paste_masks(soft: torch.Tensor, canvas: int, valid: tuple[int, int], original: tuple[int, int],
                threshold: float = 0.5) -> torch.Tensor:
    """Soft masks (N, h, w) over the padded ``canvas`` x ``canvas`` input -> bool (N, H, W) at
    the original image size: upsample to the canvas, crop the image's part, resize."""
    if len(soft) == 0:
        return torch.zeros((0,) + tuple(original), dtype=torch.bool, device=soft.device)
    up = F.interpolate(soft[:, None], size=(canvas, canvas), mode="bilinear", align_corners=False)
    up = up[:, :, :valid[0], :valid[1]]
    up = F.interpolate(up, size=tuple(original), mode="bilinear", align_corners=False)[:, 0]
    return up > threshold


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask Dice loss 1 - 2 sum(pq) / (sum(p^2) + sum(q^2) + 2e-3), p = sigmoid (SOLO)."""
    p = torch.sigmoid(logits).flatten(1)
    q = target.flatten(1)
    d = 2 * (p * q).sum(1) / ((p * p).sum(1) + 1e-3 + (q * q).sum(1) + 1e-3)
    return 1 - d
