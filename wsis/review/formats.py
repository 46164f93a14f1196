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

In: COCO JSON (CVAT's "COCO 1.0" zip with one member per subset, Label Studio's COCO zip or
its result.json, or edited by hand) or Label Studio's JSON export. Images are matched by file
name (the path relative to the dataset's image folder or a tail of it, URL-decoded where
needed, or its base name, with Label Studio's upload prefix "xxxxxxxx-" dropped), categories
by name. Only an image a human reviewed counts, with exactly the instances the file gives it:
a Label Studio task by its latest finished annotation; a COCO image by having annotations that
are not just the exported pseudo-labels (``read_review``: options for the cases a COCO file
cannot tell).
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote
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
LS_LOCAL_FILES = "/data/local-files/?d="   # Label Studio's local-files URLs
LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
CVAT_MEMBER = "annotations/instances_default.json"          # what wsis writes
CVAT_MEMBERS = re.compile(r"annotations/instances_[^/]+\.json")  # what CVAT writes: one per subset
LS_COCO_MEMBERS = ("result.json", "result_coco.json")            # Label Studio's COCO zips
DEFAULT_MAX_MEMBER_MB = 256.0    # review.max_member_mb when the config has no such key


# ------------------------------------------------------------------------------ export
def review_items(queue: dict, dataset, ins_dir: Path, top: int | None, reviewed: dict | None = None) -> list[dict]:
    """The first ``top`` images of the queue (all when None) with their pseudo-instances: the
    queue's, which are those the COCO export holds (``queue.pseudo_signals``), so that what a
    reviewer deletes or keeps is what training would have read. An image in ``reviewed`` (the
    review store's images) comes with its reviewed instances instead (score and confidence 1),
    marked ``reviewed``: a second review starts from the first."""
    from wsis.io import read_npz
    from .queue import instance_masks
    reviewed = reviewed or {}
    items = []
    for entry in queue["images"][:top]:
        image_id = entry["id"]
        path = dataset.image_path(image_id)
        item = {"id": image_id, "path": path, "file_name": path.relative_to(dataset.image_dir).as_posix(),
                "confidence": entry["confidence"], "reviewed": image_id in reviewed}
        if image_id in reviewed:
            done = reviewed[image_id]
            item.update(height=done["height"], width=done["width"],
                        instances=[(rle_decode(i["segmentation"]), i["class"], 1.0, 1.0) for i in done["instances"]])
        else:
            z = read_npz(Path(ins_dir) / f"{image_id}.npz")
            masks = instance_masks(z)
            h, w = z["instances"].shape
            item.update(height=h, width=w,
                        instances=[(masks[i["index"] - 1], i["class"], i["score"], i["confidence"])
                                   for i in entry["instances"]])
        items.append(item)
    return items


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def coco_document(items: list[dict], class_names, polygons: bool) -> dict:
    images, anns = [], []
    for k, item in enumerate(items, start=1):
        images.append({"id": k, "file_name": item["file_name"], "height": item["height"], "width": item["width"],
                       "wsis_id": item["id"], "confidence": item["confidence"], "reviewed": item["reviewed"]})
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


def image_url(file_name: str, prefix: str) -> str:
    """``prefix`` plus the URL-encoded path (``my photo #1.jpg`` -> ``my%20photo%20%231.jpg``;
    ``/`` kept): Label Studio's local-files view takes it as a query value, where a bare ``#``,
    ``&``, ``+`` or space would end or change it."""
    return prefix + quote(file_name, safe="/")


def local_files_setup(image_dir: Path) -> tuple[str, Path, Path]:
    """Label Studio local files that work: (URL prefix, document root, storage path). Label
    Studio refuses a local storage whose path is its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, so
    the document root is the folder above the dataset's image folder, the storage is the image
    folder, and ``?d=`` names the image folder before the file."""
    image_dir = Path(image_dir).resolve()
    return f"{LS_LOCAL_FILES}{quote(image_dir.name, safe='')}/", image_dir.parent, image_dir


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
        tasks.append({"data": {"image": image_url(item["file_name"], image_url_prefix), "wsis_id": item["id"],
                               "reviewed": item["reviewed"]},
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
EMPTY_IMAGES = ("skip", "reviewed")   # --empty-images: what an image without annotations in a COCO file is
LS_COCO_CONTRIBUTORS = ("Label Studio", "Label Studio Converter")   # info.contributor of its COCO exports
UNCHANGED_IOU = 0.99    # a COCO mask this close to an exported pseudo-instance is that instance, unedited
PART_TOLERANCE = 0.51   # px: a Label Studio COCO polygon within this of an exported part is that part unchanged


@dataclass
class ReviewFile:
    """What a review file holds: ``images`` {image id: (height, width, [(mask, class index)])}
    of the images a human reviewed; ``skipped``, the ids of the images it lists that count as
    not reviewed, and ``skipped_what``, what they are; ``notes``, lines for the user."""
    images: dict[str, tuple] = field(default_factory=dict)
    skipped: set = field(default_factory=set)
    skipped_what: str = "images"
    unchanged: set = field(default_factory=set)   # COCO images whose annotations are the exported ones
    notes: list[str] = field(default_factory=list)


class ImageIndex:
    """Resolve a file name from a review tool to a dataset image id."""

    def __init__(self, dataset, ids):
        self.dataset = dataset
        self.by_path, self.by_base = {}, {}
        for image_id in ids:
            rel = dataset.image_path(image_id).relative_to(dataset.image_dir).as_posix()
            self.by_path[rel] = image_id
            self.by_base.setdefault(Path(rel).name, []).append(image_id)

    def resolve(self, name: str) -> str | None:
        """The image a tool's name for it means: the name as given, else URL-decoded (Label
        Studio URLs are); a Label Studio local-files URL by its ``?d=`` path; a path by its
        longest tail that is an image's path relative to the image folder; else by its unique
        base name, also without Label Studio's upload prefix."""
        for candidate in dict.fromkeys((name, unquote(name))):
            image_id = self._resolve(candidate)
            if image_id is not None:
                return image_id
        return None

    def _resolve(self, name: str) -> str | None:
        name = name.split("?d=")[-1]          # Label Studio local-files URLs
        parts = [p for p in name.replace("\\", "/").split("/") if p]
        for k in range(len(parts)):
            image_id = self.by_path.get("/".join(parts[k:]))
            if image_id is not None:
                return image_id
        base = parts[-1] if parts else name
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
        if not seg:
            raise DataError(f"{where}: segmentation is empty (a box without a mask? wsis imports masks only)")
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
    h, w = reviewed_size(index.dataset, image_id)
    if size is not None and (size[0], size[1]) != (w, h):
        raise DataError(f"{where}: image '{name}' is {size[0]}x{size[1]} in the file but {w}x{h} on disk")
    return image_id, h, w


class PseudoLabels:
    """The pseudo-instances the review export gave each image (those the COCO export holds,
    ``export_cfg``), read from the pseudo-mask stage's outputs: for regrouping the parts of an
    instance that Label Studio's COCO export writes as separate annotations, and for telling an
    image whose annotations came back unchanged (nobody edited them) from a reviewed one."""

    def __init__(self, ins_dir: Path | None, export_cfg: dict | None = None):
        self.ins_dir = Path(ins_dir) if ins_dir is not None else None
        self.export_cfg = export_cfg
        self.cache: dict[str, list | None] = {}

    def instances(self, image_id: str) -> list | None:
        """[(instance number, class index, mask, [(n, 2) ring])], or None when unknown."""
        if image_id not in self.cache:
            path = self.ins_dir / f"{image_id}.npz" if self.ins_dir is not None else None
            found = None
            if path is not None and path.is_file():
                from wsis.coco import exported
                from wsis.io import read_npz
                from .queue import instance_masks
                z = read_npz(path)
                found = []
                for n, (mask, cls, score) in enumerate(zip(instance_masks(z), z["classes"], z["scores"]), start=1):
                    if self.export_cfg is None or exported(float(score), int(mask.sum()), self.export_cfg):
                        found.append((n, int(cls), mask,
                                      [np.asarray(r, np.float64).reshape(-1, 2) for r in mask_to_polygons(mask)]))
            self.cache[image_id] = found
        return self.cache[image_id]

    def __call__(self, image_id: str) -> list:
        """[(instance number, class index, [(n, 2) ring])] of the instances in two parts or more."""
        return [(n, c, rings) for n, c, _, rings in self.instances(image_id) or [] if len(rings) > 1]

    def unchanged(self, image_id: str, found: list) -> bool:
        """Whether ``found`` [(mask, class)] are the image's exported pseudo-instances, one for one
        (same class; IoU at least UNCHANGED_IOU with the mask or with its exported polygons)."""
        pseudo = self.instances(image_id)
        if not pseudo or len(pseudo) != len(found):
            return False
        h, w = pseudo[0][2].shape
        left = list(pseudo)
        for mask, cls in found:
            if mask.shape != (h, w):
                return False
            area = np.count_nonzero(mask)
            hit = None
            for k, (_, c, m, rings) in enumerate(left):
                if c != cls:
                    continue
                for ref in (m, None):     # the mask, else what its exported polygons fill
                    if ref is None:
                        ref = polygons_to_mask([r.ravel().tolist() for r in rings], h, w)
                    size = np.count_nonzero(ref)
                    if min(size, area) >= UNCHANGED_IOU * max(size, area) and _iou(mask, ref) >= UNCHANGED_IOU:
                        hit = k       # IoU >= 0.99: no other, disjoint instance can match as well
                        break
                if hit is not None:
                    break
            if hit is None:
                return False
            left.pop(hit)
        return True


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def _part_of(ring, cls: int, parts: list) -> tuple[int, int] | None:
    """(instance number, part) of the exported part that ``ring`` is unchanged, or None."""
    xy = np.asarray(ring, np.float64).reshape(-1, 2)
    for n, c, rings in parts:
        if c != cls:
            continue
        for k, r in enumerate(rings):
            if r.shape == xy.shape and np.abs(r - xy).max() <= PART_TOLERANCE:
                return n, k
    return None


def _read_coco(doc: dict, where_file: str, index: ImageIndex, class_names, empty_images: str,
               parts: PseudoLabels | None, unchanged_images: str = "skip") -> ReviewFile:
    cats = {}
    for k, c in enumerate(objects(doc.get("categories", []), where_file, "categories")):
        if not is_id(c.get("id")):
            raise DataError(f"{where_file}: category #{k} ({short(c.get('name'))}): id must be a number or string, "
                            f"got {short(c.get('id'))}")
        if c.get("name") not in class_names:
            raise DataError(f"{where_file}: category {c.get('id')}: unknown category '{c.get('name')}' "
                            f"(classes: {', '.join(class_names)})")
        cats[c["id"]] = class_names.index(c["name"])
    info = doc.get("info")
    label_studio = isinstance(info, dict) and info.get("contributor") in LS_COCO_CONTRIBUTORS
    images = {}
    for k, im in enumerate(objects(doc["images"], where_file, "images")):
        if not is_id(im.get("id")):
            raise DataError(f"{where_file}: image #{k} ({short(im.get('file_name'))}): id must be a number or "
                            f"string, got {short(im.get('id'))}")
        where = f"{where_file}: image {im['id']}"
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
    found: dict = {key: [] for key in images}      # COCO image id -> [(mask, class, ring or None)]
    for k, a in enumerate(objects(doc.get("annotations", []), where_file, "annotations")):
        where = f"{where_file}: annotation {a['id'] if is_id(a.get('id')) else f'#{k}'}"
        if not is_id(a.get("image_id")) or a["image_id"] not in images:
            raise DataError(f"{where}: unknown image_id {short(a.get('image_id'))}")
        if not is_id(a.get("category_id")) or a["category_id"] not in cats:
            raise DataError(f"{where}: unknown category_id {short(a.get('category_id'))}")
        image_id, h, w = images[a["image_id"]]
        seg = a.get("segmentation")
        mask = _decode_segmentation(seg, h, w, where)
        found[a["image_id"]].append((mask, cats[a["category_id"]], seg[0] if isinstance(seg, list) and len(seg) == 1
                                     else None))
    result = ReviewFile(skipped_what="images without annotations")
    taken: dict[str, object] = {}                  # dataset image id -> COCO image id that reviewed it
    regrouped = 0
    for key, anns in found.items():
        image_id, h, w = images[key]
        if not anns and empty_images != "reviewed":
            result.skipped.add(image_id)           # nobody said it was reviewed: keeps its pseudo-labels
            continue
        groups: dict = {}
        for j, (mask, cls, ring) in enumerate(anns):
            part = _part_of(ring, cls, parts(image_id)) if label_studio and parts is not None and ring else None
            groups.setdefault(("part", part[0]) if part else ("alone", j), []).append((mask, cls))
        instances = [(np.logical_or.reduce([m for m, _ in group]), group[0][1]) for group in groups.values()]
        instances = [(m, c) for m, c in instances if m.any()]
        if (not label_studio and unchanged_images != "reviewed" and parts is not None
                and parts.unchanged(image_id, instances)):
            # CVAT and a COCO file carry the exported pseudo-labels on every image: unedited,
            # they do not say that anybody looked (Label Studio's COCO holds submitted work only)
            result.unchanged.add(image_id)
            continue
        if image_id in taken:
            hint = (" (Label Studio writes an image per annotation: the task was annotated twice; its JSON export "
                    "says which annotation is the latest)" if label_studio else "")
            raise DataError(f"{where_file}: images {taken[image_id]} and {key} are both "
                            f"'{index.dataset.image_path(image_id).name}', and both reviewed{hint}")
        taken[image_id] = key
        regrouped += sum(len(g) for g in groups.values() if len(g) > 1)
        result.images[image_id] = (h, w, instances)
    result.skipped -= result.images.keys()
    result.unchanged -= result.images.keys()
    if regrouped:
        result.notes.append(f"{where_file}: {regrouped} polygons regrouped into the multi-part instances they are "
                            f"unchanged parts of (Label Studio's COCO export keeps no region ids; its JSON export "
                            f"keeps edited multi-part instances whole too)")
    return result


def _latest_annotation(task: dict, where: str) -> dict | None:
    """The task's latest annotation that was neither cancelled nor skipped, or None."""
    done = [(str(a.get("updated_at") or a.get("created_at") or ""), k, a)
            for k, a in enumerate(objects(task.get("annotations", []), where, "annotations"))
            if not (a.get("was_cancelled") or a.get("skipped"))]
    return max(done, key=lambda d: d[:2])[2] if done else None


def _read_labelstudio(tasks: list, path: Path, index: ImageIndex, class_names) -> ReviewFile:
    result = ReviewFile(skipped_what="tasks without a finished annotation")
    by_task: dict[str, str] = {}
    for t, task in enumerate(objects(tasks, str(path), "task")):
        where_task = f"{path}: task {task['id'] if is_id(task.get('id')) else t}"
        data = task.get("data", {})
        if not isinstance(data, dict):
            raise DataError(f"{where_task}: data must be an object, got {short(data)}")
        ann = _latest_annotation(task, where_task)
        if ann is None:     # not reviewed yet (no annotation, or cancelled / skipped): keeps its pseudo-labels
            image_id = index.resolve(data["image"]) if isinstance(data.get("image"), str) else None
            result.skipped.add(image_id if image_id is not None else where_task)
            continue
        image_id, h, w = _image_entry(index, data.get("image"), None, where_task)
        if image_id in by_task:
            raise DataError(f"{where_task}: its image '{data['image']}' is also {by_task[image_id]}'s, and both "
                            f"tasks are annotated; keep one")
        by_task[image_id] = where_task.split(": ", 1)[1]
        groups: dict[str, list] = {}
        for r, region in enumerate(objects(ann.get("result", []), where_task, "result")):
            where = f"{where_task} region {region['id'] if is_id(region.get('id')) else r}"
            if region.get("type") != "polygonlabels":
                raise DataError(f"{where}: a {short(region.get('type'))} region; wsis imports polygonlabels regions "
                                f"only (the labelling config of wsis review export)")
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
        result.images[image_id] = (h, w, [(m, c) for m, c in instances if m.any()])
    result.skipped -= result.images.keys()
    return result


def _is_json_min(doc) -> bool:
    """Label Studio's JSON-MIN export: a list of flat records (the task's data keys, ``id``,
    ``annotator``, ``annotation_id``, one key per control) instead of tasks with ``data``."""
    return (isinstance(doc, list) and any(isinstance(t, dict) for t in doc)
            and all("data" not in t and "annotations" not in t and "predictions" not in t
                    and ({"annotator", "annotation_id", "lead_time", LS_FROM, "image"} & set(t))
                    for t in doc if isinstance(t, dict)))


def _parse_json(data: bytes, where: str):
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: not JSON ({e})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None


def _documents(path: Path, max_member_mb: float) -> list[tuple[str, object]]:
    """[(where, parsed JSON)] of a review file: the file itself, or the COCO members of a zip."""
    try:
        if zipfile.is_zipfile(path):
            return [(f"{path}: {member}", _parse_json(data, f"{path}: {member}"))
                    for member, data in zip_members(path, max_member_mb)]
        with open(path, "rb") as f:
            return [(str(path), _parse_json(f.read(), str(path)))]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a directory, not a review file") from None
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: a damaged zip ({e})") from None


def read_review(path: Path, dataset, ids, max_member_mb: float = DEFAULT_MAX_MEMBER_MB,
                empty_images: str = "skip", ins_dir: Path | None = None, export_cfg: dict | None = None,
                unchanged_images: str = "skip") -> ReviewFile:
    """The reviewed images of a review file; every entry is checked here, before anything is
    stored. An image counts as reviewed only where the file says a human reviewed it: a Label
    Studio task by its latest annotation that was not cancelled or skipped; a COCO image (CVAT,
    Label Studio's COCO export, wsis's own) by having annotations, or, with ``empty_images`` =
    "reviewed", every image it lists, and by having other annotations than the exported
    pseudo-labels, or, with ``unchanged_images`` = "reviewed", any annotations (CVAT and plain
    COCO files carry the exported pseudo-labels on every image, edited or not). ``ins_dir`` (the
    pseudo-masks) and ``export_cfg`` say what was exported: without them no image counts as
    unchanged; they also let the parts of a multi-part instance that Label Studio's COCO export
    splits be regrouped. A file with nothing
    reviewed in it is an error: an import that imports nothing must not look like one that did."""
    path = Path(path)
    if empty_images not in EMPTY_IMAGES:
        raise DataError(f"--empty-images {empty_images}: choose from {', '.join(EMPTY_IMAGES)}")
    if unchanged_images not in EMPTY_IMAGES:
        raise DataError(f"--unchanged-images {unchanged_images}: choose from {', '.join(EMPTY_IMAGES)}")
    docs = _documents(path, max_member_mb)
    index = ImageIndex(dataset, ids)
    names = list(dataset.class_names)
    parts = PseudoLabels(ins_dir, export_cfg)
    total = ReviewFile()
    origin: dict[str, str] = {}
    for where, doc in docs:
        if isinstance(doc, dict) and "images" in doc:
            part = _read_coco(doc, where, index, names, empty_images, parts, unchanged_images)
        elif _is_json_min(doc):
            raise DataError(f"{where}: a Label Studio JSON-MIN export, which keeps neither region ids (an instance "
                            f"in several parts would come back as several) nor, in every version, whether a task "
                            f"was annotated; export 'JSON' instead")
        elif isinstance(doc, list):
            part = _read_labelstudio(doc, path, index, names)
        else:
            raise DataError(f"{where}: neither a COCO instances file nor a Label Studio JSON export")
        for image_id, value in part.images.items():
            if image_id in total.images:     # one image reviewed in two subsets of a CVAT zip
                raise DataError(f"{path}: image '{index.dataset.image_path(image_id).name}' is reviewed both in "
                                f"{origin[image_id]} and in {where.split(': ', 1)[-1]}; export one subset, or "
                                f"remove the image from one")
            total.images[image_id] = value
            origin[image_id] = where.split(": ", 1)[-1]
        total.skipped |= part.skipped
        total.unchanged |= part.unchanged
        total.skipped_what = part.skipped_what
        total.notes += part.notes
    total.skipped -= total.images.keys()
    total.unchanged -= total.images.keys()
    total.skipped -= total.unchanged
    if not total.images:
        if total.unchanged:
            why = (f"{len(total.unchanged)} images carry their exported pseudo-labels unchanged, which does not say "
                   f"anybody reviewed them (--unchanged-images reviewed: they were), "
                   f"{len(total.skipped)} have no annotations")
        elif not total.skipped:
            why = "it lists no image or task"
        elif total.skipped_what.startswith("tasks"):
            why = f"none of its {len(total.skipped)} tasks has a finished (not cancelled or skipped) annotation"
        else:
            why = (f"none of its {len(total.skipped)} images has annotations, and an image without any counts as "
                   f"not reviewed (--empty-images reviewed: the reviewer removed every object)")
        raise DataError(f"{path}: nothing to import: {why}")
    return total


def reviewed_size(dataset, image_id: str) -> tuple[int, int]:
    """(height, width) at which a review of ``image_id`` is imported and stored: the image as
    displayed (after its EXIF orientation), the size of the pipeline's outputs and exports, and
    the one Label Studio and CVAT show the reviewer. Read from the file's header."""
    return dataset.original_size(image_id)


def dataset_record(dataset) -> dict:
    """What a review store records of the dataset it belongs to: its kind, root and classes
    (an instance's ``class`` is an index into them)."""
    return {"kind": dataset.kind, "root": str(Path(dataset.root).resolve()), "classes": list(dataset.class_names)}


def check_store_dataset(doc: dict, store: Path, dataset) -> None:
    """Refuse, with one line, a review store (``read_store``) that is not of ``dataset``: one
    recorded for another kind of dataset or other classes, or an entry for an image the
    dataset lacks, at another size than the image's, or with masks or classes that do not fit
    it (a ``reviewed.json`` copied from another work dir). Nothing is merged before this
    passes. A store written before stores recorded their dataset has only its entries checked
    (``store_review`` adds the record on the next import)."""
    record = doc.get("dataset")
    again = "move it away (its backup, if any, is beside it) and import the reviews of this dataset again"
    if record is not None:
        if not isinstance(record, dict):
            raise DataError(f"{store}: its 'dataset' record is not an object; {again}")
        for key, ours in (("kind", dataset.kind), ("classes", list(dataset.class_names))):
            if record.get(key) != ours:
                raise DataError(f"{store}: the reviews of another dataset ({key} {short(record.get(key))}, here "
                                f"{short(ours)}; recorded root {record.get('root')}); {again}")
    known = set().union(*dataset.splits.values())
    n_classes = len(dataset.class_names)
    for image_id, entry in doc["images"].items():
        where = f"{store}: image '{image_id}'"
        if image_id not in known:
            raise DataError(f"{where} is not an image of this dataset ({dataset.kind} at {dataset.root}); "
                            f"a store copied from another work dir? {again}")
        if not (isinstance(entry, dict) and positive_int(entry.get("height")) and positive_int(entry.get("width"))
                and isinstance(entry.get("instances"), list)):
            raise DataError(f"{where}: not a review entry (height, width, instances); {again}")
        h, w = reviewed_size(dataset, image_id)
        if (entry["height"], entry["width"]) != (h, w):
            raise DataError(f"{where} was reviewed at {entry['width']}x{entry['height']}, but the image is "
                            f"{w}x{h} here ({dataset.image_path(image_id)}); {again}")
        for k, instance in enumerate(entry["instances"]):
            seg = instance.get("segmentation") if isinstance(instance, dict) else None
            cls = instance.get("class") if isinstance(instance, dict) else None
            if not (isinstance(cls, int) and not isinstance(cls, bool) and 0 <= cls < n_classes):
                raise DataError(f"{where}: instance {k} has class {short(cls)}, not one of this dataset's "
                                f"{n_classes} classes (0..{n_classes - 1}); {again}")
            if not (isinstance(seg, dict) and seg.get("size") == [h, w] and "counts" in seg):
                size = seg.get("size") if isinstance(seg, dict) else seg
                raise DataError(f"{where}: instance {k} has a mask of size {short(size)}, not the image's "
                                f"{[h, w]}; {again}")


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


def store_review(reviewed: dict[str, tuple], store: Path, source: Path, dataset=None) -> dict:
    """Add ``reviewed`` to the store file (an image reviewed again replaces its earlier entry);
    returns the stored document: {"dataset": {"kind", "root", "classes"}, "images": {id:
    {"height", "width", "source", "instances": [{"class", "segmentation" (RLE)}]}}}. With
    ``dataset``, the store already there must be of it (``check_store_dataset``), and the store
    records it (a store written before stores did is adopted). All or nothing: the store is
    replaced atomically, after the store it replaces is kept as the backup (``backup_path``)."""
    store = Path(store)
    doc = read_store(store)
    if dataset is not None:
        check_store_dataset(doc, store, dataset)
        doc = {"dataset": dataset_record(dataset), **{k: v for k, v in doc.items() if k != "dataset"}}
    for image_id, (h, w, instances) in reviewed.items():
        doc["images"][image_id] = {"height": h, "width": w, "source": str(source),
                                   "instances": [{"class": int(c), "segmentation": rle_encode(m)}
                                                 for m, c in instances]}
    if store.is_file():
        write_bytes(backup_path(store), store.read_bytes())
    write_json(store, doc)
    return doc


def zip_members(path: Path, max_member_mb: float = DEFAULT_MAX_MEMBER_MB) -> list[tuple[str, bytes]]:
    """The COCO members of a review zip, as (name, bytes): a CVAT "COCO 1.0" zip's
    ``annotations/instances_<subset>.json`` (each subset its own), else a Label Studio COCO
    zip's ``result.json``. Each is read only up to ``max_member_mb`` (``review.max_member_mb``):
    a small zip can inflate to gigabytes, and neither the size it declares nor the compression
    ratio can be trusted, so the limit holds while inflating."""
    limit = int(max_member_mb * 2**20)
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        members = sorted(n for n in names if CVAT_MEMBERS.fullmatch(n))
        if not members:
            members = [n for n in LS_COCO_MEMBERS if n in names][:1]
        if not members:
            raise DataError(f"{path}: neither a CVAT COCO 1.0 zip (annotations/instances_<subset>.json) nor a Label "
                            f"Studio COCO zip (result.json)")
        out = []
        for name in members:
            info = z.getinfo(name)
            too_big = DataError(f"{path}: {name} inflates to more than {max_member_mb:g} MiB "
                                f"(review.max_member_mb); raise the limit if the file is genuine")
            if info.file_size > limit:
                raise too_big
            with z.open(info) as member:
                data = member.read(limit + 1)
            if len(data) > limit:
                raise too_big
            out.append((name, data))
    return out
