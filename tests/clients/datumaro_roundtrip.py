"""Drive datumaro (CVAT's own dataset library) for tests/test_real_clients.py. Run by the
clients venv's python (.ci/run installs it), never imported by the tests:

    python datumaro_roundtrip.py masks ZIP OUT.npz
        datumaro reads the COCO 1.0 zip (as CVAT imports one) and writes what it holds: per
        item its subset, id, size, and per instance (an annotation group: the polygons of one
        COCO annotation) the label name, the COCO annotation id and the mask datumaro's own
        mask_tools rasterise from the polygons.
    python datumaro_roundtrip.py edit ZIP EDITS.json OUT.zip
        datumaro reads the zip, applies EDITS ({"delete": [COCO annotation ids], "add":
        {item id: [{"label": name, "points": [x0, y0, x1, y1, ...]}]}, "subsets": {item id:
        subset}; unnamed items stay in "default"}) and exports it as CVAT's "COCO 1.0" export
        does (coco_instances, images saved in one images/ folder), zipped.

npz layout: "meta" is JSON [{"subset", "id", "width", "height", "labels", "ann_ids"}], one
entry per item, and "masks_<k>" the (instances, height, width) bool masks of item k.
"""

import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import datumaro as dm
from datumaro.util import annotation_util, mask_tools


def load(zip_path: str, workdir: Path) -> dm.Dataset:
    root = workdir / "in"
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(root)
    return dm.Dataset.import_from(str(root), "coco_instances")


def masks(zip_path: str, out: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ds = load(zip_path, Path(tmp))
        names = [c.name for c in ds.categories()[dm.AnnotationType.label]]
        meta, arrays = [], {}
        for k, item in enumerate(sorted(ds, key=lambda it: (it.subset, it.id))):
            h, w = item.media.size
            polygons = [a for a in item.annotations if a.type == dm.AnnotationType.polygon]
            labels, ann_ids, stack = [], [], []
            for group in annotation_util.find_instances(polygons):
                rings = [p.points for p in group]
                stack.append(mask_tools.rles_to_mask(rings, w, h).astype(bool))
                labels.append(names[group[0].label])
                ann_ids.append(int(group[0].id))
            meta.append({"subset": item.subset, "id": item.id, "width": w, "height": h, "labels": labels,
                         "ann_ids": ann_ids})
            arrays[f"masks_{k}"] = np.array(stack, bool).reshape(-1, h, w)
        np.savez_compressed(out, meta=json.dumps(meta), **arrays)


def edit(zip_path: str, edits_path: str, out: str) -> None:
    edits = json.loads(Path(edits_path).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        ds = load(zip_path, Path(tmp))
        labels = ds.categories()[dm.AnnotationType.label]
        delete = set(edits.get("delete", []))
        items, next_id = [], 1 + max((a.id for it in ds for a in it.annotations), default=0)
        for item in ds:
            anns = [a for a in item.annotations if a.id not in delete]   # a COCO annotation: polygon and bbox
            for new in edits.get("add", {}).get(item.id, []):
                label, _ = labels.find(new["label"])
                anns.append(dm.Polygon(new["points"], label=label, id=next_id, group=next_id,
                                       attributes={"occluded": False}))
                next_id += 1
            items.append(item.wrap(annotations=anns, subset=edits.get("subsets", {}).get(item.id, "default")))
        edited = dm.Dataset.from_iterable(items, categories=ds.categories(), media_type=dm.Image)
        export = Path(tmp) / "out"
        edited.export(str(export), "coco_instances", save_media=True, merge_images=True)
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for path in sorted(export.rglob("*")):
                if path.is_file():
                    z.write(path, path.relative_to(export).as_posix())


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"masks": masks, "edit": edit}[command](*args)
