"""Evaluate the trained instance-segmentation model: COCO AP and VOC mAP50, on a separate
labelled COCO file (``eval_seg.annotations``, held-out images) when one is given, else on the
dataset's eval split. The metrics say which in "scored_on": a preset whose eval split is also
a training split (coco: "all") scores the model on the images it was trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsis.coco import annotation, coco_evaluate
from wsis.errors import DataError
from wsis.io import write_json
from wsis.metrics import mean_ap

from ..job import METRICS, Job
from .eval_pseudo import score_instances


HELD_OUT = "held-out"


def held_out_dataset(config: dict, default_images: Path):
    """The COCO file ``eval_seg.annotations`` with its images under ``eval_seg.images`` (default:
    ``default_images``, the training images' directory); classes are its own categories. The
    CLI opens it before a run starts too, so that a bad file stops the run before training."""
    from wsis.data.coco import open_coco
    cfg = config["eval_seg"]
    images = Path(cfg["images"]) if cfg["images"] else Path(default_images)
    if not Path(cfg["annotations"]).is_file():
        raise DataError(f"{cfg['annotations']}: eval annotations JSON not found (eval_seg.annotations)")
    if not images.is_dir():
        raise DataError(f"{images}: eval image directory not found (eval_seg.images)")
    return open_coco(images, Path(cfg["annotations"]), [])


def scored_on(ds, cfg: dict, ids) -> str:
    """Whether the eval split's images were also training images (of the CAMs or the
    pseudo-labels the model learned from)."""
    d = cfg["data"]
    trained = set(ds.ids(d["train_split"])) | set(ds.ids(d["infer_split"]))
    seen = sum(i in trained for i in ids)
    if seen == 0:
        return f"held-out split '{d['eval_split']}'"
    return "training images" if seen == len(ids) else f"{seen} of {len(ids)} training images"


def run(job: Job) -> None:
    if job.cfg["eval_seg"]["annotations"]:
        ds = held_out_dataset(job.cfg, job.dataset.image_dir)
        ids, split, where = ds.ids("all"), HELD_OUT, "held-out images"
    else:
        ds, ids, split = job.dataset, job.ids, job.cfg["data"]["eval_split"]
        where = scored_on(ds, job.cfg, ids)
    from wsis.inference import predict_image     # torch: imported here so that the CLI can
    from . import train_seg                      # check the held-out set without it
    model, arch, names = train_seg.load_trained(job.inputs["train_seg"], job.device)
    unknown = [n for n in names if n not in ds.class_names]
    if unknown:
        raise DataError(f"{job.inputs['train_seg']}: model class '{unknown[0]}' is not a class of the dataset")
    to_dataset = np.array([ds.class_names.index(n) for n in names], np.int64)
    gt_path = job.out_dir / "ground_truth_coco.json"
    results = []     # detections as RLE annotations, encoded as soon as they are made

    def predict(entry, image_id):
        pred = predict_image(model, ds.load_image(image_id, original=True), arch["input_size"], job.device,
                             job.cfg["seg"]["score_threshold"])
        labels = to_dataset[pred["labels"]]
        for m, c, sc in zip(pred["masks"], labels, pred["scores"]):
            results.append(annotation(m, c, entry["id"], len(results) + 1, sc, ds.coco_category_ids()))
        return pred["masks"], labels, pred["scores"]

    aps = score_instances(ds, ids, predict, (0.5,), gt_path, job.progress(len(ids)))[0.5]
    result = {"images": len(ids), "model": arch["model"], "scored_on": where,
              "mAP50": mean_ap(aps)}
    if split == HELD_OUT:
        result["annotations"] = str(job.cfg["eval_seg"]["annotations"])
    result.update({f"coco_{k}": v for k, v in coco_evaluate(gt_path, results).items()})
    print(f"eval_seg [{split}] {arch['model']}: mAP50 {100 * result['mAP50']:.1f}, COCO AP {100 * result['coco_AP']:.1f}, "
          f"AP50 {100 * result['coco_AP50']:.1f}, AP75 {100 * result['coco_AP75']:.1f} (scored on {where})", flush=True)
    write_json(job.out_dir / METRICS, {split: result})
