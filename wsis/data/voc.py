"""PASCAL VOC devkit layout reader (also serves the synthetic dataset, written in that layout).

Image-level labels come from ``Annotations/<id>.xml``; split lists from
``ImageSets/Segmentation/<split>.txt`` or, for the standard VOC 2012 splits that the devkit does
not ship (train_aug), from the lists packaged with wsis.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import read_label_png
from .base import Dataset, InstanceGT

PACKAGED_LISTS = ("train", "train_aug", "val")


class VOCDataset(Dataset):
    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    @property
    def image_dir(self) -> Path:
        return self.root / "JPEGImages"

    def ground_truth_identity(self, image_id: str, file_identity) -> str:
        paths = (self.root / "SegmentationClass" / f"{image_id}.png", self.root / "SegmentationObject" / f"{image_id}.png")
        return ":".join(file_identity(p) if p.is_file() else "missing" for p in paths)

    def semantic_gt(self, image_id: str) -> np.ndarray:
        return read_label_png(self.root / "SegmentationClass" / f"{image_id}.png")

    def instance_gt(self, image_id: str) -> InstanceGT:
        obj = read_label_png(self.root / "SegmentationObject" / f"{image_id}.png")
        cls = self.semantic_gt(image_id)
        masks, classes = [], []
        for inst in np.unique(obj):
            if inst in (0, 255):
                continue
            m = obj == inst
            values = cls[m]
            values = values[(values > 0) & (values < 255)]
            if values.size == 0:
                continue
            masks.append(m)
            classes.append(int(np.bincount(values).argmax()) - 1)
        h, w = obj.shape
        return InstanceGT(np.array(masks, bool).reshape(-1, h, w), np.array(classes, np.int64))


def read_split_list(root: Path, split: str) -> tuple[list[str], str]:
    """Return (ids, source) for a split: the devkit's own list first, then the packaged one."""
    own = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if own.is_file():
        text, source = own.read_text(), str(own)
    elif split in PACKAGED_LISTS:
        ref = resources.files("wsis.data") / "voc12" / f"{split}.txt"
        text, source = ref.read_text(), f"wsis/data/voc12/{split}.txt"
    else:
        raise DataError(f"{own}: split list '{split}' not found")
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{source}: split '{split}' is empty")
    return ids, source


def parse_annotation(path: Path, class_index: dict[str, int]) -> tuple[int, ...]:
    if not path.is_file():
        raise DataError(f"{path}: annotation XML is missing")
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise DataError(f"{path}: malformed annotation XML ({e})") from None
    found = set()
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            raise DataError(f"{path}: unknown class '{name}' (known: {', '.join(class_index)})")
        found.add(class_index[name])
    return tuple(sorted(found))


def open_voc(root: Path, class_names: list[str], splits: list[str], kind: str = "voc2012") -> VOCDataset:
    root = Path(root)
    if not (root / "JPEGImages").is_dir() or not (root / "Annotations").is_dir():
        raise DataError(f"{root}: not a VOC devkit root (expected JPEGImages/ and Annotations/ in it); "
                        f"pass --data-root PATH/VOCdevkit/VOC2012")
    class_index = {c: i for i, c in enumerate(class_names)}
    notes: list[str] = []
    split_ids: dict[str, tuple[str, ...]] = {}
    for split in dict.fromkeys(splits):
        ids, source = read_split_list(root, split)
        if split == "train_aug":
            present = sum((root / "JPEGImages" / f"{i}.jpg").is_file() for i in ids)
            if present < len(ids):
                notes.append(f"train_aug: only {present} of {len(ids)} images present (SBD missing?); "
                             f"training on 'train' instead")
                ids, source = read_split_list(root, "train")
        split_ids[split] = tuple(ids)
    all_ids = list(dict.fromkeys(i for ids in split_ids.values() for i in ids))
    labels = {i: parse_annotation(root / "Annotations" / f"{i}.xml", class_index) for i in all_ids}
    has_masks = (root / "SegmentationClass").is_dir() and (root / "SegmentationObject").is_dir()
    ds = VOCDataset(kind, root, tuple(class_names), split_ids, labels, has_masks, notes)
    ds.check_images_exist(all_ids)
    return ds
