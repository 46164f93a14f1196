"""The stage engine: fingerprints, the on-disk cache, resume, and Dask for per-image stages.

Each stage owns ``<work-dir>/<stage>/``. Its ``manifest.json`` records the fingerprint it was
computed for, whether it finished, and the size, mtime and SHA-256 of every file it wrote
(``cache.record_outputs``); a run hashes a finished stage's outputs in full before a stage of
the run reads them. A fingerprint hashes the config keys the stage declares it reads, the
contents of the files those keys name, the stage's code version, its upstream fingerprints and
the ids, labels and file contents of the images it covers, so it is known before anything runs.
A stage is skipped when its manifest says "done" for the current fingerprint and its outputs
still match the manifest; damaged outputs are recomputed (the image for a per-image stage, the
whole stage otherwise). A stage whose fingerprint changed is cleared (but for the content-keyed
files of its ``keeps`` folder) and recomputed; one that was interrupted keeps its finished
outputs: per-image stages compute only the missing images, training stages resume from their
last epoch checkpoint.

The engine knows nothing of models: a stage is a function of a ``Job`` (config, dataset,
image ids, upstream output directories, output directory, device).

The concerns live in their own modules: this one walks the DAG (``Pipeline``); ``stage`` holds
its nodes (``Stage``, ``ImageInputs``; re-exported here), below both this module and ``runner``,
which maps them on Dask; ``job`` the types shared with the stages and the training loop
(``Job``); ``cache`` the manifests, integrity checks, content hashes and the work-dir lock.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from wsis.config import dumps_toml, section_hash
from wsis.data import Dataset
from wsis.errors import DiskFullError, WsisError
from wsis.io import (TMP_MARK, read_image_size, read_json_or_none, read_rgb, remove_stray_temps, unreadable_reason,
                     write_bytes, write_json)

from .cache import (HASH_CACHE, MANIFEST, ContentHashes, WorkDirLock, check_config_file, configured_file,
                    damaged_outputs, is_toml, old_format, record_outputs, remove_output, stale_reason)
from .job import METRICS, PROGRESS, Job
from .progress import say
from .runner import DaskRunner
from .runner import check_scheduler_address  # noqa: F401  (re-exported: wsis/cli.py imports it from here)
from .stage import ImageInputs, Stage  # noqa: F401  (below engine and runner; re-exported from here)


def recorded_size(entry, stat_key: str):
    """What ``.checked_images.json`` says of an image whose size and mtime are ``stat_key``:
    its (height, width) as displayed when recorded; True when it was decoded but its size not
    recorded; None when it was not checked as it is now. An entry is "size:mtime:HxW" (a
    wsis before sizes were recorded wrote the annotation file's size there, which the check it
    passed made the image's own; without an annotation file, "size:mtime")."""
    if not isinstance(entry, str) or not (entry == stat_key or entry.startswith(stat_key + ":")):
        return None
    h, sep, w = entry[len(stat_key) + 1:].partition("x")
    return (int(h), int(w)) if sep and h.isdigit() and w.isdigit() else True


def check_declared_size(path, size, declared) -> None:
    """Refuse an image whose (height, width) as displayed is not the one its annotations give it."""
    if tuple(declared) != tuple(size):
        raise WsisError(f"{path}: {size[1]}x{size[0]} as displayed (EXIF orientation applied), but its "
                        f"annotations give {declared[1]}x{declared[0]} (width x height); its masks would "
                        f"be misplaced: fix height and width in the annotation file")


@dataclass
class StageState:
    status: str          # done | stale | partial | missing | skipped | damaged
    detail: str = ""
    done: int = 0
    total: int = 0
    damaged: dict[str, str] = field(default_factory=dict)   # output name -> what is wrong


@dataclass
class Pipeline:
    stages: dict[str, Stage]
    cfg: dict
    dataset: Dataset
    work_dir: Path
    device: str = "cpu"          # cpu, cuda, or auto (resolved when a stage runs)
    scheduler: str | None = None
    workers: int = 0
    processes: int = 1           # data-parallel processes for training stages (--gpus)
    _fingerprints: dict[str, tuple[str, dict]] = field(default_factory=dict)
    _states: dict[str, StageState] = field(default_factory=dict)
    _hashes: "ContentHashes | None" = None
    _running: Stage | None = None
    _forced: frozenset = frozenset()
    _image_inputs: dict[str, dict] = field(default_factory=dict)
    verify: bool = False         # status --verify: every output's content, and every input's, hashed again

    def __post_init__(self):
        # the stages as this config wires them; those it turns off are left out
        self.off = {n: s for n, s in self.stages.items() if not s.enabled(self.cfg)}
        self.stages = {n: s.bound(self.cfg) for n, s in self.stages.items() if n not in self.off}

    @property
    def hashes(self) -> "ContentHashes":
        if self._hashes is None:
            self._hashes = ContentHashes(self.work_dir / HASH_CACHE, rehash=self.verify)
        return self._hashes

    # ---------------------------------------------------------------- the DAG
    def order(self, target: str) -> list[Stage]:
        """``target`` and everything upstream of it, dependencies first ("all": every stage)."""
        if target == "all":
            names = list(self.stages)
        elif target in self.off:
            key = self.off[target].enabled_by
            raise WsisError(f"stage '{target}' is off in this config: set {key} = true (--set {key}=true)")
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

    def image_identities(self, ids) -> dict[str, str] | None:
        """Each image file's identity for fingerprints: its content hash (cached by size and
        mtime, so a touched but unchanged file keeps it), or with ``run.image_hash = "stat"``
        its size and mtime (no reads). None for "off" (ids and labels only)."""
        mode = self.cfg.get("run", {}).get("image_hash", "content")
        if mode == "off":
            return None
        out = {}
        for i in ids:
            path = self.dataset.image_path(i)
            try:
                out[i] = self.hashes.get(path) if mode == "content" else self.hashes.stat_key(path)
            except FileNotFoundError:
                out[i] = "missing"   # reported by the image check when the stage runs
        return out

    def fingerprint(self, stage: Stage) -> tuple[str, dict]:
        if stage.name not in self._fingerprints:
            ids = self.stage_ids(stage)
            config = stage.config_read(self.cfg)
            if config.get("run.amp") == "auto":
                # the precision it trains in, which depends on the machine: a cache trained in
                # bf16 is not reused (or resumed) where "auto" means float32, and the reverse
                config["run.amp"] = self.resolved_amp()
            components = {
                "config": {name: section_hash(v) for name, v in config.items()},
                "code": stage.version,
                "upstream": {u: self.fingerprint(self.stages[u])[0] for u in stage.upstream},
                # stages that read no image go stale through their upstream when one changes
                "images": self.dataset.list_hash(ids, self.image_identities(ids) if stage.reads_images else None),
            }
            files = {}
            for dotted in stage.files:
                section, key = dotted.split(".", 1)
                resolve = dict(stage.file_resolvers).get(dotted)
                path = resolve(self.cfg[section]) if resolve else configured_file(self.cfg[section][key])
                if path is not None:
                    files[dotted] = self.hashes.get(path)
            for name in stage.input_files:      # files of the work dir (a review import)
                path = self.work_dir / name
                files[name] = self.hashes.get(path) if path.is_file() else None
            if files:   # only when a stage names a file, so other fingerprints stay as they were
                components["files"] = files
            entries = self.image_input_hashes(stage, ids)
            if entries:
                components["image_inputs"] = {
                    "config": section_hash({k: self.cfg[k.split(".")[0]][k.split(".")[1]] for k in stage.image_inputs.keys}),
                    "entries": entries}
            if stage.needs_masks and self.dataset.has_masks:
                # evaluation: edited ground truth with the same labels must make it stale
                components["ground_truth"] = self.ground_truth_identities(ids)
            if stage.writes_coco_ids:
                components["coco_ids"] = section_hash({
                    "categories": self.dataset.coco_categories(),
                    "images": [self.dataset.coco_image_id(i, k) for k, i in enumerate(ids)]})
            self._fingerprints[stage.name] = (section_hash(components), components)
        return self._fingerprints[stage.name]

    def image_input_hashes(self, stage: Stage, ids) -> dict[str, str]:
        """{image id: hash of its entry} of the stage's ``image_inputs`` file for the images of
        ``ids`` that have one; empty when the stage reads none (no file, or its key is off)."""
        spec = stage.image_inputs
        if spec is None or not spec.active(self.cfg):
            return {}
        entries = self.image_input_file(spec.file, stage)
        return {i: section_hash(entries[i]) for i in ids if i in entries}

    def image_input_file(self, name: str, stage: Stage) -> dict:
        """The ``images`` entries of the work-dir file ``name`` (read once); a file that does not
        parse stops with the stage's own ``check_inputs`` message, or one line naming it."""
        if name not in self._image_inputs:
            path = self.work_dir / name
            doc = read_json_or_none(path) if path.is_file() else {"images": {}}
            if not (isinstance(doc, dict) and isinstance(doc.get("images"), dict)):
                if stage.check_inputs:
                    stage.function("check_inputs")(self.work_dir)
                raise WsisError(f"{path}: not a JSON file with an 'images' object")
            self._image_inputs[name] = doc["images"]
        return self._image_inputs[name]

    def ground_truth_identities(self, ids) -> str | None:
        """One hash of the ground truth of ``ids`` (masks files hashed by content and cached as
        the images are, by ``run.image_hash``); None for "off"."""
        mode = self.cfg.get("run", {}).get("image_hash", "content")
        if mode == "off":
            return None
        identity = self.hashes.get if mode == "content" else self.hashes.stat_key
        return section_hash([self.dataset.ground_truth_identity(i, identity) for i in ids])

    def resolved_amp(self) -> str:
        """What ``run.amp = "auto"`` trains in on this machine's device ("bf16" or "off")."""
        from wsis.device import resolve_amp, resolve_device
        return resolve_amp("auto", resolve_device(self.device))

    # ------------------------------------------------------------- the cache
    def out_dir(self, stage: Stage) -> Path:
        return self.work_dir / stage.name

    def manifest(self, stage: Stage) -> dict | None:
        """The stage's manifest; None when missing or unreadable (a truncated manifest is
        treated as no manifest: the stage is recomputed)."""
        man = read_json_or_none(self.out_dir(stage) / MANIFEST)
        if not isinstance(man, dict) or not isinstance(man.get("fingerprint"), str) or "status" not in man:
            return None
        return man

    def state(self, stage: Stage) -> StageState:
        if stage.name not in self._states:
            self._states[stage.name] = self._state(stage, self.verify)
        return self._states[stage.name]

    def _state(self, stage: Stage, verify: bool = False) -> StageState:
        """The stage's state; ``verify`` hashes the whole content of every output."""
        fp, comps = self.fingerprint(stage)
        man = self.manifest(stage)
        if man is None:
            return StageState("missing")
        if man["fingerprint"] != fp:
            return StageState("stale", stale_reason(man.get("components", {}), comps))
        out = self.out_dir(stage)
        if man["status"] == "done":
            damaged = damaged_outputs(out, man.get("outputs", {}), self.per_image_names(stage), verify)
            if damaged:
                name, why = next(iter(damaged.items()))
                more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
                return StageState("damaged", f"{name}: {why}{more}", damaged=damaged)
            return StageState("skipped" if man.get("skipped") else "done", man.get("skipped", ""))
        if stage.per_image is not None:
            ids = self.stage_ids(stage)
            done = sum(stage.output_path(out, i).is_file() for i in ids)
            return StageState("partial", f"{done} of {len(ids)} images", done, len(ids))
        p = read_json_or_none(out / PROGRESS)
        if isinstance(p, dict) and {"done", "total", "unit"} <= p.keys():
            return StageState("partial", f"{p['done']} of {p['total']} {p['unit']}", p["done"], p["total"])
        return StageState("partial", "interrupted")

    def consistent_on_disk(self, stage: Stage) -> bool:
        """Whether the stage's outputs on disk are finished, intact, and were computed from the
        outputs its upstream stages have on disk now, with its own code, config and images
        unchanged: done, or stale only because an upstream is due to be recomputed and has not
        been yet (after a review import, merge_review is due; until the next ``wsis run``,
        train_seg's model, seg_infer's predictions of it and eval_seg's scores of it still
        belong together). ``wsis report`` shows such stages as they are."""
        state = self.state(stage)
        if state.status in ("done", "skipped"):
            return True
        man = self.manifest(stage)
        if state.status != "stale" or man is None or man["status"] != "done":
            return False
        old, now = man.get("components", {}), self.fingerprint(stage)[1]
        if {k: v for k, v in old.items() if k != "upstream"} != {k: v for k, v in now.items() if k != "upstream"}:
            return False
        for name, fingerprint in old.get("upstream", {}).items():
            upstream = self.manifest(self.stages[name]) if name in self.stages else None
            if upstream is None or upstream["fingerprint"] != fingerprint or upstream["status"] != "done":
                return False
        return not damaged_outputs(self.out_dir(stage), man.get("outputs", {}), self.per_image_names(stage), self.verify)

    def per_image_names(self, stage: Stage) -> set[str]:
        if stage.per_image is None:
            return set()
        return {stage.output_path(Path(), i).name for i in self.stage_ids(stage)}

    # ------------------------------------------------------------------ runs
    def run(self, target: str, force: bool = False) -> list[str]:
        """Run ``target`` after whatever it needs; returns the names of the stages computed."""
        plan = self.order(target)
        self._forced = frozenset(s.name for s in plan if force and target in (s.name, "all"))
        todo = [stage for stage in plan
                if self.state(stage).status not in ("done", "skipped") or stage.name in self._forced]
        todo = self._with_damaged_upstream(plan, todo)
        self._record_full_hashes(s for s in plan if s not in todo)
        for stage in plan:
            if stage not in todo:
                say(f"{stage.name}: up to date")
        if not todo:
            self._tidy_root()
            return []
        if self.read_only():
            raise WsisError(f"{self.work_dir}: the work dir is read-only, and {', '.join(s.name for s in todo)} "
                            f"{'is' if len(todo) == 1 else 'are'} due; run on a writable copy (--work-dir), or make it "
                            f"writable")
        self._running = None
        runner = DaskRunner(self.scheduler, self.workers, self.device)
        if any(s.per_image is not None for s in todo):
            runner.connect_scheduler()   # a bad --scheduler fails here, before any output is touched
        try:
            from wsis.device import resolve_device
            self.device = runner.device = resolve_device(self.device)   # "auto" -> cpu/cuda, only when work is due
            from wsis.threads import set_torch_threads
            set_torch_threads()   # this process trains on the usable cores (a container's quota, taskset)
            with self._lock():
                try:
                    remove_stray_temps(self.work_dir)
                    self._check_images(todo)
                    self._check_config_files(todo)
                    self._check_inputs(todo)
                    self.hashes.save()
                    self._record_config(always=True)
                    for stage in todo:
                        self._execute(stage, runner)
                except DiskFullError as e:
                    raise WsisError(self._disk_full_message(self._running, e)) from None
                finally:
                    # workers stopped mid-write (interrupt, error) leave temporary files
                    runner.close()
                    if self._running is not None:
                        remove_stray_temps(self.out_dir(self._running))
        finally:
            runner.close()
        return [s.name for s in todo]

    def _record_full_hashes(self, stages) -> None:
        """Manifests of an older wsis record sizes and partial hashes only: once their outputs
        have passed those checks (they are up to date), record their full-content hashes, with
        one line saying so."""
        old = [s for s in stages if self.state(s).status == "done" and old_format(self.manifest(s).get("outputs", {}))]
        if not old:
            return
        if self.read_only():
            say(f"wsis: note: {', '.join(s.name for s in old)}: manifests of an older wsis, whose outputs pass its "
                f"checks; the work dir is read-only, so their full-content hashes are not recorded")
            return
        say(f"wsis: note: {', '.join(s.name for s in old)}: manifests of an older wsis, whose outputs pass its "
            f"checks; recording their full-content hashes")
        with self._lock():
            for stage in old:
                manifest = self.manifest(stage)
                manifest["outputs"] = record_outputs(self.out_dir(stage))
                write_json(self.out_dir(stage) / MANIFEST, manifest)

    def _with_damaged_upstream(self, plan: list[Stage], todo: list[Stage]) -> list[Stage]:
        """``todo`` plus every finished stage whose outputs a stage of ``todo`` reads and
        whose content no longer matches its full-content hashes (a damaged byte that kept the
        file's size and mtime): each is recomputed first, as a damaged output found by
        ``status``. Only the outputs a run is about to read are hashed."""
        due = {s.name for s in todo}
        for stage in reversed(plan):          # downstream first: a recomputed stage's inputs are checked too
            if stage.name in due or not any(stage.name in self.stages[d].upstream for d in due):
                continue
            state = self._state(stage, verify=True)
            if state.status == "damaged":
                self._states[stage.name] = state
                due.add(stage.name)
        return [s for s in plan if s.name in due]

    def _lock(self):
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WsisError(f"{self.work_dir}: cannot make the work dir ({e.strerror or e})") from None
        return WorkDirLock(self.work_dir / ".lock")

    def read_only(self) -> bool:
        """The work dir exists and this process cannot write in it (a read-only mount, or no
        permission): ``status`` and a run with nothing to do still work there, and write nothing."""
        return self.work_dir.is_dir() and not os.access(self.work_dir, os.W_OK)

    def _record_config(self, always: bool) -> None:
        """Save this run's resolved config as ``<work-dir>/config.toml`` (``always``: a run that
        computes stages), or, in a run with nothing to do, rewrite only a record that no longer
        parses; each time with a line saying so. In a read-only work dir the line says it stays."""
        path = self.work_dir / "config.toml"
        damaged = path.is_file() and not is_toml(path)
        text = dumps_toml(self.cfg).encode()
        if not (damaged or (always and (not path.is_file() or path.read_bytes() != text))):
            return
        if damaged and self.read_only():
            say(f"{path}: not a readable config (damaged?); the work dir is read-only, so it stays as it is")
            return
        if damaged:
            say(f"{path}: not a readable config (damaged?); rewritten with this run's")
        write_bytes(path, text)

    def _tidy_root(self) -> None:
        """After an up-to-date check: save new content hashes, rewrite a config record that no
        longer parses, and remove temporary files that a killed writer left in the work dir's
        root, when no other run holds the work dir (its temporary files would be live). A
        read-only work dir is left as it is."""
        if not self.work_dir.is_dir():
            return
        damaged = (self.work_dir / "config.toml").is_file() and not is_toml(self.work_dir / "config.toml")
        if self.read_only():
            if damaged:
                self._record_config(always=False)     # says so, writes nothing
            return
        if not self.hashes.dirty and not damaged and not any(TMP_MARK in p.name for p in self.work_dir.iterdir()):
            return
        try:
            with self._lock():
                remove_stray_temps(self.work_dir)
                self.hashes.save()
                self._record_config(always=False)
        except WsisError:
            pass

    def _check_images(self, todo: list[Stage]) -> None:
        """Decode every image the run will read once (cached by size and mtime), so a missing
        or corrupt file stops the run before any stage output is cleared or written. The size
        each image has, as displayed, is recorded with it, and compared on every run with the
        size its annotation file gives it (its masks would be misplaced), for the images of
        every stage to run: those that read no image but draw its masks at that size (the
        evaluations) included, and whether the image was decoded before or not."""
        reading = dict.fromkeys(i for s in todo if s.reads_images for i in self.stage_ids(s))
        sized = dict.fromkeys(i for s in todo if not s.reads_images for i in self.stage_ids(s)
                              if i not in reading and self.dataset.declared_size(i))
        cache_path = self.work_dir / ".checked_images.json"
        cache = read_json_or_none(cache_path)
        if not isinstance(cache, dict):
            cache = {}
        unchecked = []
        for i in [*reading, *sized]:
            p = self.dataset.image_path(i)
            try:
                st = p.stat()
            except FileNotFoundError:
                if i in reading:
                    raise WsisError(f"{p}: image is listed but missing") from None
                continue          # no stage of this run reads it
            stat_key = f"{st.st_size}:{st.st_mtime_ns}"
            recorded = recorded_size(cache.get(str(p)), stat_key)
            if recorded is None and i in reading:
                unchecked.append((i, str(p), stat_key))
                continue
            declared = self.dataset.declared_size(i)
            if declared:
                if not isinstance(recorded, tuple):      # checked by a wsis that did not record sizes, or never
                    recorded = read_image_size(p, self.dataset.max_pixels)
                check_declared_size(p, recorded, declared)
        if not unchecked:
            return
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for (i, path, stat_key), shape in zip(unchecked, pool.map(lambda u: read_rgb(u[1], 0, self.dataset.max_pixels).shape, unchecked)):
                declared = self.dataset.declared_size(i)
                if declared:
                    check_declared_size(path, shape[:2], declared)
                cache[path] = f"{stat_key}:{shape[0]}x{shape[1]}"
        write_json(cache_path, cache)

    def _check_config_files(self, todo: list[Stage]) -> None:
        """Read every file that a config key of a stage to run names as what it is (a JSON
        file parses, a weights file loads as tensors), so that a bad one stops the run before
        any stage output is cleared. Cached by path, size and mtime, as the image check is."""
        cache_path = self.work_dir / ".checked_files.json"
        cache = read_json_or_none(cache_path)
        if not isinstance(cache, dict):
            cache = {}
        checked = dict(cache)
        for stage in todo:
            for dotted in stage.files:
                section, key = dotted.split(".", 1)
                value = self.cfg[section][key]
                if not (isinstance(value, str) and value and Path(value).expanduser().is_file()):
                    continue      # a name ("imagenet", "vit_b") or nothing: the schema checked it
                path = Path(value).expanduser()
                stat_key = ContentHashes.stat_key(path)
                if checked.get(str(path)) != stat_key:
                    check_config_file(dotted, path)
                    checked[str(path)] = stat_key
        if checked != cache:
            write_json(cache_path, checked)

    def _check_inputs(self, todo: list[Stage]) -> None:
        """Each stage's own check of its input files (a review store that no longer parses),
        so that it stops the run before any stage output is cleared."""
        for stage in todo:
            if stage.check_inputs:
                stage.function("check_inputs")(self.work_dir)

    def _execute(self, stage: Stage, runner: "DaskRunner") -> None:
        self._running = stage     # named in a disk-full message
        try:
            self._compute(stage, runner)
        finally:
            self._states.pop(stage.name, None)

    def _disk_full_message(self, stage: Stage | None, e: DiskFullError) -> str:
        """One line naming the work dir and about how much more space the stage needs."""
        needed = max(e.needed, 1 << 20)
        if stage is None:
            return (f"{self.work_dir}: no space left on device writing {Path(e.path).name} "
                    f"({e.free / 2**20:.1f} MiB free; at least {needed / 2**20:.1f} MiB needed)")
        out = self.out_dir(stage)
        if stage.per_image is not None:
            done = [p for p in (stage.output_path(out, i) for i in self.stage_ids(stage)) if p.is_file()]
            left = len(self.stage_ids(stage)) - len(done)
            if done:
                needed = max(needed, left * sum(p.stat().st_size for p in done) // len(done))
        return (f"{self.work_dir}: no space left on device while {stage.name} wrote {Path(e.path).name} "
                f"({e.free / 2**20:.1f} MiB free; {stage.name} needs about {needed / 2**20:.1f} MiB more); "
                f"free some space and rerun: finished outputs are kept")

    def _compute(self, stage: Stage, runner: "DaskRunner") -> None:
        fp, comps = self.fingerprint(stage)
        out = self.out_dir(stage)
        man = self.manifest(stage)
        state = self.state(stage)
        per_image_names = self.per_image_names(stage)
        if state.status == "damaged" and stage.name not in self._forced and state.damaged.keys() <= per_image_names:
            name, why = next(iter(state.damaged.items()))
            say(f"{stage.name}: {len(state.damaged)} damaged output(s) ({name}: {why}); recomputing those images")
            for name in state.damaged:
                remove_output(out / name)
        elif changed := self.changed_image_inputs(stage, man, comps):
            # only some images' inputs changed (a review import): recompute just those images
            say(f"{stage.name}: the inputs of {len(changed)} images changed; recomputing those images")
            for image_id in changed:
                remove_output(stage.output_path(out, image_id))
        elif out.exists() and (man is None or man["fingerprint"] != fp or man["status"] == "done"):
            # stale, forced, damaged, or an unknown directory: start this stage afresh
            if state.status == "damaged":
                say(f"{stage.name}: {state.detail}; recomputing the stage")
            keep = stage.keeps if state.status in ("stale", "missing") and stage.name not in self._forced else None
            for p in (out.iterdir() if keep and out.is_dir() else [out]):
                if p.name == keep and p.is_dir():
                    continue
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
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
            # outputs are written atomically; the structural check catches files damaged since
            todo = [i for i in ids if unreadable_reason(stage.output_path(out, i)) is not None]
            say(f"{stage.name}: computing {len(todo)} of {len(ids)} images ({len(ids) - len(todo)} already done)")
            runner.map(stage, job, todo)
            missing = [i for i in ids if not stage.output_path(out, i).is_file()]
            if missing:
                raise RuntimeError(f"{stage.name}: no output for {len(missing)} images, e.g. {missing[0]}")
        else:
            say(f"{stage.name}: {stage.description}")
            if stage.data_parallel:
                runner.release_workers()   # idle while it trains, they would hold their memory
            if stage.data_parallel and self.processes > 1:
                from .distributed import launch
                launch(job, stage.run, self.processes)
            else:
                job.mapper = runner.map_ids   # its per-image work (``Job.map_ids``) on the same workers
                stage.function("run")(job)
        manifest.update(status="done", seconds=round(time.monotonic() - start, 2))
        (out / PROGRESS).unlink(missing_ok=True)
        manifest["outputs"] = record_outputs(out)
        write_json(out / MANIFEST, manifest)
        say(f"{stage.name}: done in {manifest['seconds']:.1f} s")

    def changed_image_inputs(self, stage: Stage, man: dict | None, comps: dict) -> list[str]:
        """The images whose ``image_inputs`` entry changed, when that is all that changed in a
        per-image stage's fingerprint since its outputs were written (done or interrupted), and
        the stage is not forced; else [] (the stage is recomputed as its state says)."""
        if stage.per_image is None or man is None or stage.name in self._forced or self.state(stage).status != "stale":
            return []
        old = man.get("components", {})
        rest = lambda c: {k: v for k, v in c.items() if k != "image_inputs"}
        if rest(old) != rest(comps):
            return []
        before, now = old.get("image_inputs", {}), comps.get("image_inputs", {})
        if before and now and before["config"] != now["config"]:
            return []
        before, now = before.get("entries", {}), now.get("entries", {})
        return sorted(i for i in before.keys() | now.keys() if before.get(i) != now.get(i))

    @contextmanager
    def mapper(self):
        """A ``Job.mapper`` on this pipeline's Dask settings (--scheduler, --workers), for a
        stage function run outside ``run`` (``wsis report`` of a partial run); its workers,
        started when first needed, stop on exit."""
        runner = DaskRunner(self.scheduler, self.workers, "cpu")
        try:
            yield runner.map_ids
        finally:
            runner.close()

    # --------------------------------------------------------------- metrics
    def collect_metrics(self) -> dict:
        """Merge the metrics of every finished stage into ``<work-dir>/metrics.json``."""
        metrics = {}
        for stage in self.stages.values():
            path = self.out_dir(stage) / METRICS
            if path.is_file() and self.state(stage).status == "done":
                value = read_json_or_none(path)
                if value is not None:
                    metrics[stage.name] = value
        path = self.work_dir / METRICS
        if metrics and read_json_or_none(path) != metrics:     # a run that changed nothing writes nothing
            if self.read_only():
                say(f"{path}: not up to date; the work dir is read-only, so it stays as it is")
            else:
                write_json(path, metrics)
        return metrics


    def result_files(self) -> list[tuple[str, Path]]:
        """(what it is, path) of each finished stage's ``result_file``, to name after a run."""
        return [(stage.result_file[0], self.out_dir(stage) / stage.result_file[1])
                for stage in self.stages.values()
                if stage.result_file and self.state(stage).status == "done"]
