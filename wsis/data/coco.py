"""COCO instances-JSON reader: image-level labels from each image's non-crowd annotations.

Masks are decoded (with pycocotools) only for evaluation. Category ids may be any integers;
classes are indexed 0..C-1 in ascending category-id order. The file's image ids, category ids,
names and supercategories are kept, so exported files use the user's numbering.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..geometry import check_polygon
from .base import Dataset, InstanceGT, image_id_of


class COCODataset(Dataset):
    files: dict[str, str]
    anns: dict[str, list[dict]]
    sizes: dict[str, tuple[int, int]]
    cat_index: dict[int, int]
    image_ids: dict[str, int]        # wsis id -> the file's image id
    categories: list[dict]           # the file's categories (id, name, supercategory), class order

    def image_path(self, image_id: str) -> Path:
        return self.root / self.files[image_id]

    def coco_categories(self) -> list[dict]:
        return [dict(c) for c in self.categories]

    def coco_image_id(self, image_id: str, position: int) -> int:
        return self.image_ids[image_id]

    def ground_truth_identity(self, image_id: str, file_identity) -> str:
        """The image's annotations as the file gives them (masks, classes, crowd flags)."""
        blob = json.dumps([self.sizes[image_id], self.anns[image_id]], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def declared_size(self, image_id: str) -> tuple[int, int]:
        return self.sizes[image_id]

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


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_fields(path: Path, kind: str, number: int, entry, fields: tuple[str, ...]) -> None:
    """One line naming the entry when a required field is missing."""
    if not isinstance(entry, dict):
        raise DataError(f"{path}: {kind} #{number} is not an object")
    label = f"{kind} #{number}" + (f" (id {entry['id']})" if "id" in entry else "")
    for f in fields:
        if f not in entry:
            raise DataError(f"{path}: {label} has no '{f}'")
        if f in ("id", "height", "width") and not (isinstance(entry[f], int) and not isinstance(entry[f], bool)):
            raise DataError(f"{path}: {label} has a non-integer '{f}' ({entry[f]!r})")
        if f in ("height", "width") and entry[f] < 1:
            raise DataError(f"{path}: {label} has '{f}' {entry[f]} (must be at least 1)")
        if f in ("file_name", "name") and not (isinstance(entry[f], str) and entry[f].strip()):
            raise DataError(f"{path}: {label} has '{f}' {entry[f]!r} (must be a non-empty string)")


def segmentation_problem(seg, height: int, width: int) -> str | None:
    """Why an annotation's ``segmentation`` cannot be decoded on its (height, width) image,
    or None: polygons need an even number of at least 6 finite coordinates; an RLE mask (a
    ``counts`` list or string) needs the image's ``size``."""
    if isinstance(seg, list):
        if not seg:
            return "an empty polygon list"
        for k, ring in enumerate(seg):
            problem = check_polygon(ring)
            if problem:
                return f"polygon {k}: {problem}"
        return None
    if isinstance(seg, dict) and "counts" in seg:
        if seg.get("size") != [height, width]:
            return f"RLE size {seg.get('size')!r} is not the image's [height, width] [{height}, {width}]"
        if not isinstance(seg["counts"], (str, list)):
            return "RLE counts must be a string or a list of numbers"
        return None
    return "segmentation is neither polygons nor an RLE mask"


def read_categories(path: Path, cats: list) -> list[dict]:
    """The file's categories in id order, checked: integer ids and names, both unique."""
    if not isinstance(cats, list):
        raise DataError(f"{path}: 'categories' is not a list")
    seen_ids, seen_names = {}, {}
    for k, c in enumerate(cats, start=1):
        _entry_fields(path, "category", k, c, ("id", "name"))
        if c["id"] in seen_ids:
            raise DataError(f"{path}: category id {c['id']} is listed twice")
        if c["name"] in seen_names:
            raise DataError(f"{path}: categories {seen_names[c['name']]} and {c['id']} have the same name "
                            f"'{c['name']}'")
        seen_ids[c["id"]], seen_names[c["name"]] = k, c["id"]
    return sorted(({"id": c["id"], "name": c["name"], "supercategory": c.get("supercategory", "")}
                   for c in cats), key=lambda c: c["id"])


def open_coco(root: Path, annotations: Path, class_names: list[str]) -> COCODataset:
    root, annotations = Path(root), Path(annotations)
    if not root.is_dir():
        raise DataError(f"{root}: image directory not found; pass --data-root IMAGES")
    if not annotations.is_file():
        raise DataError(f"{annotations}: annotations JSON not found; pass --annotations FILE.json")
    try:
        data = json.loads(annotations.read_bytes())
        images, anns, cats = data["images"], data.get("annotations", []), data["categories"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{annotations}: not a COCO instances file ({type(e).__name__}: {e})") from None
    except RecursionError:
        raise DataError(f"{annotations}: not a COCO instances file (JSON nested too deeply)") from None
    cats = read_categories(annotations, cats)
    if not cats:
        raise DataError(f"{annotations}: 'categories' is empty; a COCO file names the classes of its annotations there")
    names = [c["name"] for c in cats]
    if class_names and list(class_names) != names:
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DataError(f"{annotations}: unknown class '{unknown[0]}' (config data.classes lists {len(class_names)})")
        names = list(class_names)
    by_name = {n: i for i, n in enumerate(names)}
    cat_index = {c["id"]: by_name[c["name"]] for c in cats}
    if not isinstance(images, list) or not isinstance(anns, list):
        raise DataError(f"{annotations}: 'images' and 'annotations' must be lists")
    by_image: dict[int, list[dict]] = {}
    images_by_id: dict[int, dict] = {}
    for k, im in enumerate(images, start=1):
        _entry_fields(annotations, "image", k, im, ("id", "file_name", "height", "width"))
        if im["id"] in by_image:
            raise DataError(f"{annotations}: image id {im['id']} is listed twice")
        by_image[im["id"]] = []
        images_by_id[im["id"]] = im
    for k, a in enumerate(anns, start=1):
        if not isinstance(a, dict):
            raise DataError(f"{annotations}: annotation #{k} is not an object")
        if not is_int(a.get("image_id")) or a["image_id"] not in by_image:
            raise DataError(f"{annotations}: annotation {a.get('id')} refers to unknown image {a.get('image_id')}")
        if not is_int(a.get("category_id")) or a["category_id"] not in cat_index:
            raise DataError(f"{annotations}: annotation {a.get('id')} has unknown category id {a.get('category_id')}")
        if "segmentation" not in a:
            raise DataError(f"{annotations}: annotation {a.get('id')} has no 'segmentation'")
        im = images_by_id[a["image_id"]]
        problem = segmentation_problem(a["segmentation"], im["height"], im["width"])
        if problem:
            raise DataError(f"{annotations}: annotation {a.get('id')} (image {a['image_id']}): {problem}")
        by_image[a["image_id"]].append(a)
    ds = COCODataset("coco", root, tuple(names), {}, {}, has_masks=True)
    ds.files, ds.anns, ds.sizes, ds.cat_index, ds.image_ids = {}, {}, {}, cat_index, {}
    # the file's categories in class order; classes that data.classes adds get ids after the file's
    file_cats = {c["name"]: c for c in cats}
    extra = iter(range(max([c["id"] for c in cats], default=0) + 1, 1 << 31))
    ds.categories = [file_cats.get(n) or {"id": next(extra), "name": n, "supercategory": ""} for n in names]
    for im in images:
        key = image_id_of(im["file_name"], f"{annotations}: image {im['id']}")
        if key in ds.files:
            raise DataError(f"{annotations}: images '{ds.files[key]}' and '{im['file_name']}' would share the "
                            f"output name '{key}' (outputs are named by path without extension)")
        ds.files[key] = im["file_name"]
        ds.image_ids[key] = im["id"]
        ds.anns[key] = by_image[im["id"]]
        ds.sizes[key] = (im["height"], im["width"])
        ds.labels[key] = tuple(sorted({cat_index[a["category_id"]] for a in by_image[im["id"]]
                                      if not a.get("iscrowd", 0)}))
    if not ds.files:
        raise DataError(f"{annotations}: no images listed (empty split)")
    ds.splits["all"] = tuple(ds.files)
    ds.check_images_exist(ds.splits["all"])
    return ds
