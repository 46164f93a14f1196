"""``wsis diagnose``: the oracle ablation of the instance pseudo-labels.

On a dataset with ground-truth masks, each row replaces upstream inputs of the instance
synthesis (wsis.algorithms.instances.synthesize_instances, ins_seg's step) with their
ground-truth ideals and reruns the synthesis on the infer split, scored as eval_ins_seg
scores the pseudo-labels (wsis.metrics.InstanceAP). The baseline row uses the cached
make_cam and irn_infer outputs; "relations" retrains IRNet on ground-truth relation labels in
``<work-dir>/diagnose/relations`` (the engine's train_irn and irn_infer, with an oracle
ir_label stage); "all" replaces the CAMs, the boundary map and the displacement field at once
(the relation labels only act through the last two).

It is a command, not a stage of the DAG: its rows re-run a stage's work under other inputs,
and the relation row needs its own copy of three stages (with their stage names, which the
stage functions read their inputs by), so it drives a second Pipeline in a sub work dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from wsis.algorithms.instances import Synthesis, synthesize_instances
from wsis.diagnose import oracles
from wsis.errors import ConfigError, WsisError
from wsis.io import read_npz, write_bytes, write_json, write_label_png
from wsis.metrics import InstanceAP, mean_ap

from ..engine import Pipeline
from ..job import Job
from ..progress import Progress, say
from .diagnosis import DIAGNOSE_DIR, LOSSES, RESULT_FILE
from .irn_infer import read_irn_outputs

TABLE_FILE = "oracles.txt"
# the inputs a row replaces; "relations" replaces IRNet's boundary and displacement by the
# outputs of an IRNet trained on oracle relation labels, "instance_relations" by those of one
# trained on ground-truth instance labels (touching instances of one class then give negative
# pairs: what semantic relation labels, oracle or not, cannot give); "clusters" replaces the
# centroid search and clustering of the displacement field by the ground-truth instances
ROWS = {"baseline": (), "cam": ("cam",), "relations": ("relations",),
        "instance_relations": ("instance_relations",), "boundary": ("boundary",),
        "displacement": ("displacement",), "clusters": ("clusters",), "all": ("cam", "boundary", "displacement")}
RETRAINED = ("relations", "instance_relations")     # rows that retrain IRNet
THRESHOLDS = (0.5, 0.7)


def replaced_inputs(row: str) -> tuple[str, ...]:
    """The inputs a row replaces: a row of ``ROWS``, or oracles joined by "+" ("cam+displacement")."""
    return tuple(dict.fromkeys(k for part in row.split("+") for k in ROWS[part]))


def parse_oracles(text: str) -> list[str]:
    """The rows of ``--oracles`` (comma-separated; a row may join oracles with "+"), baseline
    first, then the named rows in table order, then the joined ones as given."""
    asked = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [t for t in asked if t == "baseline" or any(p not in ROWS or p == "baseline" for p in t.split("+"))
           or sum(p in RETRAINED for p in t.split("+")) > 1]
    if bad or not asked:
        raise ConfigError(f"--oracles {text}: expected a comma-separated list of "
                          f"{', '.join(r for r in ROWS if r != 'baseline')} (or several joined by +, "
                          f"at most one of {' and '.join(RETRAINED)})")
    return ["baseline"] + [r for r in ROWS if r in asked] + [t for t in asked if t not in ROWS]


# ------------------------------------------------------------------ the relation-label oracle
def oracle_relation_process(job: Job, ids: list[str]) -> None:
    """Per-image function of the oracle ir_label stage: writes ``<id>.png`` as ir_label does."""
    for image_id in ids:
        _, _, semantic = oracles.processing_ground_truth(job.dataset, image_id)
        write_label_png(job.out_dir / f"{image_id}.png", oracles.oracle_relation_labels(semantic))


def oracle_instance_relation_process(job: Job, ids: list[str]) -> None:
    """As ``oracle_relation_process``, with instance n labelled n (void stays 255)."""
    for image_id in ids:
        instances, _, semantic = oracles.processing_ground_truth(job.dataset, image_id)
        labels = np.where(semantic == oracles.IGNORE, oracles.IGNORE, np.minimum(instances, 254)).astype(np.uint8)
        write_label_png(job.out_dir / f"{image_id}.png", oracles.oracle_relation_labels(labels))


def relation_oracle_pipeline(pipeline: Pipeline, kind: str = "relations") -> Pipeline:
    """train_irn and irn_infer of ``pipeline`` over oracle relation labels (``kind``: "relations",
    semantic; "instance_relations", per instance), in ``<work-dir>/diagnose/<kind>``; its
    train_cam is the main work dir's (linked)."""
    from ..dag import STAGES
    work = pipeline.work_dir / DIAGNOSE_DIR / kind
    work.mkdir(parents=True, exist_ok=True)
    link = work / "train_cam"
    target = pipeline.out_dir(pipeline.stages["train_cam"]).resolve()
    if not link.is_symlink() or link.resolve() != target:
        if link.is_symlink():
            link.unlink()
        os.symlink(target, link)
    label_stage = dataclasses.replace(
        STAGES["ir_label"], upstream=(), sections=(), reads_images=False,
        per_image=oracle_relation_process if kind == "relations" else oracle_instance_relation_process,
        description=f"{kind.replace('_', ' ')} labels from the ground truth (oracle)",
        version=100 + oracles.RELATION_BAND)
    stages = {"train_cam": STAGES["train_cam"], "ir_label": label_stage,
              "train_irn": STAGES["train_irn"], "irn_infer": STAGES["irn_infer"]}
    return Pipeline(stages, pipeline.cfg, pipeline.dataset, work, pipeline.device, pipeline.scheduler,
                    pipeline.workers)


# ------------------------------------------------------------------------------ scoring
def overlaps(instances: np.ndarray, scores: np.ndarray, gt_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixels each detection scoring > 0 shares with each ground-truth instance (P, G),
    pixels of each such detection (P,))."""
    pred = instances[None] == (np.flatnonzero(scores > 0) + 1)[:, None, None]
    inter = np.einsum("phw,ghw->pg", pred.astype(np.float32), gt_masks.astype(np.float32))
    return inter, pred.sum((1, 2))


def gt_quality(instances: np.ndarray, scores: np.ndarray, gt_masks: np.ndarray) -> float:
    """Mean over the ground-truth instances of their best IoU with a detection scoring > 0
    (1.0 for an image with neither)."""
    n_pred = int((scores > 0).sum())
    if len(gt_masks) == 0:
        return 1.0 if n_pred == 0 else 0.0
    if n_pred == 0:
        return 0.0
    inter, pred_area = overlaps(instances, scores, gt_masks)
    union = pred_area[:, None] + gt_masks.sum((1, 2))[None] - inter
    return float((inter / np.maximum(union, 1)).max(0).mean())


TOUCH_PX = 2                 # ground-truth instances this close (in pixels) touch


def no_losses() -> dict[str, int]:
    return dict.fromkeys(("found",) + LOSSES, 0)


def lost_instances(instances: np.ndarray, scores: np.ndarray, gt_masks: np.ndarray, gt_classes) -> dict[str, int]:
    """How the ground-truth instances of one image are lost: counts of instances

    - "missed": no detection (scoring > 0) holds half of it;
    - "merged_touching": the detection holding the most of it (at least half) is also the one
      holding the most of another instance of its class that touches it (within ``TOUCH_PX``
      pixels);
    - "merged_apart": ... of another instance of its class, none of them touching;
    - "merged_other_class": ... only of instances of other classes.
    The rest are "found". Touching instances of one class share no boundary in class-level
    labels, so "merged_touching" is the loss that no better CAM or relation label removes."""
    counts = no_losses()
    n = len(gt_masks)
    if n == 0:
        return counts
    holder = np.full(n, -1)
    if (scores > 0).any():
        inter = overlaps(instances, scores, gt_masks)[0].T             # (G, P)
        best = inter.argmax(1)
        held = inter[np.arange(n), best] >= 0.5 * np.maximum(gt_masks.sum((1, 2)), 1)
        holder = np.where(held, best, -1)
    grown = [ndimage.binary_dilation(m, iterations=TOUCH_PX) for m in gt_masks]
    for i in range(n):
        if holder[i] < 0:
            counts["missed"] += 1
            continue
        partners = [j for j in range(n) if j != i and holder[j] == holder[i]]
        same = [j for j in partners if gt_classes[j] == gt_classes[i]]
        if any((grown[i] & gt_masks[j]).any() for j in same):
            counts["merged_touching"] += 1
        elif same:
            counts["merged_apart"] += 1
        elif partners:
            counts["merged_other_class"] += 1
        else:
            counts["found"] += 1
    return counts


class RowScore:
    """One row's accumulated figures: InstanceAP, instances per image, per-image quality, how
    ground-truth instances are lost."""

    def __init__(self, num_classes: int):
        self.ap = InstanceAP(num_classes, THRESHOLDS)
        self.predicted: list[int] = []
        self.ground_truth: list[int] = []
        self.quality: dict[str, float] = {}
        self.lost = no_losses()

    def add(self, image_id: str, synthesis: Synthesis, gt) -> None:
        n = len(synthesis.classes)
        masks = synthesis.instances[None] == np.arange(1, n + 1)[:, None, None]   # as eval_ins_seg
        self.ap.add(masks, synthesis.classes, synthesis.scores, gt.masks, gt.classes)
        self.predicted.append(int((synthesis.scores > 0).sum()))
        self.ground_truth.append(len(gt.classes))
        self.quality[image_id] = gt_quality(synthesis.instances, synthesis.scores, gt.masks)
        for k, v in lost_instances(synthesis.instances, synthesis.scores, gt.masks, gt.classes).items():
            self.lost[k] += v

    def result(self) -> dict:
        aps = self.ap.result()
        pred, gt = np.array(self.predicted), np.array(self.ground_truth)
        return {"mAP50": mean_ap(aps[0.5]), "mAP70": mean_ap(aps[0.7]),
                "instances_per_image": float(pred.mean()), "gt_instances_per_image": float(gt.mean()),
                "under_segmented": float((pred < gt).mean()), "over_segmented": float((pred > gt).mean()),
                "mean_gt_iou": float(np.mean(list(self.quality.values()))),
                # shares of the ground-truth instances
                **{k: self.lost[k] / max(int(gt.sum()), 1) for k in LOSSES}}


def format_table(rows: dict[str, dict], images: int) -> str:
    width = max(len(name) for name in ["oracle", *rows]) + 2
    head = (f"{'oracle':<{width}}{'mAP50':>7}{'mAP70':>7}{'inst/img':>10}{'GT/img':>8}{'under':>7}{'over':>7}"
            f"{'GT IoU':>8}{'missed':>8}{'m.touch':>9}{'m.apart':>9}{'m.other':>9}")
    lines = [f"oracle ablation of the instance pseudo-labels, {images} images (mAP in %, under/over in % of "
             "images; missed and merged (m.) in % of ground-truth instances: merged with a touching instance "
             "of its class, a separate one of its class, or only other classes)",
             head, "-" * len(head)]
    for name, r in rows.items():
        lines.append(f"{name:<{width}}{100 * r['mAP50']:>7.1f}{100 * r['mAP70']:>7.1f}{r['instances_per_image']:>10.2f}"
                     f"{r['gt_instances_per_image']:>8.2f}{100 * r['under_segmented']:>7.1f}"
                     f"{100 * r['over_segmented']:>7.1f}{r['mean_gt_iou']:>8.3f}"
                     + "".join(f"{100 * r.get(k, float('nan')):>{w}.1f}" for k, w in zip(LOSSES, (8, 9, 9, 9))))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run
def image_inputs(pipeline: Pipeline, image_id: str, retrained: dict[str, Path]) -> dict:
    """The cached inputs of one image, each oracle, and its ground truth."""
    ds = pipeline.dataset
    z = read_npz(pipeline.out_dir(pipeline.stages["make_cam"]) / f"{image_id}.npz")
    cams, classes = z["cam"].astype(np.float32), z["classes"].tolist()
    boundary, displacement = read_irn_outputs(pipeline.out_dir(pipeline.stages["irn_infer"]), image_id)
    ids, instance_classes, _ = oracles.processing_ground_truth(ds, image_id)
    grid = oracles.grid_instances(ids)
    if grid.shape != cams.shape[1:] or grid.shape != boundary.shape:
        raise WsisError(f"{image_id}: cached CAM grid {cams.shape[1:]} / boundary {boundary.shape} do not match "
                        f"the stride-4 grid {grid.shape} of its ground truth at the processing size; "
                        f"rerun `wsis run --stage irn_infer`")
    out = {"size": ids.shape, "out_size": ds.original_size(image_id), "classes": classes,
           "cam": (cams, oracles.oracle_cams(grid, instance_classes, classes)),
           "boundary": (boundary, oracles.oracle_boundary(grid)),
           "displacement": (displacement, oracles.oracle_displacement(grid)),
           "clusters": (None, oracles.oracle_clusters(grid)),
           "gt": ds.instance_gt(image_id), "grid": grid}
    for kind, irn_dir in retrained.items():
        out[kind] = read_irn_outputs(irn_dir, image_id)
    return out


def row_synthesis(inputs: dict, replaced: tuple[str, ...], cfg: dict, device: str) -> Synthesis:
    pick = {k: inputs[k][1 if k in replaced else 0] for k in ("cam", "boundary", "displacement")}
    for kind in RETRAINED:
        if kind in replaced:
            pick["boundary"], pick["displacement"] = inputs[kind]
    return synthesize_instances(pick["cam"], inputs["classes"], pick["boundary"], pick["displacement"],
                                cfg, device, inputs["size"], inputs["out_size"],
                                inputs["clusters"][1] if "clusters" in replaced else None)


@contextlib.contextmanager
def one_torch_thread(device: str):
    """The synthesis on the CPU in one torch thread, as the stages' Dask tasks run it: its
    ops are small (a 160 x 120 grid), and OpenMP threads waiting on a busy core made a row
    7 x slower (coco-mini, 6 photos: 195 s with 2 threads while another process ran, 29 s with one)."""
    import torch
    before = torch.get_num_threads()
    if str(device).startswith("cpu"):
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_diagnose(pipeline: Pipeline, rows: list[str], limit: int | None = None, figures: int = 6) -> dict:
    """Run the oracle ablation; writes ``<work-dir>/diagnose/oracles.json`` (and .txt) and the
    figures of the ``figures`` worst images of the baseline. Returns the result."""
    from wsis.device import resolve_device
    ds = pipeline.dataset
    if not ds.has_masks:
        raise WsisError(f"dataset '{ds.kind}' has no ground-truth masks")   # callers check first
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: must be at least 1")
    pipeline.run("irn_infer")      # make_cam, ir_label, train_irn, irn_infer: whatever is missing or stale
    retrained = {}
    for kind in RETRAINED:
        if any(kind in replaced_inputs(r) for r in rows):
            sub = relation_oracle_pipeline(pipeline, kind)
            sub.run("irn_infer")
            retrained[kind] = sub.out_dir(sub.stages["irn_infer"])
    device = resolve_device(pipeline.device)
    split = pipeline.cfg["data"]["infer_split"]
    ids = list(ds.ids(split))[:limit] if limit else list(ds.ids(split))
    scores = {name: RowScore(ds.num_classes) for name in rows}
    progress = Progress("diagnose", len(ids))
    start = time.monotonic()
    with one_torch_thread(device):
        for image_id in ids:
            inputs = image_inputs(pipeline, image_id, retrained)
            for name in rows:
                scores[name].add(image_id, row_synthesis(inputs, replaced_inputs(name), pipeline.cfg, device),
                                 inputs["gt"])
            progress.update(1)
    table = {name: s.result() for name, s in scores.items()}
    out_dir = pipeline.work_dir / DIAGNOSE_DIR
    worst = sorted(ids, key=lambda i: (scores["baseline"].quality[i], i))[:max(figures, 0)]
    figure_files = draw_worst(pipeline, worst, scores["baseline"].quality, out_dir, device)
    result = {"split": split, "images": len(ids), "limit": limit, "rows": table, "order": rows,
              "relation_band_px": oracles.RELATION_BAND if retrained else None,
              "seconds": round(time.monotonic() - start, 1),
              "baseline_gt_iou": scores["baseline"].quality,
              "worst_images": [{"id": i, "gt_iou": scores["baseline"].quality[i], "figure": f}
                               for i, f in zip(worst, figure_files)]}
    text = format_table(table, len(ids))
    write_json(out_dir / RESULT_FILE, result)
    write_bytes(out_dir / TABLE_FILE, (text + "\n").encode())
    say(f"diagnose: {len(ids)} images x {len(rows)} rows in {result['seconds']:.0f} s")
    return result | {"table": text}


def draw_worst(pipeline: Pipeline, ids: list[str], quality: dict[str, float], out_dir: Path,
               device: str) -> list[str]:
    """One PNG per image under ``out_dir`` (the baseline's inputs and result); returns the
    file names."""
    from wsis.diagnose.figures import diagnostic_figure
    for old in out_dir.glob("worst_*.png"):       # an earlier run's worst images
        old.unlink()
    names = []
    for rank, image_id in enumerate(ids, start=1):
        inputs = image_inputs(pipeline, image_id, {})
        synthesis = row_synthesis(inputs, (), pipeline.cfg, device)
        name = f"worst_{rank:02d}_{image_id.replace('/', '_')}.png"
        diagnostic_figure(pipeline.dataset.load_image(image_id, original=True), inputs["boundary"][0],
                          inputs["displacement"][0],
                          synthesis, inputs["gt"], pipeline.dataset.class_names,
                          pipeline.cfg["ins_seg"],
                          f"{image_id}: GT IoU {quality[image_id]:.2f}", out_dir / name)
        names.append(name)
    return names
