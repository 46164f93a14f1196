"""Layered TOML configuration.

A run's config is built from, in order: ``configs/base.toml`` (every key, at the paper's VOC
settings), the dataset preset ``configs/<preset>.toml``, an optional user file (``--config``)
and ``--set section.key=value`` overrides. Later layers may only set keys that exist in the
earlier ones, with values of the same type (list elements included), so a typo is an error
instead of a silent no-op. The result is checked against the declared schema
(``wsis.schema``: ranges, choices, cross-field rules) before anything runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .schema import same_type, type_name, validate


def _config_dir() -> Path:
    """Where the presets are: the top-level ``configs/`` of a source checkout (run from the
    tree, or installed editable), else the copy a wheel ships as the package ``wsis.configs``."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").is_file() and (checkout / "configs" / "base.toml").is_file():
        return checkout / "configs"
    from importlib.resources import files
    try:
        return Path(str(files("wsis.configs").joinpath("base.toml"))).parent
    except ModuleNotFoundError:           # a broken install: load_config names the missing file
        return checkout / "configs"


CONFIG_DIR = _config_dir()


def preset_path(name: str) -> Path:
    return CONFIG_DIR / f"{name}.toml"


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml") if p.stem != "base")


def preset_layers(preset: str) -> list[tuple[str, dict]]:
    """The preset's layers, base first: a preset may start with ``extends = "<other preset>"``
    (the coco and folder presets extend ``photos``, the real-photo recipe), which is read
    under it; ``extends`` itself is not a config key."""
    layers: list[tuple[str, dict]] = []
    name = preset
    while True:
        if not preset_path(name).is_file():
            where = f" (extended by '{layers[0][0]}')" if layers else ""
            raise ConfigError(f"unknown dataset preset '{name}'{where} (no {preset_path(name)}); "
                              f"available: {', '.join(available_presets())}")
        layer = read_toml(preset_path(name))
        parent = layer.pop("extends", None)
        layers.insert(0, (name, layer))
        if parent is None:
            return layers
        if not isinstance(parent, str) or parent in [n for n, _ in layers]:
            raise ConfigError(f"{preset_path(name)}: 'extends' must name another preset, not {parent!r}")
        name = parent


def read_toml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None


def _coerce(old: Any, new: Any) -> Any:
    if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
        return float(new)
    if isinstance(old, list) and isinstance(new, list) and old:
        return [_coerce(old[0], v) for v in new]
    return new


def merge(base: dict, layer: dict, source: str, prefix: str = "") -> dict:
    """Return ``base`` updated by ``layer``; every key of ``layer`` must exist in ``base``."""
    out = copy.deepcopy(base)
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if key not in out:
            raise ConfigError(f"{source}: unknown config key '{dotted}'")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' is a section, not a value")
            out[key] = merge(out[key], value, source, dotted + ".")
        else:
            if isinstance(value, dict) or not same_type(out[key], value):
                raise ConfigError(f"{source}: '{dotted}' must be {type_name(out[key])}, got {value!r}")
            out[key] = _coerce(out[key], value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value``; the value is a TOML literal, or a bare string if it is not one."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def load_config(preset: str, config_file: str | Path | None = None,
                overrides: tuple[str, ...] | list[str] = ()) -> dict:
    base = read_toml(CONFIG_DIR / "base.toml")
    cfg = base
    for name, layer in preset_layers(preset):
        cfg = merge(cfg, layer, str(preset_path(name)))
    if config_file is not None:
        cfg = merge(cfg, read_toml(Path(config_file)), str(config_file))
    for text in overrides:
        parts, value = parse_override(text)
        layer: dict = value
        for part in reversed(parts):
            layer = {part: layer}
        cfg = merge(cfg, layer, "--set")
    validate(cfg, base)
    return cfg


def section_hash(obj: Any) -> str:
    """A stable hash of any JSON-able value (used in stage fingerprints)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dumps_toml(cfg: dict) -> str:
    """Serialise a config (nested dicts of scalars and lists) as TOML."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines: list[str] = []

    def emit(table: dict, name: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if name:
            lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in table.items():
            if isinstance(v, dict):
                emit(v, f"{name}.{k}" if name else k)

    emit(cfg, "")
    return "\n".join(lines).lstrip("\n") + "\n"
