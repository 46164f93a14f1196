"""Evaluate the trained instance-segmentation model on the eval split: COCO AP and VOC mAP50."""

from __future__ import annotations

import numpy as np

from wsis.coco import annotation, coco_evaluate
from wsis.errors import DataError
from wsis.inference import predict_image
from wsis.io import write_json
from wsis.metrics import instance_ap, mean_ap

from ..engine import METRICS, Job
from . import train_seg
from .eval_pseudo import ground_truth_coco


def run(job: Job) -> None:
    ds = job.dataset
    model, arch, names = train_seg.load_trained(job.inputs["train_seg"], job.device)
    unknown = [n for n in names if n not in ds.class_names]
    if unknown:
        raise DataError(f"{job.inputs['train_seg']}: model class '{unknown[0]}' is not a class of the dataset")
    to_dataset = np.array([ds.class_names.index(n) for n in names], np.int64)
    gt_path, images, truths = ground_truth_coco(ds, job.ids, job.out_dir / "ground_truth_coco.json")
    predictions, results = [], []
    progress = job.progress(len(job.ids))
    for entry, image_id in zip(images, job.ids):
        pred = predict_image(model, ds.load_image(image_id, original=True), arch["input_size"], job.device,
                             job.cfg["seg"]["score_threshold"])
        labels = to_dataset[pred["labels"]]
        predictions.append((pred["masks"], labels, pred["scores"]))
        for m, c, sc in zip(pred["masks"], labels, pred["scores"]):
            results.append(annotation(m, c, entry["id"], len(results) + 1, sc, ds.coco_category_ids()))
        progress.update(1)
    aps = instance_ap(predictions, truths, ds.num_classes, (0.5,))[0.5]
    result = {"images": len(job.ids), "model": arch["model"],
              "mAP50": mean_ap(aps)}
    result.update({f"coco_{k}": v for k, v in coco_evaluate(gt_path, results).items()})
    split = job.cfg["data"]["eval_split"]
    print(f"eval_seg [{split}] {arch['model']}: mAP50 {100 * result['mAP50']:.1f}, COCO AP {100 * result['coco_AP']:.1f}, "
          f"AP50 {100 * result['coco_AP50']:.1f}, AP75 {100 * result['coco_AP75']:.1f}", flush=True)
    write_json(job.out_dir / METRICS, {split: result})
