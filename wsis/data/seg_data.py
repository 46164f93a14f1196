"""Training and evaluation data for the instance-segmentation models: a COCO instances JSON
(the exported pseudo-labels, or a user's own) read into letterboxed canvases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models.instance_common import boxes_from_masks
from ..transforms import MEAN_RGB, letterbox


class CocoInstances:
    """Images and instance masks of a COCO file (read by the ``coco`` dataset reader); classes
    are the categories in id order."""

    def __init__(self, json_path: Path, image_dir: Path):
        from .coco import open_coco
        self.dataset = open_coco(Path(image_dir), Path(json_path), [])
        self.class_names = list(self.dataset.class_names)
        self.ids = self.dataset.ids("all")

    def __len__(self) -> int:
        return len(self.ids)

    def sample(self, index: int, size: int, flip: bool = False, fill=MEAN_RGB):
        """A letterboxed training sample: (canvas uint8 (size, size, 3) padded with ``fill``,
        target dict)."""
        image = self.dataset.load_image(self.ids[index])
        gt = self.dataset.instance_gt(self.ids[index])
        masks = gt.masks
        if flip:
            image, masks = image[:, ::-1], masks[:, :, ::-1]
        canvas, _, valid = letterbox(np.ascontiguousarray(image), size, fill)
        return canvas, canvas_target(masks, gt.classes, size, valid)


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
