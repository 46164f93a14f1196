"""Bad inputs (issue 9, items 10 and 11): one line naming the key or file, exit status 2, and
the cache untouched, checked before any stage output is cleared."""

import os
import shutil

from conftest import TINY as TINY_CONFIG, snapshot, tiny_args, wsis
from test_faults import one_line_error

# each with make_cam.scales=[1.0]: a valid change that would clear make_cam if the bad value
# were found only once stages run
BAD_VALUES = [
    ('make_cam.scales=["a"]', "'make_cam.scales' must be list of float"),
    ("make_cam.scales=[]", "make_cam.scales = []: must not be empty"),
    ("make_cam.scales=[-1.0]", "make_cam.scales = [-1.0]: element 0 (-1.0) must be > 0"),
    ("train_cam.epochs=0", "train_cam.epochs = 0: must be >= 1"),
    ("train_cam.batch_size=0", "train_cam.batch_size = 0: must be >= 1"),
    ("train_cam.cached_views=-1", "train_cam.cached_views = -1: must be >= 0"),
    ("seg.batch_size=0", "seg.batch_size = 0: must be >= 1"),
    ("train_irn.scale_range=[1.5, 0.5]", "train_irn.scale_range = [1.5, 0.5]: [low, high] with low > high"),
    ("solo.grids=[40, 36, 24, 16]", "solo.grids = [40, 36, 24, 16]: must have 5 elements"),
    ("solo.scale_ranges=[[1, 2], [2, 3], [3, 4], [4, 5], [5]]", "solo.scale_ranges"),
    ("seg.model=maskrcnn", "seg.model = 'maskrcnn': must be one of solov2, solo, yolact, centermask"),
    ("eval_cam.bg_threshold=1.5", "eval_cam.bg_threshold = 1.5: must be in [0.0, 1.0]"),
    ("run.chunk_size=0", "run.chunk_size = 0: must be >= 1"),
    ("backbone.depth=19", "backbone.depth = 19: must be one of 18, 34, 50, 101, 152"),
    ("backbone.weights=/no/such/file.pth", "backbone.weights = '/no/such/file.pth': must be 'none', 'imagenet'"),
    ('seg.train_json="/no/such.json"', "/no/such.json: annotations JSON not found (seg.train_json)"),
]


def test_10_config_values_are_checked_before_anything_runs(tiny_data, tiny_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work, copy_function=os.link)
    before = snapshot(work)
    for override, message in BAD_VALUES:
        proc = wsis("run", *tiny_args(tiny_data, work, "--set", "make_cam.scales=[1.0]", "--set", override),
                    check=False)
        one_line_error(proc, message)
        assert "up to date" not in proc.stderr and "computing" not in proc.stderr
    one_line_error(wsis("run", "--workers", "-1", *tiny_args(tiny_data, work), check=False),
                   "--workers -1: must be >= 0")
    assert snapshot(work) == before


def test_11_a_config_file_that_is_not_toml(tiny_data, tiny_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work, copy_function=os.link)
    before = snapshot(work)
    binary = tmp_path / "weights.pth"
    binary.write_bytes(bytes(range(256)) * 4)
    one_line_error(wsis("run", *tiny_args(tiny_data, work), "--config", binary, check=False),
                   f"{binary}: not a TOML file (not UTF-8 text)")
    text = tmp_path / "notes.toml"
    text.write_text("this is not = = toml\n")
    one_line_error(wsis("run", *tiny_args(tiny_data, work), "--config", text, check=False), "notes.toml: invalid TOML")
    depth = tmp_path / "depth.toml"
    depth.write_text("[backbone]\ndepth = 19\n")
    one_line_error(wsis("run", *tiny_args(tiny_data, work), "--config", depth, check=False),
                   "backbone.depth = 19: must be one of")
    assert snapshot(work) == before


# ------------------------------------------------------------------ issue 21, point 4

def png_declaring(path, width, height):
    """A small valid PNG whose header is patched to declare ``width`` x ``height`` pixels."""
    import io
    import struct
    import zlib

    import numpy as np
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = data[12:29]                     # chunk type + 13 bytes of data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


def test_21_4_a_decompression_bomb_is_one_line_naming_the_pixel_count(tmp_path):
    import json

    from PIL import Image
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (32, 24), (200, 10, 10)).save(images / f"{name}.png")
    bomb = png_declaring(images / "bomb.png", 20000, 10000)
    (tmp_path / "labels.csv").write_text("a.png,cat\nb.png,dog\nbomb.png,cat\n")
    common = ("--config", TINY_CONFIG, "--device", "cpu", "--stage", "train_cam")
    proc = wsis("run", "--dataset", "folder", "--data-root", images, "--labels", tmp_path / "labels.csv",
                "--work-dir", tmp_path / "w1", *common, check=False)
    one_line_error(proc, f"{bomb}: 20000x10000 = 200000000 pixels, over data.max_pixels = 89478485")
    coco = {"images": [{"id": k, "file_name": f"{n}.png", "height": h, "width": w}
                       for k, (n, h, w) in enumerate([("a", 24, 32), ("b", 24, 32), ("bomb", 10000, 20000)])],
            "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "segmentation": [[1, 1, 9, 1, 9, 9]]}],
            "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    proc = wsis("run", "--dataset", "coco", "--data-root", images, "--annotations", tmp_path / "coco.json",
                "--work-dir", tmp_path / "w2", *common, check=False)
    one_line_error(proc, f"{bomb}: 20000x10000 = 200000000 pixels, over data.max_pixels")
    # a higher data.max_pixels lets a large image through to decoding (where this one, 8x8
    # pixels of data under a patched header, is found truncated)
    proc = wsis("run", "--dataset", "folder", "--data-root", images, "--labels", tmp_path / "labels.csv",
                "--work-dir", tmp_path / "w3", *common, "--set", "data.max_pixels=300000000", check=False)
    assert proc.returncode != 0 and "over data.max_pixels" not in proc.stderr
    assert str(bomb) in proc.stderr and "corrupt image" in proc.stderr, proc.stderr
    import pytest

    from wsis.errors import DataError
    from wsis.io import read_image_size
    with pytest.raises(DataError, match="corrupt image"):
        read_image_size(bomb, max_pixels=200_000_000)


def test_21_4_work_dir_and_out_that_are_files(tiny_data, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    one_line_error(wsis("status", *tiny_args(tiny_data, a_file), check=False),
                   f"--work-dir {a_file}: is a file, not a directory")
    one_line_error(wsis("run", *tiny_args(tiny_data, a_file / "sub"), check=False),
                   f"--work-dir {a_file / 'sub'}: is below {a_file}, which is a file")
    assert a_file.read_text() == "not a directory"
    from PIL import Image
    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    (tmp_path / "model.pt").write_bytes(b"")
    one_line_error(wsis("predict", "--checkpoint", tmp_path / "model.pt", tmp_path / "a.png", "--out", a_file,
                        "--device", "cpu", check=False), f"--out {a_file}: is a file, not a directory")


def test_21_4_a_truncated_run_json_or_garbage_config_toml(tiny_data, tiny_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work, copy_function=os.link)
    run_json = work / "run.json"
    text = run_json.read_text()
    run_json.unlink()
    run_json.write_text(text[:len(text) // 2])               # treated as missing, like a truncated manifest
    status = wsis("status", *tiny_args(tiny_data, work))
    assert "Traceback" not in status.stderr and "train_cam    done" in status.stdout
    (work / "config.toml").unlink()
    (work / "config.toml").write_bytes(b"\x00\xff garbage = = \n")
    proc = wsis("run", "--stage", "make_cam", "--set", "make_cam.scales=[1.0]", *tiny_args(tiny_data, work))
    notes = [line for line in proc.stderr.splitlines() if "config.toml" in line]
    assert notes == [f"{work / 'config.toml'}: not a readable config (damaged?); rewritten with this run's"], proc.stderr
    assert "scales = [1.0]" in (work / "config.toml").read_text()
    assert run_json.read_text() == text                        # rewritten whole by the run


# ------------------------------------------------------------------ issue 21, point 5

RUNNABLE = [    # values the types allow but no run can use, each with make_cam.scales=[1.0] as in BAD_VALUES
    ("train_cam.lr=inf", "train_cam.lr = inf: must be a finite number"),
    ("train_cam.lr=nan", "train_cam.lr = nan: must be a finite number"),
    ("make_cam.scales=[1.0, inf]", "make_cam.scales = [1.0, inf]: must be a finite number"),
    ("random_walk.exp_times=60", "random_walk.exp_times = 60: must be in [0, 16]"),
    ("ins_seg.exp_times=60", "ins_seg.exp_times = 60: must be in [-1, 16]"),
    ("ins_seg.centroid_iterations=1000000000", "ins_seg.centroid_iterations = 1000000000: must be in [0, 5000]"),
    ("random_walk.radius=1000", "random_walk.radius = 1000: must be in [2, 24]"),
]


def test_21_5_values_no_run_can_use_are_refused_before_anything_runs(tiny_data, tiny_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work, copy_function=os.link)
    before = snapshot(work)
    for override, message in RUNNABLE:
        proc = wsis("run", *tiny_args(tiny_data, work, "--set", "make_cam.scales=[1.0]", "--set", override),
                    check=False)
        one_line_error(proc, message)
    assert snapshot(work) == before


def test_21_5_workers_are_capped_at_the_cpus(tiny_data, tiny_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work, copy_function=os.link)
    proc = wsis("run", "--workers", "1000", *tiny_args(tiny_data, work))
    cpus = os.cpu_count()
    assert (f"wsis: note: 1000 workers asked for (--workers or run.workers), but this machine has {cpus} CPUs; "
            f"using {cpus}") in proc.stderr
    from pipelines.runner import DaskRunner
    from wsis.cli import capped_workers
    assert DaskRunner(None, capped_workers(1000), "cpu").local_workers() == cpus


def test_21_5_a_per_image_output_replaced_by_a_directory(tiny_data, tiny_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work, copy_function=os.link)
    cam = work / "make_cam" / "train_00001.npz"
    cam.unlink()
    (cam / "inside").mkdir(parents=True)
    status = wsis("status", *tiny_args(tiny_data, work)).stdout
    assert "make_cam     damaged (train_00001.npz: a directory, not a file)" in status, status
    proc = wsis("run", "--stage", "make_cam", *tiny_args(tiny_data, work))
    assert "make_cam: computing 1 of 24 images (23 already done)" in proc.stderr
    assert cam.is_file()
    from test_faults import same_arrays
    same_arrays(tiny_run / "make_cam" / cam.name, cam)


# ------------------------------------------------------------------ issue 21, point 2

def test_21_2_files_that_config_keys_name_are_read_before_anything_is_cleared(tiny_data, tiny_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work, copy_function=os.link)
    before = snapshot(work)
    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    truncated = tmp_path / "resnet18.pth"
    import torch
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    not_json = tmp_path / "train.json"
    not_json.write_text('{"images": [')
    cases = [
        (("--set", f"backbone.weights={text}"), f"backbone.weights = {text}: not a readable checkpoint"),
        (("--set", f"backbone.weights={truncated}"), f"backbone.weights = {truncated}: not a readable checkpoint"),
        (("--set", f'seg.train_json="{not_json}"', "--set", f'seg.train_images="{tiny_data}"'),
         f"seg.train_json = {not_json}: not a readable JSON file"),
    ]
    for overrides, message in cases:
        proc = wsis("run", *tiny_args(tiny_data, work, *overrides), check=False)
        one_line_error(proc, message)
        assert "computing" not in proc.stderr
    assert snapshot(work) == before
