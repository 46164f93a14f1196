"""Mixed precision (run.amp): every model trains a few steps under bf16 autocast on the CPU
with finite losses; fp16 adds a GradScaler whose state is checkpointed; bad values are refused."""

import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.job import Job
from pipelines.trainer import CHECKPOINT_FILE, Precision, run_training
from wsis.errors import ConfigError
from wsis.models.backbone import ResNetStages
from wsis.models.cam import CAMNet
from wsis.models.irn import IRNet, irn_losses
from wsis.models.registry import MODELS

from test_seg_models import batch, make_model, two_images


def train_a_few_steps(tmp_path, model, x, loss_fn, amp, steps=3):
    """Trains ``model`` on one fixed batch for ``steps`` steps; returns the losses and the
    dtype of the forward's first floating output."""
    job = Job("toy", {"run": {"amp": amp, "loader_workers": 0}}, None, (), tmp_path, {}, "cpu")
    opt = torch.optim.SGD([{"params": [p for p in model.parameters() if p.requires_grad],
                            "lr": 1e-3, "base_lr": 1e-3}], lr=1e-3)
    seen = {"losses": [], "dtype": None}

    def forward(net, b):
        out = net(b)
        first = out[0] if isinstance(out, tuple) else (out if torch.is_tensor(out) else None)
        if first is not None and seen["dtype"] is None:
            seen["dtype"] = first.dtype
        return out

    def compute_loss(outputs, b):
        loss = loss_fn(outputs)
        seen["losses"].append(loss.item())
        return loss, {}

    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    run_training(job, model, opt, epochs=steps, num_samples=1, batch_size=1, seed=0,
                 make_sample=lambda index, epoch: x, collate=lambda samples: samples[0],
                 forward=forward, compute_loss=compute_loss)
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "nothing was updated"
    assert len(seen["losses"]) == steps and np.isfinite(seen["losses"]).all(), seen["losses"]
    return seen


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cam_net_trains_under_autocast(tmp_path, amp):
    torch.manual_seed(0)
    model = CAMNet(ResNetStages(18, "none", freeze_bn=True, frozen_stages=0), 3)
    x = torch.rand(2, 3, 64, 64) * 255
    y = torch.tensor([[1.0, 0, 0], [0, 1, 1]])
    seen = train_a_few_steps(tmp_path, model, x, lambda logits: F.multilabel_soft_margin_loss(logits, y), amp)
    assert seen["dtype"] == {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    ckpt = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)
    assert (ckpt["scaler"] is not None) == (amp == "fp16")


def test_irnet_trains_under_bf16(tmp_path):
    torch.manual_seed(0)
    model = IRNet(ResNetStages(18, freeze_bn=True))
    x = torch.rand(1, 3, 64, 64) * 255
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 4:12, 3:9], labels[:, 4:12, 9:14] = 1, 2

    def loss(outputs):
        losses = irn_losses(*outputs, labels, 5)
        return losses["boundary"] + losses["displacement"]
    assert train_a_few_steps(tmp_path, model, x, loss, "bf16")["dtype"] == torch.bfloat16


@pytest.mark.parametrize("name", MODELS)
def test_instance_models_train_under_bf16(tmp_path, name):
    torch.manual_seed(0)
    model = make_model(name)
    x, targets = batch(two_images())
    train_a_few_steps(tmp_path, model, x, lambda out: sum(model.loss(out, targets).values()), "bf16")


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="run.amp: 'fp8'"):
        Precision("fp8", "cpu")


def test_auto_precision_is_bf16_exactly_where_the_device_has_it_in_hardware(monkeypatch):
    import wsis.device
    for native, expected in ((True, "bf16"), (False, "off")):
        monkeypatch.setattr(wsis.device, "native_bf16", lambda device, native=native: native)
        precision = Precision("auto", "cpu")
        assert precision.amp == expected
        assert not precision.scaler.is_enabled()
        with precision.autocast():
            y = torch.nn.Linear(4, 4)(torch.rand(2, 4))
        assert y.dtype == (torch.bfloat16 if native else torch.float32)
    # explicit settings are never second-guessed
    monkeypatch.setattr(wsis.device, "native_bf16", lambda device: False)
    assert Precision("bf16", "cpu").amp == "bf16"


def test_native_bf16_follows_the_cpu_flags(monkeypatch):
    """x86: AVX512-BF16 or AMX, read from the kernel's CPU flags without PyTorch; where those
    cannot be read, from PyTorch's probes; a PyTorch without the probes says no rather than fail."""
    import platform

    import wsis.device
    from wsis.device import native_bf16
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for flags, expected in (({"fpu", "avx512f", "avx512_bf16"}, True), ({"fpu", "amx_tile", "amx_bf16"}, True),
                            ({"fpu", "avx2", "avx512f"}, False)):
        monkeypatch.setattr(wsis.device, "cpu_flags", lambda f=flags: frozenset(f))
        assert native_bf16("cpu") is expected
    monkeypatch.setattr(wsis.device, "cpu_flags", lambda: None)
    for avx512_bf16, amx, expected in ((True, False, True), (False, True, True), (False, False, False)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert native_bf16("cpu") is expected
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert native_bf16("cpu") is False
    if not torch.cuda.is_available():
        assert native_bf16("cuda") is False


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not os.path.isfile("/proc/cpuinfo"),
                    reason="the kernel's CPU flags: x86 Linux")
def test_the_kernel_flags_and_pytorchs_probes_agree_on_this_cpu():
    """The cache key (resolved without PyTorch) and the training (in a process that has it)
    must pick the same precision: on this machine both readings give one answer."""
    from wsis.device import X86_BF16_FLAGS, cpu_flags
    flags = cpu_flags()
    assert flags and "sse2" in flags                     # the parse found the real flags line
    assert bool(flags & X86_BF16_FLAGS) == bool(torch.cpu._is_avx512_bf16_supported()
                                                or torch.cpu._is_amx_tile_supported())


def test_auto_device_and_precision_resolve_without_pytorch_when_no_gpu_is_present(monkeypatch):
    """No GPU device node: "auto" is the CPU, and run.amp = "auto" its precision, decided
    without importing PyTorch (a fresh process that has imported the engine, as the report
    refresh and an up-to-date run have: they need no model); a node present: PyTorch is asked."""
    import wsis.device
    from wsis.device import GPU_DEVICE_PATHS, no_gpu_present
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    assert no_gpu_present()
    for present in GPU_DEVICE_PATHS:
        monkeypatch.setattr(os.path, "exists", lambda p, present=present: p == present)
        assert not no_gpu_present()
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    monkeypatch.setattr(os.path, "exists", lambda p: False)
    assert not no_gpu_present()                          # not Linux: no device nodes to read
    monkeypatch.undo()
    if not no_gpu_present():
        pytest.skip("this machine has a GPU device node: PyTorch is asked")
    code = ("import sys\nimport pipelines.engine\nfrom wsis.device import resolve_amp, resolve_device, native_bf16\n"
            "from types import SimpleNamespace\n"
            "engine_amp = pipelines.engine.Pipeline.resolved_amp(SimpleNamespace(device='auto'))\n"
            "print(resolve_device('auto'), engine_amp == resolve_amp('auto', 'cpu') in ('bf16', 'off'), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "cpu" and out[1] == "True"
    assert out[2] == ("True" if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686")
                      or wsis.device.cpu_flags() is None else "False")
