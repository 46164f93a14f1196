"""A node of the stage DAG (``Stage``) and the per-image inputs a stage may read from the work dir
(``ImageInputs``): what the engine (``pipelines.engine``) walks and the Dask runner
(``pipelines.runner``) maps. Both import them from here, below both, so neither imports the other
for them; ``pipelines.engine`` re-exports both names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .job import Job


@dataclass(frozen=True)
class Stage:
    """A node of the DAG.

    ``run(job)`` computes a whole stage in the driver (training, evaluation);
    ``per_image(job, ids)`` computes the outputs ``output_name.format(id=...)`` of a chunk of
    images and runs as a Dask task. Exactly one of the two is given, as a function or as
    "module:function" under ``pipelines.stages`` (imported when the stage runs).

    The config a stage reads, which alone enters its fingerprint: ``sections`` lists config
    sections ("seg"), single keys ("seg.score_threshold") or functions of the config that
    name a section (the section of the chosen model); ``ignores`` drops keys of those sections
    that the stage does not read; ``files`` are keys whose value may be a file path, hashed
    by content.

    ``upstream`` entries may be functions of the config that name a stage (export reads
    sam_refine's masks when SAM is on, else ins_seg's), and ``enabled_by`` names a boolean
    config key without which the stage is not part of the pipeline at all: ``Pipeline``
    resolves both when it is made, so an optional stage that is off changes no other stage's
    upstream, fingerprint or cache.
    """
    name: str
    description: str
    upstream: tuple[str | Callable[[dict], str], ...]
    sections: tuple[str | Callable[[dict], str], ...]
    version: int
    image_splits: Callable[[dict], list[str]]
    run: Callable[[Job], None] | str | None = None
    per_image: Callable[[Job, list[str]], None] | str | None = None
    output_name: str = "{id}.npz"
    needs_masks: bool = False     # evaluation: skipped on datasets without masks
    data_parallel: bool = False   # a training stage that ``--gpus N`` runs in N processes
    resource: str = "cpu"         # per-image stages: "gpu" runs a network on --device, "cpu" does not
    result_file: tuple[str, str] | None = None   # (what it is, file name): named at the end of a run
    reads_images: bool = True     # its images are checked before the run starts
    ignores: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    # ("section.key" of ``files``, function of that config section giving the file the key
    # stands for) where it is not the value itself (a name like "imagenet" that means a file)
    file_resolvers: tuple[tuple[str, Callable], ...] = ()
    input_files: tuple[str, ...] = ()   # files under the work dir whose content it depends on
    # "module:function" of the work dir that raises WsisError when an input file of the stage
    # cannot be used: called before anything is cleared
    check_inputs: str | None = None
    writes_coco_ids: bool = False       # its output keeps a COCO input's image and category ids
    enabled_by: str | None = None       # "section.key": a bool that must be true for the stage to exist
    # a subfolder of files the stage keys by what they were made from (a hash in each name):
    # kept when the stage is recomputed for a changed fingerprint, so that it makes again only
    # those whose key changed; the stage removes the ones it no longer uses
    keeps: str | None = None
    # per-image inputs from a work-dir file that the stage reads while a config key is on (the
    # review store): see ``ImageInputs``
    image_inputs: "ImageInputs | None" = None

    def enabled(self, cfg: dict) -> bool:
        if self.enabled_by is None:
            return True
        section, key = self.enabled_by.split(".", 1)
        return bool(cfg[section][key])

    def bound(self, cfg: dict) -> "Stage":
        """This stage with its upstream resolved for ``cfg``: names only, each once."""
        names = (u(cfg) if callable(u) else u for u in self.upstream)
        return dataclasses.replace(self, upstream=tuple(dict.fromkeys(names)))

    def config_read(self, cfg: dict) -> dict[str, object]:
        """{"section" or "section.key": value} of the config this stage reads."""
        read: dict[str, object] = {}
        for entry in self.sections:
            name = entry(cfg) if callable(entry) else entry
            section, _, key = name.partition(".")
            if key:
                read[name] = cfg[section][key]
            else:
                read[name] = {k: v for k, v in cfg[section].items() if f"{section}.{k}" not in self.ignores}
        return read

    def output_path(self, out_dir: Path, image_id: str) -> Path:
        return out_dir / self.output_name.format(id=image_id)

    def function(self, which: str) -> Callable:
        fn = getattr(self, which)
        if isinstance(fn, str):
            import importlib
            module, name = fn.split(":")
            fn = getattr(importlib.import_module(f"pipelines.stages.{module}"), name)
        return fn


@dataclass(frozen=True)
class ImageInputs:
    """A work-dir JSON file ``{"images": {id: entry}}`` of per-image inputs (the review store)
    that a stage reads while the boolean config key ``enabled_by`` is true, with the further
    config keys ``keys`` that it reads only then.

    The entries of the stage's own images enter its fingerprint one by one, and only while the
    key is on and some exist: without them the stage's fingerprint, and so its cache, is
    exactly that of a stage that does not read the file. A per-image stage whose fingerprint
    changed only in these entries recomputes just the images whose entry changed."""
    file: str
    enabled_by: str
    keys: tuple[str, ...] = ()

    def active(self, cfg: dict) -> bool:
        section, key = self.enabled_by.split(".", 1)
        return bool(cfg[section][key])
