"""Build an instance-segmentation model by name from config sections; save and load them."""

from __future__ import annotations

from pathlib import Path


from ..errors import ConfigError
from ..checkpoint import load_checkpoint, load_fitting
from .backbone import LOAD_LATER, backbone_from_section
from .fpn import BackboneFPN

MODELS = ("solov2", "solo", "yolact", "centermask")


def build_instance_model(name: str, num_classes: int, backbone: dict, heads: dict, weights: str | None = None,
                         fpn_channels: int = 256, frozen_stages: int = -1):
    """``heads`` holds the [solo], [yolact] and [centermask] config sections. ``frozen_stages``:
    backbone stages (the stem with the first) that get no gradient; -1: ``backbone.frozen_stages``
    capped at 1, the stem and layer1 as in the heads' reference recipes."""
    weights = backbone["weights"] if weights is None else weights
    if frozen_stages < 0:
        frozen_stages = min(backbone["frozen_stages"], 1)

    def neck(first_level):
        body = backbone_from_section(backbone, weights, frozen_stages=frozen_stages, last_stride=2)
        return BackboneFPN(body, fpn_channels, first_level=first_level)

    if name in ("solov2", "solo"):
        from .solo import SOLO
        c = heads["solo"]
        return SOLO(neck(2), num_classes, 2 if name == "solov2" else 1, c["grids"], c["scale_ranges"], c["sigma"],
                    c["head_convs"], c["head_channels"], c["kernel_channels"])
    if name == "yolact":
        from .yolact import YOLACT
        c = heads["yolact"]
        return YOLACT(neck(3), num_classes, c["anchor_scales"], c["aspect_ratios"], c["num_prototypes"])
    if name == "centermask":
        from .centermask import CenterMask
        c = heads["centermask"]
        return CenterMask(neck(2), num_classes, c["shape_size"], c["head_channels"], c["class_saliency"])
    raise ConfigError(f"seg.model: '{name}' is not one of {', '.join(MODELS)}")


def load_instance_model(path: Path, device: str = "cpu"):
    """(model in eval mode, arch, class names) from a train_seg model file (keys ``arch``,
    ``class_names``, ``state_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: checkpoint not found")
    try:
        ckpt = load_checkpoint(path, device)
        arch = ckpt["arch"]
    except Exception as e:
        raise ConfigError(f"{path}: not a wsis instance-segmentation checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(arch, dict) or "model" not in arch:
        raise ConfigError(f"{path}: a CAM or IRNet checkpoint (train_cam / train_irn), not an instance-segmentation "
                          f"model; pass the model.pt of train_seg or wsis train-seg")
    try:
        model = build_instance_model(arch["model"], len(ckpt["class_names"]), arch["backbone"], arch["heads"],
                                     LOAD_LATER, arch["fpn_channels"])
    except (KeyError, TypeError, ValueError, IndexError) as e:   # an architecture record this wsis cannot build
        raise ConfigError(f"{path}: not a wsis instance-segmentation checkpoint (its architecture record: "
                          f"{type(e).__name__}: {e})") from None
    load_fitting(model, ckpt.get("state_dict"), path, f"the {arch['model']} model its architecture record describes")
    return model.to(device).eval(), arch, ckpt["class_names"]
