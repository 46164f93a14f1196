"""Annotation files that cannot be used (issue 21, point 3): one line naming the file and the
entry, exit status 2, and the cache as it was, before any stage output is cleared."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, snapshot, wsis
from test_coco_ids import CATEGORIES, users_coco_file
from test_faults import one_line_error
from wsis.config import load_config
from wsis.data import open_dataset

COCO_RUN = ("--config", TINY, "--set", "backbone.arch=resnet", "--set", "backbone.depth=18", "--set", "backbone.weights=none", "--device", "cpu")


@pytest.fixture(scope="module")
def coco_run(tiny_data, tmp_path_factory):
    """A COCO dataset (the tiny synthetic train split, its own copy of the images) and a work
    dir where train_cam is done."""
    root = tmp_path_factory.mktemp("coco")
    shutil.copytree(tiny_data / "JPEGImages", root / "images")
    voc = open_dataset("synthetic", load_config("synthetic", TINY), tiny_data)
    good = users_coco_file(voc, "train", root / "instances.json", list(range(1, 17)), CATEGORIES)
    work = root / "work"
    wsis("run", "--dataset", "coco", "--data-root", root / "images", "--annotations", good, "--work-dir", work,
         "--stage", "train_cam", *COCO_RUN)
    return root, good, work


def run_with(coco_run, doc_or_path, tmp_path):
    root, _, work = coco_run
    path = doc_or_path
    if not isinstance(doc_or_path, type(tmp_path)):
        path = tmp_path / "bad.json"
        path.write_text(doc_or_path if isinstance(doc_or_path, str) else json.dumps(doc_or_path))
    # train_cam.epochs=2: a valid change that clears train_cam if the file is found bad only later
    return path, wsis("run", "--dataset", "coco", "--data-root", root / "images", "--annotations", path,
                      "--work-dir", work, "--stage", "train_cam", "--set", "train_cam.epochs=2", *COCO_RUN,
                      check=False)


def edited(good, change):
    doc = json.loads(good.read_text())
    change(doc)
    return doc


def test_bad_annotation_files_are_one_line_and_clear_nothing(coco_run, tmp_path):
    root, good, work = coco_run
    before = snapshot(work)
    first = json.loads(good.read_text())["images"][0]
    ann = json.loads(good.read_text())["annotations"][0]
    cases = [
        ('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
        (edited(good, lambda d: d["images"][0].update(file_name=3)),
         f"image #1 (id {first['id']}) has 'file_name' 3 (must be a non-empty string)"),
        (edited(good, lambda d: d.update(categories=[])), "'categories' is empty"),
        (edited(good, lambda d: d["images"][0].update(height=-5)), f"image #1 (id {first['id']}) has 'height' -5"),
        (edited(good, lambda d: d["annotations"][0].update(segmentation=[[1.0, 2.0, 3.0]])),
         f"annotation {ann['id']} (image {ann['image_id']}): polygon 0: a polygon needs at least 3 (x, y) points"),
        (edited(good, lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]])),
         f"annotation {ann['id']} (image {ann['image_id']}): polygon 0"),
        (edited(good, lambda d: d["annotations"][0]["segmentation"].update(size=[5, 5])),
         f"annotation {ann['id']} (image {ann['image_id']}): RLE size [5, 5] is not the image's"),
    ]
    for doc, fragment in cases:
        path, proc = run_with(coco_run, doc, tmp_path)
        one_line_error(proc, str(path), fragment)
    assert snapshot(work) == before


def test_an_image_whose_exif_orientation_contradicts_its_annotated_size(coco_run, tmp_path):
    """The annotation file gives the stored size of a photo that its EXIF tag rotates by 90
    degrees: the masks, drawn at the stored size, would be misplaced. Refused (README)."""
    root, good, work = coco_run
    before = snapshot(work)
    first = json.loads(good.read_text())["images"][0]
    image = root / "images" / first["file_name"]
    original = image.read_bytes()
    assert first["height"] != first["width"]
    try:
        with Image.open(image) as im:
            pixels = np.asarray(im.convert("RGB"))
        exif = Image.Exif()
        exif[0x0112] = 6          # rotate 90 degrees clockwise when displayed
        Image.fromarray(pixels).save(image, exif=exif, quality=95)
        path, proc = run_with(coco_run, good, tmp_path)
        one_line_error(proc, str(image), f"{first['height']}x{first['width']} as displayed (EXIF orientation applied)",
                       f"annotations give {first['width']}x{first['height']}")
    finally:
        image.write_bytes(original)
    assert snapshot(work) == before
