"""``wsis predict``: detections as a COCO JSON (with scores) and overlay PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .coco import annotation, write_instances
from .inference import predict_image
from .io import atomic_path, read_rgb
from .models.registry import load_instance_model

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], np.uint8)


def overlay(image: np.ndarray, masks, labels, scores, class_names) -> Image.Image:
    """Masks blended in their class's colour, with the class name and score at each mask."""
    out = image.astype(np.float32)
    for m, c in zip(masks, labels):
        out[m] = 0.45 * out[m] + 0.55 * PALETTE[c % len(PALETTE)]
    img = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for m, c, s in zip(masks, labels, scores):
        ys, xs = np.nonzero(m)
        if len(ys):
            draw.text((int(xs.min()), int(ys.min())), f"{class_names[c]} {s:.2f}", fill=(255, 255, 255))
    return img


def predict_images(checkpoint: Path, paths: list[Path], out_dir: Path, score_threshold: float,
                   device: str = "cpu") -> Path:
    model, arch, class_names = load_instance_model(checkpoint, device)
    out_dir = Path(out_dir)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for k, path in enumerate(paths, start=1):
        image = read_rgb(path)
        pred = predict_image(model, image, arch["input_size"], device, score_threshold)
        images.append({"id": k, "file_name": str(path), "height": image.shape[0], "width": image.shape[1]})
        for m, c, s in zip(pred["masks"], pred["labels"], pred["scores"]):
            anns.append(annotation(m, c, k, len(anns) + 1, s))
        with atomic_path(out_dir / "overlays" / f"{Path(path).stem}.png") as tmp:
            overlay(image, pred["masks"], pred["labels"], pred["scores"], class_names).save(tmp, format="PNG")
    result = out_dir / "predictions.json"
    write_instances(result, images, anns, class_names)
    return result
