"""A run killed with SIGKILL resumes with only the missing work and ends with the same outputs."""

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from conftest import WSIS, tiny_args, wsis
from wsis.io import read_label_png, read_npz



def start(*args):
    return subprocess.Popen(WSIS + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def kill_when(proc, condition, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"finished before it could be killed:\n{proc.communicate()[1]}"
        assert time.monotonic() < deadline, "timed out waiting for the kill point"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# Each per-image stage, with settings that make it slow enough to be killed midway.
PER_IMAGE = [
    ("make_cam", ("--set", "make_cam.scales=[1.0, 2.0, 3.0]"), 24, ".npz"),
    ("ir_label", ("--set", "ir_label.iterations=300"), 16, ".png"),
    ("sem_seg", ("--set", "random_walk.exp_times=14", "--set", "random_walk.tolerance=0"), 16, ".png"),
    ("ins_seg", ("--set", "random_walk.exp_times=14", "--set", "random_walk.tolerance=0"), 16, ".npz"),
]


def read_output(path):
    return read_npz(path) if path.suffix == ".npz" else {"label": read_label_png(path)}


@pytest.mark.parametrize("stage, slow, total, ext", PER_IMAGE, ids=[p[0] for p in PER_IMAGE])
def test_per_image_stage_resumes_after_sigkill(tiny_data, tiny_run, tmp_path, stage, slow, total, ext):
    slow = slow + ("--set", "run.chunk_size=1")
    full, killed = tmp_path / "full", tmp_path / "killed"
    for d in (full, killed):
        shutil.copytree(tiny_run, d)
        shutil.rmtree(d / stage)
    wsis("run", "--stage", stage, *tiny_args(tiny_data, full, *slow))

    out = killed / stage
    proc = start("run", "--stage", stage, *tiny_args(tiny_data, killed, *slow))
    kill_when(proc, lambda: out.is_dir() and len(list(out.glob("*" + ext))) >= 3)
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*" + ext)}
    assert 3 <= len(done_before) < total

    status = wsis("status", *tiny_args(tiny_data, killed, *slow)).stdout
    assert f"{stage:<12} partial ({len(done_before)} of {total} images)" in status

    rerun = wsis("run", "--stage", stage, *tiny_args(tiny_data, killed, *slow))
    left = total - len(done_before)
    assert f"{stage}: computing {left} of {total} images ({len(done_before)} already done)" in rerun.stderr
    assert "train_cam: up to date" in rerun.stderr
    for name, mtime in done_before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    names = sorted(p.name for p in (full / stage).glob("*" + ext))
    assert names == sorted(p.name for p in out.glob("*" + ext)) and len(names) == total
    for name in names:
        a, b = read_output(full / stage / name), read_output(out / name)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_train_cam_resumes_from_its_last_epoch(tiny_data, tmp_path):
    slow = ("--set", "train_cam.epochs=4", "--set", "train_cam.crop_size=128",
            "--set", "train_cam.resize_long=[112, 128]")
    full, killed = tmp_path / "full", tmp_path / "killed"
    wsis("run", "--stage", "train_cam", *tiny_args(tiny_data, full, *slow))

    progress = killed / "train_cam" / "progress.json"
    proc = start("run", "--stage", "train_cam", *tiny_args(tiny_data, killed, *slow))
    kill_when(proc, lambda: progress.is_file())
    status = wsis("status", *tiny_args(tiny_data, killed, *slow)).stdout
    assert "train_cam    partial (" in status and " of 4 epochs)" in status

    rerun = wsis("run", "--stage", "train_cam", *tiny_args(tiny_data, killed, *slow))
    assert "train_cam: resuming after epoch" in rerun.stdout + rerun.stderr
    a = torch.load(full / "train_cam" / "model.pt", weights_only=False)["state_dict"]
    b = torch.load(killed / "train_cam" / "model.pt", weights_only=False)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert not (killed / "train_cam" / "checkpoint.pt").exists()
