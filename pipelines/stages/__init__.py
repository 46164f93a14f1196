"""One module per stage: plain functions from a Job (config, dataset, upstream outputs) to
outputs on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

_LOADED: dict = {}   # per worker process: (path, mtime, device) -> loaded model


def load_cached(path: Path, device: str, loader: Callable):
    """Load a model file once per process (Dask workers keep it between chunks)."""
    key = (str(path), path.stat().st_mtime_ns, device)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = loader(path.parent, device)
    return _LOADED[key]
