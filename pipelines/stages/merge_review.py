"""Merge reviewed annotations (``wsis review import``) into the training set: a reviewed image
takes exactly the reviewer's instances, every other image its pseudo-labels. Each annotation
records its ``source``, "pseudo" or "reviewed". Its counts compare each reviewed image's
instances with the pseudo-labels the export holds for it: those the reviewer edited when the
reviews teach no stage before the export (review.*), else those of the pipeline retrained on
them (``export``'s replaced file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsis.coco import annotation, rle_decode, write_instances
from wsis.io import read_json, write_json
from wsis.review.confidence import match_instances
from wsis.review.formats import read_store

from ..job import METRICS, Job
from .export import EXPORT_FILE, REPLACED_FILE
from .reviews import REVIEW_STORE
MERGED_FILE = "train.json"


def check_store(work_dir: Path) -> None:
    """A review store that no longer parses stops the run (one line) before anything is cleared."""
    read_store(work_dir / REVIEW_STORE)


def run(job: Job) -> None:
    pseudo = read_json(job.inputs["export"] / EXPORT_FILE)
    store_path = job.out_dir.parent / REVIEW_STORE
    reviewed = read_store(store_path)["images"]
    by_image: dict[int, list[dict]] = {}
    for a in pseudo["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    # what the review replaced: the export already holds a reviewed image's own masks when it
    # reads the reviews itself (review.export), and keeps its pseudo-labels aside
    replaced_path = job.inputs["export"] / REPLACED_FILE
    pseudo_of: dict[int, list[dict]] = by_image
    if replaced_path.is_file():
        pseudo_of = {}
        for a in read_json(replaced_path)["annotations"]:
            pseudo_of.setdefault(a["image_id"], []).append(a)
    category_ids = job.dataset.coco_category_ids()        # the export keeps a COCO input's ids
    class_of = {cid: k for k, cid in enumerate(category_ids)}
    anns: list[dict] = []
    ious, added, removed, kept = [], 0, 0, 0
    for entry in pseudo["images"]:
        review = reviewed.get(entry["wsis_id"])
        if review is None:
            for a in by_image.get(entry["id"], []):
                anns.append(dict(a, id=len(anns) + 1, source="pseudo"))
            continue
        masks = [rle_decode(r["segmentation"]) for r in review["instances"]]
        classes = [r["class"] for r in review["instances"]]
        for m, c in zip(masks, classes):
            anns.append(dict(annotation(m, c, entry["id"], len(anns) + 1, category_ids=category_ids),
                             source="reviewed"))
        old = pseudo_of.get(entry["id"], [])
        shape = (-1, entry["height"], entry["width"])
        old_masks = np.array([rle_decode(a["segmentation"]) for a in old], bool).reshape(shape)
        pairs = match_instances(old_masks, [class_of[a["category_id"]] for a in old],
                                np.array(masks, bool).reshape(shape), classes)
        ious += [iou for _, _, iou in pairs]
        kept += len(pairs)
        added += len(masks) - len(pairs)
        removed += len(old) - len(pairs)
    write_instances(job.out_dir / MERGED_FILE, pseudo["images"], anns, job.dataset.class_names,
                    job.dataset.coco_categories())
    n_reviewed = sum(e["wsis_id"] in reviewed for e in pseudo["images"])
    result = {"images": len(pseudo["images"]), "reviewed_images": n_reviewed,
              "reviewed_annotations": sum(a["source"] == "reviewed" for a in anns),
              "pseudo_annotations": sum(a["source"] == "pseudo" for a in anns),
              "instances_matched": kept, "instances_added": added, "instances_removed": removed}
    if ious:
        result["mean_iou_pseudo_vs_reviewed"] = float(np.mean(ious))
    mean = f" (mean IoU {result['mean_iou_pseudo_vs_reviewed']:.3f})" if ious else ""
    print(f"merge_review: {n_reviewed} reviewed images of {len(pseudo['images'])}; {kept} instances matched{mean}, "
          f"{added} added, {removed} removed", flush=True)
    write_json(job.out_dir / METRICS, {job.cfg["data"]["infer_split"]: result})
