"""Device selection. PyTorch is imported only when a GPU may be present or the CPU's features
cannot be read from the operating system: ``wsis report`` and an up-to-date ``wsis run`` resolve
``--device auto`` and ``run.amp = "auto"`` for their cache keys, and importing PyTorch for that
alone cost 1.2-1.7 s of a 3.4 s report refresh (benchmarks/report.py, issue 28)."""

from __future__ import annotations

import os
import platform

from .errors import ConfigError, WsisError

# Device nodes a GPU that PyTorch can drive as "cuda" leaves on Linux: NVIDIA's driver, AMD's
# ROCm (HIP builds of PyTorch call it "cuda" too) and WSL2's GPU paravirtualisation.
GPU_DEVICE_PATHS = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")
CPUINFO = "/proc/cpuinfo"
# x86 CPU flags (Linux /proc/cpuinfo) of bfloat16 arithmetic in hardware: AVX512-BF16, AMX
X86_BF16_FLAGS = frozenset({"avx512_bf16", "amx_tile"})


def no_gpu_present() -> bool:
    """True when this is Linux and no GPU device node exists, so no PyTorch could use CUDA here;
    False when one may (or the system is not Linux): then PyTorch must be asked."""
    return platform.system() == "Linux" and not any(os.path.exists(p) for p in GPU_DEVICE_PATHS)


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags as Linux reports them (the first processor's), or None where
    ``/proc/cpuinfo`` cannot be read (macOS, Windows) or lists none."""
    try:
        with open(CPUINFO) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):     # x86, Arm
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise WsisError(f"--device {device}: expected auto, cpu or cuda")
    if device == "cpu" or (device == "auto" and no_gpu_present()):
        return "cpu"
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
    benchmarks/train_step.py --emulated), so "auto" must not pick it.

    On an x86 Linux CPU the answer comes from the kernel's flags, without PyTorch (the kernel
    lists AVX512-BF16 and AMX only where it also saves their registers); every process of a run
    reads the same flags, so the cache key and the training agree."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    if x86 and not device.startswith("cuda"):
        flags = cpu_flags()
        if flags is not None:
            return bool(flags & X86_BF16_FLAGS)
    import torch
    try:
        if device.startswith("cuda"):
            return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        if x86:
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())   # Arm: the BF16 extension
    except (AttributeError, RuntimeError, TypeError):   # private probes that a PyTorch may lack
        return False


AMP_SETTINGS = ("off", "auto", "bf16", "fp16")


def resolve_amp(amp: str, device: str) -> str:
    """``run.amp`` with "auto" resolved: "bf16" where ``device`` computes it natively
    (``native_bf16``), else "off". Here, not beside the training loop, so that the cache keys
    can resolve it without importing PyTorch."""
    if amp not in AMP_SETTINGS:
        raise ConfigError(f"run.amp: '{amp}' is not off, auto, bf16 or fp16")
    if amp != "auto":
        return amp
    return "bf16" if native_bf16(device) else "off"
