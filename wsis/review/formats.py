"""Review files in and out: CVAT "COCO 1.0" zips, Label Studio tasks, plain COCO.

Out (least confident images first):
- ``coco``: the subset as a COCO instances JSON with RLE masks (exact, holes included), each
  annotation with its score and confidence, each image with its confidence;
- ``cvat``: a zip in CVAT's "COCO 1.0" import layout, ``annotations/instances_default.json``
  and ``images/<file_name>``, with masks as polygons (CVAT edits polygons) whose holes are
  kept by keyhole cuts (see polygons.py);
- ``labelstudio``: a tasks JSON whose ``predictions`` hold one ``polygonlabels`` region per
  instance part (points in percent of the image size, the instance score as region score, the
  image confidence as prediction score), plus the labelling config XML that matches it.

In: COCO JSON (from CVAT's or Label Studio's COCO export, or edited by hand) or Label
Studio's JSON export. Images are matched by file name (the path relative to the dataset's
image folder, or its base name, with Label Studio's upload prefix "xxxxxxxx-" dropped),
categories by name. Every image in the file counts as reviewed, with exactly the instances the
file gives it (none = the reviewer removed all).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from wsis.coco import categories, rle_decode, rle_encode
from wsis.errors import DataError
from wsis.io import atomic_path, read_json, read_json_or_none, write_bytes, write_json
from wsis.predict import PALETTE

from .polygons import check_polygon, mask_to_polygons, polygons_to_mask

FORMATS = ("cvat", "labelstudio", "coco")
LS_FROM, LS_TO = "label", "image"
LS_REGION = re.compile(r"^wsis(\d+)_\d+$")   # our region ids: wsis<instance>_<part>
LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
CVAT_MEMBER = "annotations/instances_default.json"
DEFAULT_MAX_MEMBER_MB = 256.0    # review.max_member_mb when the config has no such key


# ------------------------------------------------------------------------------ export
def review_items(queue: dict, dataset, ins_dir: Path, top: int | None, export_cfg: dict) -> list[dict]:
    """The first ``top`` images of the queue (all when None) with their pseudo-instances: those
    the COCO export holds (``export_cfg``, wsis.coco.exported), so that what a reviewer deletes
    or keeps is what training would have read."""
    from wsis.coco import exported
    from wsis.io import read_npz
    from .queue import instance_masks
    items = []
    for entry in queue["images"][:top]:
        image_id = entry["id"]
        z = read_npz(Path(ins_dir) / f"{image_id}.npz")
        masks = instance_masks(z)
        path = dataset.image_path(image_id)
        h, w = z["instances"].shape
        items.append({"id": image_id, "path": path, "file_name": str(path.relative_to(dataset.image_dir)),
                      "height": h, "width": w, "confidence": entry["confidence"],
                      "instances": [(masks[i["index"] - 1], i["class"], i["score"], i["confidence"])
                                    for i in entry["instances"]
                                    if exported(i["score"], int(masks[i["index"] - 1].sum()), export_cfg)]})
    return items


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def coco_document(items: list[dict], class_names, polygons: bool) -> dict:
    images, anns = [], []
    for k, item in enumerate(items, start=1):
        images.append({"id": k, "file_name": item["file_name"], "height": item["height"], "width": item["width"],
                       "wsis_id": item["id"], "confidence": item["confidence"]})
        for mask, cls, score, conf in item["instances"]:
            rings = mask_to_polygons(mask) if polygons else []
            ann = {"id": len(anns) + 1, "image_id": k, "category_id": int(cls) + 1, "iscrowd": 0,
                   "segmentation": rings or rle_encode(mask), "area": int(mask.sum()), "bbox": _bbox(mask),
                   "score": float(score), "confidence": float(conf)}
            if polygons:   # CVAT reads these as object attributes
                ann["attributes"] = {"occluded": False, "score": round(float(score), 4)}
            anns.append(ann)
    return {"info": {"description": "wsis review queue, least confident first"}, "licenses": [],
            "images": images, "annotations": anns, "categories": categories(class_names)}


def labelstudio_config(class_names) -> str:
    labels = "\n".join(f"    <Label value={quoteattr(n)} background=\"#{''.join(f'{v:02x}' for v in PALETTE[i % len(PALETTE)])}\"/>"
                       for i, n in enumerate(class_names))
    return (f"<View>\n  <Image name=\"{LS_TO}\" value=\"$image\" zoom=\"true\"/>\n"
            f"  <PolygonLabels name=\"{LS_FROM}\" toName=\"{LS_TO}\" strokeWidth=\"2\" opacity=\"0.4\">\n"
            f"{labels}\n  </PolygonLabels>\n</View>\n")


def labelstudio_tasks(items: list[dict], class_names, image_url_prefix: str) -> list[dict]:
    tasks = []
    for item in items:
        w, h = item["width"], item["height"]
        result = []
        for n, (mask, cls, score, _) in enumerate(item["instances"], start=1):
            for part, ring in enumerate(mask_to_polygons(mask)):
                xy = np.asarray(ring).reshape(-1, 2)
                points = [[round(100 * x / w, 4), round(100 * y / h, 4)] for x, y in xy]
                result.append({"id": f"wsis{n}_{part}", "from_name": LS_FROM, "to_name": LS_TO,
                               "type": "polygonlabels", "original_width": w, "original_height": h,
                               "image_rotation": 0, "score": float(score),
                               "value": {"points": points, "polygonlabels": [class_names[cls]], "closed": True}})
        tasks.append({"data": {"image": image_url_prefix + item["file_name"], "wsis_id": item["id"]},
                      "predictions": [{"model_version": "wsis", "score": float(item["confidence"]),
                                       "result": result}]})
    return tasks


def export_review(items: list[dict], class_names, fmt: str, out: Path, image_url_prefix: str = "") -> list[Path]:
    """Write the review file(s) of ``items`` in ``fmt``; returns the paths written."""
    out = Path(out)
    if fmt == "coco":
        write_json(out, coco_document(items, class_names, polygons=False))
        return [out]
    if fmt == "cvat":
        doc = coco_document(items, class_names, polygons=True)
        with atomic_path(out) as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(CVAT_MEMBER, json.dumps(doc))
                for item in items:
                    z.write(item["path"], f"images/{item['file_name']}")
        return [out]
    if fmt == "labelstudio":
        config = out.with_name(out.stem + "_config.xml")
        write_json(out, labelstudio_tasks(items, class_names, image_url_prefix))
        write_bytes(config, labelstudio_config(class_names).encode())
        return [out, config]
    raise DataError(f"review export: unknown format '{fmt}' (choose from {', '.join(FORMATS)})")


# ------------------------------------------------------------------------------ import
class ImageIndex:
    """Resolve a file name from a review tool to a dataset image id."""

    def __init__(self, dataset, ids):
        self.dataset = dataset
        self.by_path, self.by_base = {}, {}
        for image_id in ids:
            rel = str(dataset.image_path(image_id).relative_to(dataset.image_dir))
            self.by_path[rel] = image_id
            self.by_base.setdefault(Path(rel).name, []).append(image_id)

    def resolve(self, name: str) -> str | None:
        name = name.split("?d=")[-1]          # Label Studio local-files URLs
        if name in self.by_path:
            return self.by_path[name]
        for rel, image_id in self.by_path.items():
            if name.endswith("/" + rel):
                return image_id
        base = Path(name).name
        for candidate in (base, LS_UPLOAD_PREFIX.sub("", base)):
            hits = self.by_base.get(candidate, [])
            if len(hits) == 1:
                return hits[0]
        return None


def objects(value, where: str, what: str) -> list[dict]:
    """``value`` as a list of JSON objects, or a one-line error naming ``where`` and the entry."""
    if not isinstance(value, list):
        raise DataError(f"{where}: {what} must be a list, got {type(value).__name__}")
    for k, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{where}: {what} #{k} must be an object, got {short(item)}")
    return value


def short(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, list, dict, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def is_id(value) -> bool:
    """COCO ids are numbers or strings (a list or an object cannot key anything)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _decode_segmentation(seg, h: int, w: int, where: str) -> np.ndarray:
    from pycocotools import mask as mask_utils
    if isinstance(seg, list):
        for ring in seg:
            problem = check_polygon(ring)
            if problem:
                raise DataError(f"{where}: invalid polygon ({problem})")
        return polygons_to_mask(seg, h, w)
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if not isinstance(seg["size"], list) or seg["size"] != [h, w]:
            raise DataError(f"{where}: mask size {short(seg['size'])} is not the image's {[h, w]}")
        try:
            rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            return rle_decode(rle)
        except Exception as e:  # pycocotools raises bare Exceptions on bad counts
            raise DataError(f"{where}: invalid RLE mask ({e})") from None
    raise DataError(f"{where}: segmentation is neither polygons nor an RLE mask")


def _image_entry(index: ImageIndex, name, size, where: str) -> tuple[str, int, int]:
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: file name must be a non-empty string, got {short(name)}")
    image_id = index.resolve(name)
    if image_id is None:
        raise DataError(f"{where}: unknown image '{name}' (not an image of the infer split)")
    from wsis.io import open_image
    with open_image(index.dataset.image_path(image_id), index.dataset.max_pixels) as im:
        w, h = im.size
    if size is not None and (size[0], size[1]) != (w, h):
        raise DataError(f"{where}: image '{name}' is {size[0]}x{size[1]} in the file but {w}x{h} on disk")
    return image_id, h, w


def _read_coco(doc: dict, path: Path, index: ImageIndex, class_names) -> dict[str, tuple]:
    cats = {}
    for k, c in enumerate(objects(doc.get("categories", []), str(path), "categories")):
        if not is_id(c.get("id")):
            raise DataError(f"{path}: category #{k} ({short(c.get('name'))}): id must be a number or string, "
                            f"got {short(c.get('id'))}")
        if c.get("name") not in class_names:
            raise DataError(f"{path}: category {c.get('id')}: unknown category '{c.get('name')}' "
                            f"(classes: {', '.join(class_names)})")
        cats[c["id"]] = class_names.index(c["name"])
    images = {}
    for k, im in enumerate(objects(doc["images"], str(path), "images")):
        if not is_id(im.get("id")):
            raise DataError(f"{path}: image #{k} ({short(im.get('file_name'))}): id must be a number or string, "
                            f"got {short(im.get('id'))}")
        where = f"{path}: image {im['id']}"
        if im["id"] in images:
            raise DataError(f"{where}: the id is given twice")
        given = [key for key in ("width", "height") if key in im]
        if len(given) == 1:
            raise DataError(f"{where}: has {given[0]} but not {'height' if given[0] == 'width' else 'width'}")
        if given and not (positive_int(im["width"]) and positive_int(im["height"])):
            raise DataError(f"{where}: width and height must be positive whole numbers, "
                            f"got {short(im['width'])} x {short(im['height'])}")
        images[im["id"]] = _image_entry(index, im.get("file_name"), (im["width"], im["height"]) if given else None,
                                        where)
    reviewed = {image_id: (h, w, []) for image_id, h, w in images.values()}
    for k, a in enumerate(objects(doc.get("annotations", []), str(path), "annotations")):
        where = f"{path}: annotation {a['id'] if is_id(a.get('id')) else f'#{k}'}"
        if not is_id(a.get("image_id")) or a["image_id"] not in images:
            raise DataError(f"{where}: unknown image_id {short(a.get('image_id'))}")
        if not is_id(a.get("category_id")) or a["category_id"] not in cats:
            raise DataError(f"{where}: unknown category_id {short(a.get('category_id'))}")
        image_id, h, w = images[a["image_id"]]
        mask = _decode_segmentation(a.get("segmentation"), h, w, where)
        if mask.any():
            reviewed[image_id][2].append((mask, cats[a["category_id"]]))
    return reviewed


def _latest_annotation(task: dict, where: str) -> dict | None:
    done = [a for a in objects(task.get("annotations", []), where, "annotations") if not a.get("was_cancelled")]
    return done[-1] if done else None


def _read_labelstudio(tasks: list, path: Path, index: ImageIndex, class_names) -> dict[str, tuple]:
    reviewed = {}
    for t, task in enumerate(objects(tasks, str(path), "task")):
        where_task = f"{path}: task {task['id'] if is_id(task.get('id')) else t}"
        ann = _latest_annotation(task, where_task)
        if ann is None:
            continue       # not reviewed yet: keeps its pseudo-labels
        data = task.get("data", {})
        if not isinstance(data, dict):
            raise DataError(f"{where_task}: data must be an object, got {short(data)}")
        image_id, h, w = _image_entry(index, data.get("image"), None, where_task)
        groups: dict[str, list] = {}
        for r, region in enumerate(objects(ann.get("result", []), where_task, "result")):
            if region.get("type") != "polygonlabels":
                continue
            where = f"{where_task} region {region['id'] if is_id(region.get('id')) else r}"
            value = region.get("value", {})
            if not isinstance(value, dict):
                raise DataError(f"{where}: value must be an object, got {short(value)}")
            labels = value.get("polygonlabels") or [None]
            if not isinstance(labels, list) or not isinstance(labels[0], str) or labels[0] not in class_names:
                raise DataError(f"{where}: unknown category {short(labels[0] if isinstance(labels, list) else labels)} "
                                f"(classes: {', '.join(class_names)})")
            try:
                xy = np.asarray(value.get("points"), np.float64).reshape(-1, 2)
            except (TypeError, ValueError):
                raise DataError(f"{where}: invalid polygon (points must be [x, y] pairs)") from None
            ring = (xy * [w / 100.0, h / 100.0]).ravel().tolist()
            problem = check_polygon(ring)
            if problem:
                raise DataError(f"{where}: invalid polygon ({problem})")
            match = LS_REGION.match(str(region.get("id", "")))
            key = f"wsis{match.group(1)}" if match else f"region{r}"
            groups.setdefault(key, [labels[0], []])[1].append(ring)
        instances = [(polygons_to_mask(rings, h, w), class_names.index(name)) for name, rings in groups.values()]
        reviewed[image_id] = (h, w, [(m, c) for m, c in instances if m.any()])
    return reviewed


def read_review(path: Path, dataset, ids, max_member_mb: float = DEFAULT_MAX_MEMBER_MB) -> dict[str, tuple]:
    """{image id: (height, width, [(mask, class index)])} of a reviewed file; every entry is
    checked here, before anything is stored."""
    path = Path(path)
    try:
        doc = zip_document(path, max_member_mb) if path.suffix == ".zip" else read_json(path)
    except (zipfile.BadZipFile, KeyError) as e:
        raise DataError(f"{path}: not a CVAT COCO 1.0 zip ({e})") from None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a directory, not a review file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not JSON ({e})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply") from None
    index = ImageIndex(dataset, ids)
    names = list(dataset.class_names)
    if isinstance(doc, dict) and "images" in doc:
        return _read_coco(doc, path, index, names)
    if isinstance(doc, list):
        return _read_labelstudio(doc, path, index, names)
    raise DataError(f"{path}: neither a COCO instances file nor a Label Studio JSON export")


def backup_path(store: Path) -> Path:
    return Path(store).with_name(Path(store).stem + ".previous.json")


def read_store(store: Path) -> dict:
    """The stored reviews ({"images": {...}}; empty when there is no store yet). A store that
    does not parse stops with one line naming the backup of the last good one: it holds the
    only copy of human work, so it is never overwritten or ignored."""
    store = Path(store)
    if not store.is_file():
        return {"images": {}}
    doc = read_json_or_none(store)
    if not (isinstance(doc, dict) and isinstance(doc.get("images"), dict)):
        backup = backup_path(store)
        fix = (f"the last good one is {backup}: copy it back (cp {backup} {store}) and import again what came after"
               if backup.is_file() else "no backup of it exists")
        raise DataError(f"{store}: the stored reviews are truncated or not wsis's review store; {fix}")
    return doc


def store_review(reviewed: dict[str, tuple], store: Path, source: Path) -> dict:
    """Add ``reviewed`` to the store file (an image reviewed again replaces its earlier entry);
    returns the stored document: {"images": {id: {"height", "width", "source",
    "instances": [{"class", "segmentation" (RLE)}]}}}. All or nothing: the store is replaced
    atomically, after the store it replaces is kept as the backup (``backup_path``)."""
    store = Path(store)
    doc = read_store(store)
    for image_id, (h, w, instances) in reviewed.items():
        doc["images"][image_id] = {"height": h, "width": w, "source": str(source),
                                   "instances": [{"class": int(c), "segmentation": rle_encode(m)}
                                                 for m, c in instances]}
    if store.is_file():
        write_bytes(backup_path(store), store.read_bytes())
    write_json(store, doc)
    return doc


def zip_document(path: Path, max_member_mb: float = DEFAULT_MAX_MEMBER_MB) -> dict:
    """The COCO document inside a CVAT zip. Its member is read only up to ``max_member_mb``
    (``review.max_member_mb``): a small zip can inflate to gigabytes, and neither the size it
    declares nor the compression ratio can be trusted, so the limit holds while inflating."""
    limit = int(max_member_mb * 2**20)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(CVAT_MEMBER)
        too_big = DataError(f"{path}: {CVAT_MEMBER} inflates to more than {max_member_mb:g} MiB "
                            f"(review.max_member_mb); raise the limit if the file is genuine")
        if info.file_size > limit:
            raise too_big
        with z.open(info) as member:
            data = member.read(limit + 1)
        if len(data) > limit:
            raise too_big
    return json.loads(data)
