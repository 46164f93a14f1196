"""Stage 4b: IRNet inference, once per image - the boundary map and displacement field that
both the semantic and the instance pseudo-labels read (the reference runs the network in each)."""

from __future__ import annotations

import numpy as np

from wsis.io import read_npz, write_npz
from wsis.models.backbone import fold_frozen_batchnorm
from wsis.models.irn import irn_inference

from ..job import Job
from . import load_cached, train_irn


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.npz``: ``boundary`` (h, w) float16 in [0, 1] (flip-averaged) and
    ``displacement`` (2, h, w) float32, mean-centred, in stride-4 cells. The displacement stays
    float32: centroid search follows it for hundreds of steps."""
    model = load_cached(job.inputs["train_irn"] / train_irn.MODEL_FILE, job.device,
                        lambda d, device: fold_frozen_batchnorm(train_irn.load_trained(d, device)))
    for image_id in ids:
        boundary, displacement = irn_inference(model, job.dataset.load_image(image_id), job.device)
        write_npz(job.out_dir / f"{image_id}.npz", boundary=boundary.astype(np.float16),
                  displacement=displacement.astype(np.float32))


def read_irn_outputs(irn_dir, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """(boundary (h, w), displacement (2, h, w)) of one image, as float32."""
    z = read_npz(irn_dir / f"{image_id}.npz")
    return z["boundary"].astype(np.float32), z["displacement"].astype(np.float32)
