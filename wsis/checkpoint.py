"""Checkpoints and the learning-rate schedule shared by the training stages."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import DataError
from .io import atomic_path


def poly_lr(base_lr: float, step: int, max_step: int, power: float = 0.9) -> float:
    """Polynomial decay (1 - step/max)^power, as in the IRNet reference schedule."""
    return base_lr * (1 - step / max_step) ** power


def save_checkpoint(path: Path, **state) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class UnreadableCheckpoint(DataError):
    """A checkpoint file that is truncated, corrupt, or holds more than tensors and plain data."""


def load_checkpoint(path: Path, device: str = "cpu") -> dict:
    """A checkpoint written by ``save_checkpoint`` (or any file of tensors, dicts, lists and
    numbers). ``weights_only`` restricts unpickling to those types: a checkpoint is a pickle,
    and a full unpickler runs whatever code a crafted file names, so a file from elsewhere
    (``wsis predict --checkpoint``) or one tampered with on a shared disk could run code."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        raise UnreadableCheckpoint(f"{path}: refused: the checkpoint holds Python objects other than tensors and "
                                   f"plain data, which could run code when loaded") from None
    except Exception as e:   # torch reports a truncated zip as RuntimeError, other garbage as KeyError, EOFError...
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise UnreadableCheckpoint(f"{path}: not a readable checkpoint, truncated or corrupt "
                                   f"({type(e).__name__}: {first})") from None
