"""Faults and a damaged or stale cache (issue 9, items 1-9 and 16): the run recovers or stops
with one line naming the culprit, and leaves the rest of the cache as it was, byte for byte."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import WSIS, tiny_args, wsis
from wsis.io import read_label_png, read_npz


# ---------------------------------------------------------------- helpers

def link_copy(src: Path, dst: Path) -> Path:
    """A copy of a work dir whose files are hard links: fast, and safe because the engine only
    replaces files (temp + rename). Tests that damage a file in place use ``rewrite``."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def rewrite(path: Path, data: bytes) -> None:
    """Replace a (possibly hard-linked) file's content without touching the other links."""
    path.unlink()
    path.write_bytes(data)


def digests(directory: Path, skip=()) -> dict:
    """sha256 of every file under ``directory``: equal digests = byte-for-byte the same."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name not in (".lock", "metrics.json") and not str(p.relative_to(directory)).startswith(skip)}


def one_line_error(proc, *fragments):
    """Exit status 2, no traceback, exactly one error line naming the problem."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("wsis: error: ")]
    assert len(errors) == 1, proc.stderr
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


def status_of(data, work, *extra) -> dict:
    out = wsis("status", *tiny_args(data, work, *extra)).stdout
    return {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines() if line.strip()}


def same_arrays(a: Path, b: Path):
    za = read_npz(a) if a.suffix == ".npz" else {"label": read_label_png(a)}
    zb = read_npz(b) if b.suffix == ".npz" else {"label": read_label_png(b)}
    assert za.keys() == zb.keys()
    for k in za:
        np.testing.assert_array_equal(za[k], zb[k])


def start(*args):
    return subprocess.Popen(WSIS + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ 9.1

def worker_pids(pid: int) -> list[int]:
    import psutil
    return [c.pid for c in psutil.Process(pid).children(recursive=True)
            if any("spawn_main" in part for part in c.cmdline())]


def test_1_a_killed_dask_worker_does_not_stop_the_run(tiny_data, tiny_run, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    shutil.rmtree(work / "make_cam")
    before = digests(work, skip=("make_cam", "config.toml"))   # config.toml records this run's chunk_size
    proc = start("run", "--stage", "make_cam", *tiny_args(tiny_data, work, "--set", "run.chunk_size=1"))
    out = work / "make_cam"
    deadline = time.monotonic() + 300
    while not (out.is_dir() and len(list(out.glob("*.npz"))) >= 2):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    victims = worker_pids(proc.pid)
    assert len(victims) == 2, victims
    os.kill(victims[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    deaths = [line for line in stderr.splitlines() if line.startswith("dask: ")]
    assert deaths == [f"dask: Worker process {victims[0]} was killed by signal 9"], stderr
    names = sorted(p.name for p in (tiny_run / "make_cam").glob("*.npz"))
    assert names == sorted(p.name for p in out.glob("*.npz")) and len(names) == 24
    for name in names:
        same_arrays(tiny_run / "make_cam" / name, out / name)
    assert digests(work, skip=("make_cam", "config.toml")) == before
    assert status_of(tiny_data, work)["make_cam"] == "done"


# ------------------------------------------------------------------ 9.2

def test_2_scheduler_problems_are_one_line_before_anything_is_touched(tiny_data, tiny_run, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    shutil.rmtree(work / "make_cam")
    before = digests(work)
    stale = ("--set", "train_cam.epochs=2")    # train_cam would retrain before make_cam needs Dask
    for bad in ("notaurl", "tcp://host", "http://127.0.0.1:80", "tcp://127.0.0.1:99999"):
        one_line_error(wsis("run", "--stage", "make_cam", "--scheduler", bad, *tiny_args(tiny_data, work, *stale),
                            check=False), f"--scheduler {bad}: expected a dask scheduler address like tcp://HOST:PORT")
    port = free_port()
    one_line_error(wsis("run", "--stage", "make_cam", "--scheduler", f"127.0.0.1:{port}",
                        *tiny_args(tiny_data, work, *stale), check=False),
                   f"--scheduler 127.0.0.1:{port}: cannot connect")

    # a server that is not Dask: it answers with a huge frame length, then garbage
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"\xff" * 64 + b"HTTP/1.0 400 Bad Request\r\n\r\n")
    threading.Thread(target=serve, daemon=True).start()
    t0 = time.monotonic()
    proc = wsis("run", "--stage", "make_cam", "--scheduler", f"tcp://127.0.0.1:{port}",
                *tiny_args(tiny_data, work, *stale), check=False)
    server.close()
    one_line_error(proc, f"--scheduler tcp://127.0.0.1:{port}: cannot connect")
    assert "MemoryError" not in proc.stderr and time.monotonic() - t0 < 60
    assert "train_cam: train" not in proc.stderr
    assert digests(work) == before


# ------------------------------------------------------------------ 9.3

@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()

    def make(size_kb):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)],
                           capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root); "
                        "tests/test_engine.py simulates a full disk instead")
        return mount
    yield make
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_3_disk_full_is_one_line_naming_the_work_dir_and_resumes(tiny_data, tiny_run, tmp_path, small_tmpfs):
    keep = ("train_cam", "run.json", "config.toml", ".checked_images.json", ".file_hashes.json")
    used_kb = sum(p.stat().st_size for k in keep for p in ([tiny_run / k] if (tiny_run / k).is_file()
                                                             else (tiny_run / k).rglob("*")) if p.is_file()) // 1024
    mount = small_tmpfs(used_kb + 120)     # room for a few CAMs of 24
    work = mount / "w"
    work.mkdir()
    for k in keep:
        src = tiny_run / k
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, work / k)
    before = digests(work)
    proc = wsis("run", "--stage", "make_cam", *tiny_args(tiny_data, work), check=False)
    err = one_line_error(proc, f"{work}: no space left on device", "make_cam needs about", "MiB more")
    assert not [p for p in work.rglob("*") if ".tmp-" in p.name], err
    assert digests(work, skip=("make_cam",)) == before
    done = len(list((work / "make_cam").glob("*.npz")))
    assert 0 < done < 24
    # once there is space again, the run resumes with the missing images only
    resumed = tmp_path / "resumed"
    shutil.copytree(work, resumed)
    proc = wsis("run", "--stage", "make_cam", *tiny_args(tiny_data, resumed))
    assert f"computing {24 - done} of 24 images ({done} already done)" in proc.stderr
    for p in (tiny_run / "make_cam").glob("*.npz"):
        same_arrays(p, resumed / "make_cam" / p.name)


# ------------------------------------------------------------------ 9.4

def test_4_no_temporary_files_are_left_behind(tiny_data, tiny_run, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    # what a writer killed by SIGKILL leaves: removed by the next run, even an up-to-date one
    for name in ("config.toml.tmp-abc123", ".checked_images.json.tmp-x1", "run.json.tmp-9"):
        (work / name).write_text("partial")
    before = digests(work)
    proc = wsis("run", "--stage", "eval_cam", *tiny_args(tiny_data, work))
    assert "make_cam: up to date" in proc.stderr
    assert not [p for p in work.iterdir() if ".tmp-" in p.name]
    assert {k: v for k, v in digests(work).items()} == {k: v for k, v in before.items() if ".tmp-" not in k}

    # SIGTERM during the image check and the config write: the run unwinds and cleans up
    shutil.rmtree(work / "make_cam")
    (work / ".checked_images.json").unlink()
    proc = start("run", "--stage", "make_cam", *tiny_args(tiny_data, work, "--set", "run.chunk_size=1"))
    deadline = time.monotonic() + 120
    while not (work / "make_cam" / "manifest.json").is_file():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert "wsis: interrupted" in stderr
    assert not [p for p in work.rglob("*") if ".tmp-" in p.name]


# ------------------------------------------------------------------ 9.5

def test_5_damaged_per_image_outputs_are_recomputed_alone(tiny_data, tiny_run, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    cams, labels = work / "make_cam", work / "ir_label"
    truncated, zeroed, deleted = cams / "train_00001.npz", cams / "train_00002.npz", cams / "val_00003.npz"
    rewrite(truncated, truncated.read_bytes()[:500])
    rewrite(zeroed, bytes(zeroed.stat().st_size))
    deleted.unlink()
    png = labels / "train_00004.png"
    rewrite(png, png.read_bytes()[:-30])
    damaged = {truncated, zeroed, deleted, png}
    before = {k: v for k, v in digests(work).items() if work / k not in damaged}

    st = status_of(tiny_data, work)
    assert st["make_cam"].startswith("damaged (") and "and 2 more" in st["make_cam"], st
    assert st["ir_label"].startswith("damaged (train_00004.png: ") and "recorded" in st["ir_label"]
    assert st["eval_cam"] == "done" and st["train_irn"] == "done"

    proc = wsis("run", "--stage", "train_irn", *tiny_args(tiny_data, work))
    assert "Traceback" not in proc.stderr
    assert "make_cam: 3 damaged output(s) (" in proc.stderr and "; recomputing those images" in proc.stderr
    assert "make_cam: computing 3 of 24 images (21 already done)" in proc.stderr
    assert "ir_label: computing 1 of 16 images (15 already done)" in proc.stderr
    assert "train_irn: up to date" in proc.stderr
    for p in damaged:
        same_arrays(tiny_run / p.parent.name / p.name, p)
    after = digests(work)
    assert {k: v for k, v in after.items() if k in before and not k.endswith("manifest.json")} == \
        {k: v for k, v in before.items() if not k.endswith("manifest.json")}
    assert set(status_of(tiny_data, work).values()) == {"done"}


def test_5_damaged_model_or_json_recomputes_its_stage(tiny_data, tiny_run, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    model, coco = work / "train_cam" / "model.pt", work / "export" / "pseudo_labels.json"
    rewrite(model, model.read_bytes()[: model.stat().st_size // 2])
    rewrite(coco, coco.read_bytes()[:-10])
    before = digests(work, skip=("train_cam", "export"))
    st = status_of(tiny_data, work)
    assert st["train_cam"].startswith("damaged (model.pt: ") and st["export"].startswith("damaged (pseudo_labels.json")
    proc = wsis("run", "--stage", "export", *tiny_args(tiny_data, work))
    assert "Traceback" not in proc.stderr
    assert "train_cam: model.pt: " in proc.stderr and "; recomputing the stage" in proc.stderr
    assert "export: pseudo_labels.json: " in proc.stderr
    assert "make_cam: up to date" in proc.stderr and "ins_seg: up to date" in proc.stderr
    assert coco.read_bytes() == (tiny_run / "export" / "pseudo_labels.json").read_bytes()
    assert model.stat().st_size > 0 and status_of(tiny_data, work)["train_cam"] == "done"
    assert digests(work, skip=("train_cam", "export")) == before


# ------------------------------------------------------------------ 9.6

def test_6_unreadable_manifest_or_image_cache_counts_as_missing(tiny_data, tiny_run, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    man = work / "eval_cam" / "manifest.json"
    rewrite(man, man.read_bytes()[:40])
    rewrite(work / ".checked_images.json", b'{"/x": "1:')
    before = digests(work, skip=("eval_cam", ".checked_images.json"))
    st = status_of(tiny_data, work)
    assert st["eval_cam"] == "missing" and st["make_cam"] == "done"
    proc = wsis("run", "--stage", "eval_cam", *tiny_args(tiny_data, work))
    assert "Traceback" not in proc.stderr and "eval_cam: done in" in proc.stderr
    assert (work / "eval_cam" / "metrics.json").read_bytes() == (tiny_run / "eval_cam" / "metrics.json").read_bytes()
    assert digests(work, skip=("eval_cam", ".checked_images.json")) == before


# ------------------------------------------------------------------ 9.7

def test_7_a_replaced_image_file_makes_its_stages_stale(tiny_data, tiny_run, data_copy, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    (work / "run.json").unlink()
    (work / "run.json").write_text(f'{{"dataset": "synthetic", "data_root": "{data_copy.resolve()}"}}')
    images = data_copy / "JPEGImages"
    os.utime(images / "val_00002.jpg")       # touched, same bytes: nothing is stale
    st = status_of(data_copy, work)
    assert st["make_cam"] == "done" and st["train_cam"] == "done"
    shutil.copy(images / "val_00003.jpg", images / "val_00002.jpg")   # another picture
    st = status_of(data_copy, work)
    assert st["make_cam"] == "stale (image list, labels or files changed)"
    assert st["eval_cam"] == "stale (upstream make_cam changed)"
    assert st["train_cam"] == "done"          # the val image is not a training image


# ------------------------------------------------------------------ 9.8

def test_8_a_key_marks_stale_only_the_stages_that_read_it(tiny_data, tiny_run):
    st = status_of(tiny_data, tiny_run, "--set", "seg.score_threshold=0.1")
    assert st["train_seg"] == "done" and st["eval_seg"] == "stale (config [seg] changed)"
    st = status_of(tiny_data, tiny_run, "--set", "yolact.lr=0.5", "--set", "centermask.head_channels=8")
    assert st["train_seg"] == "done"          # seg.model is solov2: only [solo] is read
    st = status_of(tiny_data, tiny_run, "--set", "solo.sigma=0.3")
    assert st["train_seg"] == "stale (config [solo] changed)"
    st = status_of(tiny_data, tiny_run, "--set", "seg.model=yolact")
    assert st["train_seg"] == "stale (config [seg] changed, config [yolact] changed)"


# ------------------------------------------------------------------ 9.9

def test_9_seg_train_json_is_hashed_by_content(tiny_data, tiny_run, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    coco = tmp_path / "train.json"
    shutil.copy(tiny_run / "export" / "pseudo_labels.json", coco)
    images = tiny_data / "JPEGImages"
    extra = ("--set", f'seg.train_json="{coco}"', "--set", f'seg.train_images="{images}"',
             "--set", "seg.epochs=1")
    wsis("run", "--stage", "train_seg", *tiny_args(tiny_data, work, *extra))
    before = digests(work)
    assert status_of(tiny_data, work, *extra)["train_seg"] == "done"
    os.utime(coco)
    assert status_of(tiny_data, work, *extra)["train_seg"] == "done"
    edited = json.loads(coco.read_text())
    edited["info"] = {"description": "edited by a reviewer"}
    coco.write_text(json.dumps(edited))
    assert status_of(tiny_data, work, *extra)["train_seg"] == "stale (file seg.train_json changed)"
    assert digests(work) == before


# ------------------------------------------------------------------ 9.16

def test_16_no_dashboard_port_warning_when_8787_is_taken(tiny_data, tiny_run, tmp_path):
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 8787))
        blocker.listen()
    except OSError:
        pass   # already taken by another cluster: the case at hand
    try:
        work = link_copy(tiny_run, tmp_path / "w")
        shutil.rmtree(work / "ir_label")
        proc = wsis("run", "--stage", "ir_label", *tiny_args(tiny_data, work))
    finally:
        blocker.close()
    assert "already in use" not in proc.stderr and "UserWarning" not in proc.stderr, proc.stderr
    assert "ir_label: done in" in proc.stderr


# ------------------------------------------------------------------ issue 21, point 7

def test_21_7_edited_ground_truth_makes_the_evaluations_stale(tiny_data, tiny_run, data_copy, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    run_json = json.loads((work / "run.json").read_text())
    rewrite(work / "run.json", json.dumps(dict(run_json, data_root=str(data_copy.resolve()))).encode())
    assert set(status_of(data_copy, work).values()) == {"done"}
    # the same labels, one instance's mask cut in half: only the masks changed
    obj = data_copy / "SegmentationObject" / "train_00001.png"
    masks = read_label_png(obj)
    label = int(masks[(masks > 0) & (masks < 255)][0])
    rows = np.nonzero((masks == label).any(1))[0]
    masks[rows[len(rows) // 2]:][masks[rows[len(rows) // 2]:] == label] = 0
    from wsis.io import write_label_png
    obj.unlink()
    write_label_png(obj, masks)
    st = status_of(data_copy, work)
    for stage in ("eval_cam", "eval_sem_seg", "eval_ins_seg"):
        assert st[stage] == "stale (ground truth changed)", st
    assert st["train_cam"] == st["ins_seg"] == st["export"] == "done"
    gt_before = (work / "eval_ins_seg" / "ground_truth_coco.json").read_bytes()
    wsis("run", "--stage", "eval_ins_seg", *tiny_args(data_copy, work))
    assert (work / "eval_ins_seg" / "ground_truth_coco.json").read_bytes() != gt_before


# ------------------------------------------------------------------ issue 21, point 1

def flip_in_the_middle(path: Path, n_bytes: int) -> None:
    """``n_bytes`` in the middle of a (hard-linked) output inverted, at the same size and mtime."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n_bytes] = bytes(b ^ 0xFF for b in data[mid:mid + n_bytes])
    rewrite(path, bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_21_1_damage_in_the_middle_that_keeps_size_and_mtime(tiny_data, tiny_run, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    cam, label, model = work / "make_cam" / "train_00001.npz", work / "ir_label" / "train_00002.png", \
        work / "train_cam" / "model.pt"
    flip_in_the_middle(cam, 16)
    flip_in_the_middle(label, 256)
    flip_in_the_middle(model, 64)
    assert set(status_of(tiny_data, work).values()) == {"done"}          # plain status: size and mtime only
    st = status_of(tiny_data, work, "--verify")
    assert st["make_cam"] == "damaged (train_00001.npz: content changed (full-content hash))", st
    assert st["ir_label"] == "damaged (train_00002.png: content changed (full-content hash))", st
    assert st["train_cam"] == "damaged (model.pt: content changed (full-content hash))", st
    # a run hashes what a stage is about to read: eval_cam reads make_cam, which reads train_cam
    proc = wsis("run", "--stage", "eval_cam", "--force", *tiny_args(tiny_data, work))
    assert "train_cam: model.pt: content changed (full-content hash); recomputing the stage" in proc.stderr
    assert "ir_label" not in proc.stderr                                   # not read by this run: not hashed
    assert set(status_of(tiny_data, work, "--verify").values()) - {"done"} == {"damaged (train_00002.png: "
                                                                               "content changed (full-content hash))"}
    proc = wsis("run", "--stage", "train_irn", "--force", *tiny_args(tiny_data, work))
    assert "ir_label: 1 damaged output(s) (train_00002.png: content changed (full-content hash)); recomputing " \
           "those images" in proc.stderr
    same_arrays(tiny_run / "ir_label" / label.name, label)


def test_21_1_manifests_of_an_older_wsis_get_a_line_and_full_hashes(tiny_data, tiny_run, tmp_path):
    from wsis.io import quick_hash
    work = link_copy(tiny_run, tmp_path / "w")
    for man_path in work.glob("*/manifest.json"):          # as the wsis before full-content hashes wrote them
        man = json.loads(man_path.read_text())
        per_image = {n for n in man.get("outputs", {}) if n.endswith((".npz", ".png")) and "/" not in n}
        man["outputs"] = {n: r[0] if n in per_image else [r[0], quick_hash(man_path.parent / n)]
                          for n, r in man.get("outputs", {}).items()}
        rewrite(man_path, json.dumps(man).encode())
    assert set(status_of(tiny_data, work).values()) == {"done"}
    proc = wsis("run", "--stage", "eval_cam", *tiny_args(tiny_data, work))
    notes = [line for line in proc.stderr.splitlines() if "manifests of an older wsis" in line]
    assert len(notes) == 1 and "Traceback" not in proc.stderr, proc.stderr
    man = json.loads((work / "make_cam" / "manifest.json").read_text())
    assert all(len(r) == 3 for r in man["outputs"].values())
    assert set(status_of(tiny_data, work, "--verify").values()) == {"done"}


def test_21_7_status_verify_rehashes_an_image_replaced_under_the_same_size_and_mtime(tiny_data, tiny_run,
                                                                                    data_copy, tmp_path):
    work = link_copy(tiny_run, tmp_path / "w")
    rewrite(work / "run.json", json.dumps({"dataset": "synthetic", "data_root": str(data_copy.resolve())}).encode())
    wsis("run", "--stage", "make_cam", *tiny_args(data_copy, work))   # up to date; caches this copy's hashes
    image = data_copy / "JPEGImages" / "val_00002.jpg"
    st = image.stat()
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF                                 # another picture, same size
    image.write_bytes(bytes(data))
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))         # and the same mtime
    assert status_of(data_copy, work)["make_cam"] == "done"     # the hash cache trusts size and mtime (README)
    assert status_of(data_copy, work, "--verify")["make_cam"] == "stale (image list, labels or files changed)"
