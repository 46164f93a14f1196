"""Checkpoints and the learning-rate schedule shared by the training stages."""

from __future__ import annotations

from pathlib import Path

import torch

from .io import atomic_path


def poly_lr(base_lr: float, step: int, max_step: int, power: float = 0.9) -> float:
    """Polynomial decay (1 - step/max)^power, as in the IRNet reference schedule."""
    return base_lr * (1 - step / max_step) ** power


def save_checkpoint(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device: str = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=False)
