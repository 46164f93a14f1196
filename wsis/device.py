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


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 in hardware: CUDA with native bf16 (Ampere and
    later), an x86 CPU with AVX512-BF16 or AMX, an Arm CPU with its BF16 extension.

    Elsewhere bf16 is emulated and slow: with oneDNN limited to AVX2, SOLOv2's training step under
    bf16 autocast measured 8.8 s against 0.49 s in float32 under the same limit (18x;
    benchmarks/train_step.py --emulated), so "auto" must not pick it."""
    import platform

    import torch
    try:
        if device.startswith("cuda"):
            return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())   # Arm: the BF16 extension
    except (AttributeError, RuntimeError, TypeError):   # private probes that a PyTorch may lack
        return False
