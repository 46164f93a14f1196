"""COCO instances JSON: writing pseudo-labels, converting ground truth, evaluating with pycocotools.

Ids are the dataset's (``Dataset.coco_categories`` / ``coco_image_id``): a COCO input keeps its
own image and category ids; other datasets number categories 1..C in class order (0 is never a
category: the reference code's export was off by one here) and images 1..N. Masks are RLE.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from .io import read_image_size, write_bytes


def rle_encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def rle_decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils
    return mask_utils.decode(rle).astype(bool)


def categories(class_names) -> list[dict]:
    return [{"id": i + 1, "name": n, "supercategory": "object"} for i, n in enumerate(class_names)]


def image_entries(dataset, ids) -> list[dict]:
    """COCO images of ``ids``: the dataset's image ids; file names relative to
    ``dataset.image_dir``; sizes as displayed (EXIF orientation applied), the size of the masks."""
    entries = []
    for k, image_id in enumerate(ids):
        path = dataset.image_path(image_id)
        h, w = read_image_size(path, dataset.max_pixels)
        entries.append({"id": dataset.coco_image_id(image_id, k), "file_name": path.relative_to(dataset.image_dir).as_posix(),
                        "height": h, "width": w, "wsis_id": image_id})
    return entries


def exported(score: float, area: int, export_cfg: dict) -> bool:
    """Whether a pseudo-instance goes into the COCO export (and so to training and review):
    its score reaches ``export.score_threshold`` and it has at least ``export.min_area`` pixels
    (and one)."""
    return score >= export_cfg["score_threshold"] and area >= max(export_cfg["min_area"], 1)


def exported_instances(z: dict, export_cfg: dict):
    """(number n, mask, class index, score) of each pseudo-instance of an instance npz ``z``
    (ins_seg's or sam_refine's: ``instances`` (H, W) holding n on instance n's pixels,
    ``classes``, ``scores``) that the COCO export holds (``exported``), in map order, one mask
    at a time."""
    for n, (cls, score) in enumerate(zip(z["classes"].tolist(), z["scores"].tolist()), start=1):
        mask = z["instances"] == n
        if exported(score, int(mask.sum()), export_cfg):
            yield n, mask, cls, score


def annotation(mask: np.ndarray, class_index: int, image_id: int, ann_id: int, score: float | None = None,
               category_ids=None) -> dict:
    """One COCO annotation; ``category_ids[class_index]`` is its category (default: index + 1)."""
    from pycocotools import mask as mask_utils
    rle = rle_encode(mask)
    category = int(category_ids[class_index]) if category_ids is not None else int(class_index) + 1
    ann = {"id": ann_id, "image_id": image_id, "category_id": category,
           "segmentation": rle, "area": int(mask.sum()),
           "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0}
    if score is not None:
        ann["score"] = float(score)
    return ann


def write_instances(path: Path, images: list[dict], annotations: list[dict], class_names,
                    category_list: list[dict] | None = None, description: str = "wsis instance pseudo-labels") -> None:
    """A COCO instances file; ``category_list`` defaults to ``categories(class_names)``. Written
    compact as COCO's own: the indenting JSON encoder is pure Python and holds every token of
    the file at once (55 MB at peak to write 20,000 annotations of 500x375 images, against
    14 MB compact)."""
    data = {"info": {"description": description}, "images": images, "annotations": annotations,
            "categories": category_list if category_list is not None else categories(class_names)}
    write_bytes(path, json.dumps(data, separators=(",", ":")).encode())


def coco_evaluate(gt_path: Path, detections: list[dict]) -> dict:
    """Mask AP, AP50, AP75 of ``detections`` (annotations with a score) against the COCO file
    ``gt_path`` (pycocotools).

    COCOeval keeps a record per (image, category, area range) until it accumulates; evaluating
    one category at a time keeps only that category's alive. Accumulation treats categories
    independently, so their precision and recall stacked on the category axis are exactly the
    all-category arrays, and ``summarize`` gives the same figures as one all-category pass."""
    results = [{k: d[k] for k in ("image_id", "category_id", "segmentation", "score")} for d in detections]
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(results)
        precision, recall = [], []
        for category in sorted(gt.getCatIds()):
            ev = COCOeval(gt, dt, iouType="segm")
            ev.params.catIds = [category]
            ev.evaluate()
            ev.accumulate()
            precision.append(ev.eval["precision"])     # (iou, recall, category, area, max dets)
            recall.append(ev.eval["recall"])           # (iou, category, area, max dets)
            del ev.evalImgs, ev.ious
        ev.params.catIds = sorted(gt.getCatIds())
        ev.eval = {"precision": np.concatenate(precision, axis=2), "recall": np.concatenate(recall, axis=1)}
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}
