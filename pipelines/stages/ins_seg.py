"""Stage 6: instance pseudo-labels - displacement clusters x CAMs, random-walked."""

from __future__ import annotations

import numpy as np

from wsis.algorithms.instances import cluster_instances, detections, find_centroids, instance_seeds
from wsis.algorithms.labels import upsample_normalised
from wsis.algorithms.random_walk import random_walk
from wsis.io import write_npz
from wsis.review.confidence import instance_margins

from ..engine import Job
from .sem_seg import irn_outputs


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.npz``: ``instances`` (H, W) int32 (0 none, n detection n), ``classes``
    (N,), ``scores`` (N,) and ``margins`` (N,): how clearly the argmax won on each detection
    (wsis.review.confidence.instance_margins). Detections are disjoint (one argmax)."""
    c, rw = job.cfg["ins_seg"], job.cfg["random_walk"]
    for image_id in ids:
        image, cams, classes, boundary, displacement = irn_outputs(job, image_id)
        centroids = find_centroids(displacement, c["centroid_iterations"])
        instance_map = cluster_instances(displacement, centroids, c["cluster_threshold"])
        n_instances = int(instance_map.max())
        seeds = instance_seeds(cams, instance_map)
        walked = random_walk(seeds, boundary, rw["radius"], rw["beta"], rw["exp_times"], rw["tolerance"], job.device)
        scores = upsample_normalised(walked, image.shape[:2], job.dataset.original_size(image_id))
        inst, det_classes, det_scores = detections(scores, classes, n_instances, c["bg_threshold"],
                                                   c["min_area_fraction"])
        write_npz(job.out_dir / f"{image_id}.npz", instances=inst, classes=det_classes,
                  scores=det_scores.astype(np.float32),
                  margins=instance_margins(scores, inst, c["bg_threshold"]))
