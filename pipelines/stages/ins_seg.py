"""Stage 6: instance pseudo-labels - displacement clusters x CAMs, random-walked."""

from __future__ import annotations

import numpy as np

from wsis.algorithms.instances import synthesize_instances
from wsis.algorithms.margins import instance_margins
from wsis.io import write_npz

from ..job import Job
from .sem_seg import irn_outputs


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.npz``: ``instances`` (H, W) int32 (0 none, n detection n), ``classes``
    (N,), ``scores`` (N,) and ``margins`` (N,): how clearly the argmax won on each detection
    (wsis.algorithms.margins.instance_margins). Detections are disjoint (one argmax)."""
    c = job.cfg["ins_seg"]
    for image_id in ids:
        image, cams, classes, boundary, displacement = irn_outputs(job, image_id)
        result = synthesize_instances(cams, classes, boundary, displacement, job.cfg, job.device,
                                      image.shape[:2], job.dataset.original_size(image_id))
        write_npz(job.out_dir / f"{image_id}.npz", instances=result.instances, classes=result.classes,
                  scores=result.scores.astype(np.float32),
                  margins=instance_margins(result.score_maps, result.instances, c["bg_threshold"]))
