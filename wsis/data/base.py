"""The dataset interface every reader implements.

The pipeline reads only images and image-level labels. Ground-truth masks are read only by
evaluation, through ``semantic_gt`` / ``instance_gt``; readers without masks say so with
``has_masks = False``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError
from ..io import DEFAULT_MAX_PIXELS, read_image_size, read_rgb


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
    max_side: int = 0      # data.max_side: images are processed with at most this long side (0: as they are)
    max_pixels: int = DEFAULT_MAX_PIXELS   # data.max_pixels: larger images are refused before decoding

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

    def load_image(self, image_id: str, original: bool = False) -> np.ndarray:
        """The image at its processing size (``data.max_side``), or at its own size."""
        return read_rgb(self.image_path(image_id), 0 if original else self.max_side, self.max_pixels)

    def original_size(self, image_id: str) -> tuple[int, int]:
        """(H, W) of the image as displayed: the size of every per-pixel output."""
        return read_image_size(self.image_path(image_id), self.max_pixels)

    def ground_truth_identity(self, image_id: str, file_identity) -> str | None:
        """What the ground truth of ``image_id`` is, for the fingerprints of the evaluation
        stages: edited masks with the same labels make them stale. ``file_identity(path)``
        gives a file's cached content hash (or size and mtime). None without masks."""
        return None

    def declared_size(self, image_id: str) -> tuple[int, int] | None:
        """(H, W) that the annotation file gives the image, the size its masks are drawn at;
        None when the dataset gives none (the image's own size is used)."""
        return None

    # COCO numbering of exported files. A COCO dataset keeps its own ids; the others number
    # images 1..N in list order and categories 1..C in class order.
    def coco_categories(self) -> list[dict]:
        """COCO categories in class order."""
        return [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(self.class_names)]

    def coco_category_ids(self) -> list[int]:
        """The COCO category id of each class index."""
        return [c["id"] for c in self.coco_categories()]

    def coco_image_id(self, image_id: str, position: int) -> int:
        """The COCO id of ``image_id``, the ``position``-th (0-based) image of an exported list."""
        return position + 1

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
        """Identity of a list of images for stage fingerprints: ids, labels and class names (and
        the processing size when ``max_side`` is set), and each image file's identity when
        ``files`` (id -> content hash, or size and mtime) is given, so that replacing an image
        file makes the stages that read it stale."""
        images = [[i, list(self.labels[i])] + ([files[i]] if files is not None else []) for i in ids]
        blob = json.dumps({"classes": list(self.class_names), "images": images,
                           **({"max_side": self.max_side} if self.max_side else {})},
                          separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def check_images_exist(self, ids) -> None:
        for image_id in ids:
            p = self.image_path(image_id)
            if not p.is_file():
                raise DataError(f"{p}: image is listed but missing")


def image_id_of(name: str, source) -> str:
    """The image id of a file name relative to the image directory: the relative path without
    its extension, '/'-separated ("a.jpg" -> "a", "x/a.jpg" -> "x/a"). Ids name the per-image
    outputs (``<id>.npz``, ``<id>.png``), which therefore sit in the same sub-directories, so a
    name that leaves the image directory is refused (``source`` names where it came from)."""
    path = PurePosixPath(str(name).replace("\\", "/"))
    if not str(name).strip() or path.is_absolute() or ".." in path.parts or path.name in ("", "."):
        raise DataError(f"{source}: file name '{name}' must be a path inside the image directory")
    return str(path.with_suffix("")) if path.suffix else str(path)
