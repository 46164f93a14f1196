"""The cache's files and checks: manifests, what a stage's outputs were when it finished and
whether they still are, why a fingerprint changed, the content hashes of input files, the checks
of config-named files, and the work-dir lock.

A manifest records, for each output, its size, mtime and a hash of its whole content
(``record_outputs``); ``damaged_outputs`` compares the files with it. ``ContentHashes`` caches
the content hashes of inputs (images, a weights file, a training JSON) that enter fingerprints.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

from wsis.errors import WsisError
from wsis.io import TMP_MARK, file_sha256, quick_hash, read_json_or_none, unreadable_reason, write_json

from .job import PROGRESS

MANIFEST = "manifest.json"
HASH_CACHE = ".file_hashes.json"


def configured_file(value) -> Path | None:
    """A config value that names an existing file, as a path (else None)."""
    if isinstance(value, str) and value and Path(value).expanduser().is_file():
        return Path(value).expanduser()
    return None


def check_config_file(key: str, path: Path) -> None:
    """A one-line WsisError unless ``path`` (named by config key ``key``) reads as what it is:
    a ``.json`` file parses; anything else is a weights file and loads (tensors only)."""
    if path.suffix.lower() == ".json":
        try:
            with open(path, "rb") as f:
                json.loads(f.read().decode())
        except (OSError, ValueError, RecursionError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
            raise WsisError(f"{key} = {path}: not a readable JSON file ({first})") from None
        return
    from wsis.checkpoint import UnreadableCheckpoint, load_checkpoint
    try:
        load_checkpoint(path)
    except (UnreadableCheckpoint, OSError) as e:
        raise WsisError(f"{key} = {e}") from None


def remove_output(path: Path) -> None:
    """Remove a damaged output, whatever took its place (a directory too)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def is_toml(path: Path) -> bool:
    import tomllib
    try:
        tomllib.loads(path.read_text())
        return True
    except (OSError, ValueError):     # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return False


def record_outputs(out: Path) -> dict:
    """{relative name: [size, mtime_ns, sha256 of the whole content]} of every output: what
    ``damaged_outputs`` checks later. Recorded when the stage finishes, while the files it
    wrote are still in the page cache (sha256 has hardware support here: 1.2 GB/s against
    blake2b's 0.47)."""
    outputs = {}
    for p in sorted(out.rglob("*")):
        name = p.relative_to(out).as_posix()
        if not p.is_file() or name in (MANIFEST, PROGRESS) or TMP_MARK in p.name:
            continue
        st = p.stat()
        outputs[name] = [st.st_size, st.st_mtime_ns, file_sha256(p)]
    return outputs


def old_format(recorded: dict) -> bool:
    """Outputs recorded by a wsis before full-content hashes: {name: size or [size, quick hash]}."""
    return any(not (isinstance(r, list) and len(r) == 3) for r in recorded.values())


def damaged_outputs(out: Path, recorded: dict, per_image_names: set[str], verify: bool = False) -> dict[str, str]:
    """The recorded outputs that are missing, changed in size, or changed in content, with
    what is wrong with each. The content is hashed only where the mtime moved (a hint: a
    writer that restores it is caught by ``verify``, which hashes every output), so that a
    plain check costs one stat per file. Outputs of an older wsis (``old_format``) get its
    checks: a hash of the first and last MiB, and a structural check of per-image files."""
    damaged = {}
    for name, rec in recorded.items():
        path = out / name
        try:
            st = path.stat()
        except FileNotFoundError:
            damaged[name] = "missing"
            continue
        if path.is_dir():
            damaged[name] = "a directory, not a file"
            continue
        if isinstance(rec, list) and len(rec) == 3:
            size, mtime, digest = rec
            if st.st_size != size:
                damaged[name] = f"{st.st_size} bytes, {size} recorded"
            elif (verify or st.st_mtime_ns != mtime) and file_sha256(path) != digest:
                damaged[name] = "content changed (full-content hash)"
            continue
        size, digest = (rec, None) if isinstance(rec, int) else (rec[0], rec[1])
        if st.st_size != size:
            damaged[name] = f"{st.st_size} bytes, {size} recorded"
        elif digest is not None and quick_hash(path) != digest:
            damaged[name] = "content changed"
        elif name in per_image_names and (why := unreadable_reason(path)):
            damaged[name] = why
    return damaged


def stale_reason(old: dict, new: dict) -> str:
    reasons = []
    for sec, h in new["config"].items():
        if old.get("config", {}).get(sec) != h:
            reasons.append(f"config [{sec}] changed")
    for key, h in new.get("files", {}).items():
        if old.get("files", {}).get(key) != h:
            reasons.append(f"file {key} changed")
    if old.get("code") != new["code"]:
        reasons.append(f"code version {old.get('code')} -> {new['code']}")
    for up, h in new["upstream"].items():
        if old.get("upstream", {}).get(up) != h:
            reasons.append(f"upstream {up} changed")
    if old.get("images") != new["images"]:
        reasons.append("image list, labels or files changed")
    if old.get("image_inputs") != new.get("image_inputs"):
        before, now = old.get("image_inputs", {}).get("entries", {}), new.get("image_inputs", {}).get("entries", {})
        changed = sum(before.get(i) != now.get(i) for i in before.keys() | now.keys())
        reasons.append(f"reviewed images changed ({changed})" if changed else "review settings changed")
    if old.get("ground_truth") != new.get("ground_truth"):
        reasons.append("ground truth changed")
    if old.get("coco_ids") != new.get("coco_ids"):
        reasons.append("COCO image or category ids changed")
    return ", ".join(reasons) or "fingerprint changed"


class WorkDirLock:
    """An exclusive lock on the work dir, so two runs never write the same cache."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            self.fh = open(self.path, "w")
        except OSError as e:      # a read-only mount, no permission: one line, not a traceback
            raise WsisError(f"{self.path.parent}: cannot write to the work dir ({e.strerror or e})") from None
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise WsisError(f"{self.path.parent}: another wsis run is using this work dir") from None
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


class ContentHashes:
    """Content hashes of input files (images, a weights file, a training JSON), cached in the
    work dir by path, size and mtime so that each file is read once until it changes."""

    def __init__(self, path: Path, rehash: bool = False):
        # rehash: read every file again, whatever the cache says (a file replaced under the
        # same size and mtime is otherwise taken for the one hashed, as DVC does)
        self.path, self.rehash = path, rehash
        cache = read_json_or_none(path)
        self.cache: dict[str, list] = cache if isinstance(cache, dict) else {}
        self.dirty = False

    @staticmethod
    def stat_key(path: Path) -> str:
        st = Path(path).stat()
        return f"{st.st_size}:{st.st_mtime_ns}"

    def get(self, path: Path) -> str:
        key = self.stat_key(path)
        entry = self.cache.get(str(path))
        if self.rehash or not (isinstance(entry, list) and len(entry) == 2 and entry[0] == key):
            entry = [key, file_sha256(path)]
            self.cache[str(path)] = entry
            self.dirty = True
        return entry[1]

    def save(self) -> None:
        """Written under the work-dir lock only (``status`` reads the cache but never writes)."""
        if self.dirty:
            write_json(self.path, self.cache)
            self.dirty = False
