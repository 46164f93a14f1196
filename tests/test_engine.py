"""The engine's caching logic on toy stages (no models; Dask only where a test says so)."""

import dataclasses
import errno
import os
from pathlib import Path

import pytest

from pipelines.cache import damaged_outputs, record_outputs, stale_reason
from pipelines.engine import Pipeline, Stage
from pipelines.job import Job
from pipelines.runner import task_job
from wsis.data import Dataset
from wsis.errors import WsisError
from wsis.io import write_bytes, write_json

CALLS: list[str] = []


def make_stage(name, upstream=(), fail=False):
    def run(job):
        CALLS.append(name)
        if fail:
            raise WsisError("boom")
        for u, d in job.inputs.items():
            assert (d / "out.txt").is_file(), f"{name} ran before {u}"
        (job.out_dir / "out.txt").write_text(repr(job.cfg[name]))
    return Stage(name, name, upstream, sections=(name,), version=1,
                 image_splits=lambda cfg: ["all"], run=run, reads_images=False)


def toy(tmp_path: Path, cfg=None, stages=None) -> Pipeline:
    ds = Dataset("toy", tmp_path, ("a", "b"), {"all": ("x", "y")}, {"x": (0,), "y": (1,)})
    stages = stages or [make_stage("a"), make_stage("b", ("a",)), make_stage("c", ("b",)),
                        make_stage("d", ("a",))]
    cfg = cfg or {s.name: {"v": 1} for s in stages}
    cfg["run"] = {"chunk_size": 1}
    return Pipeline({s.name: s for s in stages}, cfg, ds, tmp_path / "work")


def states(p):
    return {s.name: p.state(s).status for s in p.stages.values()}


def test_runs_dependencies_first_then_skips(tmp_path):
    CALLS.clear()
    p = toy(tmp_path)
    assert states(p) == dict.fromkeys("abcd", "missing")
    assert p.run("c") == ["a", "b", "c"]
    assert states(p) == {"a": "done", "b": "done", "c": "done", "d": "missing"}
    assert toy(tmp_path).run("c") == []
    assert toy(tmp_path).run("all") == ["d"]
    assert CALLS == ["a", "b", "c", "d"]


def test_changing_one_section_reruns_that_stage_and_downstream_only(tmp_path):
    toy(tmp_path).run("all")
    cfg = {n: {"v": 1} for n in "abcd"}
    cfg["b"] = {"v": 2}
    p = toy(tmp_path, cfg)
    st = {s.name: p.state(s) for s in p.stages.values()}
    assert st["b"].status == "stale" and st["b"].detail == "config [b] changed"
    assert st["c"].status == "stale" and st["c"].detail == "upstream b changed"
    assert st["a"].status == st["d"].status == "done"
    assert p.run("all") == ["b", "c"]
    assert (tmp_path / "work/b/out.txt").read_text() == "{'v': 2}"


def test_consistent_on_disk_means_computed_from_the_upstream_outputs_there_now(tmp_path):
    """a -> b -> c. A change to a's config makes b and c stale, but until a is recomputed b's
    outputs are still the ones computed from a's outputs on disk, and c's from b's: all three
    are consistent except a itself. Once a is recomputed, b is not; a change to c's own config
    makes c inconsistent; damage makes a done stage inconsistent."""
    toy(tmp_path).run("all")
    cfg = {n: {"v": 1} for n in "abcd"}
    cfg["a"] = {"v": 2}
    p = toy(tmp_path, cfg)
    assert states(p) == dict.fromkeys("abcd", "stale")
    assert {n: p.consistent_on_disk(p.stages[n]) for n in "abcd"} == {"a": False, "b": True, "c": True, "d": True}
    own = dict(cfg, c={"v": 3})
    p = toy(tmp_path, own)
    assert {n: p.consistent_on_disk(p.stages[n]) for n in "bc"} == {"b": True, "c": False}
    p = toy(tmp_path, cfg)
    p.run("a")
    p = toy(tmp_path, cfg)
    assert {n: p.consistent_on_disk(p.stages[n]) for n in "abcd"} == {"a": True, "b": False, "c": True, "d": False}
    (tmp_path / "work" / "a" / "out.txt").write_text("damaged")
    assert not toy(tmp_path, cfg).consistent_on_disk(p.stages["a"])


def test_image_list_and_code_version_are_part_of_the_fingerprint(tmp_path):
    toy(tmp_path).run("a")
    p = toy(tmp_path)
    p.dataset.labels["y"] = (0, 1)
    assert p.state(p.stages["a"]).detail == "image list, labels or files changed"
    bumped = Stage("a", "a", (), ("a",), 2, lambda cfg: ["all"], run=make_stage("a").run,
                   reads_images=False)
    p = toy(tmp_path, stages=[bumped])
    assert p.state(bumped).detail == "code version 1 -> 2"


def test_force_recomputes_the_target(tmp_path):
    CALLS.clear()
    toy(tmp_path).run("b")
    toy(tmp_path).run("b", force=True)
    assert CALLS == ["a", "b", "b"]


def test_a_failed_stage_is_not_marked_done(tmp_path):
    stages = [make_stage("a"), make_stage("b", ("a",), fail=True)]
    with pytest.raises(WsisError, match="boom"):
        toy(tmp_path, stages=stages).run("b")
    p = toy(tmp_path, stages=stages)
    assert states(p) == {"a": "done", "b": "partial"}


def test_partial_training_status_comes_from_progress_file(tmp_path):
    p = toy(tmp_path)
    p.run("a")
    out = tmp_path / "work/b"
    out.mkdir()
    fp, comps = p.fingerprint(p.stages["b"])
    write_json(out / "manifest.json", {"fingerprint": fp, "components": comps, "status": "running"})
    write_json(out / "progress.json", {"done": 2, "total": 5, "unit": "epochs"})
    st = p.state(p.stages["b"])
    assert (st.status, st.detail) == ("partial", "2 of 5 epochs")


def test_unknown_stage(tmp_path):
    with pytest.raises(WsisError, match="unknown stage 'zz'"):
        toy(tmp_path).run("zz")


# ------------------------------------------------------------ faults (issue 9) and Dask

def test_a_stage_fingerprint_covers_only_the_keys_it_reads(tmp_path):
    def head(cfg):
        return cfg["m"]["model"]
    stage = Stage("t", "t", (), sections=("m", head, "x.k"), version=1, image_splits=lambda cfg: ["all"],
                  run=make_stage("t").run, reads_images=False, ignores=("m.threshold",))
    cfg = {"m": {"model": "p", "threshold": 0.1, "lr": 1}, "p": {"a": 1}, "q": {"a": 1},
           "x": {"k": 1, "other": 2}, "run": {}}

    def fp(**changes):
        c = {k: dict(v) for k, v in cfg.items()}
        for dotted, value in changes.items():
            section, key = dotted.split("__")
            c[section][key] = value
        return toy(tmp_path, c, [stage]).fingerprint(stage)[0]

    base = fp()
    assert fp(m__threshold=0.5) == base          # ignored: read by another stage
    assert fp(q__a=2) == base                    # the section of a model not chosen
    assert fp(x__other=3) == base                # a key of a section it reads one key of
    assert fp(p__a=2) != base and fp(m__lr=2) != base and fp(x__k=5) != base
    assert fp(m__model="q") != base


def test_files_named_by_config_keys_are_hashed_by_content(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"one")
    stage = Stage("t", "t", (), sections=("t",), version=1, image_splits=lambda cfg: ["all"],
                  run=make_stage("t").run, reads_images=False, files=("t.weights",))
    cfg = {"t": {"weights": str(weights)}}
    first = toy(tmp_path, dict(cfg), [stage]).fingerprint(stage)
    os.utime(weights, ns=(1, 1))                                   # touched, same bytes
    assert toy(tmp_path, dict(cfg), [stage]).fingerprint(stage)[0] == first[0]
    weights.write_bytes(b"two")                                    # same path, new contents
    p = toy(tmp_path, dict(cfg), [stage])
    assert p.fingerprint(stage)[0] != first[0]
    assert stale_reason(first[1], p.fingerprint(stage)[1]) == "file t.weights changed"
    # a value that names no file ("imagenet") adds nothing, so other fingerprints keep their value
    assert "files" not in toy(tmp_path, {"t": {"weights": "imagenet"}}, [stage]).fingerprint(stage)[1]


def test_task_jobs_carry_only_their_images():
    import pickle
    from wsis.data.coco import COCODataset
    ids = [f"im{i}" for i in range(200)]
    ds = COCODataset("coco", Path("/x"), ("a",), {"all": tuple(ids)}, {i: (0,) for i in ids}, has_masks=True)
    ds.files = {i: f"{i}.jpg" for i in ids}
    ds.anns = {i: [{"segmentation": [[0, 0, 1, 1, 2, 2]] * 20, "category_id": 1}] for i in ids}
    ds.sizes = {i: (10, 10) for i in ids}
    ds.cat_index = {1: 0}
    job = Job("s", {}, ds, tuple(ids), Path("/out"), {})
    small = task_job(job, ["im3", "im7"])
    assert small.ids == ("im3", "im7")
    for table in ("labels", "files", "anns", "sizes"):
        assert set(getattr(small.dataset, table)) == {"im3", "im7"}, table
    assert small.dataset.cat_index == {1: 0} and small.dataset.splits == {"all": ("im3", "im7")}
    assert small.dataset.image_path("im7") == Path("/x/im7.jpg")
    assert len(ds.anns) == 200          # the driver's dataset is untouched
    assert len(pickle.dumps(small)) * 20 < len(pickle.dumps(job))


def test_disk_full_is_one_line_naming_the_work_dir_and_space(tmp_path, monkeypatch):
    real = Path.write_bytes

    def full(self, data):
        if self.name.startswith("big.bin"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    def run(job):
        (job.out_dir / "a.bin").write_bytes(b"x" * 10)
        write_bytes(job.out_dir / "big.bin", b"y" * (3 << 20))
    stage = Stage("a", "a", (), ("a",), 1, lambda cfg: ["all"], run=run, reads_images=False)
    p = toy(tmp_path, stages=[stage])
    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(WsisError) as e:
        p.run("a")
    msg = str(e.value)
    assert str(tmp_path / "work") in msg and "no space left on device" in msg and "MiB more" in msg
    assert "\n" not in msg
    monkeypatch.undo()
    assert not [f for f in (tmp_path / "work").rglob("*") if ".tmp-" in f.name]
    assert toy(tmp_path, stages=[stage]).run("a") == ["a"]       # resumes once there is space


def test_torch_save_on_a_full_disk_is_a_disk_full_error(tmp_path, monkeypatch):
    from wsis.errors import DiskFullError
    from wsis.io import atomic_path
    import shutil as sh
    monkeypatch.setattr(sh, "disk_usage", lambda p: sh._ntuple_diskusage(100, 100, 0))
    with pytest.raises(DiskFullError, match="no space left on device"):
        with atomic_path(tmp_path / "m.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")
    with pytest.raises(RuntimeError, match="unrelated"):     # with space left it stays a bug
        monkeypatch.undo()
        with atomic_path(tmp_path / "m.pt"):
            raise RuntimeError("unrelated")


def per_image_writer(job, ids):
    for i in ids:
        (job.out_dir / f"{i}.txt").write_text(f"{i} {job.dataset.labels[i]}")


def test_dask_leaves_the_driver_thread_settings_alone(tmp_path):
    """distributed's nanny sets OMP_NUM_THREADS=1 (and MKL, OpenBLAS) in the process that
    starts the workers; the driver's training stages would then run on one thread."""
    import sys
    import cloudpickle
    import torch
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    env_before = {k: os.environ.get(k) for k in keys}
    threads_before = torch.get_num_threads()
    stage = Stage("p", "p", (), ("p",), 1, lambda cfg: ["all"], per_image=per_image_writer,
                  output_name="{id}.txt", reads_images=False)
    p = toy(tmp_path, stages=[stage])
    p.cfg["run"]["chunk_size"] = 1
    p.workers = 1
    assert p.run("p") == ["p"]
    assert (tmp_path / "work/p/y.txt").read_text() == "y (1,)"
    assert {k: os.environ.get(k) for k in keys} == env_before
    assert torch.get_num_threads() == threads_before


def test_recorded_outputs_find_damage(tmp_path):
    import numpy as np
    from wsis.io import write_label_png, write_npz
    out = tmp_path / "o"
    write_npz(out / "a.npz", x=np.arange(1000))
    write_label_png(out / "a.png", np.eye(30, dtype=np.uint8))
    (out / "model.pt").write_bytes(os.urandom(3 << 20))
    names = {"a.npz", "a.png"}
    rec = record_outputs(out)
    assert all(len(r) == 3 for r in rec.values())
    assert damaged_outputs(out, rec, names) == {}
    size = (out / "a.npz").stat().st_size
    (out / "a.npz").write_bytes(bytes(size))                              # zero-filled, same size
    png = (out / "a.png").read_bytes()
    (out / "a.png").write_bytes(png[:-12] + b"\0" * 12)                 # same size, no IEND
    model = bytearray((out / "model.pt").read_bytes())
    model[-5] ^= 1                                                       # one byte, last MiB
    (out / "model.pt").write_bytes(bytes(model))
    d = damaged_outputs(out, rec, names)
    assert d == {name: "content changed (full-content hash)" for name in ("a.npz", "a.png", "model.pt")}
    (out / "a.npz").unlink()
    (out / "model.pt").write_bytes(b"short")
    d = damaged_outputs(out, rec, names)
    assert d["a.npz"] == "missing" and d["model.pt"] == f"5 bytes, {len(model)} recorded"


def flip_middle(path, n_bytes, mtime_ns=None):
    """``n_bytes`` in the middle of ``path`` inverted in place, at the same size; the mtime then
    set to ``mtime_ns`` when given (a writer that restores it)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n_bytes] = bytes(b ^ 0xFF for b in data[mid:mid + n_bytes])
    path.write_bytes(bytes(data))
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_damage_in_the_middle_of_a_file_is_found(tmp_path):
    """Issue 21, point 1: 16 to 64 KiB changed in the middle of an output, at the same size.
    With the mtime moved, a plain check hashes the file; with the mtime restored, only
    ``verify`` (status --verify, and a run about to read it) does."""
    import numpy as np
    from wsis.io import write_label_png, write_npz
    out = tmp_path / "o"
    rng = np.random.default_rng(0)
    write_npz(out / "a.npz", cam=rng.random((20, 64, 64), np.float32))
    write_label_png(out / "a.png", rng.integers(0, 5, (300, 400)).astype(np.uint8))
    (out / "model.pt").write_bytes(os.urandom(5 << 20))
    rec = record_outputs(out)
    names = {"a.npz", "a.png"}
    for name, n in (("a.npz", 16), ("a.png", 256), ("model.pt", 64), ("model.pt", 64 << 10)):
        recorded_mtime = rec[name][1]
        flip_middle(out / name, n, recorded_mtime)
        assert damaged_outputs(out, rec, names) == {}          # the cheap check trusts size and mtime
        assert damaged_outputs(out, rec, names, verify=True) == {name: "content changed (full-content hash)"}
        flip_middle(out / name, n)                               # flipped back: the bytes are as recorded
        assert damaged_outputs(out, rec, names) == damaged_outputs(out, rec, names, verify=True) == {}
        flip_middle(out / name, n)                               # the mtime moved: hashed by the plain check
        assert damaged_outputs(out, rec, names) == {name: "content changed (full-content hash)"}
        flip_middle(out / name, n, recorded_mtime)


def test_auto_precision_enters_the_fingerprint_as_what_it_trains_in(tmp_path, monkeypatch):
    """run.amp = "auto" hashes as the precision it resolves to on this machine: the same cache
    as an explicit "bf16" where the CPU has bf16, and not one trained in bf16 where it means
    float32 (nor resumed from one)."""
    import wsis.device
    stage = Stage("t", "t", (), sections=("run.amp",), version=1, image_splits=lambda cfg: ["all"],
                  run=make_stage("t").run, reads_images=False)
    ds = Dataset("toy", tmp_path, ("a", "b"), {"all": ("x", "y")}, {"x": (0,), "y": (1,)})

    def fp(amp):
        return Pipeline({"t": stage}, {"run": {"chunk_size": 1, "amp": amp}}, ds, tmp_path / "work",
                        device="cpu").fingerprint(stage)[0]
    for native, same in ((True, "bf16"), (False, "off")):
        monkeypatch.setattr(wsis.device, "native_bf16", lambda device, native=native: native)
        assert fp("auto") == fp(same)
    assert fp("bf16") != fp("off")


def test_a_stages_keeps_folder_survives_a_changed_fingerprint_only(tmp_path):
    """A stage's ``keeps`` folder (files keyed by their content) is kept when its fingerprint
    changes, and only then: its other outputs are cleared, and --force clears everything."""
    seen: list[set[str]] = []

    def run(job):
        seen.append({p.relative_to(job.out_dir).as_posix() for p in job.out_dir.rglob("*")
                     if p.is_file() and p.name != "manifest.json"})
        (job.out_dir / "cache").mkdir(exist_ok=True)
        (job.out_dir / "cache" / f"v{job.cfg['k']['v']}.txt").write_text("kept")
        (job.out_dir / "page.txt").write_text(str(job.cfg["k"]["v"]))
    stage = Stage("k", "k", (), sections=("k",), version=1, image_splits=lambda cfg: ["all"], run=run,
                  reads_images=False, keeps="cache")
    toy(tmp_path, {"k": {"v": 1}}, [stage]).run("k")
    toy(tmp_path, {"k": {"v": 2}}, [stage]).run("k")            # stale: the cache stays, the page goes
    toy(tmp_path, {"k": {"v": 2}}, [stage]).run("k", force=True)  # forced: cleared
    assert seen == [set(), {"cache/v1.txt"}, set()]
    plain = Stage("p", "p", (), sections=("p",), version=1, image_splits=lambda cfg: ["all"], run=run,
                  reads_images=False)
    seen.clear()
    for v in (1, 2):
        toy(tmp_path, {"p": {"v": v}, "k": {"v": v}}, [dataclasses.replace(plain, name="p", sections=("k",))]).run("p")
    assert seen == [set(), set()]                                   # without ``keeps`` nothing survives


def doubled_with_pid(job, chunk):
    """A ``Job.map_ids`` task: each image's value doubled, and the process it ran in."""
    return {i: (2 * value, os.getpid()) for i, value in chunk.items()}


def test_a_whole_dataset_stage_maps_its_per_image_work_on_the_workers(tmp_path, monkeypatch):
    """``Job.map_ids`` in a stage that the engine runs: chunks of run.chunk_size images as Dask
    tasks in other processes, their results back in order; work that fits in one chunk, a job
    outside the engine, and work too small to start the workers for, run in this process."""
    from pipelines import runner
    ids = tuple(f"im{k}" for k in range(5))
    work = {i: k for k, i in enumerate(ids)}
    cold = {}

    def run_cold(job):
        cold["chunks"] = job.map_ids(doubled_with_pid, work)

    stage = Stage("cold", "cold", (), ("run",), 1, lambda cfg: ["all"], run=run_cold, reads_images=False)
    ds = Dataset("toy", tmp_path, ("a",), {"all": ids}, {i: (0,) for i in ids})
    Pipeline({"cold": stage}, {"run": {"chunk_size": 2}}, ds, tmp_path / "cold", workers=2).run("cold")
    assert len(cold["chunks"]) == 3 and all(pid == os.getpid() for c in cold["chunks"] for _, pid in c.values())
    monkeypatch.setattr(runner, "COLD_START_MIN_IMAGES", 5)      # 5 images now start the workers
    work = {i: k for k, i in enumerate(ids)}
    mapped = {}

    def run(job):
        mapped["chunks"] = job.map_ids(doubled_with_pid, work)
        mapped["one chunk"] = job.map_ids(doubled_with_pid, {"im0": 10, "im1": 11})

    stage = Stage("toy", "toy", (), ("run",), 1, lambda cfg: ["all"], run=run, reads_images=False)
    cfg = {"run": {"chunk_size": 2}}
    ds = Dataset("toy", tmp_path, ("a",), {"all": ids}, {i: (0,) for i in ids})
    Pipeline({"toy": stage}, cfg, ds, tmp_path / "work", workers=2).run("toy")
    chunks = mapped["chunks"]
    assert [{i: v for i, (v, _) in c.items()} for c in chunks] == [{"im0": 0, "im1": 2}, {"im2": 4, "im3": 6},
                                                                   {"im4": 8}]
    assert all(pid != os.getpid() for c in chunks for _, pid in c.values())
    assert mapped["one chunk"] == [{"im0": (20, os.getpid()), "im1": (22, os.getpid())}]
    here = Job("toy", cfg, ds, ids, tmp_path, {}).map_ids(doubled_with_pid, work)
    assert here == [{i: (2 * work[i], os.getpid()) for i in c} for c in (ids[:2], ids[2:4], ids[4:])]


# ------------------------------------------- declared image sizes on every run (issue 29.1)
class SizedDataset(Dataset):
    """Images on disk whose annotation file declares their sizes, as a COCO file does."""
    sizes: dict = None

    def image_path(self, image_id):
        return self.root / f"{image_id}.png"

    def declared_size(self, image_id):
        return self.sizes[image_id]


def sized_pipeline(tmp_path, sizes, version=1):
    from PIL import Image
    for name in ("x", "y"):
        if not (tmp_path / f"{name}.png").exists():
            Image.new("RGB", (6, 4)).save(tmp_path / f"{name}.png")      # 4 high, 6 wide
    ds = SizedDataset("coco", tmp_path, ("a",), {"all": ("x", "y")}, {"x": (0,), "y": (0,)})
    ds.sizes = sizes
    reads = dataclasses.replace(make_stage("make"), reads_images=True)
    evaluate = make_stage("evaluate", ("make",))                          # draws masks at the declared sizes
    cfg = {"make": {"v": 1}, "evaluate": {"v": version}, "run": {"chunk_size": 1}}
    return Pipeline({"make": reads, "evaluate": evaluate}, cfg, ds, tmp_path / "work")


def test_declared_sizes_are_checked_on_every_run_from_the_records(tmp_path, monkeypatch):
    """A finished work dir, then an annotation file that swaps one image's height and width:
    only a stage that reads no image (an evaluation, whose ground truth the file's sizes
    shape) is due, and it is refused before it runs, from the sizes recorded when the images
    were decoded (none is decoded again)."""
    import pipelines.engine as engine
    CALLS.clear()
    assert sized_pipeline(tmp_path, {"x": (4, 6), "y": (4, 6)}).run("all") == ["make", "evaluate"]
    monkeypatch.setattr(engine, "read_rgb", lambda *a, **k: pytest.fail("an image was decoded again"))
    swapped = sized_pipeline(tmp_path, {"x": (4, 6), "y": (6, 4)}, version=2)
    assert swapped.state(swapped.stages["make"]).status == "done"
    with pytest.raises(WsisError, match=r"y.png: 6x4 as displayed .* but its annotations give 4x6"):
        swapped.run("evaluate")
    assert CALLS == ["make", "evaluate"]
    assert sized_pipeline(tmp_path, {"x": (4, 6), "y": (4, 6)}, version=2).run("evaluate") == ["evaluate"]


def test_sizes_recorded_by_an_older_wsis_are_read(tmp_path):
    """An older wsis recorded the annotation file's size, which its check made the image's."""
    from pipelines.engine import recorded_size
    assert recorded_size("10:20:4x6", "10:20") == (4, 6)
    assert recorded_size("10:20", "10:20") is True          # no annotation sizes: decoded, size not kept
    assert recorded_size("10:21:4x6", "10:20") is None and recorded_size(None, "10:20") is None
    assert recorded_size("10:201:4x6", "10:20") is None     # another mtime, not a prefix match


# ------------------------------------------------ read-only work dirs, damaged records (29.3, 29.6)
def test_a_damaged_config_record_is_rewritten_by_a_run_with_nothing_to_do(tmp_path, capsys):
    toy(tmp_path).run("all")
    record = tmp_path / "work" / "config.toml"
    good = record.read_bytes()
    record.write_bytes(b"\x00\x01 not [[ toml")
    assert toy(tmp_path).run("all") == []
    assert record.read_bytes() == good
    assert f"{record}: not a readable config (damaged?); rewritten with this run's" in capsys.readouterr().err


def test_a_read_only_work_dir_is_read_and_never_written(tmp_path, monkeypatch, capsys):
    """What a read-only mount does to a process that may write anywhere else: the work dir is
    not writable (os.access) and every write in it fails. A run with nothing to do works and
    writes nothing; one with work due is one line naming the work dir; a damaged record is
    named and left as it is."""
    import pipelines.engine as engine
    from conftest import snapshot
    toy(tmp_path).run("all")
    work = tmp_path / "work"
    record = work / "config.toml"
    record.write_bytes(b"\x00 damaged")
    before = snapshot(work)
    real_access = os.access
    monkeypatch.setattr(engine.os, "access", lambda p, mode: False if Path(p) == work else real_access(p, mode))
    p = toy(tmp_path)
    assert p.run("all") == [] and p.collect_metrics() == {}
    assert f"{record}: not a readable config (damaged?); the work dir is read-only" in capsys.readouterr().err
    cfg = {n: {"v": 1} for n in "abcd"}
    cfg["c"] = {"v": 2}
    with pytest.raises(WsisError, match=f"{work}: the work dir is read-only, and c is due"):
        toy(tmp_path, cfg).run("all")
    assert snapshot(work) == before
