"""The stage engine: fingerprints, the on-disk cache, resume, and Dask for per-image stages.

Each stage owns ``<work-dir>/<stage>/``. Its ``manifest.json`` records the fingerprint it was
computed for and whether it finished. A fingerprint hashes the config sections the stage
reads, the stage's code version, its upstream fingerprints and the ids and labels of the
images it covers, so it is known before anything runs. A stage is skipped when its manifest
says "done" for the current fingerprint. A stage whose fingerprint changed is cleared and
recomputed; one that was interrupted keeps its finished outputs: per-image stages compute
only the missing images, training stages resume from their last epoch checkpoint.

The engine knows nothing of models: a stage is a function of a ``Job`` (config, dataset,
image ids, upstream output directories, output directory, device).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from wsis.config import dumps_toml, section_hash
from wsis.data import Dataset
from wsis.errors import WsisError
from wsis.io import read_json, read_rgb, remove_stray_temps, write_bytes, write_json

from .progress import Progress, say

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
METRICS = "metrics.json"


@dataclass
class Job:
    """Everything a stage function needs; picklable, so per-image work can ship to Dask."""
    stage: str
    cfg: dict
    dataset: Dataset
    ids: tuple[str, ...]
    out_dir: Path
    inputs: dict[str, Path]
    device: str = "cpu"
    torch_threads: int | None = None

    def progress(self, total: int, unit: str = "images") -> Progress:
        return Progress(self.stage, total, unit)


@dataclass(frozen=True)
class Stage:
    """A node of the DAG.

    ``run(job)`` computes a whole stage in the driver (training, evaluation);
    ``per_image(job, ids)`` computes the outputs ``output_name.format(id=...)`` of a chunk of
    images and runs as a Dask task. Exactly one of the two is given, as a function or as
    "module:function" under ``pipelines.stages`` (imported when the stage runs).
    """
    name: str
    description: str
    upstream: tuple[str, ...]
    sections: tuple[str, ...]
    version: int
    image_splits: Callable[[dict], list[str]]
    run: Callable[[Job], None] | str | None = None
    per_image: Callable[[Job, list[str]], None] | str | None = None
    output_name: str = "{id}.npz"
    needs_masks: bool = False     # evaluation: skipped on datasets without masks
    reads_images: bool = True     # its images are checked before the run starts
    input_files: tuple[str, ...] = ()   # files under the work dir whose content it depends on

    def output_path(self, out_dir: Path, image_id: str) -> Path:
        return out_dir / self.output_name.format(id=image_id)

    def function(self, which: str) -> Callable:
        fn = getattr(self, which)
        if isinstance(fn, str):
            import importlib
            module, name = fn.split(":")
            fn = getattr(importlib.import_module(f"pipelines.stages.{module}"), name)
        return fn


@dataclass
class StageState:
    status: str          # done | stale | partial | missing | skipped
    detail: str = ""
    done: int = 0
    total: int = 0


@dataclass
class Pipeline:
    stages: dict[str, Stage]
    cfg: dict
    dataset: Dataset
    work_dir: Path
    device: str = "cpu"          # cpu, cuda, or auto (resolved when a stage runs)
    scheduler: str | None = None
    workers: int = 0
    _fingerprints: dict[str, tuple[str, dict]] = field(default_factory=dict)

    # ---------------------------------------------------------------- the DAG
    def order(self, target: str) -> list[Stage]:
        """``target`` and everything upstream of it, dependencies first ("all": every stage)."""
        if target == "all":
            names = list(self.stages)
        elif target not in self.stages:
            raise WsisError(f"unknown stage '{target}' (stages: {', '.join(self.stages)}, all)")
        else:
            names = [target]
        seen: list[str] = []

        def visit(name: str) -> None:
            if name in seen:
                return
            for up in self.stages[name].upstream:
                visit(up)
            seen.append(name)

        for n in names:
            visit(n)
        return [self.stages[n] for n in seen]

    def stage_ids(self, stage: Stage) -> tuple[str, ...]:
        ids = []
        for split in stage.image_splits(self.cfg):
            ids.extend(self.dataset.ids(split))
        return tuple(dict.fromkeys(ids))

    def fingerprint(self, stage: Stage) -> tuple[str, dict]:
        if stage.name not in self._fingerprints:
            components = {
                "config": {s: section_hash(self.cfg[s]) for s in stage.sections},
                "code": stage.version,
                "upstream": {u: self.fingerprint(self.stages[u])[0] for u in stage.upstream},
                "images": self.dataset.list_hash(self.stage_ids(stage)),
            }
            if stage.input_files:
                components["files"] = {f: file_hash(self.work_dir / f) for f in stage.input_files}
            self._fingerprints[stage.name] = (section_hash(components), components)
        return self._fingerprints[stage.name]

    # ------------------------------------------------------------- the cache
    def out_dir(self, stage: Stage) -> Path:
        return self.work_dir / stage.name

    def manifest(self, stage: Stage) -> dict | None:
        path = self.out_dir(stage) / MANIFEST
        return read_json(path) if path.is_file() else None

    def state(self, stage: Stage) -> StageState:
        fp, comps = self.fingerprint(stage)
        man = self.manifest(stage)
        if man is None:
            return StageState("missing")
        if man["fingerprint"] != fp:
            return StageState("stale", stale_reason(man.get("components", {}), comps))
        if man["status"] == "done":
            return StageState("skipped" if man.get("skipped") else "done", man.get("skipped", ""))
        out = self.out_dir(stage)
        if stage.per_image is not None:
            ids = self.stage_ids(stage)
            done = sum(stage.output_path(out, i).is_file() for i in ids)
            return StageState("partial", f"{done} of {len(ids)} images", done, len(ids))
        if (out / PROGRESS).is_file():
            p = read_json(out / PROGRESS)
            return StageState("partial", f"{p['done']} of {p['total']} {p['unit']}", p["done"], p["total"])
        return StageState("partial", "interrupted")

    # ------------------------------------------------------------------ runs
    def run(self, target: str, force: bool = False) -> list[str]:
        """Run ``target`` after whatever it needs; returns the names of the stages computed."""
        plan = self.order(target)
        todo = []
        for stage in plan:
            st = self.state(stage)
            if st.status in ("done", "skipped") and not (force and (target in (stage.name, "all"))):
                say(f"{stage.name}: up to date")
            else:
                todo.append(stage)
        if not todo:
            return []
        from wsis.device import resolve_device
        self.device = resolve_device(self.device)   # "auto" -> cpu/cuda, only when work is due
        with self._lock():
            self._check_images(todo)
            write_bytes(self.work_dir / "config.toml", dumps_toml(self.cfg).encode())
            runner = DaskRunner(self.scheduler, self.workers, self.device)
            try:
                for stage in todo:
                    self._execute(stage, runner)
            finally:
                runner.close()
        return [s.name for s in todo]

    def _lock(self):
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return WorkDirLock(self.work_dir / ".lock")

    def _check_images(self, todo: list[Stage]) -> None:
        """Decode every image the run will read once (cached by size and mtime), so a missing
        or corrupt file stops the run before any stage output is cleared or written."""
        ids = list(dict.fromkeys(i for s in todo if s.reads_images for i in self.stage_ids(s)))
        cache_path = self.work_dir / ".checked_images.json"
        cache = read_json(cache_path) if cache_path.is_file() else {}
        unchecked = []
        for i in ids:
            p = self.dataset.image_path(i)
            try:
                st = p.stat()
            except FileNotFoundError:
                raise WsisError(f"{p}: image is listed but missing") from None
            key = f"{st.st_size}:{st.st_mtime_ns}"
            if cache.get(str(p)) != key:
                unchecked.append((str(p), key))
        if not unchecked:
            return
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for (path, key), _ in zip(unchecked, pool.map(lambda pk: read_rgb(pk[0]).shape, unchecked)):
                cache[path] = key
        write_json(cache_path, cache)

    def _execute(self, stage: Stage, runner: "DaskRunner") -> None:
        fp, comps = self.fingerprint(stage)
        out = self.out_dir(stage)
        man = self.manifest(stage)
        if out.exists() and (man is None or man["fingerprint"] != fp or man["status"] == "done"):
            # stale, forced, or an unknown directory: start this stage afresh
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        remove_stray_temps(out)
        manifest = {"stage": stage.name, "fingerprint": fp, "components": comps, "status": "running"}
        write_json(out / MANIFEST, manifest)
        ids = self.stage_ids(stage)
        job = Job(stage.name, self.cfg, self.dataset, ids, out,
                  {u: self.out_dir(self.stages[u]) for u in stage.upstream}, self.device)
        start = time.monotonic()
        if stage.needs_masks and not self.dataset.has_masks:
            say(f"{stage.name}: skipped (dataset '{self.dataset.kind}' has no ground-truth masks)")
            manifest["skipped"] = "no ground-truth masks"
        elif stage.per_image is not None:
            todo = [i for i in ids if not stage.output_path(out, i).is_file()]
            say(f"{stage.name}: computing {len(todo)} of {len(ids)} images ({len(ids) - len(todo)} already done)")
            runner.map(stage, job, todo)
            missing = [i for i in ids if not stage.output_path(out, i).is_file()]
            if missing:
                raise RuntimeError(f"{stage.name}: no output for {len(missing)} images, e.g. {missing[0]}")
        else:
            say(f"{stage.name}: {stage.description}")
            stage.function("run")(job)
        manifest.update(status="done", seconds=round(time.monotonic() - start, 2))
        (out / PROGRESS).unlink(missing_ok=True)
        write_json(out / MANIFEST, manifest)
        say(f"{stage.name}: done in {manifest['seconds']:.1f} s")

    # --------------------------------------------------------------- metrics
    def collect_metrics(self) -> dict:
        """Merge the metrics of every finished stage into ``<work-dir>/metrics.json``."""
        metrics = {}
        for stage in self.stages.values():
            path = self.out_dir(stage) / METRICS
            if path.is_file() and self.state(stage).status == "done":
                metrics[stage.name] = read_json(path)
        if metrics:
            write_json(self.work_dir / METRICS, metrics)
        return metrics


    def exported_path(self) -> Path | None:
        """The COCO JSON of the export stage, when it is done."""
        stage = self.stages.get("export")
        if stage is None or self.state(stage).status != "done":
            return None
        return self.out_dir(stage) / "pseudo_labels.json"


def file_hash(path: Path) -> str | None:
    """SHA-256 prefix of a file's content; None when it does not exist."""
    import hashlib
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def stale_reason(old: dict, new: dict) -> str:
    reasons = []
    for sec, h in new["config"].items():
        if old.get("config", {}).get(sec) != h:
            reasons.append(f"config [{sec}] changed")
    if old.get("code") != new["code"]:
        reasons.append(f"code version {old.get('code')} -> {new['code']}")
    for up, h in new["upstream"].items():
        if old.get("upstream", {}).get(up) != h:
            reasons.append(f"upstream {up} changed")
    if old.get("images") != new["images"]:
        reasons.append("image list or labels changed")
    for f, h in new.get("files", {}).items():
        if old.get("files", {}).get(f) != h:
            reasons.append(f"{f} changed")
    return ", ".join(reasons) or "fingerprint changed"


class WorkDirLock:
    """An exclusive lock on the work dir, so two runs never write the same cache."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fh = open(self.path, "w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise WsisError(f"{self.path.parent}: another wsis run is using this work dir") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _run_chunk(fn, job: Job, ids: list[str]) -> int:
    if job.torch_threads:
        import torch
        torch.set_num_threads(job.torch_threads)
    fn(job, ids)
    return len(ids)


class DaskRunner:
    """Maps per-image stage chunks over Dask: a local cluster (started on first use) or an
    existing scheduler."""

    def __init__(self, scheduler: str | None, workers: int, device: str):
        self.scheduler, self.workers, self.device = scheduler, workers, device
        self.client = self.cluster = None

    def _client(self):
        if self.client is None:
            import logging
            from distributed import Client, LocalCluster
            if self.scheduler:
                try:
                    self.client = Client(self.scheduler, timeout="10s")
                except (OSError, TimeoutError) as e:
                    raise WsisError(f"--scheduler {self.scheduler}: cannot connect ({e})") from None
            else:
                import dask
                n = self.local_workers()
                # distributed sets MALLOC_TRIM_THRESHOLD_=65536 in workers; with PyTorch's
                # allocation pattern that doubles per-image time (measured), so unset it.
                with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                    self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                dashboard_address=None, silence_logs=logging.ERROR)
                self.client = Client(self.cluster)
        return self.client

    def local_workers(self) -> int:
        if self.workers > 0:
            return self.workers
        if self.device == "cuda":
            return 1  # one process owns the GPU
        return max(1, os.cpu_count() or 1)

    def map(self, stage: Stage, job: Job, ids: list[str]) -> None:
        if not ids:
            return
        from distributed import as_completed
        client = self._client()
        if not self.scheduler:
            job.torch_threads = 1 if self.device != "cuda" else None
        chunk = max(1, int(job.cfg["run"]["chunk_size"]))
        chunks = [ids[i:i + chunk] for i in range(0, len(ids), chunk)]
        [job_future] = client.scatter([job], broadcast=True, hash=False)
        fn = stage.function("per_image")
        futures = [client.submit(_run_chunk, fn, job_future, c, pure=False) for c in chunks]
        progress = Progress(stage.name, len(ids))
        try:
            for fut in as_completed(futures):
                progress.update(fut.result())
        except BaseException:
            client.cancel(futures)
            raise

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
