"""Device selection (imports PyTorch only when it has to look for a GPU)."""

from __future__ import annotations

from .errors import WsisError


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise WsisError(f"--device {device}: expected auto, cpu or cuda")
    if device == "cpu":
        return device
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise WsisError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return device
