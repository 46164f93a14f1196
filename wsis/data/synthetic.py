"""The built-in synthetic dataset, generated deterministically from a seed.

Each class has its own shape, colour and texture; images hold 1..max_instances instances,
often several of one class, placed so that they touch and overlap, on a cluttered textured
background, at random scales. It is written in the PASCAL VOC devkit layout (JPEGImages,
Annotations, SegmentationClass, SegmentationObject, ImageSets/Segmentation) so the VOC reader
serves it; ``synthetic.json`` records the generator settings.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image
from skimage.draw import polygon2mask

from ..errors import ConfigError, DataError
from ..io import current_umask, write_label_png

GENERATOR_VERSION = 1
SPEC_FILE = "synthetic.json"


@dataclass(frozen=True)
class Style:
    colour: tuple[int, int, int]
    texture: str


STYLES: dict[str, Style] = {
    "disc": Style((215, 45, 40), "solid"),
    "square": Style((40, 80, 215), "stripes"),
    "triangle": Style((45, 170, 60), "dots"),
    "star": Style((235, 195, 35), "checker"),
    "cross": Style((165, 55, 195), "diagonal"),
    "ring": Style((30, 185, 190), "solid"),
}


def shape_mask(kind: str, h: int, w: int, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if kind == "disc":
        return dy ** 2 + dx ** 2 <= r ** 2
    if kind == "ring":
        d2 = dy ** 2 + dx ** 2
        return (d2 <= r ** 2) & (d2 >= (0.5 * r) ** 2)
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    if kind == "cross":
        arm = 0.32 * r
        return ((np.abs(u) <= arm) & (np.abs(v) <= r)) | ((np.abs(v) <= arm) & (np.abs(u) <= r))
    if kind in ("triangle", "star"):
        if kind == "triangle":
            t = angle + np.arange(3) * 2 * np.pi / 3
            radii = np.full(3, r)
        else:
            t = angle + np.arange(10) * np.pi / 5
            radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        verts = np.stack([cy + radii * np.sin(t), cx + radii * np.cos(t)], axis=1)
        return polygon2mask((h, w), verts)
    raise ValueError(kind)


def texture(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A pattern in [0, 1] over the whole image."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(5, 9)
    phase = rng.uniform(0, period)
    if kind == "solid":
        return np.full((h, w), 0.8, np.float32)
    if kind == "stripes":
        return ((yy + phase) % period < period / 2).astype(np.float32)
    if kind == "diagonal":
        return ((xx + yy + phase) % period < period / 2).astype(np.float32)
    if kind == "checker":
        return (((yy + phase) // (period / 1.5) + (xx + phase) // (period / 1.5)) % 2).astype(np.float32)
    if kind == "dots":
        cy, cx = (yy + phase) % period - period / 2, (xx + phase) % period - period / 2
        return (cy ** 2 + cx ** 2 > (period / 3.5) ** 2).astype(np.float32)
    raise ValueError(kind)


def smooth_field(h: int, w: int, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    small = rng.uniform(0, 1, (cells, cells)).astype(np.float32)
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(img, np.float32) / 255.0


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    c1, c2 = rng.uniform(60, 200, 3), rng.uniform(60, 200, 3)
    f = smooth_field(h, w, rng)[..., None]
    img = c1 * f + c2 * (1 - f)
    # low-contrast grey texture and clutter: thin lines and blobs in muted colours
    img *= 0.85 + 0.15 * texture(rng.choice(["stripes", "diagonal", "checker"]), h, w, rng)[..., None]
    for _ in range(rng.integers(3, 9)):
        col = rng.uniform(50, 210, 3)
        col = 0.5 * col + 0.5 * col.mean()          # desaturated: clutter, not an object
        if rng.random() < 0.5:
            m = shape_mask("disc", h, w, rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 6), 0.0)
        else:
            y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
            ang, length = rng.uniform(0, np.pi), rng.uniform(10, 40)
            verts = np.array([[y0, x0], [y0 + length * np.sin(ang), x0 + length * np.cos(ang)],
                              [y0 + length * np.sin(ang) + 2, x0 + length * np.cos(ang) + 2], [y0 + 2, x0 + 2]])
            m = polygon2mask((h, w), verts)
        img[m] = col
    return img


def layout(h: int, w: int, classes: list[str], max_instances: int, rng: np.random.Generator):
    """Choose instances (class index, mask) so that each stays at least 35% visible."""
    n = int(rng.integers(1, max_instances + 1))
    if n >= 2 and rng.random() < 0.6:
        repeated = int(rng.integers(len(classes)))
        k = int(rng.integers(2, n + 1))
        picks = [repeated] * k + list(rng.integers(len(classes), size=n - k))
    else:
        picks = list(rng.integers(len(classes), size=n))
    for _ in range(100):
        shapes, centres = [], []
        for c in picks:
            r = rng.uniform(0.13, 0.27) * min(h, w)
            if centres and rng.random() < 0.6:   # touch or overlap an earlier instance
                py, px, pr = centres[int(rng.integers(len(centres)))]
                ang = rng.uniform(0, 2 * np.pi)
                dist = (pr + r) * rng.uniform(0.6, 1.05)
                cy, cx = py + dist * np.sin(ang), px + dist * np.cos(ang)
            else:
                cy, cx = rng.uniform(0.6 * r, h - 0.6 * r), rng.uniform(0.6 * r, w - 0.6 * r)
            centres.append((cy, cx, r))
            shapes.append((int(c), shape_mask(classes[c], h, w, cy, cx, r, rng.uniform(0, 2 * np.pi))))
        visible = np.zeros((h, w), np.int32)          # instance index + 1, later ones on top
        for i, (_, m) in enumerate(shapes):
            visible[m] = i + 1
        ok = all((visible == i + 1).sum() >= max(40, 0.35 * m.sum()) for i, (_, m) in enumerate(shapes))
        if ok:
            return [(c, visible == i + 1) for i, (c, _) in enumerate(shapes)]
    return [(c, m) for c, m in shapes[:1]]


def render(index: int, seed: int, split: str, classes: list[str], size_range: tuple[int, int],
           max_instances: int):
    rng = np.random.default_rng([seed, 0 if split == "train" else 1, index])
    h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, size=2))
    img = background(h, w, rng)
    instances = layout(h, w, classes, max_instances, rng)
    cls_map = np.zeros((h, w), np.uint8)
    obj_map = np.zeros((h, w), np.uint8)
    for i, (c, m) in enumerate(instances):
        style = STYLES[classes[c]]
        jitter = rng.uniform(0.85, 1.15)
        pattern = texture(style.texture, h, w, rng)[..., None]
        colour = np.clip(np.array(style.colour) * jitter, 0, 255)
        fill = colour * (0.6 + 0.4 * pattern)
        img[m] = fill[m]
        cls_map[m] = c + 1
        obj_map[m] = i + 1
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), cls_map, obj_map, instances


def annotation_xml(image_id: str, h: int, w: int, classes: list[str], instances) -> str:
    objs = []
    for c, m in instances:
        ys, xs = np.nonzero(m)
        objs.append(f"<object><name>{escape(classes[c])}</name><difficult>0</difficult><bndbox>"
                    f"<xmin>{xs.min() + 1}</xmin><ymin>{ys.min() + 1}</ymin>"
                    f"<xmax>{xs.max() + 1}</xmax><ymax>{ys.max() + 1}</ymax></bndbox></object>")
    return (f"<annotation><folder>synthetic</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"<segmented>1</segmented>{''.join(objs)}</annotation>\n")


def spec_from_config(cfg: dict) -> dict:
    s = cfg["synthetic"]
    return {"generator_version": GENERATOR_VERSION, "seed": s["seed"], "num_train": s["num_train"],
            "num_val": s["num_val"], "image_size": list(s["image_size"]),
            "max_instances": s["max_instances"], "classes": list(cfg["data"]["classes"])}


def generate(root: Path, spec: dict, progress=None) -> None:
    """Write the dataset to ``root`` (which must not exist), atomically via a temp directory."""
    root = Path(root)
    classes = spec["classes"]
    unknown = [c for c in classes if c not in STYLES]
    if unknown:
        raise ConfigError(f"data.classes: synthetic class '{unknown[0]}' unknown (available: {', '.join(STYLES)})")
    if spec["num_train"] < 1 or spec["num_val"] < 1:
        raise ConfigError("synthetic.num_train and synthetic.num_val must be at least 1")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject",
                    "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        for split, count in (("train", spec["num_train"]), ("val", spec["num_val"])):
            ids = []
            for i in range(count):
                image_id = f"{split}_{i:05d}"
                img, cls_map, obj_map, inst = render(i, spec["seed"], split, classes,
                                                     tuple(spec["image_size"]), spec["max_instances"])
                Image.fromarray(img).save(tmp / "JPEGImages" / f"{image_id}.jpg", quality=95)
                write_label_png(tmp / "SegmentationClass" / f"{image_id}.png", cls_map)
                write_label_png(tmp / "SegmentationObject" / f"{image_id}.png", obj_map)
                (tmp / "Annotations" / f"{image_id}.xml").write_text(
                    annotation_xml(image_id, *img.shape[:2], classes, inst))
                ids.append(image_id)
                if progress:
                    progress(split, i + 1, count)
            (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        tmp.chmod(0o777 & ~current_umask())    # mkdtemp makes it 0700; a dataset is mkdir's mode
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def ensure_synthetic(root: Path, cfg: dict, progress=None) -> bool:
    """Generate the dataset if ``root`` does not exist; check it matches the config if it does.

    Returns True if it was generated now."""
    root = Path(root)
    spec = spec_from_config(cfg)
    if not root.exists():
        generate(root, spec, progress)
        return True
    spec_path = root / SPEC_FILE
    if not spec_path.is_file():
        raise DataError(f"{root}: exists but is not a wsis synthetic dataset (no {SPEC_FILE}); "
                        f"remove it or pass another --data-root")
    on_disk = json.loads(spec_path.read_text())
    if on_disk != spec:
        diff = [k for k in spec if on_disk.get(k) != spec[k]]
        raise ConfigError(f"{spec_path}: dataset was generated with different settings ({', '.join(diff)}: "
                          f"{on_disk.get(diff[0])!r} on disk, {spec[diff[0]]!r} in config); "
                          f"delete {root} or pass another --data-root")
    return False
