"""Open a dataset by kind from the resolved config."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..io import DEFAULT_MAX_PIXELS
from .base import Dataset

DATASET_KINDS = ("synthetic", "voc2012", "coco", "folder")


def used_splits(cfg: dict) -> list[str]:
    d = cfg["data"]
    return list(dict.fromkeys([d["train_split"], d["irn_split"], d["infer_split"], d["eval_split"]]))


def open_dataset(kind: str, cfg: dict, root: str | Path | None = None,
                 annotations: str | Path | None = None, progress=None) -> Dataset:
    dataset = _open(kind, cfg, root, annotations, progress)
    dataset.max_side = int(cfg["data"].get("max_side", 0))
    dataset.max_pixels = int(cfg["data"].get("max_pixels", DEFAULT_MAX_PIXELS))
    return dataset


def _open(kind: str, cfg: dict, root, annotations, progress) -> Dataset:
    root = Path(root or cfg["data"]["root"])
    annotations = annotations or cfg["data"]["annotations"]
    classes = list(cfg["data"]["classes"])
    if kind == "synthetic":
        from .synthetic import ensure_synthetic
        from .voc import open_voc
        ensure_synthetic(root, cfg, progress)
        return open_voc(root, classes, used_splits(cfg), kind="synthetic")
    if kind == "voc2012":
        from .voc import open_voc
        return open_voc(root, classes, used_splits(cfg))
    if kind == "coco":
        from .coco import open_coco
        if not annotations:
            raise ConfigError("coco: pass the instances JSON with --annotations FILE.json")
        return open_coco(root, Path(annotations), classes)
    if kind == "folder":
        from .folder import open_folder
        if not annotations:
            raise ConfigError("folder: pass the labels CSV with --labels labels.csv")
        return open_folder(root, Path(annotations), classes)
    raise ConfigError(f"unknown dataset '{kind}' (choose from {', '.join(DATASET_KINDS)})")
