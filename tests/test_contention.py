"""Sharing the machine (issue 28): the thread settings wsis relies on are those of every process a
stage runs in (the driver, a local Dask worker, a data-parallel rank), idle local workers are
stopped while a stage trains, the busy-machine note, and benchmarks/contention.py --quick."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from wsis import threads

PYTHON_ENV = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}


def test_every_process_a_stage_runs_in_has_the_wait_policy_and_its_share_of_the_cores(tmp_path):
    """tests/thread_probe.py runs a stage in the driver, one on two local Dask workers and one in
    two gloo ranks, each recording its settings; OMP_DISPLAY_ENV has each OpenMP runtime print
    the policy it read when PyTorch loaded it (so it was set before, in every process)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "thread_probe.py"), str(tmp_path)], cwd=tmp_path,
                          env=dict(PYTHON_ENV, OMP_DISPLAY_ENV="TRUE"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "work").glob("*/*-*.json"))]
    by_role = {role: [r for r in records if r["role"] == role] for role in ("driver", "worker", "rank")}
    cpus = threads.usable_cpus()
    assert [r["torch_threads"] for r in by_role["driver"]] == [cpus]
    assert len({r["pid"] for r in by_role["worker"]}) == 2          # both local workers ran a chunk
    assert {r["torch_threads"] for r in by_role["worker"]} == {1}   # one thread each, one worker per core
    assert sorted(r["rank"] for r in by_role["rank"]) == [0, 1]
    assert {r["torch_threads"] for r in by_role["rank"]} == {max(1, cpus // 2)}
    assert {r["OMP_WAIT_POLICY"] for r in records} == {"PASSIVE"}
    # five OpenMP runtimes (driver, 2 workers, 2 ranks), each read PASSIVE
    assert proc.stderr.count("OMP_WAIT_POLICY = 'PASSIVE'") >= 5
    assert "OMP_WAIT_POLICY = 'ACTIVE'" not in proc.stderr
    # while the ranks trained, the driver's only spawned processes were the ranks: the local Dask
    # workers of the stage before were stopped, and their memory with them
    rank_pids = sorted(r["pid"] for r in by_role["rank"])
    assert all(sorted(r["spawned"]) == rank_pids for r in by_role["rank"])


def test_the_users_own_settings_win():
    code = ("import os, sys, wsis.cli; from wsis.threads import torch_threads, wait_policy_env; "
            "print(os.environ['OMP_WAIT_POLICY'], wait_policy_env()['OMP_WAIT_POLICY'], torch_threads(), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=dict(PYTHON_ENV, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="3"),
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["ACTIVE", "ACTIVE", "3", "False"]
    # and without them: wsis's own, set before PyTorch is loaded (importing the CLI does not load it)
    out = subprocess.run([sys.executable, "-c", code], env=PYTHON_ENV, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["PASSIVE", "PASSIVE", str(threads.usable_cpus()), "False"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_usable_cpus_follow_the_affinity_mask():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from wsis import threads; "
            "print(threads.usable_cpus(), threads.torch_threads(), threads.torch_threads(2))")
    out = subprocess.run([sys.executable, "-c", code], env=PYTHON_ENV, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "1"]


def test_the_busy_note(monkeypatch):
    """Other programs' CPU time over the window, less this process's own, against half the CPUs."""
    cpus = os.cpu_count() or 1
    clock = iter([(10.0, 100.0, 5.0)])
    monkeypatch.setattr(threads, "_busy_cpu_seconds", lambda: next(clock))
    # in 0.2 s the machine was busy for 0.2 * cpus CPU seconds, 0.2 of them this process's own
    start = (9.8, 100.0 - 0.2 * cpus, 4.8)
    note = threads.busy_note(start)
    if cpus >= 2:
        assert note.startswith("wsis: note: other programs keep the CPUs busy")
        assert f"of {cpus} in use" in note
    clock = iter([(10.0, 100.0, 5.0)])
    assert threads.busy_note((9.8, 100.0 - 0.2, 4.8)) is None     # this process alone was busy
    assert threads.busy_note(None) is None                         # no psutil: nothing said


def test_workers_of_a_scheduler_give_back_wsis_model_cache():
    """With --scheduler, the workers are not wsis's to stop; its model cache in them is cleared."""
    from distributed import LocalCluster
    from pipelines import stages
    from pipelines.runner import DaskRunner
    with LocalCluster(n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": ":0"}) as cluster:
        runner = DaskRunner(cluster.scheduler_address, 0, "cpu")
        try:
            runner.connect_scheduler()
            stages._LOADED["model"] = object()       # the in-process worker shares this module
            runner.release_workers()
            assert stages._LOADED == {}
            assert runner.client is not None           # still connected
        finally:
            runner.close()


def test_contention_benchmark_quick(tiny_data, tiny_run, tmp_path):
    """benchmarks/contention.py --quick on a copy of the tiny run: its JSON keys (the figures
    themselves depend on the machine)."""
    out = tmp_path / "contention.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "contention.py"), "--quick", "--json", str(out),
                           "--work-dir", str(tiny_run), "--data-root", str(tiny_data)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    stages = {"train_cam", "train_irn", "train_seg", "make_cam"}
    for key in ("alone", "contended", "slowdown"):
        assert set(figures[key]) == stages and all(v > 0 for v in figures[key].values())
    assert figures["max_slowdown"] == max(figures["slowdown"].values())
    assert set(figures["peak_rss_mb"]) == {"alone", "contended"}
    assert all(set(v) == stages and min(v.values()) > 0 for v in figures["peak_rss_mb"].values())
    assert figures["units"]["make_cam"] == "images/s" and figures["units"]["train_seg"] == "iterations/s"
    assert "demo" not in figures
    assert "max slowdown" in proc.stdout
