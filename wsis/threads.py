"""How wsis shares the CPU cores with itself and with other programs (issue 28).

PyTorch's thread pools run on GNU OpenMP, whose idle threads spin at every barrier by default.
On a machine that other programs keep busy, a spinning thread burns the time slice its
descheduled peer needs: a small CPU training loop measured 1.2 steps/s on two threads beside
another program, 6.0 on one thread and 7.6 on two threads with ``OMP_WAIT_POLICY=PASSIVE``
(idle threads sleep). So wsis sets that policy in every process a stage runs in (the CLI
process, its local Dask workers, its data-parallel ranks), unless the user set their own, and
sizes each process's PyTorch pool so that the processes together use each usable core once.

Only the standard library is imported here: ``wsis.cli`` calls ``set_wait_policy`` before
anything imports PyTorch, since the OpenMP runtime reads the policy once, when it is loaded.
"""

from __future__ import annotations

import math
import os
import time

WAIT_POLICY = "OMP_WAIT_POLICY"
PASSIVE = "PASSIVE"


def set_wait_policy() -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` in this process's environment (inherited by the processes it
    starts), unless the user set a value of their own. It takes effect in a process that has
    not loaded PyTorch yet."""
    os.environ.setdefault(WAIT_POLICY, PASSIVE)


def wait_policy_env() -> dict[str, str]:
    """The wait policy for a process wsis starts with an environment of its own (a local Dask
    worker): the user's value, else PASSIVE."""
    return {WAIT_POLICY: os.environ.get(WAIT_POLICY, PASSIVE)}


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
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:          # macOS, Windows
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota:
        n = min(n, math.ceil(quota))
    return max(1, n)


def torch_threads(processes: int = 1) -> int:
    """PyTorch threads for one of ``processes`` processes that share the usable CPUs (training in
    this process, or one data-parallel rank of ``processes``): an ``OMP_NUM_THREADS`` the user set
    wins, as it does in torchrun's ranks."""
    given = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, usable_cpus() // max(1, processes))


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


def _busy_cpu_seconds() -> tuple[float, float, float] | None:
    """(wall clock, CPU seconds the whole machine spent busy, CPU seconds of this process)."""
    try:
        import psutil                # a dependency of dask.distributed
        t = psutil.cpu_times()
    except (ImportError, OSError):
        return None
    busy = sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq", "steal"))
    own = os.times()
    return time.monotonic(), busy, own.user + own.system


def cpu_snapshot():
    """The start of a window over which ``busy_note`` measures what other programs use: taken
    when a long command starts, so that its own start-up work fills most of the window."""
    return _busy_cpu_seconds()


def busy_note(snapshot) -> str | None:
    """One line for the user when other programs keep the CPUs busy (measured since
    ``snapshot``, waiting for the rest of a 0.2 s window; this process's own CPU time is not
    counted), else None."""
    if snapshot is None:
        return None
    left = BUSY_WINDOW_S - (time.monotonic() - snapshot[0])
    if left > 0:
        time.sleep(left)
    now = _busy_cpu_seconds()
    if now is None:
        return None
    wall = now[0] - snapshot[0]
    others = max(0.0, (now[1] - snapshot[1]) - (now[2] - snapshot[2])) / max(wall, 1e-6)
    cpus = os.cpu_count() or 1
    if others < BUSY_SHARE * cpus:
        return None
    return (f"wsis: note: other programs keep the CPUs busy (about {min(others, cpus):.1f} of {cpus} in use); "
            f"wsis shares them and may run slower than on a quiet machine")
