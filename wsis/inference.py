"""Run a trained instance-segmentation model on one image."""

from __future__ import annotations

import numpy as np
import torch

from .transforms import letterbox


@torch.no_grad()
def predict_image(model, image: np.ndarray, input_size: int, device: str = "cpu",
                  score_threshold: float = 0.05) -> dict:
    """{"masks": (N, H, W) bool, "labels": (N,) class indices, "scores": (N,)} at the image's size."""
    canvas, _, valid = letterbox(image, input_size, model.neck.body.pad_colour)
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].float().to(device)
    out = model(x)
    pred = model.predict(out, 0, valid, image.shape[:2])
    keep = pred["scores"] >= score_threshold
    return {k: v[keep].cpu().numpy() for k, v in pred.items()}
