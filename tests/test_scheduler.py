"""``--scheduler`` runs per-image stages on an existing dask.distributed cluster."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_args, wsis
from wsis.io import read_npz

DASK = str(Path(sys.executable).parent / "dask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([DASK, "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--no-dashboard", "--host", "127.0.0.1"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout="2s") as c:
                    c.wait_for_workers(2, timeout=60)
                break
            except OSError:
                assert time.monotonic() < deadline, "scheduler did not start"
                time.sleep(0.5)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_run_on_an_existing_scheduler(tiny_data, tiny_run, tmp_path, cluster):
    import shutil
    from distributed import Client
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work)
    shutil.rmtree(work / "make_cam")
    shutil.rmtree(work / "eval_cam")
    proc = wsis("run", "--stage", "eval_cam", "--scheduler", cluster, *tiny_args(tiny_data, work))
    assert "computing 24 of 24 images" in proc.stderr
    with Client(cluster) as c:
        prefixes = c.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
        executed = c.run(lambda dask_worker: dask_worker.state.executed_count)
    # the chunks ran as tasks of this scheduler, on both of its workers
    assert "run_chunk" in prefixes
    assert len(executed) == 2 and all(n > 0 for n in executed.values()), executed
    for p in (tiny_run / "make_cam").glob("*.npz"):
        a, b = read_npz(p), read_npz(work / "make_cam" / p.name)
        np.testing.assert_array_equal(a["cam"], b["cam"])
    assert (work / "eval_cam" / "metrics.json").read_text() == (tiny_run / "eval_cam" / "metrics.json").read_text()


def test_unreachable_scheduler_is_a_clear_error(tiny_data, tiny_run, tmp_path):
    import shutil
    work = tmp_path / "w"
    shutil.copytree(tiny_run, work)
    shutil.rmtree(work / "make_cam")
    port = free_port()
    proc = wsis("run", "--stage", "make_cam", "--scheduler", f"tcp://127.0.0.1:{port}",
                *tiny_args(tiny_data, work), check=False)
    assert proc.returncode != 0 and f"--scheduler tcp://127.0.0.1:{port}: cannot connect" in proc.stderr
