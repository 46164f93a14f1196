"""Evaluate CAMs: mIoU against ground truth with a constant background score."""

from __future__ import annotations

import numpy as np

from wsis.io import read_npz, write_json
from wsis.algorithms.labels import resize_scores, scores_to_label
from wsis.metrics import confusion_matrix, iou_from_confusion, mean_iou

from ..job import METRICS, Job

SWEEP = tuple(float(t) for t in np.round(np.arange(0.05, 1.0, 0.05), 2))


def run(job: Job) -> None:
    threshold = job.cfg["eval_cam"]["bg_threshold"]
    ds = job.dataset
    n = ds.num_classes + 1
    results = {}
    for split in dict.fromkeys([job.cfg["data"]["infer_split"], job.cfg["data"]["eval_split"]]):
        conf = np.zeros((n, n), np.int64)
        sweep = {t: np.zeros((n, n), np.int64) for t in SWEEP}
        baseline = np.zeros((n, n), np.int64)
        ids = ds.ids(split)
        progress = job.progress(len(ids))
        for image_id in ids:
            gt = ds.semantic_gt(image_id)
            z = read_npz(job.inputs["make_cam"] / f"{image_id}.npz")
            cams, classes = resize_scores(z["high_res"].astype(np.float32), gt.shape), z["classes"]
            conf += confusion_matrix(gt, scores_to_label(cams, classes, threshold), n)
            for t in SWEEP:
                sweep[t] += confusion_matrix(gt, scores_to_label(cams, classes, t), n)
            baseline += confusion_matrix(gt, np.zeros_like(gt), n)
            progress.update(1)
        best = max(SWEEP, key=lambda t: mean_iou(sweep[t]))
        iou = iou_from_confusion(conf)
        results[split] = {
            "images": len(ids),
            "bg_threshold": threshold,
            "miou": mean_iou(conf),
            "iou": {name: (None if np.isnan(v) else float(v))
                    for name, v in zip(("background",) + ds.class_names, iou)},
            "all_background_miou": mean_iou(baseline),
            "best_bg_threshold": float(best),
            "best_miou": mean_iou(sweep[best]),
            "sweep": {f"{t:.2f}": mean_iou(sweep[t]) for t in SWEEP},   # for the report's plot
        }
        print(f"eval_cam [{split}]: CAM mIoU {100 * results[split]['miou']:.1f} at bg {threshold} "
              f"(all-background baseline {100 * results[split]['all_background_miou']:.1f}; "
              f"best {100 * results[split]['best_miou']:.1f} at bg {best})", flush=True)
    write_json(job.out_dir / METRICS, results)
