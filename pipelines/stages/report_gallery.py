"""The report stage's per-image work, as ``Job.map_ids`` tasks on the engine's Dask workers:
each image's confidences (``confidences``: report_rows' entry and masks, seg_infer's
predictions) and, once the queue is ordered, its gallery row with the pictures that show
confidences or reviewed masks (``gallery_rows``), drawn only when what they show changed.

A module of its own so that a worker imports only what these need: no PyTorch, no plots."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from wsis.io import link_file, read_json
from wsis.report import gallery
from wsis.report.html import LOW_CONFIDENCE, least_confident_instance
from wsis.review.queue import decode_masks, stored_predictions, with_confidence

from ..job import Job

# "review these first" pictures' long side in pixels: larger than the gallery's, to see the marked object
REVIEW_FIRST_SIZE = 240
CACHE = "cache"            # the report stage's ``keeps`` folder: the pictures drawn here, by content


def read_row(rows_dir: Path, image_id: str) -> dict:
    return read_json(rows_dir / f"{image_id}.json")


def confidences(job: Job, chunk: dict) -> dict:
    """A ``map_ids`` task: {image id: its queue entry with its confidences} for the ids of
    ``chunk``, from report_rows' rows and, when they are there, seg_infer's predictions."""
    predictions = stored_predictions(job.inputs["seg_infer"]) if "seg_infer" in job.inputs else None
    entries = {}
    for image_id in chunk:
        row = read_row(job.inputs["report_rows"], image_id)
        masks = decode_masks(row["masks"]) if predictions is not None else None
        entries[image_id] = with_confidence(row["entry"], masks, predictions)
    return entries


class Pictures:
    """The pictures the report stage draws (they show confidences or reviewed masks), in its
    ``keeps`` folder, each named by a hash of what it shows: one whose content did not change
    since the last report is not drawn again. ``used`` names those asked for, ``drawn``
    counts those drawn."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / CACHE
        self.used: set[str] = set()
        self.drawn = 0

    def get(self, image_id: str, kind: str, shows: dict, size: tuple[int, int], draw) -> tuple[str, int, int]:
        """(path relative to the report, width, height) of the picture showing ``shows``
        (JSON-able), ``size`` (width, height) pixels: the file an earlier report drew when it
        decodes whole at that size, else ``draw()``'s RGB array, saved (atomically)."""
        digest = hashlib.sha256(json.dumps(shows, sort_keys=True).encode()).hexdigest()[:20]
        name = f"{image_id}_{kind}_{digest}.jpg"
        path = self.dir / name
        self.used.add(name)
        if not gallery.intact_picture(path, size):
            size = gallery.save_thumb(draw(), path, max(size))
            self.drawn += 1
        return f"{CACHE}/{name}", *size


def prune_pictures(out_dir: Path, used: set[str]) -> None:
    """Remove the pictures of ``Pictures`` that no row uses any more."""
    if (out_dir / CACHE).is_dir():
        for p in (out_dir / CACHE).iterdir():
            if p.name not in used:
                p.unlink()


def gallery_rows(job: Job, chunk: dict) -> dict:
    """A ``map_ids`` task: the gallery rows of ``chunk`` ({image id: {"rank", "entry": its
    queue entry, "first": whether it is in "review these first", "reviewed": its instances in
    the review store, or None}}) and the pictures they show: {"rows": {image id: row},
    "used": [picture names], "drawn": how many of them it drew}."""
    pictures = Pictures(job.out_dir)
    rows = {image_id: _gallery_row(job, work, pictures) for image_id, work in chunk.items()}
    return {"rows": rows, "used": sorted(pictures.used), "drawn": pictures.drawn}


def _gallery_row(job: Job, work: dict, pictures: Pictures) -> dict:
    """One gallery row (see html.gallery_row) and its "first_picture": for an image in "review
    these first", a larger picture of its pseudo-instances (src, width, height), else None.
    report_rows' pictures are linked into gallery/; those that show confidences or reviewed
    masks come from ``pictures``."""
    ds, size, names = job.dataset, job.cfg["report"]["thumbnail"], job.dataset.class_names
    entry = work["entry"]
    image_id = entry["id"]
    rows_dir = job.inputs["report_rows"]
    row = read_row(rows_dir, image_id)
    height, width = row["masks"]["size"]      # the pseudo-masks are at the photo's original size
    loaded: dict = {}

    def image():
        if "image" not in loaded:
            loaded["image"] = ds.load_image(image_id, original=True)
        return loaded["image"]

    def masks():
        if "masks" not in loaded:
            loaded["masks"] = decode_masks(row["masks"])
        return loaded["masks"]

    def linked(cell) -> tuple:
        name, w, h, caption = cell
        link_file(rows_dir / name, job.out_dir / "gallery" / name)
        return f"gallery/{name}", w, h, caption

    cells = [linked(c) for c in row["cells"]]
    n = len(entry["instances"])
    marked, texts, doubtful = instance_labels(entry, names)
    shows = {"sources": row["sources"], "texts": texts, "doubtful": doubtful, "marked": marked}
    classes = [i["class"] for i in entry["instances"]]

    def picture(kind: str, what: dict, at: int, draw) -> tuple[str, int, int]:
        """An overlay of the photo, ``at`` pixels on its long side, showing ``what``."""
        return pictures.get(image_id, kind, dict(what, size=at), gallery.overlay_size(width, height, at), draw)

    def overlay(at: int):
        return lambda: gallery.instance_overlay(image(), masks(), classes, texts, size=at, doubtful=doubtful,
                                                marked=marked)

    cells.append((*picture("instances", shows, size, overlay(size)), f"{n} pseudo-instances"))
    first_picture = picture("first", shows, REVIEW_FIRST_SIZE, overlay(REVIEW_FIRST_SIZE)) if work["first"] else None
    note = f"{n} instances"
    if entry.get("reviewed"):
        done = work["reviewed"]

        def reviewed_overlay():
            from wsis.coco import rle_decode
            rmasks = np.array([rle_decode(i["segmentation"]) for i in done], bool).reshape(-1, height, width)
            rclasses = np.array([i["class"] for i in done], np.int64)
            return gallery.instance_overlay(image(), rmasks, rclasses, [names[c] for c in rclasses], size=size)
        cells.append((*picture("reviewed", {"photo": row["sources"]["photo"], "review": done, "names": list(names)},
                               size, reviewed_overlay),
                      f"reviewed: {len(done)} instances"))
        note += f", reviewed ({len(done)} instances)"
    if row["gt_cell"] is not None:
        cells.append(linked(row["gt_cell"]))
        note += f", GT IoU {entry['gt_quality']:.2f}"
    worst = least_confident_instance(entry)
    return {"rank": work["rank"], "id": image_id, "confidence": entry["confidence"], "note": note, "cells": cells,
            "reviewed": bool(entry.get("reviewed")), "worst": None if worst is None else instance_text(worst, names),
            "first_picture": first_picture}


def instance_text(instance: dict, names) -> str:
    """An instance's label in the gallery: its class and confidence."""
    return f"{names[instance['class']]} {instance['confidence']:.2f}"


def instance_labels(entry: dict, names) -> tuple[int | None, list[str], list[bool]]:
    """For a queue entry's instances, in its order (that of report_rows' masks): the position
    of the least confident (marked), each one's label text, and whether it is under
    LOW_CONFIDENCE."""
    instances = entry["instances"]
    worst = least_confident_instance(entry)
    marked = None if worst is None else next(k for k, i in enumerate(instances) if i is worst)
    return (marked, [instance_text(i, names) for i in instances],
            [i["confidence"] < LOW_CONFIDENCE for i in instances])
