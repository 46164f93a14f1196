"""What a stage function is given, and the files a stage writes beside its outputs: the small
types that the engine, the Dask runner, the stages and the training loop (``trainer``) all
use. It imports none of those modules, so that ``trainer`` needs nothing from the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from wsis.data import Dataset

from .progress import Progress

PROGRESS = "progress.json"
METRICS = "metrics.json"
LOSS_HISTORY_FILE = "loss_history.json"   # a training stage's, per epoch: mean loss and mean of each logged term


@dataclass
class Job:
    """Everything a stage function needs; picklable, so per-image work can ship to Dask."""
    stage: str
    cfg: dict
    dataset: Dataset
    ids: tuple[str, ...]
    out_dir: Path
    inputs: dict[str, Path]
    device: str = "cpu"
    torch_threads: int | None = None
    # how ``map_ids`` reaches Dask: set by the engine for a whole-dataset stage (it holds the
    # Dask client, so a task's job never carries it); None maps in this process
    mapper: Callable | None = field(default=None, repr=False, compare=False)

    def progress(self, total: int, unit: str = "images") -> Progress:
        return Progress(self.stage, total, unit)

    def map_ids(self, fn: Callable, work: dict, unit: str = "images") -> list:
        """``fn(job, chunk)`` over ``work`` ({image id: what that image's work needs}) in
        chunks of ``run.chunk_size`` ({image id: ...} each, in ``work``'s order), as CPU tasks
        on the engine's Dask workers, else in this process; returns each chunk's result, in
        order. ``fn`` must be importable by name, and its result small: it comes back to the
        driver. For a whole-dataset stage's per-image work (a per-image stage writes files)."""
        if self.mapper is not None:
            return self.mapper(fn, self, work, unit)
        progress = self.progress(len(work), unit)
        results = []
        for chunk in id_chunks(work, self.cfg):
            results.append(fn(self, chunk))
            progress.update(len(chunk))
        return results


def id_chunks(work: dict, cfg: dict) -> list[dict]:
    """``work`` ({image id: ...}) in chunks of ``run.chunk_size`` ids, in order."""
    ids, size = list(work), max(1, int(cfg["run"]["chunk_size"]))
    return [{i: work[i] for i in ids[k:k + size]} for k in range(0, len(ids), size)]
