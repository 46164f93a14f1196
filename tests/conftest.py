import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "tiny.toml"
WSIS = [sys.executable, "-m", "wsis.cli"]
# issue 27's parts that teach the pipeline from reviews, all off: corrections reach train_seg
# only, as before them
REVIEW_PARTS_OFF = ["--set", "review.cam_loss=false", "--set", "review.relation_labels=false",
                    "--set", "review.irn_targets=false", "--set", "review.export=false"]


def wsis(*args, cwd=None, check=True, timeout=600, env=None):
    """Run the CLI in a subprocess; returns CompletedProcess with text stdout/stderr."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(WSIS + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
    if check and proc.returncode != 0:
        raise AssertionError(f"wsis {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def tiny_args(data_root, work_dir, *extra):
    return ["--config", TINY, "--data-root", data_root, "--work-dir", work_dir, *extra]


def snapshot(directory: Path) -> dict:
    """Every file under ``directory`` with its size and mtime: equal snapshots = untouched."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny synthetic dataset, generated once per test session."""
    root = tmp_path_factory.mktemp("data") / "synthetic"
    wsis("synth", "--config", TINY, "--data-root", root)
    return root


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A work dir where every stage is done on the tiny dataset."""
    work = tmp_path_factory.mktemp("runs") / "tiny"
    wsis("run", "--stage", "all", *tiny_args(tiny_data, work))
    return work


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    dst = tmp_path / "synthetic"
    shutil.copytree(tiny_data, dst)
    return dst


def cocoeval_stats(gt_path, results) -> list[float]:
    """pycocotools' usual single-pass segm evaluation of a results list: the 12 summary
    numbers (an independent reference for wsis's own COCO evaluation)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(results), iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]
