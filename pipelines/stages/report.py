"""The final stage: the review queue and a static HTML report of every finished stage.

``<work-dir>/report/``: ``index.html`` and ``page-N.html`` (metrics, plots, a gallery one
row per image, least confident first), ``plots/*.png``, ``gallery/*`` (report_rows' pictures,
hard-linked), ``cache/*`` (the pictures drawn here: pseudo-instances with their confidences,
reviewed masks, "review these first"; each named by a hash of what it shows, so that only
those whose content changed are drawn again; the plots likewise, by ``plots/keys.json``),
``queue.json`` (the review queue, read by ``wsis review export``) and ``metrics.json`` (how
well the queue order tracks ground truth, when there is ground truth).

The per-image work runs before, on Dask: report_rows (signals and pictures from the
pseudo-labels, the masks of the instances the COCO export holds) and seg_infer (the model's
predictions). This stage reads their files in per-image tasks on the same Dask workers
(``Job.map_ids``): each image's confidences with the model's agreement, then, once the queue
is ordered, its gallery row and the pictures whose content changed. It runs no model."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from wsis.errors import WsisError
from wsis.io import file_sha256, read_json, read_json_or_none, write_json
from wsis.report import gallery, plots
from wsis.report.html import headline, write_report
from wsis.review.formats import read_store
from wsis.review.queue import QUEUE_FILE, build_queue, mark_reviewed, order_figures, ordered, stored_predictions

from ..cache import MANIFEST
from ..engine import Pipeline
from ..job import LOSS_HISTORY_FILE, METRICS, Job
from .diagnosis import report_section
from .export import EXPORT_FILE, instance_dir
from .merge_review import REVIEW_STORE
from .report_gallery import confidences, gallery_rows, prune_pictures

TRAINING_STAGES = ("train_cam", "train_irn", "train_seg")
REVIEW_FIRST = 10          # images in "review these first", at the top of the report


_STORES: dict = {}


def _reviewed(store: Path) -> dict:
    """The review store's images, read once per version of the file."""
    key = (str(store), store.stat().st_mtime_ns if store.is_file() else None)
    if key not in _STORES:
        _STORES.clear()
        _STORES[key] = read_store(store)["images"]
    return _STORES[key]


def queue_of(job: Job) -> dict:
    """The review queue from the finished stages in ``job.inputs`` (ins_seg is required):
    each image's entry from report_rows' files when that stage is in the inputs, its
    confidences computed in ``job.map_ids`` tasks (``confidences``), else everything computed
    here (``build_queue``); the model's agreement from seg_infer's predictions when they are
    there (the model is not run); reviewed images marked."""
    inputs = job.inputs
    if "ins_seg" not in inputs:
        raise WsisError(f"{job.out_dir.parent}: no finished ins_seg stage; run `wsis run --stage export` first")
    if "report_rows" in inputs:
        entries = merged(job.map_ids(confidences, dict.fromkeys(job.ids), "confidences"))
        queue = ordered([entries[i] for i in job.ids])
    else:
        predictions = stored_predictions(inputs["seg_infer"]) if "seg_infer" in inputs else None
        queue = build_queue(job.dataset, job.ids, instance_dir(inputs), job.cfg["export"], inputs.get("sem_seg"),
                            job.cfg["ins_seg"]["bg_threshold"], predictions, job.progress(len(job.ids)),
                            inputs.get("make_cam"), job.cfg["eval_cam"]["bg_threshold"])
    # images reviewed (wsis review import) are marked; an import makes this stage stale through merge_review
    return mark_reviewed(queue, _reviewed(job.out_dir.parent / REVIEW_STORE))


def merged(results: list[dict]) -> dict:
    """One dict of ``map_ids`` tasks' {image id: result} dicts."""
    return {k: v for result in results for k, v in result.items()}


def with_rows(job: Job) -> Job:
    """``job`` with report_rows' outputs in its inputs: that stage's, or when it has not
    finished (``wsis report`` of a partial run) its work done now, in ``job.map_ids`` tasks,
    into this stage's ``rows/``."""
    if "report_rows" in job.inputs:
        return job
    from . import report_rows
    out = job.out_dir / "rows"
    out.mkdir(parents=True, exist_ok=True)
    dataclasses.replace(job, stage="report_rows", out_dir=out).map_ids(report_rows.process, dict.fromkeys(job.ids))
    return dataclasses.replace(job, inputs={**job.inputs, "report_rows": out})


def _finished_job(pipeline: Pipeline) -> Job:
    stage = pipeline.stages["report"]
    done = {s.name: pipeline.out_dir(s) for s in pipeline.stages.values()
            if s.name != "report" and pipeline.consistent_on_disk(s) and not (pipeline.manifest(s) or {}).get("skipped")}
    # on the CPU: the report runs no model (seg_infer's predictions give the model agreement),
    # and resolving --device auto would import PyTorch for nothing
    return Job("report", pipeline.cfg, pipeline.dataset, pipeline.stage_ids(stage), pipeline.out_dir(stage),
               done, "cpu")


def current_queue(pipeline: Pipeline) -> dict:
    """The report stage's queue when it is up to date, else one computed now from the finished
    stages."""
    stage = pipeline.stages["report"]
    path = pipeline.out_dir(stage) / QUEUE_FILE
    if pipeline.state(stage).status == "done" and path.is_file():
        return read_json(path)
    with pipeline.mapper() as mapper:
        return queue_of(dataclasses.replace(_finished_job(pipeline), mapper=mapper))


def report_from_finished(pipeline: Pipeline) -> Path:
    """``wsis report``: the report stage's output when up to date, else a report of whatever
    stages have finished (the stage recomputes it in the next run)."""
    stage = pipeline.stages["report"]
    out = pipeline.out_dir(stage)
    if pipeline.state(stage).status == "done":
        return out / "index.html"
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    with pipeline.mapper() as mapper:
        run(dataclasses.replace(_finished_job(pipeline), mapper=mapper))
    return out / "index.html"


PLOT_KEYS = "keys.json"     # in plots/: {plot file: hash of the data it shows}


def _make_plots(job: Job, queue: dict, metrics: dict) -> list[tuple[str, str]]:
    """The report's plots in ``plots/``: [(path relative to the report, caption)]. Each is
    drawn by a ``wsis.report.plots`` function from plain data, and kept when an earlier report
    drew it from equal data (``plots/keys.json`` holds a hash of each one's data) and its file
    decodes whole: a refresh after a review import leaves every plot's data as it was, so it
    draws none and imports neither matplotlib nor pycocotools (about a second on 2 cores, a
    third of such a refresh)."""
    inputs, out = job.inputs, job.out_dir / "plots"
    split = job.cfg["data"]["infer_split"]
    before = read_json_or_none(out / PLOT_KEYS)
    before = before if isinstance(before, dict) else {}
    # a build stopped halfway leaves no keys: its plots are drawn again, not trusted
    (out / PLOT_KEYS).unlink(missing_ok=True)
    keys: dict[str, str] = {}
    made: list[tuple[Path | None, str]] = []

    def plot(name: str, caption: str, data, draw) -> None:
        """``draw(path)`` (the path written, or None when there is nothing to draw) unless the
        plot of equal ``data`` (JSON-able: all the plot shows) is there already."""
        path = out / name
        keys[name] = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
        kept = before.get(name) == keys[name] and gallery.intact_picture(path, None)
        made.append((path if kept else draw(path), caption))

    ins = metrics.get("eval_ins_seg", {}).get(split, {})
    ap50 = ins.get("ap50_per_class", {})
    ap50 = {n: ap50[n] for n in job.dataset.class_names if n in ap50}
    title = f"pseudo-labels [{split}]: AP per class at IoU 0.5"
    plot("ap50_per_class.png", "Per-class AP at IoU 0.5", [ap50, title], lambda p: plots.ap_bars(ap50, p, title))
    gt_file = inputs.get("eval_ins_seg", job.out_dir) / "ground_truth_coco.json"
    if "export" in inputs and gt_file.is_file():
        detections = read_json(inputs["export"] / EXPORT_FILE)["annotations"]
        title = f"pseudo-labels [{split}]: PR at IoU 0.5"
        plot("pr_curves.png", "Precision-recall curves at IoU 0.5", [file_sha256(gt_file), detections, title],
             lambda p: plots.pr_curves(plots.coco_pr_curves(gt_file, detections), p, title))
    sweeps = {s: m["sweep"] for s, m in metrics.get("eval_cam", {}).items() if isinstance(m, dict) and "sweep" in m}
    chosen = job.cfg["eval_cam"]["bg_threshold"]
    plot("cam_sweep.png", "CAM mIoU against the background threshold", [sweeps, chosen],
         lambda p: plots.cam_sweep(sweeps, chosen, p))
    histories = {s: read_json(inputs[s] / LOSS_HISTORY_FILE) for s in TRAINING_STAGES
                 if s in inputs and (inputs[s] / LOSS_HISTORY_FILE).is_file()}
    plot("loss.png", "Training loss per epoch", histories, lambda p: plots.loss_curves(histories, p))
    counts = [len(e["instances"]) for e in queue["images"]]
    scores = [i["score"] for e in queue["images"] for i in e["instances"]]
    plot("histograms.png", "Instances per image and instance scores", [counts, scores],
         lambda p: plots.histograms(counts, scores, p))
    if all("gt_quality" in e for e in queue["images"]):
        quality = [e["gt_quality"] for e in queue["images"]]
        plot("iou_vs_rank.png", "Review order: ground-truth IoU against rank", quality,
             lambda p: plots.iou_vs_rank(quality, p))
    write_json(out / PLOT_KEYS, keys)
    return [(str(p.relative_to(job.out_dir)), caption) for p, caption in made if p is not None]


def run(job: Job) -> None:
    c = job.cfg["report"]
    job = with_rows(job)
    queue = queue_of(job)
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
    diagnosis, diagnosis_plots = report_section(job.out_dir.parent, job.out_dir)   # wsis diagnose's, if it ran
    metrics.update(diagnosis)
    plot_files += diagnosis_plots
    # "review these first": the least confident images (the queue's order) a reviewer has not done yet
    first_ids = set([e["id"] for e in queue["images"] if not e.get("reviewed")][:REVIEW_FIRST])
    shutil.rmtree(job.out_dir / "gallery", ignore_errors=True)
    reviewed = _reviewed(job.out_dir.parent / REVIEW_STORE)
    work = {e["id"]: {"rank": rank, "entry": e, "first": e["id"] in first_ids,
                      "reviewed": reviewed[e["id"]]["instances"] if e["reviewed"] else None}
            for rank, e in enumerate(queue["images"], start=1)}
    done = job.map_ids(gallery_rows, work, "gallery rows")
    rows = merged([d["rows"] for d in done])
    page_rows = [rows[e["id"]] for e in queue["images"]]    # in the queue's order
    used, drawn = {n for d in done for n in d["used"]}, sum(d["drawn"] for d in done)
    prune_pictures(job.out_dir, used)
    print(f"report: {drawn} pictures drawn, {len(used) - drawn} unchanged", flush=True)
    signals = ", ".join(queue["signals"]) or "none"
    summary = (f"{len(page_rows)} images of split '{split}', dataset '{job.dataset.kind}'. Review order: least "
               f"confident first; confidence (0 to 1) from the signals {signals}.")
    path = write_report(job.out_dir, "wsis report", summary, metrics, plot_files, page_rows, c["rows_per_page"],
                        headline(metrics, split, queue), [r for r in page_rows if r["first_picture"]])
    print(f"report: {path}", flush=True)
