"""The epoch loop shared by training stages: poly learning rate, progress, a checkpoint after
every epoch and resume from the last one."""

from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch

from wsis.errors import ConfigError, WsisError
from wsis.io import read_json_or_none, write_json
from wsis.device import resolve_amp
from wsis.threads import FairThreads
from wsis.checkpoint import UnreadableCheckpoint, load_checkpoint, poly_lr, save_checkpoint

from . import distributed
from .job import LOSS_HISTORY_FILE, PROGRESS, Job

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.previous.pt"   # the epoch before: resumed from when the last is damaged


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
    """``run.amp``: "off", "bf16", "fp16" or "auto" (bf16 where the device has it in hardware)
    autocast for the forward pass (Micikevicius et al., 2018: loss scaling for fp16, not needed
    for bf16's float32 exponent range)."""

    def __init__(self, amp: str, device: str):
        self.device_type = "cuda" if device.startswith("cuda") else "cpu"
        self.amp = resolve_amp(amp, device)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.amp == "fp16")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=AMP_DTYPES.get(self.amp, torch.bfloat16),
                              enabled=self.amp != "off")


def to_device(tree, device: str):
    """Tensors of a batch (nested dicts, lists, tuples) moved to ``device``; non-blocking, so a
    pinned host batch is copied while the GPU works."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device, non_blocking=True)
    if isinstance(tree, dict):
        return {k: to_device(v, device) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_device(v, device) for v in tree)
    return tree


def loader_workers(setting: int, device: str) -> int:
    """``run.loader_workers``: -1 = automatic, 0 = build batches in the training process.

    Automatic is one worker per CPU core when training on CUDA, where the cores are free to
    decode and augment; and none when training on the CPU, where the model needs the cores
    (measured on 2 cores: SOLOv2 at 1.9 iterations/s with batches built in the training
    process, 1.7 with one or two worker processes competing for the same cores)."""
    if setting < -1:
        raise ConfigError(f"run.loader_workers: {setting} (expected -1 for automatic, 0, or more)")
    if setting == -1:
        return (os.cpu_count() or 1) if device.startswith("cuda") else 0
    return setting


class EpochSamples(torch.utils.data.Dataset):
    """Samples keyed by (epoch, index): each is a function of its key alone (its RNG is seeded
    by (seed, epoch, index)), so worker processes, their number and a resume all give the same
    batches."""

    def __init__(self, make_sample: Callable[[int, int], object]):
        self.make_sample = make_sample

    def __getitem__(self, key):
        epoch, index = key
        return self.make_sample(int(index), int(epoch))


def stack_samples(samples: list[tuple]) -> tuple:
    """Collate (tensor, tensor, ...) samples into stacked tensors."""
    return tuple(torch.stack(parts) for parts in zip(*samples))


def batch_loader(make_sample, collate, batches: list[list[tuple[int, int]]], workers: int, device: str):
    """A DataLoader over fixed batches of (epoch, index) keys, built in ``workers`` processes
    (forked, so the closures need no pickling), pinned for CUDA."""
    import multiprocessing
    options = {}
    if workers > 0:
        options = dict(prefetch_factor=2, multiprocessing_context=(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else None))
    return torch.utils.data.DataLoader(EpochSamples(make_sample), batch_sampler=batches, num_workers=workers,
                                       collate_fn=collate, pin_memory=device.startswith("cuda"), **options)


def run_training(job: Job, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epochs: int,
                 num_samples: int, batch_size: int, seed: int,
                 make_sample: Callable[[int, int], object],
                 collate: Callable[[list], object],
                 forward: Callable[[torch.nn.Module, object], object],
                 compute_loss: Callable[[object, object], tuple[torch.Tensor, dict]],
                 warmup_iters: int = 0, grad_clip: float | None = None,
                 find_unused_parameters: bool = False) -> None:
    """Train ``model`` in place.

    ``make_sample(index, epoch)`` builds one training sample on the CPU (decode, augment,
    targets) and ``collate(samples)`` a batch of them; both run in DataLoader worker processes
    (``run.loader_workers``). The batch is moved to the device, ``forward(net, batch)`` runs
    ``net`` (the model, or its DistributedDataParallel wrapper under ``wsis run --gpus N``) (under autocast when ``run.amp`` asks for it), and ``compute_loss(outputs, batch)``
    returns (loss, logs) from the outputs cast to float32. Every optimizer param group needs a
    ``base_lr``; the rate decays as (1 - step / max_step)^0.9, after a linear warm-up over
    ``warmup_iters`` steps; gradients are clipped to norm ``grad_clip`` when given."""
    precision = Precision(job.cfg["run"]["amp"], job.device)
    workers = loader_workers(job.cfg["run"]["loader_workers"], job.device)
    world, rank = distributed.world_size(), distributed.rank()
    if job.cfg["run"]["amp"] == "auto" and rank == 0:
        print(f"{job.stage}: run.amp = auto: {precision.amp} on {job.device}", flush=True)
    net = data_parallel(model, job, find_unused_parameters) if world > 1 else model
    if job.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = job.cfg["run"]["cudnn_benchmark"]
        if job.cfg["run"]["channels_last"]:
            model.to(memory_format=torch.channels_last)
    batch = min(batch_size, num_samples)
    if batch % world:
        raise ConfigError(f"{job.stage}: batch size {batch} does not split over {world} processes")
    steps_per_epoch = num_samples // batch
    max_step = steps_per_epoch * epochs
    ckpt_path = job.out_dir / CHECKPOINT_FILE
    start_epoch = 0
    ckpt = resume_state(job, rank)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            precision.scaler.load_state_dict(ckpt["scaler"])
        start_epoch = ckpt["epoch"] + 1
        if rank == 0:
            print(f"{job.stage}: resuming after epoch {start_epoch} of {epochs}", flush=True)
    # Each rank takes every world-th sample of each global batch: the global batch, and so
    # the result, is the same for any number of processes, and a resume replays it exactly.
    batches = [[(epoch, int(i)) for i in epoch_order(seed, epoch, num_samples)[it * batch:(it + 1) * batch]][rank::world]
               for epoch in range(start_epoch, epochs) for it in range(steps_per_epoch)]
    progress = job.progress(len(batches), unit="iterations") if rank == 0 else None
    history_path = job.out_dir / LOSS_HISTORY_FILE
    history = read_json_or_none(history_path)
    history = history[:start_epoch] if isinstance(history, list) else []
    sums: dict[str, float] = {}
    # the CPU threads follow what other programs leave free (wsis.threads.FairThreads)
    fair = FairThreads(world) if job.device == "cpu" else None
    model.train()
    t0 = time.monotonic()
    for n, data in enumerate(batch_loader(make_sample, collate, batches, workers, job.device)):
        step = start_epoch * steps_per_epoch + n
        epoch, it = divmod(step, steps_per_epoch)
        warm = min(1.0, (step + 1) / warmup_iters) if warmup_iters else 1.0
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(group["base_lr"], step, max_step) * warm
        data = to_device(data, job.device)
        with precision.autocast():
            outputs = forward(net, data)
        loss, logs = compute_loss(as_float32(outputs), data)
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        if grad_clip:
            precision.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        precision.scaler.step(optimizer)
        precision.scaler.update()
        if world > 1:   # the loss every rank reports is the global batch's
            loss = loss.detach().clone()
            torch.distributed.all_reduce(loss)
            loss /= world
        if not torch.isfinite(loss):
            # every later step would be NaN too; checked on the global loss, so all ranks stop
            kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch had finished"
            raise WsisError(f"{job.stage}: the loss became {loss.item()} in epoch {epoch + 1} of {epochs}; stopped "
                            f"({kept}); lower the learning rate, or check the data")
        for key, value in {"loss": loss, **logs}.items():   # logs: this rank's share
            sums[key] = sums.get(key, 0.0) + float(value.detach() if hasattr(value, "detach") else value)
        if fair and fair.update() and rank == 0:
            print(f"{job.stage}: {fair.describe()}", flush=True)
        rate = batch / max(time.monotonic() - t0, 1e-9)
        t0 = time.monotonic()
        if progress:
            progress.update(1, f"epoch {epoch + 1}/{epochs}, loss {loss.item():.4f}, {rate:.1f} img/s")
        if it == steps_per_epoch - 1:
            history.append({"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}})
            sums = {}
            if rank == 0:
                if ckpt_path.is_file():
                    os.replace(ckpt_path, job.out_dir / PREVIOUS_CHECKPOINT_FILE)
                save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                                scaler=precision.scaler.state_dict() if precision.scaler.is_enabled() else None)
                write_json(history_path, history)
                write_json(job.out_dir / PROGRESS, {"done": epoch + 1, "total": epochs, "unit": "epochs"})


def data_parallel(model: torch.nn.Module, job: Job, find_unused_parameters: bool) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel. Trainable BatchNorm becomes SyncBatchNorm
    on CUDA, so its statistics cover the global batch (frozen BatchNorm, in eval mode, has
    nothing to sync); on the CPU (gloo, for testing) each rank keeps its own statistics and
    DDP broadcasts rank 0's buffers."""
    from torch.nn.parallel import DistributedDataParallel
    if job.device.startswith("cuda"):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[torch.device(job.device).index],
                                       find_unused_parameters=find_unused_parameters)
    return DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)


def finish_training(job: Job, model_file: str, **payload) -> None:
    """Write the final model atomically (rank 0 alone), then drop the resume checkpoint."""
    if not distributed.is_main_process():
        return
    save_checkpoint(job.out_dir / model_file, **payload)
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        (job.out_dir / name).unlink(missing_ok=True)


def resume_state(job: Job, rank: int) -> dict | None:
    """The last readable resume checkpoint: the last epoch's, or, when that one is truncated or
    corrupt (a disk that lost its tail, a copy cut short), the epoch before's, so only that
    last epoch is trained again. None: start from the first epoch."""
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        path = job.out_dir / name
        if not path.is_file():
            continue
        try:
            ckpt = load_checkpoint(path, job.device)
            if not isinstance(ckpt, dict) or not {"model", "optimizer", "epoch"} <= ckpt.keys():
                raise UnreadableCheckpoint(f"{path}: not a resume checkpoint")
            return ckpt
        except UnreadableCheckpoint as e:
            if rank == 0:   # left in place: other ranks may still be reading it; the next epoch replaces it
                print(f"{job.stage}: discarded the resume checkpoint {e}", flush=True)
    return None
