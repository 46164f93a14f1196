"""The report's per-image work, once per image on Dask: the image's review-queue signals from
the pseudo-labels (``queue.pseudo_signals``) and the gallery pictures that do not depend on
the confidences (photo, CAMs, relation labels, boundary map, ground truth).

It reads neither the trained model nor the review store, so neither a review import nor a
retrained model recomputes it; the report stage adds the model's agreement (seg_infer) and
draws the pictures that show confidences or reviewed masks, each only when what it shows
changed."""

from __future__ import annotations

import numpy as np

from wsis.config import section_hash
from wsis.io import file_sha256, read_label_png, read_npz, write_json
from wsis.report import gallery
from wsis.review.queue import encode_masks, pseudo_signals

from ..job import Job
from .export import instance_dir


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.json``: ``entry`` (the queue entry without the model and the
    confidences: the instances the COCO export holds), ``masks`` (theirs, ``encode_masks``:
    the report needs no instance map), ``cells`` ([file, width, height, caption] of the
    pictures before the pseudo-instances), ``gt_cell`` (the ground truth's, or null) and
    ``sources`` (hashes of the photo file and of ``masks``, which the report's own pictures
    are keyed by); the pictures ``<id>_<kind>`` beside it."""
    for image_id in ids:
        write_json(job.out_dir / f"{image_id}.json", row(job, image_id))


def row(job: Job, image_id: str) -> dict:
    ds, inputs, c = job.dataset, job.inputs, job.cfg["report"]
    size, names = c["thumbnail"], ds.class_names
    ins_dir = instance_dir(inputs)
    entry, masks = pseudo_signals(ds, image_id, ins_dir, job.cfg["export"], inputs.get("sem_seg"),
                                  job.cfg["ins_seg"]["bg_threshold"], inputs.get("make_cam"),
                                  job.cfg["eval_cam"]["bg_threshold"])
    encoded = encode_masks(masks)
    image = ds.load_image(image_id, original=True)   # the pseudo-masks are at the original size
    cells = []

    def picture(rgb, kind: str, caption: str, nearest: bool = False) -> list:
        name = f"{image_id}_{kind}"
        w, h = gallery.save_thumb(rgb, job.out_dir / name, size, nearest)
        return [name, w, h, caption]

    cells.append(picture(image, "photo.jpg", "photo"))
    if "make_cam" in inputs:
        z = read_npz(inputs["make_cam"] / f"{image_id}.npz")
        # CAMs are at the processing size (data.max_side), the photo at its own
        under = image if z["high_res"].shape[1:] == image.shape[:2] else ds.load_image(image_id)
        for k, cls in enumerate(z["classes"].tolist()):
            cells.append(picture(gallery.heatmap(under, z["high_res"][k].astype(np.float32)), f"cam{cls}.jpg",
                                 f"CAM {names[cls]}"))
    if "ir_label" in inputs:
        cells.append(picture(gallery.label_colours(read_label_png(inputs["ir_label"] / f"{image_id}.png")),
                             "relations.png", "relation labels", nearest=True))
    if c["boundary"] and "irn_infer" in inputs:
        from PIL import Image

        from .irn_infer import read_irn_outputs
        boundary, _ = read_irn_outputs(inputs["irn_infer"], image_id)
        up = np.array(Image.fromarray(boundary.astype(np.float32)).resize(image.shape[1::-1], Image.BILINEAR))
        cells.append(picture(gallery.grey(up), "boundary.jpg", "boundary map"))
    gt_cell = None
    if ds.has_masks:
        gt = ds.instance_gt(image_id)
        gt_cell = picture(gallery.instance_overlay(image, gt.masks, gt.classes, [names[k] for k in gt.classes],
                                                   size=size), "gt.jpg", "ground truth")
    return {"entry": entry, "masks": encoded, "cells": cells, "gt_cell": gt_cell,
            "sources": {"photo": file_sha256(ds.image_path(image_id)), "instances": section_hash(encoded)}}
