"""Evaluate the pseudo-labels against ground truth: semantic mIoU, VOC instance mAP, COCO AP."""

from __future__ import annotations

import numpy as np

from wsis.coco import annotation, coco_evaluate, image_entries, write_instances
from wsis.io import read_json, read_label_png, read_npz, write_json
from wsis.metrics import InstanceAP, confusion_matrix, iou_from_confusion, mean_ap, mean_iou

from ..job import METRICS, Job
from .export import EXPORT_FILE, REPLACED_FILE, instance_dir


def run_semantic(job: Job) -> None:
    ds = job.dataset
    n = ds.num_classes + 1
    conf = np.zeros((n, n), np.int64)
    progress = job.progress(len(job.ids))
    for image_id in job.ids:
        conf += confusion_matrix(ds.semantic_gt(image_id), read_label_png(job.inputs["sem_seg"] / f"{image_id}.png"), n)
        progress.update(1)
    iou = iou_from_confusion(conf)
    split = job.cfg["data"]["infer_split"]
    result = {"images": len(job.ids), "miou": mean_iou(conf),
              "iou": {k: (None if np.isnan(v) else float(v)) for k, v in zip(("background",) + ds.class_names, iou)}}
    print(f"eval_sem_seg [{split}]: random-walk semantic mIoU {100 * result['miou']:.1f}", flush=True)
    write_json(job.out_dir / METRICS, {split: result})


def score_instances(ds, ids, predict, iou_thresholds, gt_path, progress) -> dict:
    """Score the instance predictions of ``ids`` one image at a time, in memory that does not
    grow with the images' pixels.

    ``predict(entry, image_id)`` returns one image's (masks (N, H, W) bool, classes, scores);
    ``entry`` is the image's COCO entry, for callers that RLE-encode the masks there. Each
    image's ground truth is decoded once, its IoU rows go to ``InstanceAP`` and its masks are
    kept only as RLE annotations; the ground truth of ``ids`` is written as a COCO file at
    ``gt_path`` for pycocotools. Returns the VOC AP per threshold (``InstanceAP.result``)."""
    images = image_entries(ds, ids)
    anns: list[dict] = []
    ap = InstanceAP(ds.num_classes, iou_thresholds)
    for entry, image_id in zip(images, ids):
        gt = ds.instance_gt(image_id)
        for m, cls in zip(gt.masks, gt.classes):
            anns.append(annotation(m, cls, entry["id"], len(anns) + 1, category_ids=ds.coco_category_ids()))
        masks, classes, scores = predict(entry, image_id)
        ap.add(masks, classes, scores, gt.masks, gt.classes)
        progress.update(1)
    write_instances(gt_path, images, anns, ds.class_names, ds.coco_categories())
    return ap.result()


def run_instance(job: Job) -> None:
    ds = job.dataset
    thresholds = [float(t) for t in job.cfg["eval_ins_seg"]["iou_thresholds"]]
    gt_path = job.out_dir / "ground_truth_coco.json"

    def predict(entry, image_id):
        z = read_npz(instance_dir(job.inputs) / f"{image_id}.npz")
        n = len(z["classes"])
        return z["instances"][None] == np.arange(1, n + 1)[:, None, None], z["classes"], z["scores"]

    aps = score_instances(ds, job.ids, predict, thresholds, gt_path, job.progress(len(job.ids)))
    result: dict = {"images": len(job.ids)}
    for t in thresholds:
        result[f"mAP{round(100 * t)}"] = mean_ap(aps[t])
    result["ap50_per_class"] = {k: (None if np.isnan(v) else float(v))
                                for k, v in zip(ds.class_names, aps.get(0.5, np.full(ds.num_classes, np.nan)))}
    # the pipeline's own pseudo-labels, as the VOC mAP: on a reviewed image those the reviewer's
    # masks replaced in the export (review.export), not the reviewer's
    detections = [a for a in read_json(job.inputs["export"] / EXPORT_FILE)["annotations"] if a.get("source") != "reviewed"]
    replaced = job.inputs["export"] / REPLACED_FILE
    if replaced.is_file():
        detections += read_json(replaced)["annotations"]
    coco = coco_evaluate(gt_path, detections)
    result.update({f"coco_{k}": v for k, v in coco.items()})
    split = job.cfg["data"]["infer_split"]
    print(f"eval_ins_seg [{split}]: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in result.items()
                                                  if isinstance(v, float)), flush=True)
    write_json(job.out_dir / METRICS, {split: result})
