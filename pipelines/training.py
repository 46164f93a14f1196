"""The epoch loop shared by training stages: poly learning rate, progress, a checkpoint after
every epoch and resume from the last one."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from wsis.errors import ConfigError
from wsis.io import write_json
from wsis.training import load_checkpoint, poly_lr, save_checkpoint

from .engine import PROGRESS, Job

CHECKPOINT_FILE = "checkpoint.pt"


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffle of epoch ``epoch``: a function of (seed, epoch) only, so resuming replays it."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def sgd(groups: list[tuple[list, float]], momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over (params, learning rate) groups; each group keeps its rate as ``base_lr`` for
    the poly schedule of ``run_training``."""
    return torch.optim.SGD([{"params": p, "lr": lr, "base_lr": lr} for p, lr in groups],
                           lr=groups[0][1], momentum=momentum, weight_decay=weight_decay)


def make_optimizer(kind: str, params: list, lr: float, momentum: float, weight_decay: float):
    """"sgd" (with ``momentum``) or "adam", with ``base_lr`` set for ``run_training``."""
    if kind == "sgd":
        return sgd([(params, lr)], momentum, weight_decay)
    if kind == "adam":
        return torch.optim.Adam([{"params": params, "lr": lr, "base_lr": lr}], lr=lr, weight_decay=weight_decay)
    from wsis.errors import ConfigError
    raise ConfigError(f"optimizer: '{kind}' is not 'sgd' or 'adam'")


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def as_float32(tree):
    """Tensors of a model's output (nested dicts, lists, tuples) cast to float32, so that losses
    are computed in full precision after a mixed-precision forward."""
    if isinstance(tree, torch.Tensor):
        return tree.float() if tree.is_floating_point() else tree
    if isinstance(tree, dict):
        return {k: as_float32(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(as_float32(v) for v in tree)
    return tree


class Precision:
    """``run.amp``: "off", "bf16" or "fp16" autocast for the forward pass (Micikevicius et al.,
    2018: loss scaling for fp16, not needed for bf16's float32 exponent range)."""

    def __init__(self, amp: str, device: str):
        if amp not in ("off", *AMP_DTYPES):
            raise ConfigError(f"run.amp: '{amp}' is not off, bf16 or fp16")
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.amp = amp
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=amp == "fp16")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=AMP_DTYPES.get(self.amp, torch.bfloat16),
                              enabled=self.amp != "off")


def run_training(job: Job, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int,
                 num_samples: int, batch_size: int, seed: int,
                 make_batch: Callable[[np.ndarray, int], object],
                 forward: Callable[[object], object],
                 compute_loss: Callable[[object, object], tuple[torch.Tensor, dict]],
                 warmup_iters: int = 0, grad_clip: float | None = None) -> None:
    """Train ``model`` in place. ``make_batch(indices, epoch)`` builds a batch from sample
    indices; ``forward(batch)`` runs the model (under autocast when ``run.amp`` asks for it);
    ``compute_loss(outputs, batch)`` returns (loss, logs) from the outputs cast to float32.
    Every optimizer param group needs a ``base_lr``; the rate decays as
    (1 - step / max_step)^0.9, after a linear warm-up over ``warmup_iters`` steps; gradients
    are clipped to norm ``grad_clip`` when given."""
    precision = Precision(job.cfg["run"]["amp"], job.device)
    batch = min(batch_size, num_samples)
    steps_per_epoch = num_samples // batch
    max_step = steps_per_epoch * epochs
    ckpt_path = job.out_dir / CHECKPOINT_FILE
    start_epoch = 0
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, job.device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            precision.scaler.load_state_dict(ckpt["scaler"])
        start_epoch = ckpt["epoch"] + 1
        print(f"{job.stage}: resuming after epoch {start_epoch} of {epochs}", flush=True)
    progress = job.progress(max_step - start_epoch * steps_per_epoch, unit="iterations")
    model.train()
    for epoch in range(start_epoch, epochs):
        order = epoch_order(seed, epoch, num_samples)
        for it in range(steps_per_epoch):
            step = epoch * steps_per_epoch + it
            warm = min(1.0, (step + 1) / warmup_iters) if warmup_iters else 1.0
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, max_step) * warm
            t0 = time.monotonic()
            data = make_batch(order[it * batch:(it + 1) * batch], epoch)
            with precision.autocast():
                outputs = forward(data)
            loss, _ = compute_loss(as_float32(outputs), data)
            optimizer.zero_grad(set_to_none=True)
            precision.scaler.scale(loss).backward()
            if grad_clip:
                precision.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            precision.scaler.step(optimizer)
            precision.scaler.update()
            rate = batch / max(time.monotonic() - t0, 1e-9)
            progress.update(1, f"epoch {epoch + 1}/{epochs}, loss {loss.item():.4f}, {rate:.1f} img/s")
        save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                        scaler=precision.scaler.state_dict() if precision.scaler.is_enabled() else None)
        write_json(job.out_dir / PROGRESS, {"done": epoch + 1, "total": epochs, "unit": "epochs"})


def finish_training(job: Job, model_file: str, **payload) -> None:
    """Write the final model atomically, then drop the resume checkpoint."""
    save_checkpoint(job.out_dir / model_file, **payload)
    (job.out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
