"""Training and evaluation data for the instance-segmentation models: a COCO instances JSON
(the exported pseudo-labels, or a user's own) read into letterboxed canvases."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .io import read_rgb
from .models.instance_common import boxes_from_masks
from .transforms import letterbox


class CocoInstances:
    """Images and instance masks from a COCO file; classes are the categories in id order."""

    def __init__(self, json_path: Path, image_dir: Path):
        from pycocotools.coco import COCO
        json_path, image_dir = Path(json_path), Path(image_dir)
        if not json_path.is_file():
            raise DataError(f"{json_path}: COCO instances JSON not found")
        if not image_dir.is_dir():
            raise DataError(f"{image_dir}: image directory not found")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(json_path))
        except Exception as e:
            raise DataError(f"{json_path}: not a COCO instances file ({type(e).__name__}: {e})") from None
        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        if not cats:
            raise DataError(f"{json_path}: no categories")
        self.class_names = [c["name"] for c in cats]
        self.cat_index = {c["id"]: i for i, c in enumerate(cats)}
        self.image_ids = sorted(self.coco.getImgIds())
        if not self.image_ids:
            raise DataError(f"{json_path}: no images")
        self.image_dir = image_dir
        self.json_path = json_path

    def __len__(self) -> int:
        return len(self.image_ids)

    def image(self, index: int) -> np.ndarray:
        info = self.coco.loadImgs(self.image_ids[index])[0]
        return read_rgb(self.image_dir / info["file_name"])

    def instances(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(masks (N, H, W) bool, class indices (N,)) of the non-crowd annotations."""
        info = self.coco.loadImgs(self.image_ids[index])[0]
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[info["id"]])) if not a.get("iscrowd", 0)]
        h, w = info["height"], info["width"]
        masks = np.array([self.coco.annToMask(a).astype(bool) for a in anns]).reshape(-1, h, w)
        return masks, np.array([self.cat_index[a["category_id"]] for a in anns], np.int64)

    def sample(self, index: int, size: int, flip: bool = False):
        """A letterboxed training sample: (canvas uint8 (size, size, 3), target dict)."""
        image = self.image(index)
        masks, labels = self.instances(index)
        if flip:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        canvas, _, valid = letterbox(np.ascontiguousarray(image), size)
        return canvas, canvas_target(masks, labels, size, valid)


def canvas_target(masks: np.ndarray, labels: np.ndarray, size: int, valid) -> dict:
    """Masks resized into the image's part of a size x size canvas; empty ones dropped."""
    out = torch.zeros((len(masks), size, size), dtype=torch.bool)
    if len(masks):
        m = torch.from_numpy(np.ascontiguousarray(masks))[:, None].float()
        out[:, :valid[0], :valid[1]] = F.interpolate(m, size=tuple(valid), mode="bilinear",
                                                     align_corners=False)[:, 0] >= 0.5
    keep = out.flatten(1).any(1)
    out = out[keep]
    return {"masks": out, "labels": torch.from_numpy(labels)[keep], "boxes": boxes_from_masks(out)}
