"""Stage 3: relation mining - full-resolution CAMs -> relation labels with a dense CRF."""

from __future__ import annotations

import numpy as np

from wsis.algorithms.relations import relation_labels
from wsis.io import read_npz, write_label_png

from ..job import Job


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.png``: 0 background, c + 1 class c, 255 unsure."""
    c = job.cfg["ir_label"]
    crf = {k: c[k] for k in ("gt_prob", "iterations", "gauss_sxy", "gauss_compat",
                             "bilateral_sxy", "bilateral_srgb", "bilateral_compat")}
    for image_id in ids:
        z = read_npz(job.inputs["make_cam"] / f"{image_id}.npz")
        image = job.dataset.load_image(image_id)
        labels = relation_labels(image, z["high_res"].astype(np.float32), z["classes"].tolist(),
                                 c["fg_thres"], c["bg_thres"], **crf)
        write_label_png(job.out_dir / f"{image_id}.png", labels)
