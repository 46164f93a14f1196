"""The review loop as annotation teams run it (issue 20): only images a human reviewed replace
their pseudo-labels, whatever the tool exported; Label Studio's COCO zip and JSON-MIN export,
CVAT subsets, batches that leave reviewed images out, image URLs Label Studio serves, and the
mode of every output file. The review documents are built by hand in each tool's own format."""

import json
import os
import shutil
import stat
import zipfile
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from conftest import TINY, tiny_args, wsis
from wsis.coco import rle_decode
from wsis.config import load_config
from wsis.data import open_dataset
from wsis.data.folder import open_folder
from wsis.data.synthetic import shape_mask
from wsis.errors import DataError
from wsis.review.formats import image_url, labelstudio_tasks, local_files_setup, read_review, ImageIndex
from wsis.review.polygons import mask_to_polygons

NAMES = ["disc", "square", "triangle", "star", "cross"]


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    dst = tmp_path / "work"
    shutil.copytree(tiny_run, dst)
    return dst


@pytest.fixture(scope="module")
def ds(tiny_data):
    return open_dataset("synthetic", load_config("synthetic", TINY), tiny_data)


def size_of(tiny_data, image_id):
    with Image.open(tiny_data / "JPEGImages" / f"{image_id}.jpg") as im:
        return im.size        # (w, h)


def one_line(proc):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def poly_mask(ring, h, w):
    """pycocotools' fill of one polygon (x, y in pixels, flat)."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([list(map(float, ring))], h, w))).astype(bool)


def stored(work):
    return json.loads((work / "review" / "reviewed.json").read_text())["images"]


def ls_region(rid, points_percent, label, w, h):
    return {"id": rid, "type": "polygonlabels", "from_name": "label", "to_name": "image",
            "original_width": w, "original_height": h, "image_rotation": 0,
            "value": {"points": points_percent, "polygonlabels": [label], "closed": True}}


def ls_task(task_id, image_id, annotations):
    """A task as Label Studio's JSON export writes it (data, annotations, predictions)."""
    return {"id": task_id, "data": {"image": f"/data/local-files/?d=JPEGImages/{image_id}.jpg", "wsis_id": image_id},
            "annotations": annotations, "predictions": [{"id": task_id, "model_version": "wsis", "result": []}],
            "meta": {}, "created_at": "2026-12-01T10:00:00.000000Z", "project": 1}


def ls_annotation(ann_id, result, updated, cancelled=False):
    return {"id": ann_id, "completed_by": 1, "result": result, "was_cancelled": cancelled, "ground_truth": False,
            "created_at": "2026-12-01T10:00:00.000000Z", "updated_at": updated, "lead_time": 4.2,
            "task": 0, "prediction": {}, "result_count": len(result)}


# --------------------------------------------- point 5: Label Studio JSON tells who reviewed
def test_labelstudio_json_imports_only_finished_annotations(tiny_data, ds, run_copy, tmp_path):
    ids = ds.ids("train")
    w, h = size_of(tiny_data, ids[3])
    square = [[10, 10], [50, 10], [50, 50], [10, 50]]
    triangle = [[60, 60], [90, 60], [75, 90]]
    tasks = [
        ls_task(1, ids[0], []),                                                         # never opened
        ls_task(2, ids[1], [ls_annotation(11, [ls_region("a", square, "square", w, h)],
                                          "2026-12-01T11:00:00Z", cancelled=True)]),     # skipped
        ls_task(3, ids[2], [ls_annotation(12, [], "2026-12-01T11:00:00Z")]),             # every object removed
        ls_task(4, ids[3], [ls_annotation(14, [ls_region("b", triangle, "star", w, h)], "2026-12-02T09:00:00Z"),
                            ls_annotation(13, [ls_region("a", square, "square", w, h)], "2026-12-01T09:00:00Z")]),
    ]
    path = tmp_path / "project-1-at-2026-12-02.json"
    path.write_text(json.dumps(tasks))
    out = wsis("review", "import", path, *tiny_args(tiny_data, run_copy)).stdout
    assert "imported 2 reviewed images (1 instances)" in out
    assert "2 tasks without a finished annotation skipped as not reviewed" in out
    images = stored(run_copy)
    assert set(images) == {ids[2], ids[3]}
    assert images[ids[2]]["instances"] == []
    (inst,) = images[ids[3]]["instances"]          # the latest annotation (updated last), not the list's last
    assert NAMES[inst["class"]] == "star"
    want = poly_mask((np.array(triangle) * [w / 100, h / 100]).ravel(), h, w)
    assert np.array_equal(rle_decode(inst["segmentation"]), want)


# --------------------------------------------------- point 4: nothing imported is an error
def test_an_import_of_nothing_fails_in_one_line(tiny_data, ds, run_copy, tmp_path):
    ids = ds.ids("train")
    cases = []
    unannotated = tmp_path / "all_tasks.json"
    unannotated.write_text(json.dumps([ls_task(k + 1, i, []) for k, i in enumerate(ids[:3])]))
    cases.append((unannotated, "nothing to import: none of its 3 tasks has a finished"))
    w, h = size_of(tiny_data, ids[0])
    json_min = tmp_path / "json_min.json"                     # as Label Studio's JSON-MIN export writes it
    json_min.write_text(json.dumps([
        {"image": f"/data/local-files/?d=JPEGImages/{ids[0]}.jpg", "wsis_id": ids[0], "id": 1,
         "label": [{"points": [[10, 10], [50, 10], [50, 50]], "closed": True, "polygonlabels": ["disc"],
                    "original_width": w, "original_height": h}],
         "annotator": 1, "annotation_id": 7, "created_at": "2026-12-01T10:00:00Z",
         "updated_at": "2026-12-01T10:00:00Z", "lead_time": 3.1},
        {"image": f"/data/local-files/?d=JPEGImages/{ids[1]}.jpg", "wsis_id": ids[1], "id": 2, "annotator": 1,
         "annotation_id": None, "created_at": None, "updated_at": None, "lead_time": None}]))
    cases.append((json_min, "a Label Studio JSON-MIN export"))
    empty_coco = tmp_path / "cvat_untouched.json"
    sizes = {i: size_of(tiny_data, i) for i in ids[:2]}
    doc = {"images": [{"id": k + 1, "file_name": f"{i}.jpg", "width": sizes[i][0], "height": sizes[i][1]}
                      for k, i in enumerate(ids[:2])],
           "annotations": [], "categories": [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]}
    empty_coco.write_text(json.dumps(doc))
    cases.append((empty_coco, "nothing to import: none of its 2 images has annotations"))
    for path, fragment in cases:
        line = one_line(wsis("review", "import", path, *tiny_args(tiny_data, run_copy), check=False))
        assert str(path) in line and fragment in line, line
    assert "export 'JSON' instead" in one_line(wsis("review", "import", json_min, *tiny_args(tiny_data, run_copy),
                                                    check=False))
    assert not (run_copy / "review" / "reviewed.json").exists()
    # the reviewer says the untouched images were reviewed and are empty: then they are
    out = wsis("review", "import", empty_coco, "--empty-images", "reviewed", *tiny_args(tiny_data, run_copy)).stdout
    assert "imported 2 reviewed images (0 instances)" in out
    assert stored(run_copy) == {i: {"height": sizes[i][1], "width": sizes[i][0], "source": str(empty_coco),
                                    "instances": []} for i in ids[:2]}


# ------------------------- points 3, 5, 6: Label Studio's COCO zip with every task in it
def two_part_and_holed(h, w):
    """Instance 1: two separate discs (class disc); instance 2: a ring with a hole (class square)."""
    two = shape_mask("disc", h, w, 10, 10, 7, 0.0) | shape_mask("disc", h, w, h - 10, w - 10, 7, 0.0)
    holed = shape_mask("ring", h, w, h // 2, w // 2, 11, 0.0)
    assert not (two & holed).any()
    return two, holed


def ls_coco_zip(path, image_entries, annotations, image_bytes):
    """A Label Studio COCO download: result.json (its converter's fields: 0-based ids,
    categories by sorted name, one annotation per polygon region) and images/."""
    doc = {"images": image_entries, "categories": [{"id": k, "name": n} for k, n in enumerate(sorted(NAMES))],
           "annotations": annotations,
           "info": {"year": 2026, "version": "1.0", "description": "", "contributor": "Label Studio", "url": "",
                    "date_created": "2026-12-02 10:00:00.000000"}}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("result.json", json.dumps(doc))
        for name, data in image_bytes.items():
            z.writestr(name, data)
    return path


def as_ls_coco(task, image_index, first_id):
    """The converter's polygon annotations of a task's regions: points percent -> pixels."""
    anns = []
    for region in task["predictions"][0]["result"]:
        w, h = region["original_width"], region["original_height"]
        xy = [(x / 100 * w, y / 100 * h) for x, y in region["value"]["points"]]
        xs, ys = zip(*xy)
        anns.append({"id": first_id + len(anns), "image_id": image_index,
                     "category_id": sorted(NAMES).index(region["value"]["polygonlabels"][0]),
                     "segmentation": [[c for p in xy for c in p]],
                     "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "ignore": 0, "iscrowd": 0,
                     "area": 1.0})
    return anns


def test_labelstudio_coco_zip_regroups_parts_and_skips_unannotated_tasks(tiny_data, ds, run_copy, tmp_path):
    ids = ds.ids("train")
    image_id = ids[5]
    w, h = size_of(tiny_data, image_id)
    two, holed = two_part_and_holed(h, w)
    c = (h // 2, w // 2)                        # the centre of the ring's hole
    assert len(mask_to_polygons(two)) == 2 and len(mask_to_polygons(holed)) == 1 and not holed[c]
    # the pseudo-labels of that image are these two instances, and the review export gave them out
    ins_dir = run_copy / "ins_seg"
    z = dict(np.load(ins_dir / f"{image_id}.npz"))
    z.update(instances=(two * 1 + holed * 2).astype(z["instances"].dtype), classes=np.array([0, 1]),
             scores=np.array([0.9, 0.8], np.float32))
    if "margins" in z:
        z["margins"] = np.array([0.3, 0.3], np.float32)
    np.savez(ins_dir / f"{image_id}.npz", **z)
    item = {"id": image_id, "file_name": f"{image_id}.jpg", "width": w, "height": h, "confidence": 0.1,
            "reviewed": False, "instances": [(two, 0, 0.9, 0.1), (holed, 1, 0.8, 0.1)]}
    (task,) = labelstudio_tasks([item], NAMES, "/data/local-files/?d=JPEGImages/")
    assert len(task["predictions"][0]["result"]) == 3              # 2 parts + 1 ring with its hole
    anns = as_ls_coco(task, 0, 0)
    truth_two = poly_mask(anns[0]["segmentation"][0], h, w) | poly_mask(anns[1]["segmentation"][0], h, w)
    truth_holed = poly_mask(anns[2]["segmentation"][0], h, w)
    assert not truth_holed[c] and truth_holed.sum() > 50       # the keyhole ring keeps the hole
    images = [{"width": w, "height": h, "id": 0, "file_name": f"images/3f2a9c1d-{image_id}.jpg"}]
    for k in (6, 7):                                                              # unannotated tasks
        w_k, h_k = size_of(tiny_data, ids[k])
        images.append({"width": w_k, "height": h_k, "id": len(images), "file_name": f"images/{ids[k]}.jpg"})
    path = ls_coco_zip(tmp_path / "project-1-coco.zip", images, anns,
                       {f"images/{ids[6]}.jpg": (tiny_data / "JPEGImages" / f"{ids[6]}.jpg").read_bytes()})
    out = wsis("review", "import", path, *tiny_args(tiny_data, run_copy)).stdout
    assert "imported 1 reviewed images (2 instances)" in out, out
    assert "2 images without annotations skipped as not reviewed" in out and "--empty-images reviewed" in out
    assert "2 polygons regrouped" in out
    images_stored = stored(run_copy)
    assert set(images_stored) == {image_id}
    got = [(rle_decode(i["segmentation"]), i["class"]) for i in images_stored[image_id]["instances"]]
    assert len(got) == 2
    assert np.array_equal(got[0][0], truth_two) and got[0][1] == 0
    assert np.array_equal(got[1][0], truth_holed) and got[1][1] == 1 and not got[1][0][c]

    # an edited part is no longer known to be a part: it stands alone (3 instances), said by no note
    edited = json.loads(json.dumps(anns))
    edited[1]["segmentation"][0][0] += 2.0
    found = read_review(ls_coco_zip(tmp_path / "edited.zip", images[:1], edited, {}), ds, ids, ins_dir=ins_dir)
    assert len(found.images[image_id][2]) == 3 and not found.notes
    # without the pseudo-labels to compare with, nothing is regrouped
    found = read_review(tmp_path / "edited.zip", ds, ids)
    assert len(found.images[image_id][2]) == 3
    # a task annotated twice: two reviewed images of one file, refused
    twice = images[:1] + [dict(images[0], id=1)]
    with pytest.raises(DataError, match="images 0 and 1 are both .* and both reviewed .*annotated twice"):
        read_review(ls_coco_zip(tmp_path / "twice.zip", twice, anns + [dict(anns[2], id=9, image_id=1)], {}), ds, ids)


# ------------------------------------------------------ points 7, 8: CVAT subsets and skips
def cvat_doc(entries):
    """A CVAT "COCO 1.0" subset document: [(image id, file name, w, h, [polygon rings])]."""
    images, anns = [], []
    for k, name, w, h, rings in entries:
        images.append({"id": k, "width": w, "height": h, "file_name": name, "license": 0, "flickr_url": "",
                       "coco_url": "", "date_captured": 0})
        for ring in rings:
            xs, ys = ring[0::2], ring[1::2]
            anns.append({"id": len(anns) + 1, "image_id": k, "category_id": 2, "segmentation": [ring], "area": 1.0,
                         "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)], "iscrowd": 0,
                         "attributes": {"occluded": False}})
    return {"licenses": [{"name": "", "id": 0, "url": ""}], "info": {"contributor": "", "date_created": "",
            "description": "", "url": "", "version": "", "year": ""},
            "categories": [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(NAMES)],
            "images": images, "annotations": anns}


def cvat_zip(path, subsets):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for subset, doc in subsets.items():
            z.writestr(f"annotations/instances_{subset}.json", json.dumps(doc))
    return path


def test_cvat_subsets_are_read_apart(tiny_data, ds, run_copy, tmp_path):
    a, b, c = ds.ids("train")[:3]
    size = {i: size_of(tiny_data, i) for i in (a, b, c)}
    box = [4.0, 4.0, 30.0, 4.0, 30.0, 20.0, 4.0, 20.0]
    tri = [10.0, 30.0, 40.0, 30.0, 25.0, 45.0]

    def entry(k, i, rings):
        return (k, f"{i}.jpg", *size[i], rings)
    train = cvat_doc([entry(1, a, [box]), entry(2, c, [])])      # c untouched in train
    val = cvat_doc([entry(1, b, [tri]), entry(2, c, [box])])     # the same ids, other images
    path = cvat_zip(tmp_path / "task_7_coco.zip", {"train": train, "val": val})
    out = wsis("review", "import", path, *tiny_args(tiny_data, run_copy)).stdout
    assert "imported 3 reviewed images (3 instances)" in out and "skipped" not in out, out
    images = stored(run_copy)
    want = {a: box, b: tri, c: box}
    assert set(images) == set(want)
    for image_id, ring in want.items():
        (inst,) = images[image_id]["instances"]
        w, h = size[image_id]
        assert np.array_equal(rle_decode(inst["segmentation"]), poly_mask(ring, h, w)) and inst["class"] == 1
    before = (run_copy / "review" / "reviewed.json").read_bytes()
    train = cvat_doc([entry(1, a, [box]), entry(2, c, [tri])])   # c reviewed in both now
    clash = cvat_zip(tmp_path / "clash.zip", {"train": train, "val": val})
    line = one_line(wsis("review", "import", clash, *tiny_args(tiny_data, run_copy), check=False))
    assert f"image '{c}.jpg' is reviewed both in annotations/instances_train.json and in " \
           f"annotations/instances_val.json" in line, line
    assert (run_copy / "review" / "reviewed.json").read_bytes() == before


# ------------------------------------------ point 9: the next batch leaves reviewed images out
def test_the_next_batch_leaves_reviewed_images_out(tiny_data, run_copy, tmp_path):
    def export(*extra):
        out = tmp_path / f"batch{len(extra)}.json"
        proc = wsis("review", "export", "--format", "coco", "--out", out, *extra, *tiny_args(tiny_data, run_copy))
        return json.loads(out.read_text()), proc.stdout
    first, _ = export("--top", "3")
    first["annotations"] = [a for a in first["annotations"] if a["image_id"] != 1]
    sizes = {im["wsis_id"]: (im["height"], im["width"]) for im in first["images"]}
    h, w = sizes[first["images"][0]["wsis_id"]]
    first["annotations"].append({"id": 999, "image_id": 1, "category_id": 3, "iscrowd": 0,
                                 "segmentation": [[2.0, 2.0, 20.0, 2.0, 11.0, 16.0]]})   # the reviewer's triangle
    (tmp_path / "reviewed.json").write_text(json.dumps(first))
    wsis("review", "import", tmp_path / "reviewed.json", *tiny_args(tiny_data, run_copy))
    reviewed = set(stored(run_copy))
    assert first["images"][0]["wsis_id"] in reviewed and reviewed <= set(sizes)
    everything, _ = export("--include-reviewed")      # the queue after the import (train_seg is stale now)
    order = [im["wsis_id"] for im in everything["images"]]
    batch, out = export("--top", "3")
    assert [im["wsis_id"] for im in batch["images"]] == [i for i in order if i not in reviewed][:3]
    assert not any(im["reviewed"] for im in batch["images"])
    assert f"{len(reviewed)} reviewed images left out (--include-reviewed exports them)" in out
    again = everything
    marks = {im["wsis_id"]: im["reviewed"] for im in again["images"]}
    assert {i for i, m in marks.items() if m} == reviewed
    # a reviewed image comes back with its reviewed masks, not its old pseudo-labels
    first_id = first["images"][0]["wsis_id"]
    k = next(im["id"] for im in again["images"] if im["wsis_id"] == first_id)
    (ann,) = [a for a in again["annotations"] if a["image_id"] == k]
    assert np.array_equal(mask_utils.decode(ann["segmentation"]).astype(bool),
                          poly_mask([2.0, 2.0, 20.0, 2.0, 11.0, 16.0], h, w))


# -------------------------------------------- points 1, 2: URLs Label Studio's local files serve
def serves(url, document_root, storage):
    """What Label Studio's local-files view does with a URL: the storage may not be the
    document root; ``d`` (query-decoded) is a path below the document root, inside the storage."""
    assert storage != document_root and storage.parent == document_root
    parts = urlsplit(url)
    assert parts.path == "/data/local-files/" and set(parse_qs(parts.query)) == {"d"}
    (d,) = parse_qs(parts.query)["d"]
    path = document_root / d
    return path.is_file() and storage in path.parents


def test_labelstudio_urls_are_served_and_come_back(tmp_path, tiny_data, ds):
    root = tmp_path / "photos"
    names = ["my photo #1.jpg", "a&b.jpg", "sub dir/c+d 100%.jpg", "nested/deeper/e?.jpg"]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6)).save(root / name)
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f'"{n}",disc\n' for n in names))
    folder = open_folder(root, labels, [])
    prefix, document_root, storage = local_files_setup(folder.image_dir)
    assert (prefix, document_root, storage) == ("/data/local-files/?d=photos/", tmp_path.resolve(), root.resolve())
    index = ImageIndex(folder, folder.ids("all"))
    items = [{"id": i, "file_name": folder.files[i], "width": 8, "height": 6, "confidence": 0.0, "reviewed": False,
              "instances": []} for i in folder.ids("all")]
    tasks = labelstudio_tasks(items, ["disc"], prefix)
    assert image_url("my photo #1.jpg", prefix) == "/data/local-files/?d=photos/my%20photo%20%231.jpg"
    assert image_url("a&b.jpg", prefix) == "/data/local-files/?d=photos/a%26b.jpg"
    for task, item in zip(tasks, items):
        assert serves(task["data"]["image"], document_root, storage), task["data"]["image"]
        assert index.resolve(task["data"]["image"]) == item["id"]          # and the import finds it again
    # VOC layout (synthetic, voc2012): the document root is the dataset, the storage JPEGImages
    prefix, document_root, storage = local_files_setup(ds.image_dir)
    assert prefix == "/data/local-files/?d=JPEGImages/" and document_root == tiny_data.resolve()
    url = image_url(f"{ds.ids('train')[0]}.jpg", prefix)
    assert serves(url, document_root, storage) and ImageIndex(ds, ds.ids("train")).resolve(url) == ds.ids("train")[0]


def test_the_export_prints_the_local_files_setup(tiny_data, tiny_run, tmp_path):
    out = tmp_path / "ls.json"
    stdout = wsis("review", "export", "--format", "labelstudio", "--top", "2", "--out", out,
                  *tiny_args(tiny_data, tiny_run)).stdout
    root = tiny_data.resolve()
    assert (f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root}, add a Local Files storage with path "
            f"{root / 'JPEGImages'}") in stdout
    for task in json.loads(out.read_text()):
        assert serves(task["data"]["image"], root, root / "JPEGImages")


# ------------------------------------------------------------ point 11: readable outputs
def test_outputs_have_the_mode_of_open(tiny_run):
    mask = os.umask(0o022)
    os.umask(mask)
    want = 0o666 & ~mask
    files = {"npz": next((tiny_run / "ins_seg").glob("*.npz")), "png": next((tiny_run / "sem_seg").glob("*.png")),
             "json": tiny_run / "metrics.json", "model": tiny_run / "train_seg" / "model.pt",
             "html": tiny_run / "report" / "index.html"}
    for kind, path in files.items():
        assert stat.S_IMODE(path.stat().st_mode) == want, (kind, path, oct(path.stat().st_mode))


def test_the_atomic_writer_follows_the_umask(tmp_path):
    from wsis.io import write_json, write_npz
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
        write_npz(tmp_path / "b.npz", x=np.zeros(2))
        assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == {"a.json": 0o640,
                                                                                         "b.npz": 0o640}
    finally:
        os.umask(old)


def test_coco_dataset_urls_name_the_images_folder(tmp_path):
    """COCO layout: the images folder (train2017 here) is the storage, the folder above it the
    document root; file names may hold sub-folders and characters a URL must encode."""
    from wsis.data.coco import open_coco
    images = tmp_path / "coco" / "train 2017"
    names = ["x/000 #7.jpg", "b&c.jpg"]
    for name in names:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6)).save(images / name)
    ann = tmp_path / "coco" / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": k + 1, "file_name": n, "height": 6, "width": 8}
                                          for k, n in enumerate(names)],
                               "annotations": [], "categories": [{"id": 1, "name": "disc"}]}))
    coco = open_coco(images, ann, [])
    prefix, document_root, storage = local_files_setup(coco.image_dir)
    assert prefix == "/data/local-files/?d=train%202017/" and document_root == (tmp_path / "coco").resolve()
    ids = [i for split in coco.splits.values() for i in split]
    index = ImageIndex(coco, ids)
    for image_id in set(ids):
        rel = coco.image_path(image_id).relative_to(coco.image_dir).as_posix()
        url = image_url(rel, prefix)
        assert serves(url, document_root, storage) and index.resolve(url) == image_id, url


# ------------------------------ point 8: a CVAT batch's untouched images are not "reviewed"
def test_cvat_images_left_as_exported_keep_their_pseudo_labels(tiny_data, run_copy, tmp_path):
    """CVAT exports every image of the task with whatever annotations it holds: those wsis put
    there, on the images nobody edited. Only the edited image counts as reviewed."""
    exported = tmp_path / "cvat.zip"
    wsis("review", "export", "--format", "cvat", "--out", exported, *tiny_args(tiny_data, run_copy))
    doc = json.loads(zipfile.ZipFile(exported).read("annotations/instances_default.json"))
    by_image = {im["id"]: [a for a in doc["annotations"] if a["image_id"] == im["id"]] for im in doc["images"]}
    with_anns = [k for k, anns in by_image.items() if anns]
    assert len(with_anns) >= 2
    edited = with_anns[0]
    dropped = by_image[edited][0]["id"]
    doc["annotations"] = [a for a in doc["annotations"] if a["id"] != dropped]      # the reviewer deletes one
    back = cvat_zip(tmp_path / "task_3_annotations.zip", {"default": doc})
    out = wsis("review", "import", back, *tiny_args(tiny_data, run_copy)).stdout
    empty = len(doc["images"]) - len(with_anns)
    assert f"imported 1 reviewed images ({len(by_image[edited]) - 1} instances)" in out, out
    assert f"{len(with_anns) - 1} images with their exported pseudo-labels unchanged skipped" in out, out
    assert (f"{empty} images without annotations skipped" in out) == (empty > 0), out
    image = next(im for im in doc["images"] if im["id"] == edited)
    images = stored(run_copy)
    assert set(images) == {image["wsis_id"]}
    h, w = image["height"], image["width"]
    want = [mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))).astype(bool)
            for a in by_image[edited][1:]]
    got = [rle_decode(i["segmentation"]) for i in images[image["wsis_id"]]["instances"]]
    assert len(got) == len(want) and all(np.array_equal(g, m) for g, m in zip(got, want))
    # the reviewer says the untouched images were looked at: then all of them are reviewed
    out = wsis("review", "import", back, "--unchanged-images", "reviewed", "--empty-images", "reviewed",
               *tiny_args(tiny_data, run_copy)).stdout
    assert f"imported {len(doc['images'])} reviewed images" in out and "skipped" not in out, out


def test_the_report_marks_reviewed_images(tiny_data, ds, run_copy, tmp_path):
    """After an import, the report's queue marks the reviewed images and its gallery shows their
    reviewed masks beside the pseudo-labels."""
    image_id = ds.ids("train")[4]
    w, h = size_of(tiny_data, image_id)
    ring = [2.0, 2.0, 20.0, 2.0, 11.0, 16.0]
    doc = cvat_doc([(1, f"{image_id}.jpg", w, h, [ring])])
    path = tmp_path / "one.json"
    path.write_text(json.dumps(doc))
    wsis("review", "import", path, *tiny_args(tiny_data, run_copy))
    wsis("report", *tiny_args(tiny_data, run_copy))
    queue = json.loads((run_copy / "report" / "queue.json").read_text())
    assert {e["id"] for e in queue["images"] if e["reviewed"]} == {image_id}
    assert len(queue["images"]) == 16
    (thumb,) = (run_copy / "report" / "cache").glob(f"{image_id}_reviewed_*.jpg")
    html = "".join(p.read_text() for p in (run_copy / "report").glob("*.html"))
    assert "reviewed: 1 instances" in html and f"cache/{thumb.name}" in html


def test_an_import_redraws_only_the_rows_it_changed(tiny_data, ds, run_copy, tmp_path):
    """report_rows (the per-image signals and pictures) depends on no review: an import leaves
    it as it was, and the report draws again only the pictures whose content changed: the
    newly reviewed image's reviewed masks, and the "review these first" picture of an image
    that enters that list. Counted by the files in the report's cache and their mtimes."""
    from conftest import snapshot

    def review(image_ids, name):
        entries = []
        for k, image_id in enumerate(image_ids, start=1):
            w, h = size_of(tiny_data, image_id)
            entries.append((k, f"{image_id}.jpg", w, h, [[2.0, 2.0, 20.0, 2.0, 11.0, 16.0]]))
        path = tmp_path / name
        path.write_text(json.dumps(cvat_doc(entries)))
        wsis("review", "import", path, *tiny_args(tiny_data, run_copy))
        return wsis("report", *tiny_args(tiny_data, run_copy)).stdout

    def first(queue):
        return set([e["id"] for e in queue["images"] if not e["reviewed"]][:10])

    rows = snapshot(run_copy / "report_rows")
    a, b = ds.ids("train")[4], ds.ids("train")[7]
    queue_before = json.loads((run_copy / "report" / "queue.json").read_text())   # the run's own report
    assert all("model" in e["signals"] for e in queue_before["images"])
    cache_before = snapshot(run_copy / "report" / "cache")
    # the first import (train_seg is now due to retrain; until then its model and seg_infer's
    # predictions of it still hold), then a second one: a again, unchanged, and b
    for batch, newly in (([a], a), ([a, b], b)):
        out = review(batch, f"{newly}.json")
        queue = json.loads((run_copy / "report" / "queue.json").read_text())
        cache = snapshot(run_copy / "report" / "cache")
        assert snapshot(run_copy / "report_rows") == rows
        drawn = {n for n in cache if cache_before.get(n) != cache[n]}
        entering = first(queue) - first(queue_before)
        assert {n.rsplit("_", 1)[0] for n in drawn} == {f"{newly}_reviewed"} | {f"{i}_first" for i in entering}
        assert f"report: {len(drawn)} pictures drawn" in out
        assert [e["confidence"] for e in queue["images"]] == [e["confidence"] for e in queue_before["images"]]
        assert {e["id"] for e in queue["images"] if e["reviewed"]} == set(batch)
        queue_before, cache_before = queue, cache
