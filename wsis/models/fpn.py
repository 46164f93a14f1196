"""Backbone + FPN neck shared by the instance-segmentation heads (torchvision's FPN)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from .backbone import Backbone


class BackboneFPN(nn.Module):
    """A backbone at output stride 32 (stages at strides .., 4, 8, 16, 32) + FPN with
    ``out_channels`` per level.

    ``first_level`` 2 gives P2..P5 and a max-pooled P6 (SOLO, CenterMask); 3 gives P3..P5 and
    P6, P7 from stride-2 3x3 convs (YOLACT)."""

    def __init__(self, body: Backbone, out_channels: int = 256, first_level: int = 2):
        super().__init__()
        used = body.strides[first_level - 1:]      # P<first_level> .. P5
        if used != [2 ** (first_level + i) for i in range(len(used))]:
            raise ValueError(f"{body.name}: stages at strides {body.strides}; the FPN needs strides "
                             f"{2 ** first_level}, ..., 32 from stage {first_level - 1} on (last_stride=2)")
        self.body = body
        self.first_level = first_level
        in_channels = self.body.channels[first_level - 1:]
        extra = LastLevelMaxPool() if first_level == 2 else LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) in 0..255 -> FPN levels, finest first."""
        feats = self.body(self.body.normalize(images))
        levels = {str(i): f for i, f in enumerate(feats[self.first_level - 1:])}
        return list(self.fpn(levels).values())


def coord_channels(x: torch.Tensor) -> torch.Tensor:
    """Two CoordConv channels (x, y in [-1, 1]) for a (B, C, H, W) tensor."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy]).expand(b, 2, h, w)


def conv_gn_relu(cin: int, cout: int, groups: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.GroupNorm(min(groups, cout), cout),
                         nn.ReLU(inplace=True))


def prior_bias(p: float = 0.01) -> float:
    """Classification bias so that initial sigmoid outputs are ``p`` (focal-loss prior)."""
    import math
    return -math.log((1 - p) / p)
