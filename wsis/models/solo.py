"""SOLO (Wang et al., ECCV 2020) and SOLOv2 (Wang et al., NeurIPS 2020) on a backbone + FPN.

The image is divided into an S x S grid per FPN level; a cell predicts a class (category
branch) and the mask of the instance whose centre falls in it - directly as one of S^2 mask
channels (SOLO) or as a dynamic 1x1 kernel applied to a shared mask feature (SOLOv2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from ..algorithms.nms import matrix_nms
from .fpn import BackboneFPN, conv_gn_relu, coord_channels, prior_bias
from .instance_common import dice_loss, downsample_masks, paste_masks

STRIDES = (8, 8, 16, 32, 32)   # of the five levels: P2 halved, P3, P4, P5, P6 resized to P5


def center_region(box, center, image_size, grid: int, sigma: float) -> tuple[int, int, int, int]:
    """Grid cells (top, bottom, left, right, inclusive) that are positive for an instance.

    The region is the box's (w, h) / 2 x sigma around the mask's centre of mass, in cells,
    clamped to the 3 x 3 cells around the centre cell (Wang et al. 2020)."""
    x0, y0, x1, y1 = box
    cy, cx = center
    h, w = image_size
    half_h, half_w = 0.5 * (y1 - y0) * sigma, 0.5 * (x1 - x0) * sigma
    cell = lambda v, size: min(grid - 1, max(0, int(v / size * grid)))
    ch, cw = cell(cy, h), cell(cx, w)
    top = max(cell(cy - half_h, h), ch - 1)
    bottom = min(cell(cy + half_h, h), ch + 1)
    left = max(cell(cx - half_w, w), cw - 1)
    right = min(cell(cx + half_w, w), cw + 1)
    return top, bottom, left, right


def solo_targets(masks: torch.Tensor, labels: torch.Tensor, boxes: torch.Tensor, grids, scale_ranges,
                 sigma: float):
    """Per level: (category target (S, S) long, -1 = background; positive cell index (P,) and
    the instance (P,) each positive cell predicts). Instances with an empty mask are skipped."""
    h, w = masks.shape[-2:]
    out = []
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    for grid, (lo, hi) in zip(grids, scale_ranges):
        cate = torch.full((grid, grid), -1, dtype=torch.long)
        owner = torch.full((grid * grid,), -1, dtype=torch.long)
        for k in torch.nonzero((sizes >= lo) & (sizes <= hi)).flatten().tolist():
            m = masks[k]
            if not m.any():
                continue
            ys, xs = torch.nonzero(m, as_tuple=True)
            center = (ys.float().mean().item(), xs.float().mean().item())
            top, bottom, left, right = center_region(boxes[k].tolist(), center, (h, w), grid, sigma)
            cate[top:bottom + 1, left:right + 1] = int(labels[k])
            for i in range(top, bottom + 1):
                owner[i * grid + left:i * grid + right + 1] = k
        cells = torch.nonzero(owner >= 0).flatten()
        out.append((cate, cells, owner[cells]))
    return out


class SOLO(nn.Module):
    def __init__(self, neck: BackboneFPN, num_classes: int, version: int = 2, grids=(40, 36, 24, 16, 12),
                 scale_ranges=((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048)), sigma: float = 0.2,
                 head_convs: int = 4, head_channels: int = 512, kernel_channels: int = 256):
        super().__init__()
        self.neck, self.num_classes, self.version = neck, num_classes, version
        self.grids, self.scale_ranges, self.sigma = list(grids), [tuple(r) for r in scale_ranges], sigma
        c = neck.out_channels

        def tower(cin):
            layers = [conv_gn_relu(cin, head_channels)]
            layers += [conv_gn_relu(head_channels, head_channels) for _ in range(head_convs - 1)]
            return nn.Sequential(*layers)

        self.cate_tower = tower(c)
        self.cate_out = nn.Conv2d(head_channels, num_classes, 3, padding=1)
        nn.init.constant_(self.cate_out.bias, prior_bias(0.01))
        if version == 2:
            self.kernel_tower = tower(c + 2)
            self.kernel_out = nn.Conv2d(head_channels, kernel_channels, 3, padding=1)
            # mask feature branch: level i (P2..P5) gets i rounds of conv + upsample x2
            self.mask_levels = nn.ModuleList()
            for i in range(4):
                cin = c + 2 if i == 3 else c
                if i == 0:
                    self.mask_levels.append(conv_gn_relu(cin, kernel_channels))
                    continue
                steps = []
                for r in range(i):
                    steps += [conv_gn_relu(cin if r == 0 else kernel_channels, kernel_channels),
                              nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
                self.mask_levels.append(nn.Sequential(*steps))
            self.mask_out = nn.Sequential(nn.Conv2d(kernel_channels, kernel_channels, 1, bias=False),
                                          nn.GroupNorm(32 if kernel_channels % 32 == 0 else 1, kernel_channels),
                                          nn.ReLU(inplace=True))
        elif version == 1:
            self.mask_tower = tower(c + 2)
            self.mask_out = nn.ModuleList([nn.Conv2d(head_channels, s * s, 1) for s in self.grids])
        else:
            raise ValueError(f"SOLO version {version}")

    # ----------------------------------------------------------------- forward
    def _levels(self, feats):
        p2, p3, p4, p5, p6 = feats[:5]
        return [F.interpolate(p2, scale_factor=0.5, mode="bilinear", align_corners=False), p3, p4, p5,
                F.interpolate(p6, size=p5.shape[-2:], mode="bilinear", align_corners=False)]

    def forward(self, images: torch.Tensor) -> dict:
        feats = self.neck(images)
        levels = self._levels(feats)
        out: dict = {"cate": [], "size": images.shape[-2:]}
        if self.version == 2:
            out["kernel"] = []
        else:
            out["mask"] = []
        for lvl, (x, grid) in enumerate(zip(levels, self.grids)):
            g = F.interpolate(x, size=(grid, grid), mode="bilinear", align_corners=False)
            out["cate"].append(self.cate_out(self.cate_tower(g)))
            if self.version == 2:
                gk = torch.cat([g, coord_channels(g)], dim=1)
                out["kernel"].append(self.kernel_out(self.kernel_tower(gk)))
            else:
                xm = torch.cat([x, coord_channels(x)], dim=1)
                xm = F.interpolate(self.mask_tower(xm), scale_factor=2, mode="bilinear", align_corners=False)
                out["mask"].append(self.mask_out[lvl](xm))
        if self.version == 2:
            parts = []
            for i, (m, f) in enumerate(zip(self.mask_levels, feats[:4])):
                if i == 3:
                    f = torch.cat([f, coord_channels(f)], dim=1)
                y = m(f)
                parts.append(F.interpolate(y, size=feats[0].shape[-2:], mode="bilinear", align_corners=False)
                             if y.shape[-2:] != feats[0].shape[-2:] else y)
            out["mask_feat"] = self.mask_out(sum(parts))
        return out

    def mask_logits(self, out: dict, b: int, level: int, cells: torch.Tensor) -> torch.Tensor:
        """Mask logits of grid ``cells`` (flat i * S + j) of image ``b`` at ``level``."""
        if self.version == 2:
            kernels = out["kernel"][level][b].flatten(1).T[cells]              # (N, E)
            feat = out["mask_feat"][b]
            return (kernels @ feat.flatten(1)).view(len(cells), *feat.shape[-2:])
        return out["mask"][level][b][cells]

    # -------------------------------------------------------------------- loss
    def prepare_target(self, target: dict, input_size: int) -> dict:
        """``target`` with its grid assignment (per level: cell classes, positive cells and the
        instance of each), built on the CPU where batches are made (DataLoader workers), so
        that the training step does only tensor maths on the device."""
        return {**target, "assignment": solo_targets(target["masks"], target["labels"], target["boxes"],
                                                     self.grids, self.scale_ranges, self.sigma)}

    def loss(self, out: dict, targets: list[dict]) -> dict:
        cate_logits, cate_targets, dice_terms = [], [], []
        for b, t in enumerate(targets):
            per_level = t.get("assignment") or solo_targets(t["masks"].cpu(), t["labels"].cpu(), t["boxes"].cpu(),
                                                            self.grids, self.scale_ranges, self.sigma)
            for lvl, (cate, cells, owner) in enumerate(per_level):
                cate_logits.append(out["cate"][lvl][b].flatten(1).T)            # (S*S, C)
                cate_targets.append(cate.flatten().to(out["cate"][lvl].device))
                if len(cells):
                    logits = self.mask_logits(out, b, lvl, cells.to(out["cate"][lvl].device))
                    target = downsample_masks(t["masks"][owner.to(t["masks"].device)], logits.shape[-2:])
                    dice_terms.append(dice_loss(logits, target))
        logits = torch.cat(cate_logits)
        labels = torch.cat(cate_targets)
        onehot = torch.zeros_like(logits)
        pos = labels >= 0
        onehot[pos, labels[pos]] = 1.0
        num_pos = int(pos.sum())
        cate = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="sum") / (num_pos + 1)
        mask = torch.cat(dice_terms).mean() * 3.0 if dice_terms else logits.sum() * 0.0
        return {"cate": cate, "mask": mask}

    # --------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(self, out: dict, b: int, valid, original, score_thr: float = 0.1, mask_thr: float = 0.5,
                nms_pre: int = 500, update_thr: float = 0.05, max_det: int = 100) -> dict:
        scores, labels, soft, strides = [], [], [], []
        target_size = None
        for lvl, grid in enumerate(self.grids):
            heat = torch.sigmoid(out["cate"][lvl][b])                                  # (C, S, S)
            hmax = F.max_pool2d(heat[None], 2, stride=1, padding=1)[0, :, :-1, :-1]
            heat = heat * (hmax == heat)                                               # 2x2 local maxima
            cls, ii, jj = torch.nonzero(heat > score_thr, as_tuple=True)
            if len(cls) == 0:
                continue
            cells = ii * grid + jj
            m = torch.sigmoid(self.mask_logits(out, b, lvl, cells))
            target_size = target_size or (out["size"][0] // 4, out["size"][1] // 4)
            if m.shape[-2:] != target_size:
                m = F.interpolate(m[:, None], size=target_size, mode="bilinear", align_corners=False)[:, 0]
            scores.append(heat[cls, ii, jj])
            labels.append(cls)
            soft.append(m)
            strides.append(torch.full_like(cls, STRIDES[lvl], dtype=torch.float))
        empty = {"masks": torch.zeros((0,) + tuple(original), dtype=torch.bool),
                 "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)}
        if not scores:
            return empty
        scores, labels, soft, strides = map(torch.cat, (scores, labels, soft, strides))
        binary = soft > mask_thr
        area = binary.flatten(1).sum(1).float()
        keep = area > strides
        if not keep.any():
            return empty
        scores, labels, soft, binary, area = scores[keep], labels[keep], soft[keep], binary[keep], area[keep]
        maskness = (soft * binary).flatten(1).sum(1) / area
        scores = scores * maskness
        order = scores.argsort(descending=True)[:nms_pre]
        scores, labels, soft, binary = scores[order], labels[order], soft[order], binary[order]
        scores = matrix_nms(binary, labels, scores, "gaussian", 2.0)
        keep = scores >= update_thr
        scores, labels, soft = scores[keep], labels[keep], soft[keep]
        order = scores.argsort(descending=True)[:max_det]
        masks = paste_masks(soft[order], out["size"][0], valid, original, mask_thr)
        return {"masks": masks.cpu(), "labels": labels[order].cpu(), "scores": scores[order].cpu()}
