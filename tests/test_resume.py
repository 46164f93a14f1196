"""A run killed with SIGKILL resumes with only the missing work and ends with the same outputs."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import torch

from conftest import WSIS, tiny_args, wsis
from wsis.io import read_npz

SLOW_CAMS = ("--set", "make_cam.scales=[1.0, 2.0, 3.0]", "--set", "run.chunk_size=1")


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


def test_make_cam_resumes_after_sigkill(tiny_data, tiny_run, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    for d in (full, killed):
        shutil.copytree(tiny_run, d)
        shutil.rmtree(d / "make_cam")
    wsis("run", "--stage", "make_cam", *tiny_args(tiny_data, full, *SLOW_CAMS))

    out = killed / "make_cam"
    proc = start("run", "--stage", "make_cam", *tiny_args(tiny_data, killed, *SLOW_CAMS))
    kill_when(proc, lambda: out.is_dir() and len(list(out.glob("*.npz"))) >= 4)
    done_before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npz")}
    assert 4 <= len(done_before) < 24

    status = wsis("status", *tiny_args(tiny_data, killed, *SLOW_CAMS)).stdout
    assert f"make_cam     partial ({len(done_before)} of 24 images)" in status

    rerun = wsis("run", "--stage", "make_cam", *tiny_args(tiny_data, killed, *SLOW_CAMS))
    assert f"computing {24 - len(done_before)} of 24 images ({len(done_before)} already done)" in rerun.stderr
    assert "train_cam: up to date" in rerun.stderr
    for name, mtime in done_before.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was recomputed"
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    names = sorted(p.name for p in (full / "make_cam").glob("*.npz"))
    assert names == sorted(p.name for p in out.glob("*.npz")) and len(names) == 24
    for name in names:
        a, b = read_npz(full / "make_cam" / name), read_npz(out / name)
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
