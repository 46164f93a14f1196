"""Image reading: 16-bit PNGs, EXIF orientation, the data.max_side processing size."""

import numpy as np
import pytest
from PIL import Image

from wsis.io import processing_size, read_image_size, read_rgb

EXIF_ORIENTATION = 0x0112


def save_with_orientation(path, array: np.ndarray, orientation: int) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    Image.fromarray(array).save(path, quality=100, subsampling=0, exif=exif.tobytes())


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 12850, 51400]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")     # Pillow keeps 16 bits: the case to handle
    rgb = read_rgb(path)
    # v * 255 / 65535, by hand: 0, 1, 128, 255, 50, 200
    expected = np.array([[0, 1, 128], [255, 50, 200]], np.uint8)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], expected)


def test_exif_orientation_is_applied(tmp_path):
    """Orientation 6 means "rotate 90 degrees clockwise to display": the stored left column
    becomes the displayed top row, and width and height swap."""
    stored = np.zeros((30, 40, 3), np.uint8)    # 30 rows, 40 columns
    stored[:, :8] = (255, 0, 0)                 # a red band on the left
    path = tmp_path / "rotated.jpg"
    save_with_orientation(path, stored, 6)
    shown = read_rgb(path)
    assert shown.shape == (40, 30, 3)
    assert read_image_size(path) == (40, 30)
    assert shown[:6, :, 0].mean() > 200 and shown[:6, :, 1].mean() < 60      # red on top
    assert shown[-20:, :, 0].mean() < 60                                     # not below
    plain = tmp_path / "plain.jpg"
    save_with_orientation(plain, stored, 1)
    assert read_rgb(plain).shape == (30, 40, 3) and read_image_size(plain) == (30, 40)


@pytest.mark.parametrize("shape,max_side,expected", [
    ((900, 1200), 256, (192, 256)), ((1200, 900), 256, (256, 192)), ((100, 50), 256, (100, 50)),
    ((900, 1200), 0, (900, 1200)), ((1000, 3), 100, (100, 1))])
def test_processing_size(shape, max_side, expected):
    assert processing_size(*shape, max_side) == expected


def test_max_side_downscales_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 255, (9, 12, 3), np.uint8), np.ones((100, 100, 1), np.uint8))  # 900x1200
    for name in ("big.png", "big.jpg"):
        Image.fromarray(image).save(tmp_path / name, quality=95)
        small = read_rgb(tmp_path / name, max_side=256)
        assert small.shape == (192, 256, 3)
        # block (i, j) of the original is the same colour in the centre of its 21x21 cell
        centre = small[10::21, 10::21][:9, :12].astype(int)
        assert np.abs(centre - image[50::100, 50::100].astype(int)).max() <= 12
        assert read_rgb(tmp_path / name).shape == (900, 1200, 3)
        assert read_image_size(tmp_path / name) == (900, 1200)


def test_large_rotated_and_16_bit_images_through_the_pipeline(tiny_data, tmp_path):
    """A folder dataset with a 1200x900 photo (processed at 256 px long side), an EXIF-rotated
    copy of another image and a 16-bit PNG: every output is at the original, displayed size,
    and the rotated copy gets the same labels as the upright one."""
    import json

    from pycocotools import mask as mask_utils

    from conftest import TINY, wsis
    from wsis.config import load_config
    from wsis.data import open_dataset
    from wsis.io import read_label_png, read_npz

    voc = open_dataset("synthetic", load_config("synthetic", TINY), tiny_data)
    root = tmp_path / "images"
    root.mkdir()
    ids = voc.ids("train")
    for image_id in ids:
        Image.open(voc.image_path(image_id)).save(root / f"{image_id}.jpg", quality=100, subsampling=0)
    upright = read_rgb(root / f"{ids[0]}.jpg")
    save_with_orientation(root / "rotated.jpg", np.ascontiguousarray(np.rot90(upright, 1)), 6)
    big = Image.fromarray(read_rgb(voc.image_path(ids[1]))).resize((1200, 900), Image.NEAREST)
    (root / "sub").mkdir()
    big.save(root / "sub" / "big.jpg", quality=95)
    grey = read_rgb(voc.image_path(ids[2])).mean(2).astype(np.uint16) * 257
    Image.fromarray(grey).save(root / "deep.png")
    names = lambda i: ";".join(voc.class_names[c] for c in voc.labels[i])
    rows = [f"{i}.jpg,{names(i)}" for i in ids] + [f"rotated.jpg,{names(ids[0])}", f"sub/big.jpg,{names(ids[1])}",
                                                   f"deep.png,{names(ids[2])}"]
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    work = tmp_path / "work"
    args = ["--dataset", "folder", "--data-root", root, "--labels", root / "labels.csv", "--config", TINY,
            "--set", "data.max_side=256", "--set", "backbone.arch=resnet", "--set", "backbone.depth=18", "--set", "backbone.weights=none",
            "--set", "train_irn.radius=5", "--work-dir", work, "--device", "cpu"]
    proc = wsis("run", "--stage", "export", *args)
    wsis("run", "--stage", "sem_seg", *args)
    # from scratch: the preset's frozen stages and BatchNorm are unfrozen, IRNet uses the CAM backbone
    assert "backbone.weights = none: training all of resnet18 from scratch" in proc.stderr
    assert "train_irn: backbone.weights = none, so IRNet uses the CAM net's trained backbone" in proc.stderr

    shape_of = {i: read_rgb(voc.image_path(i)).shape[:2] for i in ids}
    displayed = shape_of | {"rotated": shape_of[ids[0]], "sub/big": (900, 1200), "deep": shape_of[ids[2]]}
    for image_id, size in displayed.items():
        assert read_label_png(work / "sem_seg" / f"{image_id}.png").shape == size
        assert read_npz(work / "ins_seg" / f"{image_id}.npz")["instances"].shape == size
    assert read_npz(work / "make_cam" / "sub/big.npz")["high_res"].shape[1:] == (192, 256)   # processing size
    same = read_label_png(work / "sem_seg" / "rotated.png") == read_label_png(work / "sem_seg" / f"{ids[0]}.png")
    assert same.mean() > 0.95
    export = json.loads((work / "export" / "pseudo_labels.json").read_text())
    sizes = {im["file_name"]: (im["height"], im["width"]) for im in export["images"]}
    assert sizes["sub/big.jpg"] == (900, 1200) and sizes["rotated.jpg"] == shape_of[ids[0]]
    by_id = {im["id"]: (im["height"], im["width"]) for im in export["images"]}
    for ann in export["annotations"]:
        assert mask_utils.decode(ann["segmentation"]).shape == by_id[ann["image_id"]]

    # the review queue pairs the photo-size instances with the processing-size CAMs: exporting
    # it for review works on every photo, each at its own size
    out = tmp_path / "review.json"
    wsis("review", "export", "--format", "coco", "--out", out, *args)
    review = json.loads(out.read_text())
    sizes = {im["wsis_id"]: (im["height"], im["width"]) for im in review["images"]}
    assert sizes == displayed
    by_id = {im["id"]: (im["height"], im["width"]) for im in review["images"]}
    for ann in review["annotations"]:
        assert mask_utils.decode(ann["segmentation"]).shape == by_id[ann["image_id"]]

    # imported back, each review is stored at the displayed size, the rotated photo's too (it
    # was refused: the import compared the file's sizes with the header's unrotated one)
    from wsis.review.formats import read_store
    wsis("review", "import", out, "--unchanged-images", "reviewed", *args)
    stored = read_store(work / "review" / "reviewed.json")["images"]
    assert {i: (e["height"], e["width"]) for i, e in stored.items()} == {i: displayed[i] for i in stored}
    assert "rotated" in stored and displayed["rotated"][0] != displayed["rotated"][1]
    wsis("run", "--stage", "ir_label", *args)      # the merged reviews fit the rotated photo
