"""The trained instance-segmentation model's predictions on the infer split, once per image
and per model: the review queue's model-agreement signal reads them (the report runs no
model)."""

from __future__ import annotations

import numpy as np

from wsis.review.queue import MODEL_SCORE_THRESHOLD, write_predictions

from ..job import Job
from . import load_cached, train_seg


def process(job: Job, ids: list[str]) -> None:
    """Writes ``<id>.npz`` (``queue.write_predictions``): the detections scoring at least
    MODEL_SCORE_THRESHOLD, at the image's own size (that of the pseudo-masks), labels as
    dataset class indices."""
    from wsis.inference import predict_image
    model, arch, names = load_cached(job.inputs["train_seg"] / train_seg.MODEL_FILE, job.device,
                                     train_seg.load_trained)
    names_here = job.dataset.class_names
    to_dataset = np.array([names_here.index(n) if n in names_here else -1 for n in names], np.int64)
    for image_id in ids:
        pred = predict_image(model, job.dataset.load_image(image_id, original=True), arch["input_size"], job.device,
                             MODEL_SCORE_THRESHOLD)
        write_predictions(job.out_dir / f"{image_id}.npz", pred["masks"], to_dataset[pred["labels"]], pred["scores"])
