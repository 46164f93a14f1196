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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--kib", type=int, default=16, help="size of each per-image output")
    ap.add_argument("--model-mb", type=int, default=100)
    args = ap.parse_args()
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
