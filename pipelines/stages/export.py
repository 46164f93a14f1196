"""Stage 7: export the instance pseudo-labels as a COCO instances JSON (RLE masks), in the
dataset's numbering: a COCO input keeps its image ids, category ids, names and supercategories."""

from __future__ import annotations

import numpy as np

from wsis.coco import annotation, exported_instances, image_entries, write_instances
from wsis.io import read_npz, write_json

from ..job import Job

EXPORT_FILE = "pseudo_labels.json"


def instance_dir(inputs: dict):
    """Where the instance pseudo-masks are: sam_refine's when the run refines them with SAM
    (sam.enabled), else ins_seg's; both write the same npz format."""
    return inputs["sam_refine"] if "sam_refine" in inputs else inputs["ins_seg"]


def pseudo_label_annotations(ins_dir, ids, images, export_cfg: dict, category_ids=None) -> list[dict]:
    anns: list[dict] = []
    for entry, image_id in zip(images, ids):
        for _, mask, cls, score in exported_instances(read_npz(ins_dir / f"{image_id}.npz"), export_cfg):
            anns.append(annotation(mask, cls, entry["id"], len(anns) + 1, score, category_ids))
    return anns


def run(job: Job) -> None:
    c = job.cfg["export"]
    images = image_entries(job.dataset, job.ids)
    anns = pseudo_label_annotations(instance_dir(job.inputs), job.ids, images, c, job.dataset.coco_category_ids())
    path = job.out_dir / EXPORT_FILE
    write_instances(path, images, anns, job.dataset.class_names, job.dataset.coco_categories())
    summary = {"path": str(path.resolve()), "images": len(images), "annotations": len(anns)}
    note = ""
    if "sam_refine" in job.inputs:   # how many masks SAM replaced (the others kept the IRN mask)
        counts = [np.load(instance_dir(job.inputs) / f"{i}.npz")["refined"] for i in job.ids]
        summary["sam_refined"], summary["sam_kept_irn"] = (int(sum(c.sum() for c in counts)),
                                                           int(sum((~c).sum() for c in counts)))
        note = f" (SAM refined {summary['sam_refined']} masks, kept {summary['sam_kept_irn']} IRN masks)"
    write_json(job.out_dir / "summary.json", summary)
    print(f"export: {len(anns)} instances on {len(images)} images{note} -> {path}", flush=True)
