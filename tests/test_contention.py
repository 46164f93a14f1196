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

PYTHON_ENV = {k: v for k, v in os.environ.items() if k not in (*threads.USER_WAIT_SETTINGS, "OMP_NUM_THREADS")}


def test_every_process_a_stage_runs_in_has_the_wait_policy_and_its_share_of_the_cores(tmp_path):
    """tests/thread_probe.py runs a stage in the driver, one on two local Dask workers and one in
    two gloo ranks, each recording its settings; OMP_DISPLAY_ENV has each OpenMP runtime print
    the spin count it read when PyTorch loaded it (so it was set before, in every process)."""
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "thread_probe.py"), str(tmp_path)], cwd=tmp_path,
                          env=dict(PYTHON_ENV, OMP_DISPLAY_ENV="VERBOSE"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "work").glob("*/*-*.json"))]
    by_role = {role: [r for r in records if r["role"] == role] for role in ("driver", "worker", "rank")}
    cpus = threads.usable_cpus()
    assert [r["torch_threads"] for r in by_role["driver"]] == [cpus]
    assert len({r["pid"] for r in by_role["worker"]}) == 2          # both local workers ran a chunk
    assert {r["torch_threads"] for r in by_role["worker"]} == {1}   # one thread each, one worker per core
    assert sorted(r["rank"] for r in by_role["rank"]) == [0, 1]
    assert {r["torch_threads"] for r in by_role["rank"]} == {max(1, cpus // 2)}
    assert {r["GOMP_SPINCOUNT"] for r in records} == {threads.SHORT_SPIN["GOMP_SPINCOUNT"]}
    # five OpenMP runtimes (driver, 2 workers, 2 ranks), each read the short spin, none the default
    assert proc.stderr.count(f"GOMP_SPINCOUNT = '{threads.SHORT_SPIN['GOMP_SPINCOUNT']}'") >= 5
    assert "GOMP_SPINCOUNT = '300000'" not in proc.stderr
    # while the ranks trained, the driver's only spawned processes were the ranks: the local Dask
    # workers of the stage before were stopped, and their memory with them
    rank_pids = sorted(r["pid"] for r in by_role["rank"])
    assert all(sorted(r["spawned"]) == rank_pids for r in by_role["rank"])


def test_the_users_own_settings_win():
    code = ("import os, sys, wsis.cli; from wsis.threads import torch_threads, wait_policy_env; "
            "print(sorted(k for k in ('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT', 'KMP_BLOCKTIME') if k in os.environ), "
            "sorted(wait_policy_env().items()), torch_threads(), 'torch' in sys.modules, sep='|')")
    out = subprocess.run([sys.executable, "-c", code], env=dict(PYTHON_ENV, OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="3"),
                         capture_output=True, text=True, check=True).stdout.strip().split("|")
    # the user's policy alone: no spin count of wsis's beside it (it would override theirs)
    assert out == ["['OMP_WAIT_POLICY']", "[('OMP_WAIT_POLICY', 'ACTIVE')]", "3", "False"]
    # and without them: wsis's own, set before PyTorch is loaded (importing the CLI does not load it)
    out = subprocess.run([sys.executable, "-c", code], env=PYTHON_ENV, capture_output=True, text=True,
                         check=True).stdout.strip().split("|")
    assert out == ["['GOMP_SPINCOUNT', 'KMP_BLOCKTIME']", str(sorted(threads.SHORT_SPIN.items())),
                   str(threads.usable_cpus()), "False"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_usable_cpus_follow_the_affinity_mask():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); from wsis import threads; "
            "print(threads.usable_cpus(), threads.torch_threads(), threads.torch_threads(2))")
    out = subprocess.run([sys.executable, "-c", code], env=PYTHON_ENV, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "1", "1"]


def test_the_busy_note(monkeypatch):
    """Other programs' CPU time over the window, less this process's own, against half the CPUs."""
    cpus = len(threads._affinity())
    clock = iter([(10.0, 100.0, 5.0)])
    monkeypatch.setattr(threads, "_cpu_times", lambda cpus: next(clock))
    # in 0.2 s the machine was busy for 0.2 * cpus CPU seconds, 0.2 of them this process's own
    start = (9.8, 100.0 - 0.2 * cpus, 4.8)
    note = threads.busy_note(start)
    if cpus >= 2:
        assert note.startswith("wsis: note: other programs keep the CPUs busy")
        assert f"of {cpus} in use" in note
    clock = iter([(10.0, 100.0, 5.0)])
    assert threads.busy_note((9.8, 100.0 - 0.2, 4.8)) is None     # this process alone was busy
    assert threads.busy_note(None) is None                         # no psutil: nothing said


def test_fair_threads_are_the_cores_the_others_leave():
    """Hand-computed: round(CPUs - others), between 1 and the pool's full size."""
    assert threads.fair_threads(2, 0.0, 2) == 2
    assert threads.fair_threads(2, 0.4, 2) == 2       # a browser at rest: all of them
    assert threads.fair_threads(2, 0.6, 2) == 1
    assert threads.fair_threads(2, 1.3, 2) == 1       # a two-thread program beside one of ours
    assert threads.fair_threads(2, 2.0, 2) == 1       # never none
    assert threads.fair_threads(16, 3.2, 16) == 13
    assert threads.fair_threads(16, 0.0, 8) == 8      # one of two data-parallel ranks: at most its share
    assert threads.fair_threads(16, 8.0, 8) == 8      # the other rank's 8 CPUs leave this one its 8
    # (wall, busy CPU seconds of our CPUs, own CPU seconds): 2 s in which the CPUs were busy
    # 3.5 s, 1.5 of them this process's: the others used 1 CPU
    assert threads.others_in_use((0.0, 10.0, 1.0), (2.0, 13.5, 2.5)) == pytest.approx(1.0)
    assert threads.others_in_use((0.0, 10.0, 1.0), (2.0, 11.0, 2.5)) == 0.0   # never below zero


def test_the_training_pool_follows_the_others_load(monkeypatch):
    """FairThreads resizes PyTorch's pool from measured samples: down to 1 thread while another
    program keeps the 2 CPUs busy, back to 2 when it stops; never before ``interval_s`` has
    passed; never where the user set OMP_NUM_THREADS or a cgroup quota caps the CPUs."""
    import torch
    monkeypatch.setattr(threads, "_affinity", lambda: [0, 1])
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    samples = iter([(0.0, 0.0, 0.0),
                    (1.0, 2.0, 1.0),             # 1 s: too early to measure
                    (2.0, 4.0, 2.0),             # others used 1 CPU of 2: one thread
                    (4.0, 8.0, 3.0),             # others 1.5 CPUs (ours on one thread)
                    (6.0, 9.0, 4.0)])            # the others stopped: both threads again
    clock = iter([1.0, 2.0, 4.0, 6.0])
    monkeypatch.setattr(threads, "_cpu_times", lambda cpus: next(samples))
    monkeypatch.setattr(threads, "_now", lambda: next(clock))
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    before = torch.get_num_threads()
    try:
        fair = threads.FairThreads(interval_s=2.0)
        assert fair.enabled and fair.most == 2
        next(samples)                            # the 1 s sample is never taken: too early
        assert fair.update() is None
        assert fair.update() == 1 and torch.get_num_threads() == 1
        assert fair.others == pytest.approx(1.0)
        assert fair.update() is None and torch.get_num_threads() == 1
        assert fair.update() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not threads.FairThreads().enabled
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "_cgroup_cpu_quota", lambda: 1.0)
    assert not threads.FairThreads().enabled


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


def test_training_resizes_its_pool_between_steps_and_says_so(monkeypatch, tmp_path, capsys):
    """run_training asks FairThreads after every step: the pool the next step runs on is the
    size it chose, and the change is one line of the log."""
    import torch

    from pipelines import trainer
    from pipelines.job import Job

    class Busy(threads.FairThreads):
        """Measures nothing: another program takes one of 2 CPUs from the second step on."""
        def __init__(self, processes):
            self.most, self.threads, self.others, self.cpus, self.calls = 2, 2, 0.0, [0, 1], 0

        def update(self):
            self.calls += 1
            if self.calls == 1:
                self.others, self.threads = 1.1, 1
                torch.set_num_threads(1)
                return 1
            return None

    seen = []
    monkeypatch.setattr(trainer, "FairThreads", Busy)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD([{"params": list(model.parameters()), "lr": 0.1, "base_lr": 0.1}], lr=0.1)
    job = Job("toy", {"run": {"amp": "off", "loader_workers": 0}}, None, (), tmp_path, {}, "cpu")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)

        def forward(net, batch):
            seen.append(torch.get_num_threads())
            return net(batch)

        trainer.run_training(job, model, opt, epochs=3, num_samples=1, batch_size=1, seed=0,
                             make_sample=lambda index, epoch: torch.ones(2),
                             collate=lambda samples: torch.stack(samples), forward=forward,
                             compute_loss=lambda out, batch: (out.sum() ** 2, {}))
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1, 1]
    assert "toy: other programs use about 1.1 of 2 CPUs: training on 1 thread until they stop" in capsys.readouterr().out
