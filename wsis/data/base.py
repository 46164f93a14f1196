"""The dataset interface every reader implements.

The pipeline reads only images and image-level labels. Ground-truth masks are read only by
evaluation, through ``semantic_gt`` / ``instance_gt``; readers without masks say so with
``has_masks = False``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import read_rgb


@dataclass
class InstanceGT:
    """Ground-truth instances of one image: boolean masks (N, H, W) and class indices (N,)
    over the foreground classes (0-based)."""
    masks: np.ndarray
    classes: np.ndarray


@dataclass
class Dataset:
    kind: str
    root: Path
    class_names: tuple[str, ...]
    splits: dict[str, tuple[str, ...]]          # split name -> image ids
    labels: dict[str, tuple[int, ...]]          # image id -> foreground class indices
    has_masks: bool = False
    notes: list[str] = field(default_factory=list)  # warnings to show the user

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def ids(self, split: str) -> tuple[str, ...]:
        if split not in self.splits:
            raise DataError(f"{self.root}: no split '{split}' (have: {', '.join(sorted(self.splits))})")
        return self.splits[split]

    def image_path(self, image_id: str) -> Path:
        raise NotImplementedError

    @property
    def image_dir(self) -> Path:
        """The directory that image file names (as in COCO exports) are relative to."""
        return self.root

    def load_image(self, image_id: str) -> np.ndarray:
        return read_rgb(self.image_path(image_id))

    def label_vector(self, image_id: str) -> np.ndarray:
        v = np.zeros(self.num_classes, np.float32)
        v[list(self.labels[image_id])] = 1.0
        return v

    def semantic_gt(self, image_id: str) -> np.ndarray:
        """HxW uint8: 0 background, 1..C classes, 255 ignore."""
        raise DataError(f"{self.root}: dataset '{self.kind}' has no ground-truth masks")

    def instance_gt(self, image_id: str) -> InstanceGT:
        raise DataError(f"{self.root}: dataset '{self.kind}' has no ground-truth masks")

    def list_hash(self, ids, files: dict[str, str] | None = None) -> str:
        """Identity of a list of images for stage fingerprints: ids, labels and class names,
        and each image file's identity when ``files`` (id -> content hash, or size and mtime)
        is given, so that replacing an image file makes the stages that read it stale."""
        images = [[i, list(self.labels[i])] + ([files[i]] if files is not None else []) for i in ids]
        blob = json.dumps({"classes": list(self.class_names), "images": images},
                          separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def check_images_exist(self, ids) -> None:
        for image_id in ids:
            p = self.image_path(image_id)
            if not p.is_file():
                raise DataError(f"{p}: image is listed but missing")


def safe_id(name: str) -> str:
    """An image id usable as a file name: its stem, with path separators replaced."""
    return Path(name).stem.replace("/", "_").replace("\\", "_")
