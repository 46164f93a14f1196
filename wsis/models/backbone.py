"""torchvision ResNet backbones as a list of stages, with IRNet's strides and freezing.

Ahn et al. (CVPR 2019) use strides (2, 2, 2, 1) for the four residual stages after the stem, so
the last stage has output stride 16, and keep BatchNorm frozen (eval mode, no gradient).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d
from torch import nn

from ..errors import ConfigError, WsisError

DEPTHS = (18, 34, 50, 101, 152)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ``weights`` for a backbone whose trained state the caller loads right after construction
# (a saved model): no initial weights, freezing exactly as asked, nothing to say.
LOAD_LATER = "<loaded from a checkpoint>"


def _weights_enum(depth: int):
    return getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1


def download_failed(what: str, url: str, error: Exception, key: str, otherwise: str = "") -> WsisError:
    """The one-line error of a weights download that failed (offline, a proxy, ...): what and
    from where, why, and how to pass a local file instead (``--set key=/path/to/file.pth``)."""
    return WsisError(f"could not download {what} from {url} ({type(error).__name__}: {error}); "
                     f"download that file elsewhere and pass --set {key}=/path/to/file.pth{otherwise}")


def load_weights_file(path: Path):
    """A local PyTorch weights file, read without running pickled code (``weights_only``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WsisError(f"{path}: not a readable PyTorch weights file ({e})") from None


def load_imagenet_state(depth: int, weights: str) -> dict | None:
    """State dict for ``backbone.weights``: "none", "imagenet" or a local .pth path."""
    if weights in ("", "none", LOAD_LATER):
        return None
    if weights == "imagenet":
        enum = _weights_enum(depth)
        try:
            return enum.get_state_dict(progress=True)
        except Exception as e:  # urllib/socket/SSL errors all mean: could not download
            raise download_failed(f"ImageNet weights for resnet{depth}", enum.url, e, "backbone.weights",
                                  ", or train from scratch with --set backbone.weights=none") from None
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"backbone.weights: {path}: file not found (use 'none', 'imagenet' or a .pth path)")
    state = load_weights_file(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


class ResNetStages(nn.Module):
    """ResNet as five stages: stem (stride 4), layer1 (4), layer2 (8), layer3 (16), layer4 (16).

    With ``weights`` "none" (random initialisation) nothing is frozen, whatever ``freeze_bn``
    and ``frozen_stages`` say: frozen random filters and BatchNorm statistics never learn, so
    the freezing that suits ImageNet weights would silently cripple the model. One line says so.
    """

    def __init__(self, depth: int = 50, weights: str = "none", freeze_bn: bool = True,
                 frozen_stages: int = 0, last_stride: int = 1):
        super().__init__()
        if depth not in DEPTHS:
            raise ConfigError(f"backbone.depth: {depth} is not a ResNet depth ({', '.join(map(str, DEPTHS))})")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        if weights in ("", "none") and (freeze_bn or frozen_stages > 0):
            print(f"backbone.weights = none: training all of resnet{depth} from scratch (freeze_bn = {freeze_bn} "
                  f"and frozen_stages = {frozen_stages} apply to pretrained weights only)", file=sys.stderr, flush=True)
            freeze_bn, frozen_stages = False, 0
        state = load_imagenet_state(depth, weights)
        if state is not None:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = net.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.startswith("fc.")]
            if missing or unexpected:
                raise WsisError(f"backbone.weights={weights}: does not fit resnet{depth} "
                                f"(missing {missing[:2]}, unexpected {unexpected[:2]})")
        if last_stride == 1:
            block = net.layer4[0]
            strided = block.conv2 if hasattr(block, "conv3") else block.conv1
            strided.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        layers = [net.layer1, net.layer2, net.layer3, net.layer4]
        self.stages = nn.ModuleList([stem] + layers)
        self.channels = [net.conv1.out_channels] + [_out_channels(layer) for layer in layers]
        if freeze_bn:
            freeze_batchnorm(self)
        if frozen_stages > 0:  # the stem goes with the first frozen stage
            for module in [stem] + layers[:frozen_stages]:
                for p in module.parameters():
                    p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d under ``module`` by torchvision's FrozenBatchNorm2d with the
    same statistics and affine values: buffers, not parameters, so they never train, stay in
    inference mode in ``train()``, and DDP has no unused parameters or statistics to sync.
    State dicts keep BatchNorm's keys (FrozenBatchNorm2d ignores ``num_batches_tracked``)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8-range (B, 3, H, W) float tensor -> ImageNet-normalised."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (images - mean) / std
