"""Helpers shared by the training stages: devices, schedules, checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import WsisError
from .io import atomic_path


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise WsisError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if device not in ("cpu", "cuda"):
        raise WsisError(f"--device {device}: expected auto, cpu or cuda")
    return device


def poly_lr(base_lr: float, step: int, max_step: int, power: float = 0.9) -> float:
    """Polynomial decay (1 - step/max)^power, as in the IRNet reference schedule."""
    return base_lr * (1 - step / max_step) ** power


def save_checkpoint(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device: str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=False)
