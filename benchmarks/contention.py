"""wsis beside another program (issue 28): each step's throughput alone and beside a competitor
that keeps two threads busy with matrix products, and the peak memory of wsis's processes.

Measured: a train_cam, a train_irn and a train_seg step (iterations/s) and one per-image stage,
make_cam (images/s, on the local Dask workers). Each is a real ``wsis run --stage X --force``
process (``python -m wsis.cli``) on a copy of a prepared work dir, so the threads, the wait
policy and the Dask workers are exactly those wsis sets up; nothing here sets any of them. The
throughput is read from the stage's own progress lines, from the first line (after the first
step or chunk: start-up, model loading and the first step are left out) to the last.

The competitor is a separate Python process: two threads of numpy matrix products (256 x 256,
one BLAS thread each), started before the wsis process and ended by this script when it exits,
whatever happens (an exception, Ctrl-C, SIGTERM; it also dies with this script on Linux, and
ends itself after an hour). Its own rate, alone and beside each stage, says how the two shared
the cores. A fair share of 2 cores between two equal programs is a 2x slowdown.

Peak RSS: the sum of the resident memory of the wsis process and all its descendants (Dask
workers, data-parallel ranks), sampled every 0.1 s; pages shared between them count in each.

    python benchmarks/contention.py                      # synthetic preset's step sizes, 64 images
    python benchmarks/contention.py --demo --json c.json # also `make demo` alone and contended
    python benchmarks/contention.py --quick --json q.json  # tiny sizes (CI), about a minute
    python benchmarks/contention.py --src /tmp/wsis-before # another checkout (before a change):
                                                         # its wsis, this script, the same sizes
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("train_cam", "train_irn", "train_seg", "make_cam")
EPOCHS_KEY = {"train_cam": "train_cam.epochs", "train_irn": "train_irn.epochs", "train_seg": "seg.epochs"}
# Epochs of each measured training stage. Quick: tests/tiny.toml (16 images, batch 8: 2
# iterations an epoch), run to the end (the first iteration is not counted). Full: the synthetic
# preset's batches on 64 images (train_cam and train_irn batch 16: 4 iterations an epoch;
# train_seg batch 8: 8), more than any step finishes in the measuring window: each stage is
# measured over WINDOW_S seconds from its first progress line, then stopped.
EPOCHS = {"full": {"train_cam": 100, "train_irn": 100, "train_seg": 50},
          "quick": {"train_cam": 2, "train_irn": 2, "train_seg": 2}}
WINDOW_S = {"full": 45.0, "quick": None}
FULL_CONFIG = """# benchmarks/contention.py: the synthetic preset (make demo's) on fewer images
[synthetic]
num_train = 64
num_val = 8
"""
COMPETITOR_THREADS = 2
COMPETITOR_MAX_S = 3600


# ------------------------------------------------------------------ the competitor
def competitor_main(limit_s: float) -> None:
    """The competitor process: two threads of matrix products until SIGTERM (or ``limit_s``);
    prints "ready", then, when stopped, {"products": n, "seconds": s}."""
    die_with_parent()
    import numpy as np    # one BLAS thread each: its environment says so (Competitor)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    counts = [0] * COMPETITOR_THREADS

    def work(k: int) -> None:
        a = np.random.default_rng(k).random((256, 256))
        while not stop.is_set():
            a @ a        # releases the GIL: the threads run in parallel
            counts[k] += 1

    threads = [threading.Thread(target=work, args=(k,)) for k in range(COMPETITOR_THREADS)]
    start = time.monotonic()
    for t in threads:
        t.start()
    print("ready", flush=True)
    while not stop.wait(0.2) and time.monotonic() - start < limit_s:
        pass
    stop.set()
    for t in threads:
        t.join()
    print(json.dumps({"products": sum(counts), "seconds": time.monotonic() - start}), flush=True)


def die_with_parent() -> None:
    """Linux: the kernel ends the competitor when this script dies, even by SIGKILL (and it
    ends now if the script is already gone)."""
    parent = os.getppid()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(0)


class Competitor:
    """``with Competitor() as c:`` runs the competitor for the block; ``c.rate`` is then its
    products per second. It is ended on leaving the block, however the block is left."""

    def __enter__(self):
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.rate = None
        self.proc = subprocess.Popen([sys.executable, __file__, "--competitor", str(COMPETITOR_MAX_S)], env=env,
                                     stdout=subprocess.PIPE, text=True)
        try:
            if self.proc.stdout.readline().strip() != "ready":
                raise RuntimeError("the competitor did not start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        lines = (out or "").strip().splitlines()
        if lines and lines[-1].startswith("{"):
            result = json.loads(lines[-1])
            self.rate = result["products"] / max(result["seconds"], 1e-9)

    def __exit__(self, *exc):
        self.stop()
        return False


# ------------------------------------------------------------------ one wsis process
PROGRESS = r"^{stage}: (\d+)/(\d+) (\S+) \(\d+%\), ([0-9.]+) \S+/s"


def tree_rss(proc) -> int:
    """Resident bytes of ``proc`` (a psutil.Process) and all its descendants."""
    import psutil
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in members:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_wsis(args: list[str], cwd: Path, src: Path | None, stage: str | None = None,
             window: float | None = None) -> dict:
    """Run ``python -m wsis.cli ARGS`` (``src``'s wsis when given) to its end, or with ``window``
    until that many seconds after ``stage``'s first progress line (then it is stopped, as by
    Ctrl-C: a slowed-down step then costs the same time as a fast one); returns its wall seconds,
    its peak process-tree RSS (MB), its stderr lines, whether it said the CPUs were busy, and,
    for ``stage``, the throughput read from its progress lines (with their unit)."""
    import psutil
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    pattern = re.compile(PROGRESS.format(stage=re.escape(stage))) if stage else None
    lines, marks = [], []

    def read(stream) -> None:
        for line in stream:
            now = time.monotonic()
            lines.append(line.rstrip("\n"))
            m = pattern.match(line) if pattern else None
            if m:
                marks.append((now, int(m.group(1)), m.group(3), float(m.group(4))))

    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "wsis.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    reader = threading.Thread(target=read, args=(proc.stderr,), daemon=True)
    reader.start()
    peak, stopped = 0, False
    try:
        tree = psutil.Process(proc.pid)
        while proc.poll() is None:
            peak = max(peak, tree_rss(tree))
            if window is not None and marks and time.monotonic() - marks[0][0] >= window:
                stopped = True
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:      # wsis removes its temporary files on SIGTERM, and exits 130
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    seconds = time.monotonic() - start
    reader.join(10)
    if proc.returncode != 0 and not stopped:
        raise RuntimeError(f"wsis {' '.join(args)} failed ({proc.returncode}):\n" + "\n".join(lines[-20:]))
    result = {"seconds": seconds, "peak_rss_mb": round(peak / 2**20), "lines": lines, "stopped": stopped,
              "busy_notice": any("other programs keep the CPUs busy" in line for line in lines)}
    if stage:
        result.update(throughput(marks, stage))
    return result


def throughput(marks: list[tuple], stage: str) -> dict:
    """Items per second between the first progress line and the last (arrival times), else the
    rate the last line gives; with the unit."""
    if not marks:
        raise RuntimeError(f"{stage}: no progress lines")
    (t0, d0, unit, _), (t1, d1, _, rate) = marks[0], marks[-1]
    if d1 > d0 and t1 - t0 > 0.05:
        rate = (d1 - d0) / (t1 - t0)
    return {"throughput": rate, "unit": f"{unit}/s", "counted": d1 - d0}


# ------------------------------------------------------------------ the benchmark
def commit_of(src: Path) -> str:
    git = ["git", "-C", str(src)]
    try:
        head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def competitor_alone(seconds: float) -> float:
    """The competitor's products per second on its own."""
    with Competitor() as c:
        time.sleep(seconds)
    return c.rate


def measure_stage(stage: str, base: list[str], prepared: Path, scratch: Path, mode: str, src, contended: bool) -> dict:
    """One ``wsis run --stage STAGE --force`` on a copy of the prepared work dir."""
    work = scratch / f"{stage}-{'contended' if contended else 'alone'}"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(prepared, work, symlinks=True)
    sets = ["--set", f"{EPOCHS_KEY[stage]}={EPOCHS[mode][stage]}"] if stage in EPOCHS_KEY else []
    args = ["run", "--stage", stage, "--force", *base, "--work-dir", str(work), *sets]
    try:
        if not contended:
            return run_wsis(args, scratch, src, stage, WINDOW_S[mode])
        with Competitor() as c:
            result = run_wsis(args, scratch, src, stage, WINDOW_S[mode])
        result["competitor_rate"] = c.rate
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_demo(scratch: Path, src, contended: bool) -> dict:
    """``make demo`` as on a fresh clone: ``wsis run --stage all`` in an empty directory, which
    generates the synthetic dataset under data/ and writes runs/synthetic/."""
    where = scratch / f"demo-{'contended' if contended else 'alone'}"
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    try:
        if not contended:
            return run_wsis(["run", "--stage", "all"], where, src)
        with Competitor() as c:
            result = run_wsis(["run", "--stage", "all"], where, src)
        result["competitor_rate"] = c.rate
        return result
    finally:
        shutil.rmtree(where, ignore_errors=True)


def run_benchmark(args) -> dict:
    mode = "quick" if args.quick else "full"
    src = Path(args.src).resolve() if args.src else None
    scratch = Path(tempfile.mkdtemp(prefix="wsis-contention-"))
    try:
        if mode == "quick":
            config = ROOT / "tests" / "tiny.toml"
        else:
            config = scratch / "contention.toml"
            config.write_text(FULL_CONFIG)
        data = Path(args.data_root).resolve() if args.data_root else scratch / "data"
        base = ["--config", str(config), "--data-root", str(data), "--device", "cpu"]
        if args.work_dir:
            prepared = Path(args.work_dir).resolve()
        else:
            prepared = scratch / "prepared"
            r = run_wsis(["run", "--stage", "merge_review", *base, "--work-dir", str(prepared)], scratch, src)
            print(f"prepared: wsis run --stage merge_review ({r['seconds']:.0f} s)", file=sys.stderr, flush=True)
        figures = {"alone": {}, "contended": {}, "slowdown": {}, "units": {},
                   "peak_rss_mb": {"alone": {}, "contended": {}}, "busy_notice": {"alone": {}, "contended": {}},
                   "competitor": {"alone": competitor_alone(2.0 if args.quick else 5.0), "contended": {}}}
        for stage in STAGES:
            for contended in (False, True):
                cond = "contended" if contended else "alone"
                r = measure_stage(stage, base, prepared, scratch, mode, src, contended)
                print(f"{stage}, {cond}: {r['throughput']:.3g} {r['unit']} ({r['seconds']:.0f} s)", file=sys.stderr,
                      flush=True)
                figures[cond][stage] = round(r["throughput"], 3)
                figures["units"][stage] = r["unit"]
                figures["peak_rss_mb"][cond][stage] = r["peak_rss_mb"]
                figures["busy_notice"][cond][stage] = r["busy_notice"]
                if contended:
                    figures["competitor"]["contended"][stage] = r["competitor_rate"]
            figures["slowdown"][stage] = round(figures["alone"][stage] / max(figures["contended"][stage], 1e-9), 2)
        figures["max_slowdown"] = max(figures["slowdown"].values())
        if args.demo:
            figures["demo"] = {}
            for contended in (False, True):
                cond = "contended" if contended else "alone"
                r = measure_demo(scratch, src, contended)
                print(f"make demo, {cond}: {r['seconds']:.0f} s", file=sys.stderr, flush=True)
                figures["demo"][f"{cond}_s"] = round(r["seconds"], 1)
                figures["peak_rss_mb"][cond]["demo"] = r["peak_rss_mb"]
                figures["busy_notice"][cond]["demo"] = r["busy_notice"]
                if contended:
                    figures["competitor"]["contended"]["demo"] = r["competitor_rate"]
            figures["demo"]["slowdown"] = round(figures["demo"]["contended_s"] / figures["demo"]["alone_s"], 2)
        code = src or ROOT
        figures["settings"] = {
            "mode": mode, "src": str(code), "commit": commit_of(code), "cpus": os.cpu_count(),
            "epochs": EPOCHS[mode], "window_s": WINDOW_S[mode], "config": str(config) if mode == "quick" else FULL_CONFIG,
            "environment": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
                                                             "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                             "OPENBLAS_NUM_THREADS")},
            "competitor": f"{COMPETITOR_THREADS} threads of 256x256 float64 matrix products, one BLAS thread each"}
        return figures
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def table(f: dict) -> str:
    rows = [f"{'stage':<10} {'unit':<13} {'alone':>8} {'contended':>10} {'slowdown':>9} {'peak RSS MB alone/contended':>28}"]
    for stage in STAGES:
        rss = f"{f['peak_rss_mb']['alone'][stage]} / {f['peak_rss_mb']['contended'][stage]}"
        rows.append(f"{stage:<10} {f['units'][stage]:<13} {f['alone'][stage]:>8.3g} {f['contended'][stage]:>10.3g} "
                    f"{f['slowdown'][stage]:>8.2f}x {rss:>28}")
    rows.append(f"max slowdown {f['max_slowdown']:.2f}x (a fair share of 2 cores between two equal programs: 2x)")
    comp = f["competitor"]
    beside = ", ".join(f"{k} {v:.0f}" for k, v in comp["contended"].items() if v)
    rows.append(f"competitor, products/s: alone {comp['alone']:.0f}; beside wsis: {beside}")
    if "demo" in f:
        d = f["demo"]
        rows.append(f"make demo: alone {d['alone_s']:.0f} s, contended {d['contended_s']:.0f} s ({d['slowdown']:.2f}x); "
                    f"peak RSS {f['peak_rss_mb']['alone']['demo']} / {f['peak_rss_mb']['contended']['demo']} MB")
    rows.append(f"wsis: {f['settings']['src']} at {f['settings']['commit']}")
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--competitor":
        competitor_main(float(sys.argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (tests/tiny.toml), for CI")
    ap.add_argument("--demo", action="store_true", help="also `make demo` (wsis run --stage all) alone and contended")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--src", default=None,
                    help="a wsis checkout to measure instead of this one (e.g. `git worktree add /tmp/wsis-before "
                         "COMMIT`): put first on PYTHONPATH of every wsis process")
    ap.add_argument("--work-dir", default=None,
                    help="a finished run to start from (copied, never changed) instead of preparing one; it must "
                         "have been made with this mode's config and --data-root")
    ap.add_argument("--data-root", default=None, help="the dataset of --work-dir [default: generated]")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the competitor and the wsis process are ended
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    figures = run_benchmark(args)
    print(table(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
