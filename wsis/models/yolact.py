"""YOLACT (Bolya et al., ICCV 2019): prototypes x per-anchor coefficients, cropped to the box."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from ..algorithms.nms import fast_nms
from .fpn import BackboneFPN
from .instance_common import downsample_masks, paste_masks

VARIANCES = (0.1, 0.2)   # SSD box encoding


LEVEL_STRIDES = (8, 16, 32, 64, 128)   # P3-P7


def make_anchors(feature_sizes, input_size: int, scales, ratios) -> torch.Tensor:
    """(N, 4) anchors (cx, cy, w, h) in pixels: per level, per cell (row-major), per ratio
    (w / h = ratio, w * h = scale^2), matching the head's output layout."""
    out = []
    for (h, w), s in zip(feature_sizes, scales):
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h * input_size,
                                (torch.arange(w) + 0.5) / w * input_size, indexing="ij")
        for_ratio = [torch.stack([xs, ys, torch.full_like(xs, s * math.sqrt(r)), torch.full_like(xs, s / math.sqrt(r))],
                                 dim=-1) for r in ratios]
        out.append(torch.stack(for_ratio, dim=2).reshape(-1, 4))
    return torch.cat(out)


def cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], dim=1)


def match_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4):
    """(matched GT index per anchor, state: 1 positive, 0 neutral, -1 negative).

    IoU >= pos_iou is positive, < neg_iou negative, in between neutral; every GT is also forced
    onto its best anchor (Bolya et al. 2019)."""
    n = len(anchors)
    if len(gt_boxes) == 0:
        return torch.zeros(n, dtype=torch.long), torch.full((n,), -1, dtype=torch.long)
    iou = box_iou(cxcywh_to_xyxy(anchors), gt_boxes)
    best_iou, best_gt = iou.max(dim=1)
    for g in range(len(gt_boxes)):
        a = int(iou[:, g].argmax())
        best_gt[a], best_iou[a] = g, 2.0
    state = torch.where(best_iou >= pos_iou, 1, torch.where(best_iou < neg_iou, -1, 0))
    return best_gt, state


def encode(boxes_xyxy: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    wh = boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]
    c = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2
    return torch.cat([(c - anchors[:, :2]) / (VARIANCES[0] * anchors[:, 2:]),
                      torch.log(wh.clamp(min=1e-3) / anchors[:, 2:]) / VARIANCES[1]], dim=1)


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    c = anchors[:, :2] + deltas[:, :2] * VARIANCES[0] * anchors[:, 2:]
    wh = anchors[:, 2:] * torch.exp(deltas[:, 2:].clamp(max=10) * VARIANCES[1])
    return torch.cat([c - wh / 2, c + wh / 2], dim=1)


def crop(masks: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Zero (N, h, w) masks outside their (N, 4) boxes (x0, y0, x1, y1 in mask pixels)."""
    h, w = masks.shape[-2:]
    xs = torch.arange(w, device=masks.device).view(1, 1, w)
    ys = torch.arange(h, device=masks.device).view(1, h, 1)
    inside = ((xs >= boxes[:, 0, None, None].floor()) & (xs < boxes[:, 2, None, None].ceil())
              & (ys >= boxes[:, 1, None, None].floor()) & (ys < boxes[:, 3, None, None].ceil()))
    return masks * inside


class YOLACT(nn.Module):
    def __init__(self, neck: BackboneFPN, num_classes: int, anchor_scales=(24, 48, 96, 192, 384),
                 aspect_ratios=(1.0, 0.5, 2.0), num_prototypes: int = 32):
        super().__init__()
        self.neck, self.num_classes = neck, num_classes
        self.scales, self.ratios, self.k = list(anchor_scales), list(aspect_ratios), num_prototypes
        c, a = neck.out_channels, len(aspect_ratios)
        self.head = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True))
        self.box = nn.Conv2d(c, 4 * a, 3, padding=1)
        self.cls = nn.Conv2d(c, (num_classes + 1) * a, 3, padding=1)
        self.coef = nn.Conv2d(c, num_prototypes * a, 3, padding=1)
        proto = []
        for _ in range(3):
            proto += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True)]
        proto += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                  nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c, num_prototypes, 1),
                  nn.ReLU(inplace=True)]
        self.protonet = nn.Sequential(*proto)
        self.semantic = nn.Conv2d(c, num_classes, 1)
        self._anchor_cache: dict = {}

    def anchors(self, feats, size: int, device) -> torch.Tensor:
        key = (tuple(f.shape[-2:] for f in feats), size, str(device))
        if key not in self._anchor_cache:
            self._anchor_cache = {key: make_anchors([f.shape[-2:] for f in feats], size, self.scales,
                                                    self.ratios).to(device)}
        return self._anchor_cache[key]

    def forward(self, images: torch.Tensor) -> dict:
        feats = self.neck(images)
        b = images.shape[0]
        boxes, classes, coefs = [], [], []
        for f in feats:
            h = self.head(f)
            boxes.append(self.box(h).permute(0, 2, 3, 1).reshape(b, -1, 4))
            classes.append(self.cls(h).permute(0, 2, 3, 1).reshape(b, -1, self.num_classes + 1))
            coefs.append(torch.tanh(self.coef(h)).permute(0, 2, 3, 1).reshape(b, -1, self.k))
        return {"box": torch.cat(boxes, 1), "cls": torch.cat(classes, 1), "coef": torch.cat(coefs, 1),
                "proto": self.protonet(feats[0]).permute(0, 2, 3, 1), "seg": self.semantic(feats[0]),
                "anchors": self.anchors(feats, images.shape[-1], images.device), "size": images.shape[-1]}

    def prepare_target(self, target: dict, input_size: int) -> dict:
        """``target`` with its anchor matching, built on the CPU where batches are made
        (DataLoader workers). The anchors of a square input follow from its size: level k
        (stride 8 * 2^k) is ceil(input_size / stride) cells a side."""
        sizes = [(math.ceil(input_size / s),) * 2 for s in LEVEL_STRIDES]
        anchors = make_anchors(sizes, input_size, self.scales, self.ratios)
        matched, state = match_anchors(anchors, target["boxes"])
        return {**target, "matched": matched, "state": state}

    def loss(self, out: dict, targets: list[dict]) -> dict:
        anchors = out["anchors"]
        box_loss = cls_loss = mask_loss = sem_loss = out["box"].sum() * 0.0
        num_pos = 0
        ph, pw = out["proto"].shape[1:3]
        scale = ph / out["size"]
        for b, t in enumerate(targets):
            gt_boxes, gt_labels, gt_masks = t["boxes"], t["labels"], t["masks"]
            if "state" in t and len(t["state"]) == len(anchors):
                matched, state = t["matched"], t["state"]
            else:
                matched, state = match_anchors(anchors.cpu(), gt_boxes.cpu())
                matched, state = matched.to(anchors.device), state.to(anchors.device)
            pos = torch.nonzero(state == 1).flatten()
            num_pos += len(pos)
            if len(pos):
                target = encode(gt_boxes[matched[pos]], anchors[pos])
                box_loss = box_loss + F.smooth_l1_loss(out["box"][b, pos], target, reduction="sum")
            # classification with OHEM: all positives, the hardest negatives at 3:1
            labels = torch.where(state == 1, gt_labels[matched] + 1 if len(gt_labels) else 0, 0)
            logp = F.log_softmax(out["cls"][b], dim=1)
            neg = torch.nonzero(state == -1).flatten()
            neg_loss = -logp[neg, 0]
            n_neg = min(len(neg), 3 * max(len(pos), 1))
            hard = neg[neg_loss.detach().argsort(descending=True)[:n_neg]]
            chosen = torch.cat([pos, hard])
            cls_loss = cls_loss + F.nll_loss(logp[chosen], labels[chosen], reduction="sum")
            # masks: prototypes x coefficients, cropped to the GT box, BCE / box area
            if len(pos):
                sel = pos[:100]
                g = matched[sel]
                logits = (out["proto"][b] @ out["coef"][b, sel].T).permute(2, 0, 1)       # (P, ph, pw)
                target = downsample_masks(gt_masks[g], (ph, pw))
                boxes = gt_boxes[g] * scale
                bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                bce = crop(bce, boxes).flatten(1).sum(1)
                area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=1)
                mask_loss = mask_loss + (bce / area).sum() * 6.125
            # auxiliary semantic segmentation on P3
            seg = out["seg"][b]
            sem_target = torch.zeros_like(seg)
            if len(gt_labels):
                small = downsample_masks(gt_masks, seg.shape[-2:])
                for m, c in zip(small, gt_labels):
                    sem_target[c] = torch.maximum(sem_target[c], m)
            sem_loss = sem_loss + F.binary_cross_entropy_with_logits(seg, sem_target, reduction="sum") / seg[0].numel()
        n = max(num_pos, 1)
        return {"box": 1.5 * box_loss / n, "cls": cls_loss / n, "mask": mask_loss / n,
                "semantic": sem_loss / len(targets)}

    @torch.no_grad()
    def predict(self, out: dict, b: int, valid, original, score_thr: float = 0.05, iou_thr: float = 0.5,
                top_k: int = 200, max_det: int = 100) -> dict:
        boxes = decode(out["box"][b], out["anchors"]).clamp(0, out["size"])
        scores = F.softmax(out["cls"][b], dim=1)[:, 1:]
        idx, cls = torch.nonzero(scores > score_thr, as_tuple=True)
        keep = fast_nms(boxes[idx], scores[idx, cls], cls, iou_thr, top_k, max_det)
        idx, cls = idx[keep], cls[keep]
        ph = out["proto"].shape[1]
        soft = torch.sigmoid(out["proto"][b] @ out["coef"][b, idx].T).permute(2, 0, 1)
        soft = crop(soft, boxes[idx] * ph / out["size"])
        return {"masks": paste_masks(soft, out["size"], valid, original).cpu(), "labels": cls.cpu(),
                "scores": scores[idx, cls].cpu()}
