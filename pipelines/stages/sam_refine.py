"""Stage 6b (optional, ``sam.enabled``): refine the instance pseudo-masks with the Segment
Anything Model, prompted per IRN instance with its box, points and coarse mask
(wsis.algorithms.sam_prompts); SAM's mask replaces the IRN mask only where they agree."""

from __future__ import annotations

import numpy as np

from wsis.algorithms import sam_prompts as sp
from wsis.algorithms.instances import find_centroids
from wsis.io import processing_size, read_npz, write_npz

from ..job import Job
from .irn_infer import read_irn_outputs

_MODEL: dict = {}   # per worker process: (checkpoint, its identity, model_type, device) -> model


def load_model(cfg: dict, device: str):
    """The configured SAM, loaded once per process (Dask workers keep it between chunks)."""
    from pathlib import Path

    from wsis.models.sam import load_sam
    c = cfg["sam"]
    path = Path(c["checkpoint"]).expanduser()
    key = (c["checkpoint"], path.stat().st_mtime_ns if path.is_file() else None, c["model_type"], device)
    if key not in _MODEL:
        _MODEL.clear()
        _MODEL[key] = load_sam(c["checkpoint"], c["model_type"], device)
    return _MODEL[key]


def refine_image(model, image: np.ndarray, z: dict, endpoints: np.ndarray, proc_size: tuple[int, int],
                 cam: np.ndarray | None, cam_classes: list[int], c: dict) -> dict:
    """One image's ins_seg arrays ``z`` refined; returns the arrays of the same format (plus
    ``refined`` (N,) bool and ``sam_iou`` (N,): SAM's predicted IoU of the chosen mask, 0 where
    the IRN mask stayed)."""
    from wsis.models.sam import decode_masks, encode_image
    irn_map, classes, scores = z["instances"], z["classes"], z["scores"]
    n = len(classes)
    size = irn_map.shape
    long_side = model.image_encoder.img_size
    masks = irn_map[None] == np.arange(1, n + 1)[:, None, None]
    positives = []
    for m, cls in zip(masks, classes.tolist()):
        centroid = sp.displacement_centroid(m, endpoints, proc_size)
        score = None
        if cam is not None and cls in cam_classes:
            score = sp.resample_nearest(cam[cam_classes.index(cls)].astype(np.float32), size)
        positives.append(sp.positive_points(m, centroid, score, c["positive_points"]))
    points, labels = sp.point_prompts(positives, c["negative_points"], give_negatives=scores > 0)
    boxes = sp.to_model_frame(sp.mask_boxes(masks).reshape(-1, 2, 2), size, long_side).reshape(-1, 4)
    logits = sp.mask_prompt_logits(masks, long_side) if c["mask_prompt"] else None
    embedding, input_size = encode_image(model, image)
    candidates, predicted = decode_masks(model, embedding, input_size, size, boxes,
                                         sp.to_model_frame(points, size, long_side), labels, logits)
    chosen, _ = sp.select_masks(candidates, predicted, masks, c["min_agreement"])
    refined = chosen >= 0
    final = np.where(refined[:, None, None], candidates[np.arange(n), np.maximum(chosen, 0)], masks)
    new_scores = sp.combine_scores(scores, predicted, chosen, c["score_weight"])
    sam_iou = np.where(refined, predicted[np.arange(n), np.maximum(chosen, 0)], 0.0).astype(np.float32)
    return dict(z, instances=sp.paint_instances(final, irn_map, new_scores), scores=new_scores,
                refined=refined, sam_iou=sam_iou)


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.npz`` as ins_seg does (``instances``, ``classes``, ``scores``,
    ``margins``), the same instances in the same order: SAM's mask where it agrees with the
    IRN mask, else the IRN mask; overlaps go to the instance whose IRN mask holds the pixel,
    else to the higher score (sp.paint_instances), so no instance vanishes. ``margins`` stay
    the walk's (the review queue's signal of how clearly the IRN instance won)."""
    c = job.cfg["sam"]
    model = load_model(job.cfg, job.device)
    ds = job.dataset
    for image_id in ids:
        z = read_npz(job.inputs["ins_seg"] / f"{image_id}.npz")
        if len(z["classes"]) == 0:
            write_npz(job.out_dir / f"{image_id}.npz", **z, refined=np.zeros(0, bool), sam_iou=np.zeros(0, np.float32))
            continue
        image = ds.load_image(image_id, original=True)
        proc_size = processing_size(*image.shape[:2], ds.max_side)
        _, displacement = read_irn_outputs(job.inputs["irn_infer"], image_id)
        endpoints = find_centroids(displacement, job.cfg["ins_seg"]["centroid_iterations"])
        cams = read_npz(job.inputs["make_cam"] / f"{image_id}.npz")
        out = refine_image(model, image, z, endpoints, proc_size, cams["high_res"], cams["classes"].tolist(), c)
        write_npz(job.out_dir / f"{image_id}.npz", **out)
