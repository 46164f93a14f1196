"""Stage 7: export the instance pseudo-labels as a COCO instances JSON (RLE masks), in the
dataset's numbering: a COCO input keeps its image ids, category ids, names and supercategories."""

from __future__ import annotations

import numpy as np

from wsis.coco import annotation, exported_instances, image_entries, write_instances
from wsis.io import read_npz, write_json

from ..job import Job
from .reviews import reviewed_entries

EXPORT_FILE = "pseudo_labels.json"


def instance_dir(inputs: dict):
    """Where the instance pseudo-masks are: sam_refine's when the run refines them with SAM
    (sam.enabled), else ins_seg's; both write the same npz format."""
    return inputs["sam_refine"] if "sam_refine" in inputs else inputs["ins_seg"]


REPLACED_FILE = "replaced_pseudo_labels.json"   # the pseudo-labels of the reviewed images, which they replace


def pseudo_label_annotations(ins_dir, ids, images, export_cfg: dict, category_ids=None) -> list[dict]:
    anns: list[dict] = []
    for entry, image_id in zip(images, ids):
        for _, mask, cls, score in exported_instances(read_npz(ins_dir / f"{image_id}.npz"), export_cfg):
            anns.append(annotation(mask, cls, entry["id"], len(anns) + 1, score, category_ids))
    return anns


def reviewed_annotations(review: dict, image_id: int, first_id: int, category_ids=None) -> list[dict]:
    """A reviewed image's instances as they were imported (``wsis review import``): every one,
    its RLE as stored, whatever its size, score 1, ``source`` "reviewed"."""
    from pycocotools import mask as mask_utils
    anns = []
    for k, r in enumerate(review["instances"]):
        rle = r["segmentation"]
        cls = int(r["class"])
        anns.append({"id": first_id + k, "image_id": image_id,
                     "category_id": int(category_ids[cls]) if category_ids is not None else cls + 1,
                     "segmentation": rle, "area": int(mask_utils.area(rle)),
                     "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": 0, "score": 1.0,
                     "source": "reviewed"})
    return anns


def run(job: Job) -> None:
    c = job.cfg["export"]
    images = image_entries(job.dataset, job.ids)
    category_ids = job.dataset.coco_category_ids()
    anns = pseudo_label_annotations(instance_dir(job.inputs), job.ids, images, c, category_ids)
    # review.export: a reviewed image exports exactly the reviewer's instances; its
    # pseudo-labels are kept aside (merge_review compares them with the review)
    reviews = reviewed_entries(job, "export")
    if reviews:
        entry_of = {entry["id"]: image_id for entry, image_id in zip(images, job.ids)}
        replaced = [a for a in anns if entry_of[a["image_id"]] in reviews]
        write_instances(job.out_dir / REPLACED_FILE, [e for e in images if entry_of[e["id"]] in reviews], replaced,
                        job.dataset.class_names, job.dataset.coco_categories())
        merged: list[dict] = []
        by_image: dict[int, list[dict]] = {}
        for a in anns:
            by_image.setdefault(a["image_id"], []).append(a)
        for entry, image_id in zip(images, job.ids):
            if image_id in reviews:
                merged += reviewed_annotations(reviews[image_id], entry["id"], len(merged) + 1, category_ids)
            else:
                merged += [dict(a, id=len(merged) + k + 1) for k, a in enumerate(by_image.get(entry["id"], []))]
        anns = merged
    path = job.out_dir / EXPORT_FILE
    write_instances(path, images, anns, job.dataset.class_names, job.dataset.coco_categories())
    summary = {"path": str(path.resolve()), "images": len(images), "annotations": len(anns)}
    if reviews:
        summary["reviewed_images"] = len(reviews)
    note = ""
    if "sam_refine" in job.inputs:   # how many masks SAM replaced (the others kept the IRN mask)
        counts = [np.load(instance_dir(job.inputs) / f"{i}.npz")["refined"] for i in job.ids]
        summary["sam_refined"], summary["sam_kept_irn"] = (int(sum(c.sum() for c in counts)),
                                                           int(sum((~c).sum() for c in counts)))
        note = f" (SAM refined {summary['sam_refined']} masks, kept {summary['sam_kept_irn']} IRN masks)"
    write_json(job.out_dir / "summary.json", summary)
    print(f"export: {len(anns)} instances on {len(images)} images{note} -> {path}", flush=True)
