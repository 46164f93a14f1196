"""Stage 5: semantic pseudo-labels - CAM seeds random-walked over IRNet's boundary map."""

from __future__ import annotations

import numpy as np

from wsis.algorithms.labels import scores_to_label, upsample_normalised
from wsis.algorithms.random_walk import random_walk
from wsis.io import read_npz, write_label_png

from ..job import Job
from .irn_infer import read_irn_outputs


def irn_outputs(job: Job, image_id: str):
    """(image, stride-4 CAMs, classes, boundary, displacement) of one image."""
    image = job.dataset.load_image(image_id)
    z = read_npz(job.inputs["make_cam"] / f"{image_id}.npz")
    boundary, displacement = read_irn_outputs(job.inputs["irn_infer"], image_id)
    return image, z["cam"].astype(np.float32), z["classes"].tolist(), boundary, displacement


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.png``: 0 background, c + 1 class c."""
    rw = job.cfg["random_walk"]
    for image_id in ids:
        image, cams, classes, boundary, _ = irn_outputs(job, image_id)
        walked = random_walk(cams, boundary, rw["radius"], rw["beta"], rw["exp_times"], rw["tolerance"], job.device)
        scores = upsample_normalised(walked, image.shape[:2], job.dataset.original_size(image_id))
        write_label_png(job.out_dir / f"{image_id}.png",
                        scores_to_label(scores, classes, job.cfg["sem_seg"]["bg_threshold"]))
