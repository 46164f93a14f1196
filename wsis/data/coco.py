"""COCO instances-JSON reader: image-level labels from each image's non-crowd annotations.

Masks are decoded (with pycocotools) only for evaluation. Category ids may be any integers;
classes are indexed 0..C-1 in ascending category-id order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import Dataset, InstanceGT, safe_id


class COCODataset(Dataset):
    files: dict[str, str]
    anns: dict[str, list[dict]]
    sizes: dict[str, tuple[int, int]]
    cat_index: dict[int, int]

    def image_path(self, image_id: str) -> Path:
        return self.root / self.files[image_id]

    def instance_gt(self, image_id: str) -> InstanceGT:
        from pycocotools import mask as mask_utils
        h, w = self.sizes[image_id]
        masks, classes = [], []
        for a in self.anns[image_id]:
            if a.get("iscrowd", 0):
                continue
            masks.append(_ann_to_mask(a, h, w, mask_utils))
            classes.append(self.cat_index[a["category_id"]])
        return InstanceGT(np.array(masks, bool).reshape(-1, h, w), np.array(classes, np.int64))

    def semantic_gt(self, image_id: str) -> np.ndarray:
        from pycocotools import mask as mask_utils
        h, w = self.sizes[image_id]
        out = np.zeros((h, w), np.uint8)
        for a in self.anns[image_id]:
            m = _ann_to_mask(a, h, w, mask_utils)
            out[m] = 255 if a.get("iscrowd", 0) else self.cat_index[a["category_id"]] + 1
        return out


def _ann_to_mask(ann: dict, h: int, w: int, mask_utils) -> np.ndarray:
    seg = ann["segmentation"]
    if isinstance(seg, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def open_coco(root: Path, annotations: Path, class_names: list[str]) -> COCODataset:
    root, annotations = Path(root), Path(annotations)
    if not root.is_dir():
        raise DataError(f"{root}: image directory not found; pass --data-root IMAGES")
    if not annotations.is_file():
        raise DataError(f"{annotations}: annotations JSON not found; pass --annotations FILE.json")
    try:
        data = json.loads(annotations.read_text())
        images, anns, cats = data["images"], data.get("annotations", []), data["categories"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{annotations}: not a COCO instances file ({type(e).__name__}: {e})") from None
    cats = sorted(cats, key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    if class_names and list(class_names) != names:
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DataError(f"{annotations}: unknown class '{unknown[0]}' (config data.classes lists {len(class_names)})")
        names = list(class_names)
    by_name = {n: i for i, n in enumerate(names)}
    cat_index = {c["id"]: by_name[c["name"]] for c in cats}
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in images}
    for a in anns:
        if a.get("image_id") not in by_image:
            raise DataError(f"{annotations}: annotation {a.get('id')} refers to unknown image {a.get('image_id')}")
        if a.get("category_id") not in cat_index:
            raise DataError(f"{annotations}: annotation {a.get('id')} has unknown category id {a.get('category_id')}")
        by_image[a["image_id"]].append(a)
    ds = COCODataset("coco", root, tuple(names), {}, {}, has_masks=True)
    ds.files, ds.anns, ds.sizes, ds.cat_index = {}, {}, {}, cat_index
    for im in images:
        key = safe_id(im["file_name"])
        if key in ds.files:
            raise DataError(f"{annotations}: two images share the file stem '{key}'")
        ds.files[key] = im["file_name"]
        ds.anns[key] = by_image[im["id"]]
        ds.sizes[key] = (int(im["height"]), int(im["width"]))
        ds.labels[key] = tuple(sorted({cat_index[a["category_id"]] for a in by_image[im["id"]]
                                      if not a.get("iscrowd", 0)}))
    if not ds.files:
        raise DataError(f"{annotations}: no images listed (empty split)")
    ds.splits["all"] = tuple(ds.files)
    ds.check_images_exist(ds.splits["all"])
    return ds
