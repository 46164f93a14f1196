"""The review queue of a run: confidence per instance and per image from the stage outputs on
disk (ins_seg, sem_seg, and seg_infer's model predictions when they are there), least confident first.
Its instances are those the COCO export holds (``wsis.coco.exported_instances``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsis.io import read_label_png, read_npz, write_npz

from . import confidence as conf

QUEUE_FILE = "queue.json"
MODEL_SCORE_THRESHOLD = 0.3   # model detections counted for agreement: those `wsis predict` shows
# the order the signals are averaged in, whatever order a stored entry gives them in (sums of
# floats depend on it)
SIGNAL_ORDER = ("score", "margin", "semantic", "cam", "model")


def instance_masks(z: dict) -> np.ndarray:
    """(N, H, W) boolean masks of an ins_seg npz."""
    n = len(z["classes"])
    return z["instances"][None] == np.arange(1, n + 1)[:, None, None]


def write_predictions(path: Path, masks: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> None:
    """One image's model predictions (seg_infer): the (N, H, W) masks bit-packed, the labels
    as dataset class indices (-1: a model class the dataset does not have), the scores."""
    n, h, w = masks.shape
    write_npz(path, masks=np.packbits(masks.reshape(n, h * w).astype(bool), axis=1), shape=np.array([n, h, w]),
              labels=np.asarray(labels, np.int64), scores=np.asarray(scores, np.float32))


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(masks (N, H, W) bool, labels (N,), scores (N,)) as ``write_predictions`` wrote them."""
    z = read_npz(path)
    n, h, w = (int(v) for v in z["shape"])
    masks = np.unpackbits(z["masks"], axis=1, count=h * w).astype(bool).reshape(n, h, w)
    return masks, z["labels"], z["scores"]


def encode_masks(masks: np.ndarray) -> dict:
    """(N, H, W) masks as JSON: {"size": [H, W], "counts": [each mask's COCO RLE counts]}; a
    few kB per image, where the instance map is H x W x 4 bytes."""
    from wsis.coco import rle_encode
    return {"size": list(masks.shape[1:]), "counts": [rle_encode(m)["counts"] for m in masks]}


def decode_masks(encoded: dict) -> np.ndarray:
    """The (N, H, W) masks ``encode_masks`` gave ``encoded``."""
    from wsis.coco import rle_decode
    size = encoded["size"]
    return np.array([rle_decode({"size": size, "counts": c}) for c in encoded["counts"]], bool).reshape(-1, *size)


def pseudo_signals(dataset, image_id: str, ins_dir: Path, export_cfg: dict, sem_dir: Path | None,
                   bg_threshold: float, cam_dir: Path | None = None,
                   cam_bg_threshold: float = 0.15) -> tuple[dict, np.ndarray]:
    """One image's queue entry without the model and without confidences, and the (N, H, W)
    masks of its instances. Its instances are those the COCO export holds
    (``wsis.coco.exported_instances`` with ``export_cfg``), so that the queue, its confidences
    and the report count and show what training and the review export read. The entry: id,
    image-level signals, instances (index: the instance's number n in the ins_seg map; class,
    score, signals) and, with ground truth, ``gt_quality`` (confidence.matched_quality of its
    instances). JSON-ready: the report_rows stage stores it per image."""
    from wsis.coco import exported_instances
    z = read_npz(Path(ins_dir) / f"{image_id}.npz")
    kept = list(exported_instances(z, export_cfg))
    numbers = np.array([k[0] for k in kept], np.int64)
    masks = np.array([k[1] for k in kept], bool).reshape(-1, *z["instances"].shape)
    classes = np.array([k[2] for k in kept], np.int64)
    scores = np.array([k[3] for k in kept], np.float64)
    signals: dict[str, np.ndarray] = {"score": scores}
    if "margins" in z:
        signals["margin"] = z["margins"][numbers - 1] / max(1.0 - bg_threshold, 1e-6)
    image_signals: dict[str, float] = {}
    if sem_dir is not None:
        signals["semantic"], image_signals["semantic"] = conf.label_agreement(
            masks, classes, read_label_png(Path(sem_dir) / f"{image_id}.png"))
    if cam_dir is not None:
        # imported here: it brings PyTorch, which the report's Dask tasks (this module's other users) need not load
        from wsis.algorithms.labels import scores_to_label
        from wsis.algorithms.sam_prompts import resample_nearest
        c = read_npz(Path(cam_dir) / f"{image_id}.npz")
        cam_labels = scores_to_label(c["high_res"].astype(np.float32), c["classes"].tolist(), cam_bg_threshold)
        size = z["instances"].shape
        if cam_labels.shape != size:   # CAMs are at the processing size (data.max_side), instances at the photo's
            cam_labels = resample_nearest(cam_labels, size)
        signals["cam"], image_signals["cam"] = conf.label_agreement(masks, classes, cam_labels)
    entry = {"id": image_id, "signals": {k: float(v) for k, v in image_signals.items()},
             "instances": [{"index": int(numbers[k]), "class": int(classes[k]), "score": float(scores[k]),
                            "signals": {name: float(v[k]) for name, v in signals.items()}}
                           for k in range(len(masks))]}
    if dataset.has_masks:
        gt = dataset.instance_gt(image_id)
        pairs = conf.match_instances(masks, classes, gt.masks, gt.classes)
        entry["gt_quality"] = conf.matched_quality(pairs, len(masks), len(gt.masks))
    return entry, masks


def with_confidence(entry: dict, masks: np.ndarray | None = None, predictions=None) -> dict:
    """``entry`` (``pseudo_signals``) with the model's agreement when ``predictions`` (a
    function of the image id giving the model's masks and dataset labels, or None; it needs
    ``masks``, the (N, H, W) masks of the entry's instances in its order) and the confidence
    of each instance and of the image."""
    entry = {**entry, "signals": dict(entry["signals"]), "instances": [dict(i) for i in entry["instances"]]}
    instances = entry["instances"]
    if predictions is not None:
        pm, pc = predictions(entry["id"])
        pairs = conf.match_instances(masks, [i["class"] for i in instances], pm, pc)
        agreement = conf.best_iou_per_instance(pairs, len(instances))
        entry["signals"]["model"] = conf.matched_quality(pairs, len(instances), len(pm))
        for n, inst in enumerate(instances):
            inst["signals"] = {**inst["signals"], "model": float(agreement[n])}
    names = sorted(instances[0]["signals"], key=SIGNAL_ORDER.index) if instances else []
    signals = {k: np.array([i["signals"][k] for i in instances], np.float64) for k in names}
    inst_conf = conf.instance_confidence(signals) if instances else np.zeros(0)
    for n, inst in enumerate(instances):
        inst["confidence"] = float(inst_conf[n])
    image_signals = {k: entry["signals"][k] for k in sorted(entry["signals"], key=SIGNAL_ORDER.index)}
    entry["confidence"] = conf.image_confidence(inst_conf, image_signals)
    return entry


def ordered(entries: list[dict]) -> dict:
    """{"signals": names, "images": ``entries`` least confident first}."""
    order = conf.review_order({e["id"]: e["confidence"] for e in entries})
    by_id = {e["id"]: e for e in entries}
    names = sorted({k for e in entries for i in e["instances"] for k in i["signals"]})
    return {"signals": names, "images": [by_id[i] for i in order]}


def stored_predictions(seg_infer_dir: Path):
    """The model's (masks, dataset labels) of an image, from seg_infer's files."""
    def predictions(image_id: str):
        masks, labels, scores = read_predictions(Path(seg_infer_dir) / f"{image_id}.npz")
        return masks, labels
    return predictions


def build_queue(dataset, ids, ins_dir: Path, export_cfg: dict, sem_dir: Path | None, bg_threshold: float,
                predictions=None, progress=None, cam_dir: Path | None = None,
                cam_bg_threshold: float = 0.15) -> dict:
    """{"signals": names, "images": [per image, least confident first]}: each image's
    ``pseudo_signals`` ``with_confidence``, in one process (the report stage reads
    report_rows' per-image entries instead). ``predictions``: see ``with_confidence``."""
    entries = []
    for image_id in ids:
        entry, masks = pseudo_signals(dataset, image_id, ins_dir, export_cfg, sem_dir, bg_threshold, cam_dir,
                                      cam_bg_threshold)
        entries.append(with_confidence(entry, masks, predictions))
        if progress is not None:
            progress.update(1)
    return ordered(entries)


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
