"""How wsis shares the CPU cores with itself and with other programs (issue 28).

PyTorch's thread pools run on OpenMP (GNU OpenMP in the Linux wheels), whose idle threads spin at
every barrier by default. On a machine that other programs keep busy, a spinning thread burns
the time slice its descheduled peer needs. Measured on 2 cores (benchmarks/contention.py's
train_seg step, iterations/s alone / beside a program busy on 2 threads; 2026-12-06):

    2 threads, GNU OpenMP's default spin (300000 turns)   3.05 / 0.14
    2 threads, OMP_WAIT_POLICY=PASSIVE (no spin)           2.11 / 0.50
    2 threads, GOMP_SPINCOUNT=10000                        3.02 / 0.49
    1 thread                                               2.03 / 1.95

So wsis, in every process a stage runs in (the CLI process, its local Dask workers, its
data-parallel ranks), unless the user set a wait setting of their own:
  - lets a waiting thread spin 10000 turns, then sleep (``GOMP_SPINCOUNT``; ``KMP_BLOCKTIME=0``,
    sleep at once, for LLVM's and Intel's OpenMP): as fast alone as the default, no slower
    beside another program than never spinning;
  - sizes each process's PyTorch pool so that the processes together use each usable core once;
  - and, while a stage trains, resizes the pool to the cores other programs leave free
    (``FairThreads``): one thread that is never waited for beats two that wait on each other.

Only the standard library is imported here: ``wsis.cli`` calls ``set_wait_policy`` before
anything imports PyTorch, since the OpenMP runtime reads these settings once, when it is loaded.
"""

from __future__ import annotations

import math
import os
import time

# A short spin, then sleep: GNU OpenMP's turns before a waiting thread sleeps (its default is
# 300000; OMP_WAIT_POLICY=PASSIVE is 0), and LLVM/Intel OpenMP's spin time in ms
SHORT_SPIN = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "0"}
# Any of these set by the user is their choice of wait behaviour: wsis then sets none
USER_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def wait_policy_env() -> dict[str, str]:
    """The wait settings for a process that wsis starts: the user's own where they set any
    (then only theirs), else ``SHORT_SPIN``."""
    mine = {k: os.environ[k] for k in USER_WAIT_SETTINGS if k in os.environ}
    return mine or dict(SHORT_SPIN)


def set_wait_policy() -> None:
    """``wait_policy_env()`` in this process's environment (inherited by the processes it
    starts). It takes effect in a process that has not loaded PyTorch yet."""
    os.environ.update(wait_policy_env())


def _cgroup_cpu_quota() -> float | None:
    """CPUs a cgroup v2 quota allows this process (a container's ``--cpus``), or None."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``taskset``, a batch scheduler's
    allocation), capped by a cgroup CPU quota; ``os.cpu_count()`` sees neither."""
    n = len(_affinity())
    quota = _cgroup_cpu_quota()
    if quota:
        n = min(n, math.ceil(quota))
    return max(1, n)


def user_threads() -> int | None:
    """The thread count the user set in ``OMP_NUM_THREADS``, or None."""
    given = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(given) if given.isdigit() and int(given) > 0 else None


def torch_threads(processes: int = 1) -> int:
    """PyTorch threads for one of ``processes`` processes that share the usable CPUs (training in
    this process, or one data-parallel rank of ``processes``): an ``OMP_NUM_THREADS`` the user set
    wins, as it does in torchrun's ranks."""
    return user_threads() or max(1, usable_cpus() // max(1, processes))


def set_torch_threads(processes: int = 1) -> int:
    """Size this process's PyTorch thread pool by ``torch_threads``; returns the size."""
    import torch
    n = torch_threads(processes)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


# ------------------------------------------------------------------ a busy machine
# Other programs count as keeping the machine busy when they use at least this share of its
# CPUs (on 2 cores: one core); a browser or an editor at rest uses a few percent.
BUSY_SHARE = 0.5
BUSY_WINDOW_S = 0.2


def cpu_snapshot():
    """The start of a window over which ``busy_note`` measures what other programs use: taken
    when a long command starts, so that its own start-up work fills most of the window."""
    return _cpu_times(_affinity())


def busy_note(snapshot) -> str | None:
    """One line for the user when other programs keep the CPUs busy (measured since
    ``snapshot``, waiting for the rest of a 0.2 s window; this process's own CPU time is not
    counted), else None."""
    if snapshot is None:
        return None
    left = BUSY_WINDOW_S - (_now() - snapshot[0])
    if left > 0:
        time.sleep(left)
    cpus = _affinity()
    now = _cpu_times(cpus)
    if now is None:
        return None
    others = others_in_use(snapshot, now)
    if others < BUSY_SHARE * len(cpus):
        return None
    return (f"wsis: note: other programs keep the CPUs busy (about {min(others, len(cpus)):.1f} of {len(cpus)} in "
            f"use); wsis shares them and may run slower than on a quiet machine")


# ------------------------------------------------------------------ sharing while training
class FairThreads:
    """Sizes a training process's PyTorch pool, between steps, to the cores other programs leave
    it: ``update()`` after each step measures, every ``interval_s``, the CPU time that other
    processes spent on this process's CPUs, and trains on ``round(CPUs - others)`` threads (at
    least 1, at most ``torch_threads(processes)``); back to all of them when the others stop.

    Why: a thread pool larger than the cores left to it waits at every parallel region for a
    thread the kernel has descheduled, so a training step on 2 threads beside a program busy on
    2 cores ran at a quarter of its speed alone (benchmarks/contention.py, 2 cores, issue 28),
    worse than one thread that is never waited for. Data-parallel ranks on one machine count one
    another as others, which leaves each its own share.

    Off (the pool keeps its size) where the user set ``OMP_NUM_THREADS``, where the pool has one
    thread, where the CPU times cannot be read, or where a cgroup quota caps this process below
    its CPUs: there the kernel's per-CPU times include other containers', which the quota
    already keeps apart."""

    def __init__(self, processes: int = 1, interval_s: float = 2.0):
        self.most = torch_threads(processes)
        self.interval_s = interval_s
        self.cpus = _affinity()
        quota = _cgroup_cpu_quota()
        resizable = (user_threads() is None and self.most > 1
                     and not (quota and math.ceil(quota) < len(self.cpus)))
        self.mark = _cpu_times(self.cpus) if resizable else None
        self.enabled = self.mark is not None
        self.threads = self.most
        self.others = 0.0

    def update(self) -> int | None:
        """Measure when ``interval_s`` has passed and resize the pool; returns the new size when
        it changed, else None."""
        if not self.enabled or _now() - self.mark[0] < self.interval_s:
            return None
        now = _cpu_times(self.cpus)
        if now is None:
            return None
        self.others = others_in_use(self.mark, now)
        self.mark = now
        wanted = fair_threads(len(self.cpus), self.others, self.most)
        if wanted == self.threads:
            return None
        import torch
        torch.set_num_threads(wanted)
        self.threads = wanted
        return wanted

    def describe(self) -> str:
        """The last change, in words, for the training's log."""
        if self.threads < self.most:
            return (f"other programs use about {self.others:.1f} of {len(self.cpus)} CPUs: training on "
                    f"{self.threads} thread{'s' if self.threads > 1 else ''} until they stop")
        return f"the CPUs are free again: training on {self.threads} threads"


def fair_threads(cpus: int, others: float, most: int) -> int:
    """Threads for a process on ``cpus`` CPUs while other processes use ``others`` of them (in
    CPUs, measured): the cores they leave, rounded to the nearest, between 1 and ``most``."""
    return max(1, min(most, math.floor(cpus - others + 0.5)))


def others_in_use(before: tuple, after: tuple) -> float:
    """CPUs (0..n) that other processes used between two ``_cpu_times`` samples: the CPUs' busy
    time less this process's own, over the wall time."""
    wall = after[0] - before[0]
    return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / max(wall, 1e-6)


def _affinity() -> list[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where there is none)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:           # macOS, Windows: every CPU
        return list(range(os.cpu_count() or 1))


def _cpu_times(cpus: list[int]) -> tuple[float, float, float] | None:
    """(wall clock, busy CPU seconds of ``cpus``, CPU seconds of this process), or None where the
    per-CPU times cannot be read."""
    try:
        import psutil                # a dependency of dask.distributed
        per_cpu = psutil.cpu_times(percpu=True)
        busy = sum(sum(getattr(per_cpu[c], name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
                   for c in cpus)
    except (ImportError, OSError, IndexError):
        return None
    own = os.times()
    return _now(), busy, own.user + own.system


_now = time.monotonic
