"""The engine's caching logic on toy stages (no models, no Dask)."""

from pathlib import Path

import pytest

from pipelines.engine import Pipeline, Stage
from wsis.data import Dataset
from wsis.errors import WsisError
from wsis.io import write_json

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


def test_image_list_and_code_version_are_part_of_the_fingerprint(tmp_path):
    toy(tmp_path).run("a")
    p = toy(tmp_path)
    p.dataset.labels["y"] = (0, 1)
    assert p.state(p.stages["a"]).detail == "image list or labels changed"
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
