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


class CheckpointMismatch(DataError):
    """A checkpoint whose tensors are not those of the model it is loaded into."""


def _first(keys, n: int = 3) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return f"{shown} (and {len(keys) - n} more)" if len(keys) > n else shown


def state_problem(model: torch.nn.Module, state) -> str | None:
    """Why the state dict ``state`` cannot be loaded into ``model`` whatever its keys: not a
    dict, or values that are not tensors or have another shape than the model's (the first few
    named); None when each tensor fits the key it loads into. Checked before anything loads."""
    if not isinstance(state, dict):
        return f"its weights are a {type(state).__name__}, not a dict of tensors"
    own = model.state_dict()
    not_tensors = [k for k in state if k in own and not isinstance(state[k], torch.Tensor)]
    if not_tensors:
        return f"not tensors: {_first(not_tensors)}"
    shapes = [f"{k} {list(state[k].shape)} (the model's {list(own[k].shape)})" for k in state
              if k in own and state[k].shape != own[k].shape]
    return f"{len(shapes)} of another shape: {_first(shapes, 2)}" if shapes else None


def keys_problem(missing, unexpected) -> str | None:
    """The first unexpected and missing keys of a load, in one phrase; None when there are none."""
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key{'s' * (len(unexpected) > 1)}: {_first(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing key{'s' * (len(missing) > 1)}: {_first(missing)}")
    return "; ".join(problems) or None


def load_fitting(model: torch.nn.Module, state, source, what: str) -> None:
    """Load ``state`` into ``model`` as ``load_state_dict(strict=True)`` would, but a file from
    elsewhere (``wsis predict --checkpoint``) that does not fit is one line naming ``source``,
    ``what`` the model is and the first unexpected, missing or mis-shaped keys, not PyTorch's
    multi-line error. Keys are matched by PyTorch itself, so a module's own loading rules hold
    (FrozenBatchNorm2d drops BatchNorm's ``num_batches_tracked``); as with PyTorch's strict
    load, a refused model may be partly loaded, and is to be discarded."""
    problem = state_problem(model, state)
    if problem is None:
        result = model.load_state_dict(state, strict=False)
        problem = keys_problem(result.missing_keys, result.unexpected_keys)
    if problem:
        raise CheckpointMismatch(f"{source}: does not fit {what}: {problem}")
