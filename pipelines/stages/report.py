"""The final stage: the review queue and a static HTML report of every finished stage.

``<work-dir>/report/``: ``index.html`` and ``page-N.html`` (metrics, plots, a gallery one
row per image, least confident first), ``plots/*.png``, ``gallery/*`` (report_rows' pictures,
hard-linked), ``cache/*`` (the pictures drawn here: pseudo-instances with their confidences,
reviewed masks, "review these first"; each named by a hash of what it shows, so that only
those whose content changed are drawn again), ``queue.json`` (the review queue, read by
``wsis review export``) and ``metrics.json`` (how well the queue order tracks ground truth,
when there is ground truth).

The per-image work runs before, on Dask: report_rows (signals and pictures from the
pseudo-labels) and seg_infer (the model's predictions); this stage reads their files, adds the
model's agreement, orders the queue and writes the pages."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from wsis.errors import WsisError
from wsis.io import link_file, read_json, read_npz, write_json
from wsis.report import gallery, plots
from wsis.report.html import LOW_CONFIDENCE, headline, least_confident_instance, write_report
from wsis.review.formats import read_store
from wsis.review.queue import (QUEUE_FILE, build_queue, instance_masks, mark_reviewed, order_figures, ordered,
                               stored_predictions, with_confidence)

from ..cache import MANIFEST
from ..engine import Pipeline
from ..job import METRICS, Job
from ..trainer import LOSS_HISTORY_FILE
from .export import EXPORT_FILE, instance_dir
from .merge_review import REVIEW_STORE

TRAINING_STAGES = ("train_cam", "train_irn", "train_seg")
REVIEW_FIRST = 10          # images in "review these first", at the top of the report
REVIEW_FIRST_SIZE = 240    # their pictures' long side in pixels: larger than the gallery's, to see the marked object
CACHE = "cache"            # the stage's ``keeps`` folder: the pictures drawn here, by content


_STORES: dict = {}


def _reviewed(store: Path) -> dict:
    """The review store's images, read once per version of the file."""
    key = (str(store), store.stat().st_mtime_ns if store.is_file() else None)
    if key not in _STORES:
        _STORES.clear()
        _STORES[key] = read_store(store)["images"]
    return _STORES[key]


def queue_of(job: Job, rows: dict | None = None) -> dict:
    """The review queue from the finished stages in ``job.inputs`` (ins_seg is required):
    each image's entry from ``rows`` (report_rows' files, read when that stage is in the
    inputs) or else computed here, the model's agreement from seg_infer's predictions when it
    is there (the model is not run), reviewed images marked."""
    inputs = job.inputs
    if "ins_seg" not in inputs:
        raise WsisError(f"{job.out_dir.parent}: no finished ins_seg stage; run `wsis run --stage export` first")
    predictions = stored_predictions(inputs["seg_infer"]) if "seg_infer" in inputs else None
    ins_dir = instance_dir(inputs)
    if rows is None and "report_rows" in inputs:
        rows = read_rows(inputs["report_rows"], job.ids)
    if rows is not None:
        queue = ordered([with_confidence(rows[i]["entry"], ins_dir, predictions) for i in job.ids])
    else:
        queue = build_queue(job.dataset, job.ids, ins_dir, inputs.get("sem_seg"), job.cfg["ins_seg"]["bg_threshold"],
                            predictions, job.progress(len(job.ids)), inputs.get("make_cam"),
                            job.cfg["eval_cam"]["bg_threshold"])
    # images reviewed (wsis review import) are marked; an import makes this stage stale through merge_review
    return mark_reviewed(queue, _reviewed(job.out_dir.parent / REVIEW_STORE))


def read_rows(rows_dir: Path, ids) -> dict:
    return {i: read_json(rows_dir / f"{i}.json") for i in ids}


def rows_here(job: Job) -> Path:
    """report_rows' outputs, or where report_rows' work is done here (one process) when that
    stage has not finished (``wsis report`` of a partial run)."""
    if "report_rows" in job.inputs:
        return job.inputs["report_rows"]
    from . import report_rows
    out = job.out_dir / "rows"
    out.mkdir(parents=True, exist_ok=True)
    report_rows.process(dataclasses.replace(job, stage="report_rows", out_dir=out), list(job.ids))
    return out


class Pictures:
    """The pictures this stage draws (they show confidences or reviewed masks), in its
    ``keeps`` folder, each named by a hash of what it shows: one whose content did not change
    since the last report is not drawn again. ``drawn`` counts those drawn."""

    def __init__(self, out_dir: Path):
        self.out_dir, self.dir = out_dir, out_dir / CACHE
        self.used: set[str] = set()
        self.drawn = 0

    def get(self, image_id: str, kind: str, shows: dict, size: int, draw) -> tuple[str, int, int]:
        """(path relative to the report, width, height) of the picture showing ``shows``
        (JSON-able); ``draw()`` makes its RGB array when it is not there."""
        digest = hashlib.sha256(json.dumps(shows, sort_keys=True).encode()).hexdigest()[:20]
        name = f"{image_id}_{kind}_{digest}.jpg"
        path = self.dir / name
        self.used.add(name)
        if path.is_file():
            from PIL import Image
            with Image.open(path) as im:
                w, h = im.size
        else:
            w, h = gallery.save_thumb(draw(), path, size)
            self.drawn += 1
        return f"{CACHE}/{name}", w, h

    def prune(self) -> None:
        """Remove the pictures no row uses any more."""
        if self.dir.is_dir():
            for p in self.dir.iterdir():
                if p.name not in self.used:
                    p.unlink()


def _finished_job(pipeline: Pipeline) -> Job:
    from wsis.device import resolve_device
    stage = pipeline.stages["report"]
    done = {s.name: pipeline.out_dir(s) for s in pipeline.stages.values()
            if s.name != "report" and pipeline.state(s).status == "done"}
    return Job("report", pipeline.cfg, pipeline.dataset, pipeline.stage_ids(stage), pipeline.out_dir(stage),
               done, resolve_device(pipeline.device))


def current_queue(pipeline: Pipeline) -> dict:
    """The report stage's queue when it is up to date, else one computed now from the finished
    stages."""
    stage = pipeline.stages["report"]
    path = pipeline.out_dir(stage) / QUEUE_FILE
    if pipeline.state(stage).status == "done" and path.is_file():
        return read_json(path)
    return queue_of(_finished_job(pipeline))


def report_from_finished(pipeline: Pipeline) -> Path:
    """``wsis report``: the report stage's output when up to date, else a report of whatever
    stages have finished (the stage recomputes it in the next run)."""
    stage = pipeline.stages["report"]
    out = pipeline.out_dir(stage)
    if pipeline.state(stage).status == "done":
        return out / "index.html"
    job = _finished_job(pipeline)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    run(job)
    return out / "index.html"


def _make_plots(job: Job, queue: dict, metrics: dict) -> list[tuple[str, str]]:
    inputs, out = job.inputs, job.out_dir / "plots"
    split = job.cfg["data"]["infer_split"]
    made: list[tuple[Path | None, str]] = []
    ins = metrics.get("eval_ins_seg", {}).get(split, {})
    ap50 = ins.get("ap50_per_class", {})
    made.append((plots.ap_bars({n: ap50[n] for n in job.dataset.class_names if n in ap50}, out / "ap50_per_class.png",
                               f"pseudo-labels [{split}]: AP per class at IoU 0.5"), "Per-class AP at IoU 0.5"))
    if "export" in inputs and (inputs.get("eval_ins_seg", out) / "ground_truth_coco.json").is_file():
        curves = plots.coco_pr_curves(inputs["eval_ins_seg"] / "ground_truth_coco.json",
                                      read_json(inputs["export"] / EXPORT_FILE)["annotations"])
        made.append((plots.pr_curves(curves, out / "pr_curves.png", f"pseudo-labels [{split}]: PR at IoU 0.5"),
                     "Precision-recall curves at IoU 0.5"))
    sweeps = {s: m["sweep"] for s, m in metrics.get("eval_cam", {}).items() if isinstance(m, dict) and "sweep" in m}
    made.append((plots.cam_sweep(sweeps, job.cfg["eval_cam"]["bg_threshold"], out / "cam_sweep.png"),
                 "CAM mIoU against the background threshold"))
    histories = {s: read_json(inputs[s] / LOSS_HISTORY_FILE) for s in TRAINING_STAGES
                 if s in inputs and (inputs[s] / LOSS_HISTORY_FILE).is_file()}
    made.append((plots.loss_curves(histories, out / "loss.png"), "Training loss per epoch"))
    made.append((plots.histograms([len(e["instances"]) for e in queue["images"]],
                                  [i["score"] for e in queue["images"] for i in e["instances"]],
                                  out / "histograms.png"), "Instances per image and instance scores"))
    if all("gt_quality" in e for e in queue["images"]):
        made.append((plots.iou_vs_rank([e["gt_quality"] for e in queue["images"]], out / "iou_vs_rank.png"),
                     "Review order: ground-truth IoU against rank"))
    return [(str(p.relative_to(job.out_dir)), caption) for p, caption in made if p is not None]


def _gallery_row(job: Job, rank: int, entry: dict, row: dict, rows_dir: Path, pictures: Pictures,
                 review_first: bool) -> dict:
    """One gallery row (see html.gallery_row) and its "first_picture": for an image in "review
    these first" (``review_first``), a larger picture of its pseudo-instances (src, width,
    height), else None. report_rows' pictures (``row``) are linked into gallery/; those that
    show confidences or reviewed masks come from ``pictures``."""
    ds, size, names = job.dataset, job.cfg["report"]["thumbnail"], job.dataset.class_names
    image_id = entry["id"]
    loaded: dict = {}

    def image():
        if "image" not in loaded:
            loaded["image"] = ds.load_image(image_id, original=True)   # the pseudo-masks are at the original size
        return loaded["image"]

    def instances():
        if "z" not in loaded:
            z = read_npz(instance_dir(job.inputs) / f"{image_id}.npz")
            loaded["z"] = (instance_masks(z), z["classes"])
        return loaded["z"]

    def linked(cell) -> tuple:
        name, w, h, caption = cell
        link_file(rows_dir / name, job.out_dir / "gallery" / name)
        return f"gallery/{name}", w, h, caption

    cells = [linked(c) for c in row["cells"]]
    n = len(entry["instances"])
    marked, texts, doubtful = instance_labels(entry, names)
    shows = {"sources": row["sources"], "texts": texts, "doubtful": doubtful, "marked": marked}

    def overlay(at: int):
        return lambda: gallery.instance_overlay(image(), *instances(), texts, size=at, doubtful=doubtful,
                                                marked=marked)

    cells.append((*pictures.get(image_id, "instances", dict(shows, size=size), size, overlay(size)),
                  f"{n} pseudo-instances"))
    first_picture = None
    if review_first:
        first_picture = pictures.get(image_id, "first", dict(shows, size=REVIEW_FIRST_SIZE), REVIEW_FIRST_SIZE,
                                     overlay(REVIEW_FIRST_SIZE))
    note = f"{n} instances"
    if entry.get("reviewed"):
        done = _reviewed(job.out_dir.parent / REVIEW_STORE).get(image_id, {"instances": []})["instances"]

        def reviewed_overlay():
            from wsis.coco import rle_decode
            rmasks = np.array([rle_decode(i["segmentation"]) for i in done], bool).reshape(-1, *image().shape[:2])
            classes = np.array([i["class"] for i in done], np.int64)
            return gallery.instance_overlay(image(), rmasks, classes, [names[c] for c in classes], size=size)
        cells.append((*pictures.get(image_id, "reviewed", {"photo": row["sources"]["photo"], "review": done,
                                                           "names": list(names), "size": size}, size, reviewed_overlay),
                      f"reviewed: {len(done)} instances"))
        note += f", reviewed ({len(done)} instances)"
    if row["gt_cell"] is not None:
        cells.append(linked(row["gt_cell"]))
        note += f", GT IoU {entry['gt_quality']:.2f}"
    worst = least_confident_instance(entry)
    return {"rank": rank, "id": image_id, "confidence": entry["confidence"], "note": note, "cells": cells,
            "reviewed": bool(entry.get("reviewed")), "worst": None if worst is None else instance_text(worst, names),
            "first_picture": first_picture}


def instance_text(instance: dict, names) -> str:
    """An instance's label in the gallery: its class and confidence."""
    return f"{names[instance['class']]} {instance['confidence']:.2f}"


def instance_labels(entry: dict, names) -> tuple[int | None, list[str], list[bool]]:
    """For a queue entry's instances, in ins_seg order: the index of the least confident
    (marked), each one's label text, and whether it is under LOW_CONFIDENCE."""
    instances = sorted(entry["instances"], key=lambda i: i["index"])
    worst = least_confident_instance(entry)
    marked = None if worst is None else worst["index"] - 1
    return (marked, [instance_text(i, names) for i in instances],
            [i["confidence"] < LOW_CONFIDENCE for i in instances])


def run(job: Job) -> None:
    c = job.cfg["report"]
    rows_dir = rows_here(job)
    rows = read_rows(rows_dir, job.ids)
    queue = queue_of(job, rows)
    write_json(job.out_dir / QUEUE_FILE, queue)
    metrics = {s: read_json(d / METRICS) for s, d in job.inputs.items() if (d / METRICS).is_file()}
    split = job.cfg["data"]["infer_split"]
    figures = order_figures(queue)
    if figures is not None:
        metrics["report"] = {split: {"review_order_first10_gt_iou": figures["first_mean_iou"],
                                     "review_order_last10_gt_iou": figures["last_mean_iou"],
                                     "review_order_all_gt_iou": figures["all_mean_iou"]}}
        write_json(job.out_dir / METRICS, {split: metrics["report"][split]})
        print(f"report: review order - ground-truth IoU of the least confident 10 % "
              f"{figures['first_mean_iou']:.3f}, of the most confident 10 % {figures['last_mean_iou']:.3f}",
              flush=True)
    plot_files = _make_plots(job, queue, metrics)
    from .diagnose import report_section      # wsis diagnose's table and worst images, if it ran
    diagnosis, diagnosis_plots = report_section(job.out_dir.parent, job.out_dir)
    metrics.update(diagnosis)
    plot_files += diagnosis_plots
    # "review these first": the least confident images (the queue's order) a reviewer has not done yet
    first_ids = set([e["id"] for e in queue["images"] if not e.get("reviewed")][:REVIEW_FIRST])
    shutil.rmtree(job.out_dir / "gallery", ignore_errors=True)
    pictures = Pictures(job.out_dir)
    progress = job.progress(len(queue["images"]))
    gallery_rows = []
    for rank, entry in enumerate(queue["images"], start=1):
        gallery_rows.append(_gallery_row(job, rank, entry, rows[entry["id"]], rows_dir, pictures,
                                         entry["id"] in first_ids))
        progress.update(1)
    pictures.prune()
    print(f"report: {pictures.drawn} pictures drawn, {len(pictures.used) - pictures.drawn} unchanged", flush=True)
    signals = ", ".join(queue["signals"]) or "none"
    summary = (f"{len(gallery_rows)} images of split '{split}', dataset '{job.dataset.kind}'. Review order: least "
               f"confident first; confidence (0 to 1) from the signals {signals}.")
    path = write_report(job.out_dir, "wsis report", summary, metrics, plot_files, gallery_rows, c["rows_per_page"],
                        headline(metrics, split, queue), [r for r in gallery_rows if r["first_picture"]])
    print(f"report: {path}", flush=True)
