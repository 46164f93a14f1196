"""The review queue of a run: confidence per instance and per image from the stage outputs on
disk (ins_seg, sem_seg, and train_seg's model when it is there), least confident first."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsis.algorithms.labels import scores_to_label
from wsis.io import read_label_png, read_npz

from . import confidence as conf

QUEUE_FILE = "queue.json"
MODEL_SCORE_THRESHOLD = 0.3   # model detections counted for agreement: those `wsis predict` shows


def instance_masks(z: dict) -> np.ndarray:
    """(N, H, W) boolean masks of an ins_seg npz."""
    n = len(z["classes"])
    return z["instances"][None] == np.arange(1, n + 1)[:, None, None]


class ModelAgreement:
    """The trained model's predictions, as dataset class indices, for the agreement signal."""

    def __init__(self, model_dir: Path, dataset, device: str = "cpu"):
        from pipelines.stages import train_seg
        self.model, self.arch, names = train_seg.load_trained(model_dir, device)
        self.to_dataset = np.array([dataset.class_names.index(n) if n in dataset.class_names else -1
                                    for n in names], np.int64)
        self.device = device

    def predict(self, image: np.ndarray):
        from wsis.inference import predict_image
        pred = predict_image(self.model, image, self.arch["input_size"], self.device, MODEL_SCORE_THRESHOLD)
        return pred["masks"], self.to_dataset[pred["labels"]]


def build_queue(dataset, ids, ins_dir: Path, sem_dir: Path | None, bg_threshold: float,
                model: ModelAgreement | None = None, progress=None, cam_dir: Path | None = None,
                cam_bg_threshold: float = 0.15) -> dict:
    """{"signals": names, "images": [per image, least confident first]}; each image holds its
    id, confidence, image-level signals, instances (index n in the ins_seg map, class, score,
    confidence, signals) and, when the dataset has ground truth, ``gt_quality``: the matched
    IoU of its instances with the ground truth (confidence.matched_quality)."""
    images = []
    for image_id in ids:
        z = read_npz(Path(ins_dir) / f"{image_id}.npz")
        masks, classes, scores = instance_masks(z), z["classes"], z["scores"]
        signals: dict[str, np.ndarray] = {"score": scores}
        if "margins" in z:
            signals["margin"] = z["margins"] / max(1.0 - bg_threshold, 1e-6)
        image_signals: dict[str, float] = {}
        if sem_dir is not None:
            signals["semantic"], image_signals["semantic"] = conf.label_agreement(
                masks, classes, read_label_png(Path(sem_dir) / f"{image_id}.png"))
        if cam_dir is not None:
            c = read_npz(Path(cam_dir) / f"{image_id}.npz")
            cam_labels = scores_to_label(c["high_res"].astype(np.float32), c["classes"].tolist(), cam_bg_threshold)
            signals["cam"], image_signals["cam"] = conf.label_agreement(masks, classes, cam_labels)
        if model is not None:
            pm, pc = model.predict(dataset.load_image(image_id))
            pairs = conf.match_instances(masks, classes, pm, pc)
            signals["model"] = conf.best_iou_per_instance(pairs, len(masks))
            image_signals["model"] = conf.matched_quality(pairs, len(masks), len(pm))
        inst_conf = conf.instance_confidence(signals) if len(masks) else np.zeros(0)
        entry = {"id": image_id, "confidence": conf.image_confidence(inst_conf, image_signals),
                 "signals": image_signals,
                 "instances": [{"index": n + 1, "class": int(classes[n]), "score": float(scores[n]),
                                "confidence": float(inst_conf[n]),
                                "signals": {k: float(v[n]) for k, v in signals.items()}}
                               for n in range(len(masks))]}
        if dataset.has_masks:
            gt = dataset.instance_gt(image_id)
            pairs = conf.match_instances(masks, classes, gt.masks, gt.classes)
            entry["gt_quality"] = conf.matched_quality(pairs, len(masks), len(gt.masks))
        images.append(entry)
        if progress is not None:
            progress.update(1)
    order = conf.review_order({e["id"]: e["confidence"] for e in images})
    by_id = {e["id"]: e for e in images}
    names = sorted({k for e in images for i in e["instances"] for k in i["signals"]})
    return {"signals": names, "images": [by_id[i] for i in order]}


def order_figures(queue: dict, fraction: float = 0.1) -> dict | None:
    """Mean ground-truth quality of the first and last ``fraction`` of the queue, or None
    without ground truth."""
    quality = [e.get("gt_quality") for e in queue["images"]]
    if not quality or any(q is None for q in quality):
        return None
    first, last = conf.first_last_fraction(quality, fraction)
    return {"images": len(quality), "fraction": fraction, "first_mean_iou": first, "last_mean_iou": last,
            "all_mean_iou": float(np.mean(quality))}


def mark_reviewed(queue: dict, reviewed) -> dict:
    """Mark each image of ``queue`` ``"reviewed": true`` when it is in ``reviewed`` (the review
    store's image ids), else false; returns the queue."""
    for entry in queue["images"]:
        entry["reviewed"] = entry["id"] in reviewed
    return queue
