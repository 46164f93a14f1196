"""Evaluate the trained instance-segmentation model on the eval split: COCO AP and VOC mAP50."""

from __future__ import annotations

import numpy as np

from wsis.coco import annotation, coco_evaluate
from wsis.errors import DataError
from wsis.inference import predict_image
from wsis.io import write_json
from wsis.metrics import mean_ap

from ..engine import METRICS, Job
from . import train_seg
from .eval_pseudo import score_instances


def run(job: Job) -> None:
    ds = job.dataset
    model, arch, names = train_seg.load_trained(job.inputs["train_seg"], job.device)
    unknown = [n for n in names if n not in ds.class_names]
    if unknown:
        raise DataError(f"{job.inputs['train_seg']}: model class '{unknown[0]}' is not a class of the dataset")
    to_dataset = np.array([ds.class_names.index(n) for n in names], np.int64)
    gt_path = job.out_dir / "ground_truth_coco.json"
    results = []     # detections as RLE annotations, encoded as soon as they are made

    def predict(entry, image_id):
        pred = predict_image(model, ds.load_image(image_id), arch["input_size"], job.device,
                             job.cfg["seg"]["score_threshold"])
        labels = to_dataset[pred["labels"]]
        for m, c, sc in zip(pred["masks"], labels, pred["scores"]):
            results.append(annotation(m, c, entry["id"], len(results) + 1, sc))
        return pred["masks"], labels, pred["scores"]

    aps = score_instances(ds, job.ids, predict, (0.5,), gt_path, job.progress(len(job.ids)))[0.5]
    result = {"images": len(job.ids), "model": arch["model"],
              "mAP50": mean_ap(aps)}
    result.update({f"coco_{k}": v for k, v in coco_evaluate(gt_path, results).items()})
    split = job.cfg["data"]["eval_split"]
    print(f"eval_seg [{split}] {arch['model']}: mAP50 {100 * result['mAP50']:.1f}, COCO AP {100 * result['coco_AP']:.1f}, "
          f"AP50 {100 * result['coco_AP50']:.1f}, AP75 {100 * result['coco_AP75']:.1f}", flush=True)
    write_json(job.out_dir / METRICS, {split: result})
