"""Data-parallel training: ``wsis run --gpus N`` runs each training stage in N processes.

The driver (which owns the cache, its manifests and the Dask cluster) spawns N processes and
waits; each rank gets the stage's Job, joins the process group (NCCL on CUDA, one GPU per rank;
gloo on the CPU) and runs the same stage function, in which ``run_training`` wraps the model in
DistributedDataParallel and gives each rank its share of every global batch. Rank 0 alone
writes checkpoints and the model; the driver writes the manifest once torchrun has finished.
"""

from __future__ import annotations

import importlib
import os
import sys

import torch
import torch.distributed as dist

from wsis.errors import WsisError
from wsis.threads import set_torch_threads, set_wait_policy


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    return rank() == 0


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the driver dies, so that a killed run
    leaves no rank training on (and writing) behind it."""
    try:
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch(job, function: str, processes: int) -> None:
    """Run ``pipelines.stages.<function>`` ("module:function") on ``job`` in ``processes``
    data-parallel processes (spawned, rendezvous on a free local port, as torchrun's
    --standalone does); returns when all have finished."""
    import torch.multiprocessing as mp
    if job.device.startswith("cuda") and torch.cuda.device_count() < processes:
        raise WsisError(f"--gpus {processes}: only {torch.cuda.device_count()} CUDA devices are visible")
    address = ("127.0.0.1", free_port())
    # the ranks inherit this environment; the policy must be there before they load PyTorch
    # (``wsis`` has set it already; a caller of the engine may not have)
    set_wait_policy()
    try:
        mp.start_processes(_rank_main, args=(processes, address, job, function), nprocs=processes,
                           start_method="spawn")
    except mp.ProcessRaisedException as e:
        raise WsisError(f"{job.stage}: data-parallel training in {processes} processes failed: "
                        f"{str(e).strip().splitlines()[-1]}") from None
    except mp.ProcessExitedException as e:
        raise WsisError(f"{job.stage}: a data-parallel training process died ({e})") from None


def _rank_main(rank: int, world: int, address: tuple[str, int], job, function: str) -> None:
    die_with_parent()
    if job.device.startswith("cuda"):
        torch.cuda.set_device(rank)
        job.device = f"cuda:{rank}"
        backend = "nccl"
    else:
        # the ranks share the cores instead of each taking all of them
        set_torch_threads(world)
        backend = "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{address[0]}:{address[1]}", rank=rank,
                            world_size=world)
    try:
        module, name = function.split(":")
        getattr(importlib.import_module(f"pipelines.stages.{module}"), name)(job)
    finally:
        dist.destroy_process_group()
    leave_rank()


def leave_rank() -> None:
    """End a rank that finished its work, skipping the interpreter's shutdown.

    Why: a gloo worker thread can still be releasing a finished collective when the rank
    returns (its tensors hold Python objects), and releasing one needs the GIL; once the
    interpreter is shutting down, that thread exits inside a C++ destructor and the process
    aborts (SIGABRT, "terminate called without an active exception"), although training
    finished and rank 0 wrote the model. Seen here about once in 60 runs of two gloo ranks on
    a busy machine (gdb: ProcessGroupGloo::runLoop -> ~AsyncAllreduceWork -> THPVariable_dealloc
    -> take_gil -> pthread_exit, main thread in Py_FinalizeEx); destroy_process_group does not
    wait for it. Everything a rank writes is written and renamed before this point."""
    import logging
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)
