"""The cost of the cache's integrity checks (issue 21, point 1) on 10,000 per-image outputs and
a 100 MB model, in a temporary work dir: what a finished stage records, what plain ``status``
and a no-op ``run`` pay per stage (one manifest read, one stat per output), what
``status --verify`` pays (every output hashed), and the hash a run pays before a stage reads
its upstream's outputs. For comparison, the checks of the manifests before full-content hashes
(the first and last MiB hashed, each per-image file opened for a structural check).

Each figure is the process CPU time (robust on a shared machine) and the wall time of one pass
after a warm-up pass, so files are in the page cache, as they are right after a stage wrote them
or when a run reads them anyway.

    python benchmarks/integrity.py                       # 10,000 outputs of 16 KiB, a 100 MB model
    python benchmarks/integrity.py --images 2000 --kib 64
    python benchmarks/integrity.py --work-dir runs/synthetic --wall 560   # a finished run

With ``--work-dir`` it measures a finished run instead: the hashes a run from nothing adds
(every stage's outputs hashed once, when the stage finishes), and ``status --verify`` (every
output hashed again), against the run's wall time ``--wall`` in seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.cache import MANIFEST, damaged_outputs, record_outputs  # noqa: E402
from wsis.io import file_sha256, quick_hash, read_json, write_json  # noqa: E402


def timed(fn):
    fn()                                   # warm-up: the page cache, as after a write
    cpu, wall = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def old_records(out: Path, names: set[str]) -> dict:
    """The manifest entries of per-image outputs before full-content hashes: their size."""
    return {n: (out / n).stat().st_size for n in sorted(names)}


def measure_run(work_dir: Path, wall: float | None) -> None:
    """What the full-content hashes cost a finished run in ``work_dir``: each stage's outputs
    hashed once when it finished (``record_outputs``), and all of them again by ``status --verify``."""
    stages = sorted(p.parent for p in work_dir.glob("*/" + MANIFEST))
    if not stages:
        raise SystemExit(f"{work_dir}: no stage manifests; is it a finished wsis work dir?")
    files = sum(len(read_json(d / MANIFEST).get("outputs", {})) for d in stages)
    size = sum(p.stat().st_size for d in stages for p in d.rglob("*") if p.is_file())
    cpu, elapsed, _ = timed(lambda: [record_outputs(d) for d in stages])
    record_cpu, record_wall = cpu, elapsed
    print(f"{work_dir}: {len(stages)} stages, {files} outputs, {size / 2**20:.1f} MiB")
    print(f"hash every output once (what a run from nothing adds): CPU {cpu:.2f} s, wall {elapsed:.2f} s")
    cpu, elapsed, _ = timed(lambda: [damaged_outputs(d, read_json(d / MANIFEST).get("outputs", {}), set(), verify=True)
                                     for d in stages])
    print(f"status --verify (every output hashed again): CPU {cpu:.2f} s, wall {elapsed:.2f} s")
    if wall:
        print(f"share of the run's {wall:.0f} s wall time added by the hashes at the end of each stage: "
              f"{100 * record_cpu / wall:.2f} % (their CPU time), {100 * record_wall / wall:.2f} % (their wall time)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--kib", type=int, default=16, help="size of each per-image output")
    ap.add_argument("--model-mb", type=int, default=100)
    ap.add_argument("--work-dir", type=Path, help="measure this finished run's outputs instead")
    ap.add_argument("--wall", type=float, help="with --work-dir: the run's wall time in seconds")
    args = ap.parse_args()
    if args.work_dir is not None:
        return measure_run(args.work_dir, args.wall)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stage"
        out.mkdir()
        import numpy as np
        from wsis.io import write_npz
        rng = np.random.default_rng(0)
        payload = rng.integers(0, 255, args.kib * 1024, dtype=np.uint8)
        names = set()
        for i in range(args.images):
            write_npz(out / f"img_{i:05d}.npz", data=np.roll(payload, i))
            names.add(f"img_{i:05d}.npz")
        big = out.parent / "model"
        big.mkdir()
        (big / "model.pt").write_bytes(os.urandom(args.model_mb << 20))

        rows = []
        cpu, wall, records = timed(lambda: record_outputs(out))
        rows.append((f"record: stat + sha256 of {args.images} outputs (at the end of the stage)", cpu, wall))
        write_json(out / MANIFEST, {"outputs": records})
        cpu, wall, _ = timed(lambda: damaged_outputs(out, read_json(out / MANIFEST)["outputs"], names))
        rows.append((f"plain status / no-op run: manifest read + {args.images} stats", cpu, wall))
        cpu, wall, _ = timed(lambda: damaged_outputs(out, read_json(out / MANIFEST)["outputs"], names, verify=True))
        rows.append((f"status --verify: every output hashed ({args.images} x {args.kib} KiB)", cpu, wall))
        model_records = record_outputs(big)
        cpu, wall, _ = timed(lambda: damaged_outputs(big, model_records, set(), verify=True))
        rows.append((f"verification before a stage reads a {args.model_mb} MB model", cpu, wall))
        cpu, wall, _ = timed(lambda: file_sha256(big / "model.pt"))
        rows.append((f"sha256 of the {args.model_mb} MB model alone", cpu, wall))
        old = old_records(out, names)
        cpu, wall, _ = timed(lambda: damaged_outputs(out, old, names))
        rows.append((f"before (old manifests): {args.images} stats + structural checks", cpu, wall))
        cpu, wall, _ = timed(lambda: quick_hash(big / "model.pt"))
        rows.append((f"before (old manifests): first and last MiB of the {args.model_mb} MB model", cpu, wall))

        width = max(len(r[0]) for r in rows)
        print(f"{'check':<{width}}  {'CPU s':>8}  {'wall s':>8}")
        for what, cpu, wall in rows:
            print(f"{what:<{width}}  {cpu:8.3f}  {wall:8.3f}")


if __name__ == "__main__":
    main()
