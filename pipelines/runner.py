"""Per-image stages over Dask: the runner (a local cluster or an existing scheduler), the
task each chunk of images runs as, and distributed's logging kept to one line per event.

Dask pickles functions by reference: ``_run_chunk`` must stay importable from this module.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import gc
from wsis.errors import WsisError
from wsis.threads import usable_cpus, wait_policy_env

from .job import Job, id_chunks
from .progress import Progress
from .stage import Stage


def _run_chunk(fn, job: Job, chunk):
    """One Dask task: ``fn(job, chunk)`` (a per-image stage's list of image ids, or a
    ``Job.map_ids`` chunk), whose result it returns. A WsisError (bad input) comes back as a
    value, so that the task's retries are spent only on unexpected failures. A CUDA task is
    pinned to the GPU of its worker: worker k of a local GPU cluster uses GPU k (a dask-cuda
    worker sees one GPU)."""
    if job.torch_threads:
        import torch
        torch.set_num_threads(job.torch_threads)
    if job.device == "cuda":
        import torch
        from distributed import get_worker
        name = get_worker().name
        gpu = (name if isinstance(name, int) else 0) % max(torch.cuda.device_count(), 1)
        torch.cuda.set_device(gpu)
        job = dataclasses.replace(job, device=f"cuda:{gpu}")
    try:
        return fn(job, chunk)
    except WsisError as e:
        return e


def task_job(job: Job, ids) -> Job:
    """The job one task needs: its own image ids, and a shallow copy of the dataset whose
    per-image tables (labels, file names, annotations: any dict keyed by every id of the
    chunk) and split lists hold only those ids, so no task carries the whole dataset; no
    mapper (a task maps nothing further, and the mapper holds the Dask client)."""
    ids = list(ids)
    chunk = set(ids)
    ds = copy.copy(job.dataset)
    for name, value in vars(job.dataset).items():
        if isinstance(value, dict) and len(value) >= len(chunk) and chunk <= value.keys():
            setattr(ds, name, {k: v for k, v in value.items() if k in chunk})
    ds.splits = {s: tuple(i for i in v if i in chunk) for s, v in job.dataset.splits.items()}
    return dataclasses.replace(job, dataset=ds, ids=tuple(ids), mapper=None)


SCHEDULER_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")


def check_scheduler_address(address: str) -> str:
    """``address`` as scheme://host:port (tcp:// when no scheme is given), or a one-line
    error saying what form is expected."""
    from urllib.parse import urlsplit
    text = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        port = None
        parts = None
    if parts is None or parts.scheme not in SCHEDULER_SCHEMES or not parts.hostname or port is None \
            or parts.path not in ("", "/"):
        raise WsisError(f"--scheduler {address}: expected a dask scheduler address like tcp://HOST:PORT")
    return text.rstrip("/")


CONNECT_TIMEOUT_S = 20


# Starting the local workers costs about 5 s on 2 cores, while the report's per-image work is
# light: its 210 pictures of 200 photos took 2.7 s in one process and 1.7 s on two workers. So
# ``map_ids`` starts them for this many images or more only; below, the work stays in process.
COLD_START_MIN_IMAGES = 500


class DaskRunner:
    """Maps per-image stage chunks over Dask: a local cluster (started on first use) or an
    existing scheduler (connected before anything runs)."""

    # Threads of the numerical libraries in each local worker (one task per worker process).
    # Passed as the workers' own environment: distributed's "pre-spawn-environ" would also
    # set them in this process, and the driver's training stages would then run on one thread.
    # The workers also get wsis's OpenMP wait policy (wsis.threads), set before they load PyTorch.
    WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    TASK_RETRIES = 2

    def __init__(self, scheduler: str | None, workers: int, device: str):
        self.scheduler, self.workers, self.device = scheduler, workers, device
        self.client = self.cluster = None
        self.gpu_client = self.gpu_cluster = None   # local: one worker per GPU, for "gpu" stages

    def task_kind(self, stage: Stage) -> str:
        """"gpu" for a stage that runs a network when --device is cuda; everything else
        (the CRF, the walk, synthesis, and networks on the CPU) is "cpu" work."""
        return "gpu" if stage.resource == "gpu" and self.device == "cuda" else "cpu"

    def connect_scheduler(self) -> None:
        """Connect to ``--scheduler`` now. The handshake runs in a thread with a wall-clock
        limit: a server that is not Dask can make it hang or ask for an absurd allocation."""
        if not self.scheduler or self.client is not None:
            return
        import threading
        address = check_scheduler_address(self.scheduler)
        result: dict = {}

        def connect():
            try:
                from distributed import Client
                result["client"] = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
            except BaseException as e:   # MemoryError from a non-Dask peer included
                result["error"] = e

        quiet_distributed_logs()
        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        thread.join(CONNECT_TIMEOUT_S + 5)
        if "client" in result:
            self.client = result["client"]
            return
        error = result.get("error")
        why = (f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
               if error is not None else f"no dask handshake within {CONNECT_TIMEOUT_S} s")
        if isinstance(error, MemoryError):
            why = "the server did not answer like a dask scheduler"
        raise WsisError(f"--scheduler {self.scheduler}: cannot connect ({why[:200]})")

    def _client(self):
        if self.client is None:
            if self.scheduler:
                self.connect_scheduler()
                return self.client
            from distributed import Client
            self.cluster = self._local_cluster(self.local_workers("cpu"), self.worker_env())
            quiet_distributed_logs()
            self.client = Client(self.cluster)
        return self.client

    def _local_cluster(self, n: int, env: dict):
        """``n`` single-threaded local worker processes with environment ``env``."""
        import dask
        from distributed import LocalCluster
        # distributed sets MALLOC_TRIM_THRESHOLD_=65536 in workers; with PyTorch's allocation
        # pattern that doubles per-image time (measured), so unset it; its thread variables
        # are unset too, so that ``env`` alone sets them.
        unset = {f"distributed.nanny.pre-spawn-environ.{k}": None
                 for k in ("MALLOC_TRIM_THRESHOLD_", *self.WORKER_ENV)}
        with dask.config.set(unset):
            # The scheduler's HTTP server (health routes) defaults to port 8787 even without a
            # dashboard; a random port avoids the "already in use" warning. Workers log nothing
            # (their errors under load come with tracebacks, e.g. a missed heartbeat); why a
            # worker died is logged by its nanny, in this process.
            return LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                env=env, silence_logs=logging.CRITICAL, scheduler_kwargs={"dashboard_address": ":0"})

    def worker_env(self) -> dict:
        """The environment of the local workers: one thread each, and the wait policy."""
        return {**self.WORKER_ENV, **wait_policy_env()}

    def local_workers(self, kind: str = "cpu") -> int:
        """CPU work: ``--workers`` or one single-threaded worker per core, whatever --device
        says; GPU work: one worker per visible GPU."""
        if kind == "gpu":
            import torch
            return max(1, torch.cuda.device_count())
        if self.workers > 0:
            return self.workers
        return usable_cpus()

    def _gpu_client(self):
        """A local cluster of one worker per GPU: dask-cuda's LocalCUDACluster (each worker
        pinned to its GPU by CUDA_VISIBLE_DEVICES) when it is installed, else plain workers
        that ``_run_chunk`` pins by worker number. With --scheduler: the same client, and the
        tasks ask for the workers' "GPU" resource."""
        if self.scheduler:
            return self._client()
        if self.gpu_client is None:
            from distributed import Client
            n = self.local_workers("gpu")
            try:
                from dask_cuda import LocalCUDACluster
                self.gpu_cluster = LocalCUDACluster(n_workers=n, threads_per_worker=1, dashboard_address=None)
            except ImportError:
                self.gpu_cluster = self._local_cluster(n, self.worker_env())
            quiet_distributed_logs()
            self.gpu_client = Client(self.gpu_cluster)
        return self.gpu_client

    def map(self, stage: Stage, job: Job, ids: list[str]) -> None:
        """Run ``stage``'s per-image function over ``ids`` in chunks."""
        chunks = [list(c) for c in id_chunks(dict.fromkeys(ids), job.cfg)]
        self._map_chunks(stage.function("per_image"), job, chunks, self.task_kind(stage), stage.name)

    def map_ids(self, fn, job: Job, work: dict, unit: str = "images") -> list:
        """``Job.map_ids`` on these workers, as CPU work. Work that fits in one chunk runs in
        this process: starting the workers would cost more than the chunk; so does work of
        fewer than ``COLD_START_MIN_IMAGES`` images when the local workers are not running yet
        (``wsis report`` on its own, a report whose run started no per-image stage)."""
        cold = self.client is None and not self.scheduler
        if len(work) <= max(1, int(job.cfg["run"]["chunk_size"])) or (cold and len(work) < COLD_START_MIN_IMAGES):
            return dataclasses.replace(job, mapper=None).map_ids(fn, work, unit)
        return self._map_chunks(fn, job, id_chunks(work, job.cfg), "cpu", job.stage, unit)

    def _map_chunks(self, fn, job: Job, chunks: list, kind: str, label: str, unit: str = "images") -> list:
        """``fn(job, chunk)`` for each chunk (its image ids, or a dict keyed by them) as a Dask
        task of ``kind`` ("cpu" or "gpu"); returns the results in the chunks' order. Each task
        carries its own small job (no scattered data, which would die with a worker); a task
        whose worker dies is rescheduled by Dask, and one that fails unexpectedly is retried."""
        if not chunks:
            return []
        from distributed import as_completed
        client = self._gpu_client() if kind == "gpu" else self._client()
        job = dataclasses.replace(job, device="cpu" if kind == "cpu" else job.device)
        if not self.scheduler:
            job.torch_threads = 1 if kind == "cpu" else None
        resources = {"GPU": 1} if kind == "gpu" and self.scheduler else None
        futures = [client.submit(_run_chunk, fn, task_job(job, c), c, pure=False, retries=self.TASK_RETRIES,
                                 resources=resources)
                   for c in chunks]
        position = {f.key: k for k, f in enumerate(futures)}
        results = [None] * len(chunks)
        progress = Progress(label, sum(len(c) for c in chunks), unit)
        try:
            for fut in as_completed(futures):
                try:
                    result = fut.result()
                except Exception as e:
                    if type(e).__name__ == "KilledWorker":
                        raise WsisError(f"{label}: a task killed {label}'s Dask worker repeatedly "
                                        f"(out of memory? try fewer run.workers); see the dask lines above") from None
                    raise
                if isinstance(result, WsisError):
                    raise result
                k = position[fut.key]
                results[k] = result
                progress.update(len(chunks[k]))
        except BaseException:
            client.cancel(futures)
            raise
        return results

    def release_workers(self) -> None:
        """Before a training stage, which runs in the driver (or its data-parallel ranks) and
        leaves the workers idle: stop the local workers, each of which holds PyTorch and the last
        stage's model (0.8 GB each on the tiny synthetic run, 1.3 GB measured on the default one;
        clearing the model cache and trimming the heap gave back only 45 MB of 0.8 GB, so only
        stopping them frees it). The next per-image stage starts them again (about 5 s on 2
        cores), and would have loaded its own model anyway. The workers of ``--scheduler`` are
        not wsis's to stop: wsis's model cache is cleared in them."""
        if self.scheduler:
            if self.client is not None:
                self.client.run(release_worker_memory)
            return
        self.close()

    def close(self) -> None:
        _WorkerDeathFilter.closing = True    # the workers we stop are not news
        try:
            for closable in (self.client, self.cluster, self.gpu_client, self.gpu_cluster):
                if closable is not None:
                    closable.close()
        finally:
            self.client = self.cluster = self.gpu_client = self.gpu_cluster = None
            _WorkerDeathFilter.closing = False


def release_worker_memory() -> None:
    """In a worker: drop the cached model (``pipelines.stages.load_cached``) and give the freed
    heap back to the system."""
    from pipelines.stages import _LOADED
    _LOADED.clear()
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):      # not glibc
        pass


class _WorkerDeathFilter(logging.Filter):
    """Lets through distributed's errors and the nanny's notes on why a worker died (killed
    by a signal, exited, over its memory budget); everything else stays quiet."""
    DEATH = ("was killed by", "exited with status", "memory budget")
    # the scheduler says this when a result sat on a worker that just died; the client then
    # reschedules the task, so it is not an error the user can act on (a task that cannot be
    # recomputed fails its future, and that is reported)
    RECOVERED = ("Couldn't gather keys",)
    closing = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.closing:
            return False
        if record.getMessage().startswith(self.RECOVERED):
            return False
        if record.levelno >= logging.ERROR:
            return True
        return record.name.startswith("distributed.nanny") and any(d in record.getMessage() for d in self.DEATH)


class _OneLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        lines = record.getMessage().strip().splitlines() or [""]
        return f"dask: {lines[0]}"


def quiet_distributed_logs() -> None:
    """distributed's logging in this process: one line per worker death or error, no
    tracebacks, nothing else."""
    # tornado and asyncio carry distributed's comm errors, with tracebacks, to the root logger
    for name in ("distributed", "tornado", "asyncio"):
        log = logging.getLogger(name)
        if any(isinstance(f, _WorkerDeathFilter) for h in log.handlers for f in h.filters):
            continue
        for h in list(log.handlers):
            log.removeHandler(h)
        handler = logging.StreamHandler()
        handler.addFilter(_WorkerDeathFilter())
        handler.setFormatter(_OneLine())
        log.addHandler(handler)
        log.setLevel(logging.INFO if name == "distributed" else logging.ERROR)
        log.propagate = False
