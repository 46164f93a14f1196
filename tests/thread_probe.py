"""A toy pipeline, run as ``python tests/thread_probe.py OUT_DIR`` by tests/test_contention.py,
whose stages record the thread settings of the process each runs in: the driver (a stage run
in process), a local Dask worker (a per-image stage) and the data-parallel ranks of
``--gpus 2`` on the CPU (gloo), each as wsis runs it. It imports ``wsis.cli`` first, as the
``wsis`` command does, and starts nothing else, so the settings are wsis's own.

The processes that wsis spawns (Dask workers, DDP ranks) import this file again as
``__mp_main__``; it registers itself as ``pipelines.stages.thread_probe``, the name under which
the stages (and the ranks) find their functions.
"""

import wsis.cli  # noqa: F401  (first, as in the wsis command: sets the wait policy)

import json
import os
import sys
from pathlib import Path

sys.modules.setdefault("pipelines.stages.thread_probe", sys.modules[__name__])

PROBED = ("driver", "worker", "rank")


def settings(role: str) -> dict:
    """This process's settings: the wait policy in its environment and PyTorch's thread count;
    and the processes the driver has spawned at that moment (Dask workers, ranks)."""
    import psutil
    import torch
    import torch.distributed as dist
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else None
    driver = psutil.Process(os.getppid() if role in ("rank", "worker") else os.getpid())
    spawned = [p.pid for p in driver.children() if "spawn_main" in " ".join(p.cmdline())]
    return {"role": role, "pid": os.getpid(), "rank": rank, "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
            "torch_threads": torch.get_num_threads(), "spawned": spawned}


def write(job, role: str) -> None:
    record = settings(role)
    (job.out_dir / f"{role}-{record['pid']}.json").write_text(json.dumps(record))


def driver(job) -> None:
    write(job, "driver")


def worker(job, ids) -> None:
    write(job, "worker")
    for i in ids:
        (job.out_dir / f"{i}.txt").write_text(i)


def rank(job) -> None:
    write(job, "rank")


def main(out: Path) -> None:
    from pipelines.engine import Pipeline, Stage
    from wsis.data import Dataset
    ids = tuple("abcdefgh")
    ds = Dataset("toy", out, ("a",), {"all": ids}, {i: (0,) for i in ids})
    every = lambda cfg: ["all"]   # noqa: E731
    stages = [Stage("driver", "driver", (), (), 1, every, run="thread_probe:driver", reads_images=False),
              Stage("worker", "worker", ("driver",), (), 1, every, per_image="thread_probe:worker",
                    output_name="{id}.txt", reads_images=False),
              Stage("rank", "rank", ("worker",), (), 1, every, run="thread_probe:rank", reads_images=False,
                    data_parallel=True)]
    pipeline = Pipeline({s.name: s for s in stages}, {"run": {"chunk_size": 1}}, ds, out / "work", "cpu",
                        workers=2, processes=2)
    pipeline.run("all")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
