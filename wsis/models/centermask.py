"""CenterMask (Wang et al., CVPR 2020, "single shot instance segmentation with point
representation"): CenterNet-style centres with a local shape and a global saliency map;
mask = sigmoid(local shape resized to the box) x sigmoid(saliency cropped to the box)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .fpn import BackboneFPN
from .instance_common import downsample_masks, paste_masks

STRIDE = 4


def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """The largest corner shift r for which a box of size (h, w) still has IoU >= min_overlap
    with the ground truth, over three cases (CornerNet/CenterNet): both corners shifted the same
    way, the box shrunk by r on each side, or grown by r on each side. Each case is a quadratic
    in r; we take its smallest non-negative root (the reference code's algebra overestimates r)."""
    o, s, p = min_overlap, h + w, h * w
    r1 = (s - math.sqrt(s * s - 4 * p * (1 - o) / (1 + o))) / 2            # (h-r)(w-r) = 2o hw/(1+o)
    r2 = (2 * s - math.sqrt(4 * s * s - 16 * (1 - o) * p)) / 8             # (h-2r)(w-2r) = o hw
    r3 = (-2 * o * s + math.sqrt(4 * o * o * s * s + 16 * o * (1 - o) * p)) / (8 * o)  # hw = o (h+2r)(w+2r)
    return max(0.0, min(r1, r2, r3))


def centermask_targets(boxes: torch.Tensor, labels: torch.Tensor, num_classes: int, size) -> dict:
    """Heatmap (C, h, w) with a Gaussian at each box centre, integer centres, sub-cell offsets
    and sizes (h, w), all on the stride-4 grid."""
    h, w = size
    heat = torch.zeros(num_classes, h, w)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    centres, offsets, sizes = [], [], []
    for box, c in zip(boxes.tolist(), labels.tolist()):
        x0, y0, x1, y1 = (v / STRIDE for v in box)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        r = max(0.0, gaussian_radius(y1 - y0, x1 - x0))
        sigma = (2 * int(r) + 1) / 6
        g = torch.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma ** 2))
        heat[c] = torch.maximum(heat[c], g)
        centres.append((iy, ix))
        offsets.append((cy - iy, cx - ix))
        sizes.append((y1 - y0, x1 - x0))
    t = lambda v, dt: torch.tensor(v, dtype=dt).reshape(-1, 2)
    return {"heat": heat, "centres": t(centres, torch.long), "offsets": t(offsets, torch.float),
            "sizes": t(sizes, torch.float)}


def focal_heatmap_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed (divide by #objects)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p ** 2 * (1 - target) ** 4 * (1 - pos)
    return (pos_loss + neg_loss).sum()


def box_mask(shape_vec: torch.Tensor, saliency: torch.Tensor, s: int, box) -> tuple[torch.Tensor, tuple]:
    """Mask logits-free probability M = sigmoid(L) * sigmoid(G) inside an integer box on the grid."""
    y0, x0, y1, x1 = box
    bh, bw = max(1, y1 - y0), max(1, x1 - x0)
    local = F.interpolate(shape_vec.view(1, 1, s, s), size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
    glob = saliency[y0:y0 + bh, x0:x0 + bw]
    local = local[:glob.shape[0], :glob.shape[1]]
    return torch.sigmoid(local) * torch.sigmoid(glob), (y0, x0, y0 + glob.shape[0], x0 + glob.shape[1])


def grid_box(cy: float, cx: float, bh: float, bw: float, h: int, w: int) -> tuple[int, int, int, int]:
    y0, x0 = max(0, int(round(cy - bh / 2))), max(0, int(round(cx - bw / 2)))
    y1, x1 = min(h, int(round(cy + bh / 2))), min(w, int(round(cx + bw / 2)))
    return y0, x0, max(y1, y0 + 1), max(x1, x0 + 1)


class CenterMask(nn.Module):
    def __init__(self, neck: BackboneFPN, num_classes: int, shape_size: int = 32, head_channels: int = 256,
                 class_saliency: bool = True):
        super().__init__()
        self.neck, self.num_classes, self.s = neck, num_classes, shape_size
        c = neck.out_channels

        def head(out, bias=0.0):
            conv = nn.Conv2d(head_channels, out, 1)
            nn.init.constant_(conv.bias, bias)
            return nn.Sequential(nn.Conv2d(c, head_channels, 3, padding=1), nn.ReLU(inplace=True), conv)

        self.heat = head(num_classes, -2.19)
        self.offset = head(2)
        self.size = head(2)
        self.shape = head(shape_size * shape_size)
        self.class_saliency = class_saliency
        self.saliency = head(num_classes if class_saliency else 1)

    def forward(self, images: torch.Tensor) -> dict:
        f = self.neck(images)[0]                     # P2: the FPN-merged stride-4 map
        return {"heat": self.heat(f), "offset": self.offset(f), "size_hw": self.size(f), "shape": self.shape(f),
                "saliency": self.saliency(f), "size": images.shape[-1]}

    def _saliency(self, out, b, c):
        return out["saliency"][b, c if self.class_saliency else 0]

    def prepare_target(self, target: dict, input_size: int) -> dict:
        """``target`` with its heatmap, centres, offsets and sizes on the stride-4 grid
        (ceil(input_size / 4) cells a side), built on the CPU where batches are made."""
        grid = (math.ceil(input_size / 4),) * 2
        return {**target, "centre_targets": centermask_targets(target["boxes"], target["labels"],
                                                               self.num_classes, grid)}

    def loss(self, out: dict, targets: list[dict]) -> dict:
        h, w = out["heat"].shape[-2:]
        heat = off = size = mask = out["heat"].sum() * 0.0
        n_obj, n_mask = 0, 0
        for b, t in enumerate(targets):
            tg = t.get("centre_targets")
            if tg is None or tg["heat"].shape[-2:] != (h, w):
                tg = centermask_targets(t["boxes"].cpu(), t["labels"].cpu(), self.num_classes, (h, w))
            heat = heat + focal_heatmap_loss(out["heat"][b], tg["heat"].to(out["heat"].device))
            if not len(tg["centres"]):
                continue
            n_obj += len(tg["centres"])
            iy, ix = tg["centres"][:, 0], tg["centres"][:, 1]
            off = off + F.l1_loss(out["offset"][b][:, iy, ix].T, tg["offsets"].to(off.device), reduction="sum")
            size = size + F.l1_loss(out["size_hw"][b][:, iy, ix].T, tg["sizes"].to(off.device), reduction="sum")
            gt_small = downsample_masks(t["masks"], (h, w))
            for k in range(len(iy)):
                cy, cx = tg["centres"][k].tolist()
                oy, ox = tg["offsets"][k].tolist()
                bh, bw = tg["sizes"][k].tolist()
                box = grid_box(cy + oy, cx + ox, bh, bw, h, w)
                m, (y0, x0, y1, x1) = box_mask(out["shape"][b][:, cy, cx], self._saliency(out, b, int(t["labels"][k])),
                                               self.s, box)
                mask = mask + F.binary_cross_entropy(m.clamp(1e-6, 1 - 1e-6), gt_small[k, y0:y1, x0:x1])
                n_mask += 1
        n = max(n_obj, 1)
        return {"heat": heat / n, "offset": off / n, "size": 0.1 * size / n, "mask": mask / max(n_mask, 1)}

    @torch.no_grad()
    def predict(self, out: dict, b: int, valid, original, score_thr: float = 0.05, top_k: int = 100,
                mask_thr: float = 0.4) -> dict:
        heat = torch.sigmoid(out["heat"][b])
        c, h, w = heat.shape
        peaks = heat * (F.max_pool2d(heat[None], 3, stride=1, padding=1)[0] == heat)
        scores, flat = peaks.flatten().topk(min(top_k, peaks.numel()))
        keep = scores > score_thr
        scores, flat = scores[keep], flat[keep]
        cls, iy, ix = flat // (h * w), (flat % (h * w)) // w, flat % w
        soft = torch.zeros(len(flat), h, w, device=heat.device)
        for k in range(len(flat)):
            oy, ox = out["offset"][b][:, iy[k], ix[k]].tolist()
            bh, bw = out["size_hw"][b][:, iy[k], ix[k]].clamp(min=1).tolist()
            box = grid_box(iy[k].item() + oy, ix[k].item() + ox, bh, bw, h, w)
            m, (y0, x0, y1, x1) = box_mask(out["shape"][b][:, iy[k], ix[k]], self._saliency(out, b, int(cls[k])),
                                           self.s, box)
            soft[k, y0:y1, x0:x1] = m
        return {"masks": paste_masks(soft, out["size"], valid, original, mask_thr).cpu(), "labels": cls.cpu(),
                "scores": scores.cpu()}
