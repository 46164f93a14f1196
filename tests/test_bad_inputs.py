"""Bad inputs (issue 9, items 10 and 11): one line naming the key or file, exit status 2, and
the cache untouched, checked before any stage output is cleared."""

import os
import shutil

from conftest import snapshot, tiny_args, wsis
from test_faults import one_line_error

# each with make_cam.scales=[1.0]: a valid change that would clear make_cam if the bad value
# were found only once stages run
BAD_VALUES = [
    ('make_cam.scales=["a"]', "'make_cam.scales' must be list of float"),
    ("make_cam.scales=[]", "make_cam.scales = []: must not be empty"),
    ("make_cam.scales=[-1.0]", "make_cam.scales = [-1.0]: element 0 (-1.0) must be > 0"),
    ("train_cam.epochs=0", "train_cam.epochs = 0: must be >= 1"),
    ("train_cam.batch_size=0", "train_cam.batch_size = 0: must be >= 1"),
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
