"""Stage 2: multi-scale + flip CAMs per image, at stride 4 and at full resolution."""

from __future__ import annotations

import numpy as np

from wsis.io import write_npz
from wsis.models.backbone import fold_frozen_batchnorm
from wsis.models.cam import multiscale_cam

from ..job import Job
from . import load_cached, train_cam


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.npz``: ``classes`` (K,), ``cam`` (K, ceil(H/4), ceil(W/4)) and
    ``high_res`` (K, H, W), float16, each channel max-normalised. H, W is the processing size
    (``data.max_side``): ir_label pairs it with the processing-size image; eval_cam resizes it."""
    model = load_cached(job.inputs["train_cam"] / train_cam.MODEL_FILE, job.device,
                        lambda d, device: fold_frozen_batchnorm(train_cam.load_trained(d, device)))
    c = job.cfg["make_cam"]
    for image_id in ids:
        classes = job.dataset.labels[image_id]
        image = job.dataset.load_image(image_id)
        low, high = multiscale_cam(model, image, classes, c["scales"], c["flip"], job.device)
        write_npz(job.out_dir / f"{image_id}.npz", classes=np.array(classes, np.int64),
                  cam=low.astype(np.float16), high_res=high.astype(np.float16))
