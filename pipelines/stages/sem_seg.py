"""Stage 5: semantic pseudo-labels - CAM seeds random-walked over IRNet's boundary map."""

from __future__ import annotations

import numpy as np

from wsis.algorithms.labels import scores_to_label, upsample_normalised
from wsis.algorithms.random_walk import random_walk
from wsis.io import read_npz, write_label_png
from wsis.models.irn import irn_inference

from ..engine import Job
from . import load_cached, train_irn


def irn_outputs(job: Job, image_id: str):
    """(image, stride-4 CAMs, classes, boundary, displacement) of one image."""
    model = load_cached(job.inputs["train_irn"] / train_irn.MODEL_FILE, job.device, train_irn.load_trained)
    image = job.dataset.load_image(image_id)
    z = read_npz(job.inputs["make_cam"] / f"{image_id}.npz")
    boundary, displacement = irn_inference(model, image, job.device)
    cams = z["cam"].astype(np.float32)
    return image, cams, z["classes"].tolist(), boundary, displacement


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.png``: 0 background, c + 1 class c."""
    rw = job.cfg["random_walk"]
    for image_id in ids:
        image, cams, classes, boundary, _ = irn_outputs(job, image_id)
        walked = random_walk(cams, boundary, rw["radius"], rw["beta"], rw["exp_times"])
        scores = upsample_normalised(walked, image.shape[:2], job.dataset.original_size(image_id))
        write_label_png(job.out_dir / f"{image_id}.png",
                        scores_to_label(scores, classes, job.cfg["sem_seg"]["bg_threshold"]))
