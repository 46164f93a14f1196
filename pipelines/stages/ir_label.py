"""Stage 3: relation mining - full-resolution CAMs -> relation labels with a dense CRF.

A reviewed image (review.relation_labels) takes its labels from the reviewer's masks instead:
its classes and background exactly, and its instance map, whose boundaries IRNet learns."""

from __future__ import annotations

import numpy as np

from wsis.algorithms.relations import relation_labels
from wsis.io import read_npz, write_label_png, write_uint16_png
from wsis.algorithms.supervision import instance_relation_labels, reviewed_instances

from ..job import Job
from .reviews import reviewed_entries

INSTANCES_DIR = "instances"   # <id>.png: a reviewed image's instance map (16-bit)


def instance_map_path(out_dir, image_id: str):
    return out_dir / INSTANCES_DIR / f"{image_id}.png"


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.png``: 0 background, c + 1 class c, 255 unsure; for a reviewed image also
    ``instances/<id>.png`` (``wsis.algorithms.supervision.instance_map``)."""
    c = job.cfg["ir_label"]
    crf = {k: c[k] for k in ("crf_scale", "gt_prob", "iterations", "gauss_sxy", "gauss_compat",
                             "bilateral_sxy", "bilateral_srgb", "bilateral_compat")}
    reviews = reviewed_entries(job, "relation_labels")
    for image_id in ids:
        image = job.dataset.load_image(image_id)
        instances_path = instance_map_path(job.out_dir, image_id)
        if image_id in reviews:
            labels, instances = instance_relation_labels(*reviewed_instances(reviews[image_id], image.shape[:2]))
            write_uint16_png(instances_path, instances)
        else:
            instances_path.unlink(missing_ok=True)     # an image no longer reviewed
            z = read_npz(job.inputs["make_cam"] / f"{image_id}.npz")
            labels = relation_labels(image, z["high_res"].astype(np.float32), z["classes"].tolist(),
                                     c["fg_thres"], c["bg_thres"], **crf)
        write_label_png(job.out_dir / f"{image_id}.png", labels)

