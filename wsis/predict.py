"""``wsis predict``: detections as a COCO results list and a full COCO file, and overlay PNGs.

``results.json`` is the list pycocotools' ``COCO.loadRes`` takes (image_id, category_id,
segmentation, score; no bbox, so COCOeval measures mask areas). ``predictions.json`` is a
complete COCO instances file (images, annotations with scores, categories) for labelling tools.
Ids: with ``coco_file`` the images and categories are that file's (so the results evaluate
against it); otherwise images are numbered 1..N in the order given and categories are those the
model was trained with (a COCO training file's own ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .coco import annotation, categories, write_instances
from .errors import DataError
from .io import atomic_path, read_image_size, read_rgb, write_json

PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]], np.uint8)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.json"


@dataclass
class InputImage:
    path: Path
    coco_id: int
    file_name: str      # as written in predictions.json
    overlay: str        # overlay file name (relative to overlays/)


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


def gather_images(paths: list[Path]) -> list[InputImage]:
    """Files as given, directories as their image files (sorted, not recursive); each one's
    header is read, so a missing or unreadable input stops before the model is loaded."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{p}: no images in this directory ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files.extend(found)
        elif not p.exists():
            raise DataError(f"{p}: no such image or directory")
        else:
            files.append(p)
    images, used = [], set()
    for k, path in enumerate(files, start=1):
        read_image_size(path)
        name = path.stem if path.stem not in used else f"{path.stem}-{k}"
        used.add(name)
        images.append(InputImage(path, k, str(path), f"{name}.png"))
    return images


def coco_file_images(coco_file: Path, image_dir: Path) -> tuple[list[InputImage], list[dict]]:
    """The images and categories of a COCO file (checked as a dataset is)."""
    from .data.coco import open_coco
    ds = open_coco(Path(image_dir), Path(coco_file), [])
    images = []
    for image_id in ds.ids("all"):
        read_image_size(ds.image_path(image_id))
        images.append(InputImage(ds.image_path(image_id), ds.coco_image_id(image_id, 0), ds.files[image_id],
                                 f"{image_id}.png"))
    return images, ds.coco_categories()


def category_ids_for(class_names: list[str], model_categories: list[dict] | None,
                     file_categories: list[dict] | None, coco_file: Path | None) -> list[int | None]:
    """The category id of each model class (None: not in the user's file, not written)."""
    if file_categories is None:
        cats = model_categories or categories(class_names)
        return [c["id"] for c in cats]
    by_name = {c["name"]: c["id"] for c in file_categories}
    ids = [by_name.get(n) for n in class_names]
    if all(i is None for i in ids):
        raise DataError(f"{coco_file}: none of the model's classes ({', '.join(class_names)}) is a category here")
    return ids


def predict_images(checkpoint: Path, images: list[InputImage], out_dir: Path, score_threshold: float,
                   device: str = "cpu", file_categories: list[dict] | None = None,
                   coco_file: Path | None = None) -> tuple[Path, Path]:
    """Writes results.json, predictions.json and overlays/ under ``out_dir``; returns the
    paths of the first two. ``images`` come from ``gather_images`` or ``coco_file_images``."""
    from .inference import predict_image
    from .models.registry import load_instance_model
    model, arch, class_names = load_instance_model(checkpoint, device)
    cat_ids = category_ids_for(class_names, arch.get("categories"), file_categories, coco_file)
    skipped = [n for n, i in zip(class_names, cat_ids) if i is None]
    if skipped:
        print(f"predict: model classes not in {coco_file} are not written: {', '.join(skipped)}", flush=True)
    out_dir = Path(out_dir)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    entries, anns = [], []
    for item in images:
        image = read_rgb(item.path)
        pred = predict_image(model, image, arch["input_size"], device, score_threshold)
        entries.append({"id": item.coco_id, "file_name": item.file_name,
                        "height": image.shape[0], "width": image.shape[1]})
        for m, c, s in zip(pred["masks"], pred["labels"], pred["scores"]):
            if cat_ids[c] is not None:
                anns.append(annotation(m, c, item.coco_id, len(anns) + 1, s, cat_ids))
        with atomic_path(out_dir / "overlays" / item.overlay) as tmp:
            overlay(image, pred["masks"], pred["labels"], pred["scores"], class_names).save(tmp, format="PNG")
    used = [(n, i) for n, i in zip(class_names, cat_ids) if i is not None]
    by_id = {c["id"]: c for c in (file_categories or arch.get("categories") or categories(class_names))}
    cats = [by_id.get(i, {"id": i, "name": n, "supercategory": ""}) for n, i in used]
    predictions = out_dir / PREDICTIONS_FILE
    write_instances(predictions, entries, anns, class_names, cats, description="wsis predictions")
    results = out_dir / RESULTS_FILE
    write_json(results, [{k: a[k] for k in ("image_id", "category_id", "segmentation", "score")} for a in anns])
    return results, predictions
