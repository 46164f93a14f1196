"""End-to-end CLI behaviour on the tiny synthetic dataset."""

import json
import shutil


from conftest import snapshot, tiny_args, wsis


def stage_lines(stderr: str) -> dict:
    out = {}
    for line in stderr.splitlines():
        name, _, rest = line.partition(": ")
        if rest == "up to date" or rest.startswith("done in"):
            out[name] = "up to date" if rest == "up to date" else "ran"
    return out


def test_make_cam_writes_cams_and_eval_reports_above_baseline(tiny_data, tiny_run):
    from wsis.io import read_npz
    cams = sorted((tiny_run / "make_cam").glob("*.npz"))
    assert len(cams) == 16 + 8
    z = read_npz(cams[0])
    assert z["cam"].ndim == 3 and z["high_res"].shape[0] == z["classes"].shape[0]
    metrics = json.loads((tiny_run / "metrics.json").read_text())["eval_cam"]
    for split in ("train", "val"):
        assert 0 <= metrics[split]["all_background_miou"] < metrics[split]["best_miou"] <= 1
    assert (tiny_run / "config.toml").is_file()


def test_rerun_skips_everything_and_one_change_reruns_downstream_only(tiny_data, tiny_run, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work)
    before = snapshot(work)
    proc = wsis("run", "--stage", "eval_cam", *tiny_args(tiny_data, work))
    assert stage_lines(proc.stderr) == dict.fromkeys(["train_cam", "make_cam", "eval_cam"], "up to date")
    assert "CAM mIoU" not in proc.stderr
    assert {k: v for k, v in snapshot(work).items() if k != "metrics.json"} == \
        {k: v for k, v in before.items() if k != "metrics.json"}

    proc = wsis("run", "--stage", "eval_cam", *tiny_args(tiny_data, work, "--set", "eval_cam.bg_threshold=0.3"))
    assert stage_lines(proc.stderr) == {"train_cam": "up to date", "make_cam": "up to date", "eval_cam": "ran"}

    status = wsis("status", *tiny_args(tiny_data, work, "--set", "make_cam.scales=[1.0]")).stdout
    assert "train_cam    done" in status
    assert "make_cam     stale (config [make_cam] changed)" in status
    assert "eval_cam     stale (config [eval_cam] changed, upstream make_cam changed)" in status
    proc = wsis("run", "--stage", "make_cam", *tiny_args(tiny_data, work, "--set", "make_cam.scales=[1.0]"))
    assert stage_lines(proc.stderr) == {"train_cam": "up to date", "make_cam": "ran"}
    assert "computing 24 of 24 images" in proc.stderr


def test_status_reports_missing(tiny_data, tmp_path):
    out = wsis("status", *tiny_args(tiny_data, tmp_path / "w")).stdout.split("\n")
    assert out[:3] == ["train_cam    missing", "make_cam     missing", "eval_cam     missing"]


def one_line_error(proc, *fragments):
    """Non-zero exit, no traceback, and exactly one error line naming the problem."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wsis: error: ")]
    assert len(errors) == 1, proc.stderr
    err = errors[0]
    for f in fragments:
        assert f in err, err


def test_bad_input_gives_one_line_errors_and_leaves_the_cache(tiny_data, tiny_run, data_copy, tmp_path):
    work = tmp_path / "w"
    # a work dir built on the copy of the data, so the copy can be broken
    shutil.copytree(tiny_run, work)
    (work / "run.json").write_text(json.dumps({"dataset": "synthetic", "data_root": str(data_copy.resolve())}))
    (work / ".checked_images.json").unlink()
    wsis("run", "--stage", "eval_cam", *tiny_args(data_copy, work))
    before = snapshot(work)
    rerun = ("--set", "make_cam.scales=[1.0]")   # forces make_cam to recompute

    one_line_error(wsis("run", *tiny_args(tmp_path / "nowhere", work), "--dataset", "voc2012", check=False),
                   "nowhere: not a VOC devkit root")
    one_line_error(wsis("run", *tiny_args(data_copy, work, "--set", "train_cam.epoch=2"), check=False),
                   "unknown config key 'train_cam.epoch'")

    img = data_copy / "JPEGImages" / "val_00001.jpg"
    good = img.read_bytes()
    img.write_bytes(good[: len(good) // 3])
    one_line_error(wsis("run", *tiny_args(data_copy, work, *rerun), check=False), "val_00001.jpg: corrupt image")
    img.write_bytes(b"garbage")
    one_line_error(wsis("run", *tiny_args(data_copy, work, *rerun), check=False),
                   "val_00001.jpg: not a readable image")
    img.unlink()
    one_line_error(wsis("run", *tiny_args(data_copy, work), check=False), "val_00001.jpg: image is listed but missing")
    img.write_bytes(good)

    xml = data_copy / "Annotations" / "train_00002.xml"
    text = xml.read_text()
    xml.write_text(text.replace("<name>", "<name>unicorn", 1))
    one_line_error(wsis("run", *tiny_args(data_copy, work), check=False), "train_00002.xml: unknown class 'unicorn")
    xml.write_text(text)

    lst = data_copy / "ImageSets" / "Segmentation" / "val.txt"
    ids = lst.read_text()
    lst.write_text("")
    one_line_error(wsis("run", *tiny_args(data_copy, work), check=False), "val.txt: split 'val' is empty")
    lst.write_text(ids)

    csv = tmp_path / "labels.csv"
    csv.write_text("train_00000.jpg\n")
    one_line_error(wsis("run", "--dataset", "folder", "--data-root", data_copy / "JPEGImages", "--labels", csv,
                        "--work-dir", work, check=False),
                   "labels.csv line 1: no class names")

    one_line_error(wsis("run", *tiny_args(data_copy, work, "--set", "synthetic.seed=5"), check=False),
                   "synthetic.json: dataset was generated with different settings")
    assert snapshot(work) == before
    # and the intact data still reuses the whole cache
    proc = wsis("run", "--stage", "eval_cam", *tiny_args(data_copy, work))
    assert stage_lines(proc.stderr) == dict.fromkeys(["train_cam", "make_cam", "eval_cam"], "up to date")


def test_work_dir_of_another_dataset_is_refused(tiny_data, tiny_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    one_line_error(wsis("status", *tiny_args(other, tiny_run), check=False),
                   "run.json: this work dir caches data_root")


def test_offline_imagenet_weights_error_says_how_to_pass_a_file(tiny_data, tmp_path):
    proc = wsis("run", "--stage", "train_cam", *tiny_args(tiny_data, tmp_path / "w", "--set", "backbone.weights=imagenet"),
                check=False, env={"TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": "http://127.0.0.1:9",
                                  "https_proxy": "http://127.0.0.1:9"})
    one_line_error(proc, "could not download ImageNet weights for resnet18", "backbone.weights=/path/to/file.pth")
    assert not (tmp_path / "w" / "train_cam" / "model.pt").exists()


# ------------------------------------------------------- a read-only work dir (issue 29.3)
MOUNT_READ_ONLY = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'


def read_only_mounts(tmp_path) -> str | None:
    """Why this machine cannot show a process a read-only bind mount, or None: the test runs
    each command in a mount namespace of its own where the work dir is mounted read-only."""
    import subprocess
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        proc = subprocess.run(["unshare", "-m", "sh", "-c", MOUNT_READ_ONLY, probe, "sh", "-c", "! touch \"$0\"/x",
                               probe], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare: {e}"
    return None if proc.returncode == 0 else f"no read-only bind mounts here: {proc.stderr.strip()[:200]}"


def wsis_read_only(work, *args):
    """``wsis ARGS`` as a process that sees ``work`` read-only, as on a read-only mount."""
    import os
    import subprocess
    import sys
    return subprocess.run(["unshare", "-m", "sh", "-c", MOUNT_READ_ONLY, str(work), sys.executable, "-m", "wsis.cli",
                           *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_a_read_only_work_dir_is_read_and_named(tiny_data, tiny_run, tmp_path):
    """status and a run with nothing to do work on a finished read-only work dir and write
    nothing (a no-op run wrote metrics.json); work that is due, or a review import, is one line
    naming the work dir (it was a traceback, OSError: Read-only file system)."""
    import pytest
    from test_faults import one_line_error
    why = read_only_mounts(tmp_path)
    if why:
        pytest.skip(why)
    work = tmp_path / "work"
    shutil.copytree(tiny_run, work)
    before = snapshot(work)
    proc = wsis_read_only(work, "run", *tiny_args(tiny_data, work))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert set(stage_lines(proc.stderr).values()) == {"up to date"}
    proc = wsis_read_only(work, "status", *tiny_args(tiny_data, work))
    assert proc.returncode == 0 and all(line.split()[1] == "done" for line in proc.stdout.splitlines()), proc.stdout
    one_line_error(wsis_read_only(work, "run", *tiny_args(tiny_data, work), "--set", "seg.epochs=2"),
                   f"{work}: the work dir is read-only, and train_seg, ", "are due")
    one_line_error(wsis_read_only(work, "review", "import", tmp_path / "reviewed.json", *tiny_args(tiny_data, work)),
                   f"{work}: cannot write to the work dir (Read-only file system)")
    assert snapshot(work) == before
    assert "train_seg    stale" in wsis("status", *tiny_args(tiny_data, work), "--set", "seg.epochs=2").stdout
