"""The epoch loop shared by training stages: poly learning rate, progress, a checkpoint after
every epoch and resume from the last one."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from wsis.io import read_json, write_json
from wsis.training import load_checkpoint, poly_lr, save_checkpoint

from .engine import PROGRESS, Job

CHECKPOINT_FILE = "checkpoint.pt"
LOSS_HISTORY_FILE = "loss_history.json"   # per epoch: mean loss and mean of each logged term


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


def run_training(job: Job, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int,
                 num_samples: int, batch_size: int, seed: int,
                 make_batch: Callable[[np.ndarray, int], object],
                 compute_loss: Callable[[object], tuple[torch.Tensor, dict]],
                 warmup_iters: int = 0, grad_clip: float | None = None) -> None:
    """Train ``model`` in place. ``make_batch(indices, epoch)`` builds a batch from sample
    indices; ``compute_loss(batch)`` returns (loss, logs). Every optimizer param group needs a
    ``base_lr``; the rate decays as (1 - step / max_step)^0.9, after a linear warm-up over
    ``warmup_iters`` steps; gradients are clipped to norm ``grad_clip`` when given."""
    batch = min(batch_size, num_samples)
    steps_per_epoch = num_samples // batch
    max_step = steps_per_epoch * epochs
    ckpt_path = job.out_dir / CHECKPOINT_FILE
    start_epoch = 0
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, job.device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = ckpt["epoch"] + 1
        print(f"{job.stage}: resuming after epoch {start_epoch} of {epochs}", flush=True)
    progress = job.progress(max_step - start_epoch * steps_per_epoch, unit="iterations")
    history_path = job.out_dir / LOSS_HISTORY_FILE
    history = read_json(history_path)[:start_epoch] if history_path.is_file() else []
    model.train()
    for epoch in range(start_epoch, epochs):
        order = epoch_order(seed, epoch, num_samples)
        sums: dict[str, float] = {}
        for it in range(steps_per_epoch):
            step = epoch * steps_per_epoch + it
            warm = min(1.0, (step + 1) / warmup_iters) if warmup_iters else 1.0
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, max_step) * warm
            t0 = time.monotonic()
            loss, logs = compute_loss(make_batch(order[it * batch:(it + 1) * batch], epoch))
            for key, value in {"loss": loss, **logs}.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach() if hasattr(value, "detach") else value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            rate = batch / max(time.monotonic() - t0, 1e-9)
            progress.update(1, f"epoch {epoch + 1}/{epochs}, loss {loss.item():.4f}, {rate:.1f} img/s")
        save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch)
        history.append({"epoch": epoch + 1, **{k: v / max(steps_per_epoch, 1) for k, v in sums.items()}})
        write_json(history_path, history)
        write_json(job.out_dir / PROGRESS, {"done": epoch + 1, "total": epochs, "unit": "epochs"})


def finish_training(job: Job, model_file: str, **payload) -> None:
    """Write the final model atomically, then drop the resume checkpoint."""
    save_checkpoint(job.out_dir / model_file, **payload)
    (job.out_dir / CHECKPOINT_FILE).unlink(missing_ok=True)
