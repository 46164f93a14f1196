"""What a stage function is given, and the files a stage writes beside its outputs: the small
types that the engine, the Dask runner, the stages and the training loop (``trainer``) all
use. It imports none of those modules, so that ``trainer`` needs nothing from the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wsis.data import Dataset

from .progress import Progress

PROGRESS = "progress.json"
METRICS = "metrics.json"


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

    def progress(self, total: int, unit: str = "images") -> Progress:
        return Progress(self.stage, total, unit)
