"""The CAM classifier and multi-scale CAM inference (Ahn et al., CVPR 2019, steps 1-2)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .backbone import Backbone


class CAMNet(nn.Module):
    """A backbone (output stride 16) + global average pooling + bias-free 1x1 conv to C logits."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv2d(self.backbone.channels[-1], num_classes, 1, bias=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.backbone.normalize(images))[-1]

    def forward(self, images: torch.Tensor, class_maps: bool = False):
        """(B, 3, H, W) in 0..255 -> (B, C) classification logits; with ``class_maps`` also the
        class maps (B, C, h, w) before pooling, W^T f (the CAMs before their ReLU), for a
        per-pixel loss."""
        features = self.features(images)
        logits = self.classifier(features.mean(dim=(2, 3), keepdim=True)).flatten(1)
        return (logits, self.classifier(features)) if class_maps else logits

    def cam(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/16, W/16) class activation maps, relu(W^T f)."""
        return F.relu(F.conv2d(self.features(images), self.classifier.weight))

    def param_groups(self):
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, list(self.classifier.parameters())


OUTPUT_STRIDE = 16


def stride4_size(h: int, w: int) -> tuple[int, int]:
    return math.ceil(h / 4), math.ceil(w / 4)


def strided_up_size(h: int, w: int, stride: int = OUTPUT_STRIDE) -> tuple[int, int]:
    """(H, W) rounded up to a multiple of ``stride``: a stride-16 map resized to this size has
    each cell cover exactly 16 x 16 pixels, so it lines up with the image once cropped."""
    return math.ceil(h / stride) * stride, math.ceil(w / stride) * stride


def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """HxWx3 uint8 image resized by ``scale`` with PIL bicubic, which antialiases when it
    shrinks (as the reference's rescale does); size rounded as round(H * s) x round(W * s)."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.array(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.BICUBIC))


@torch.no_grad()
def multiscale_cam(model: CAMNet, image: np.ndarray, classes, scales=(1.0, 0.5, 1.5, 2.0),
                   flip: bool = True, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """CAMs of ``classes`` for one HxWx3 uint8 image, summed over scales (and flips).

    Returns (stride-4 CAMs of shape (K, ceil(H/4), ceil(W/4)), full-resolution CAMs (K, H, W)),
    each channel divided by its own maximum (+1e-5), as float32.
    """
    h, w = image.shape[:2]
    classes = list(classes)
    s4, up = stride4_size(h, w), strided_up_size(h, w)
    low = torch.zeros((len(classes),) + s4, device=device)
    high = torch.zeros((len(classes),) + up, device=device)
    if not classes:
        return low.cpu().numpy(), high[:, :h, :w].cpu().numpy()
    for s in scales:
        xs = torch.from_numpy(np.ascontiguousarray(rescale_image(image, s))).to(device)
        xs = xs.permute(2, 0, 1)[None].float()
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        cams = model.cam(batch)[:, classes]
        cam = cams[0] + cams[1].flip(-1) if flip else cams[0]
        low += F.interpolate(cam[None], size=s4, mode="bilinear", align_corners=False)[0]
        # Full resolution: resize to the stride-16 "up" size, then crop (reference make_cam);
        # resizing straight to (H, W) would shift the map by up to a stride-16 cell.
        high += F.interpolate(cam[None], size=up, mode="bilinear", align_corners=False)[0]
    high = high[:, :h, :w]
    low /= low.flatten(1).amax(1).view(-1, 1, 1) + 1e-5
    high /= high.flatten(1).amax(1).view(-1, 1, 1) + 1e-5
    return low.cpu().numpy().astype(np.float32), high.cpu().numpy().astype(np.float32)
