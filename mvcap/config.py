"""Configs: frozen dataclasses loaded from TOML, overridable from the command line.

A config class is any (nested) frozen dataclass. ``load_config(Cls, path, overrides)``
reads a TOML file, applies ``section.key=value`` overrides (values parsed as TOML, bare
words as strings) and builds the dataclass, rejecting unknown keys with the list of
valid ones so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from mvcap.errors import MvcapError
from mvcap.resources import resource_path

__all__ = [
    "ConfigError",
    "load_config",
    "build_config",
    "read_toml",
    "read_text",
    "merge",
    "from_dict",
    "to_dict",
    "parse_overrides",
    "CONFIG_DIR",
]

T = TypeVar("T")
CONFIG_DIR = resource_path("configs", must_exist=False)  # shipped configs (mvcap/assets/configs)


class ConfigError(MvcapError):
    """A config file or override is invalid; the message names the key."""


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError, KeyError):
        return text  # a bare word, e.g. fusion=refit


def parse_overrides(items: typing.Iterable[str]) -> dict:
    """["fit.iterations=50", "predictor=flow"] -> nested dict."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value (e.g. fit.iterations=50)")
        key, value = item.split("=", 1)
        node = out
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"override '{item}' has an empty key; use key=value or section.key=value")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{p}' was already given a value, it cannot also be a table")
        node[parts[-1]] = _parse_value(value.strip())
    return out


def merge(base: dict, extra: dict) -> dict:
    """Recursive dict update (tables merge, other values replace)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _convert(tp, value, where: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a table of settings, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where) if len(args) == 1 else value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{where}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if args and len(args) != len(value):
            raise ConfigError(f"'{where}' must have {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value)) if args else tuple(value)
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"'{where}' must be a number, got {_short(value)}")
        if math.isnan(value):
            raise ConfigError(f"'{where}' must be a number, got nan")
        return float(value)
    if tp is int and isinstance(value, bool):  # True is an int to Python, not to a config reader
        raise ConfigError(f"'{where}' must be int, got {value!r}")
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"'{where}' must be {tp.__name__}, got {_short(value)}")
    if tp is Path:
        if not isinstance(value, (str, Path)) or not str(value).strip():
            raise ConfigError(f"'{where}' must be a path (a string), got {_short(value)}")
        return Path(value)
    if (origin or tp) is dict and not isinstance(value, dict):
        raise ConfigError(f"'{where}' must be a table, got {_short(value)}")
    if (origin or tp) is list and not isinstance(value, list):
        raise ConfigError(f"'{where}' must be a list, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build a (nested) dataclass from a dict; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if not isinstance(data, dict):
        raise ConfigError(f"{f'[{where}] ' if where else ''}must be a table of settings, got {_short(data)}")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"[{where}] " if where else ""
        raise ConfigError(f"{prefix}unknown setting(s) {unknown}; valid: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        if type(exc) is not ValueError:  # ConfigError, or a module's own error type: keep it
            raise
        # a config's plain range checks (__post_init__) read like the rest
        raise ConfigError(f"[{where}] {exc}" if where else str(exc)) from exc
    except (TypeError, ArithmeticError) as exc:  # a value a range check could not even compare
        msg = f"invalid value ({type(exc).__name__}: {exc})"
        raise ConfigError(f"[{where}] {msg}" if where else msg) from exc


def to_dict(cfg) -> dict:
    """Dataclass -> plain dict (for provenance / JSON)."""
    return dataclasses.asdict(cfg)


def read_toml(path: str | Path) -> tuple[dict, Path]:
    """Read a TOML config (a relative path missing here is looked up under ``configs/``).
    Returns (data, resolved path)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (CONFIG_DIR / path).exists():
        path = CONFIG_DIR / path
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    text = read_text(path, "config file")
    try:
        return tomllib.loads(text), path
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({str(exc)[:300]})") from None


def read_text(path: str | Path, what: str = "file", error: type[Exception] = ConfigError) -> str:
    """A text file decoded as UTF-8; a folder, an unreadable or a non-UTF-8 file raises ``error``
    (one line saying which)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1]
        raise error(
            f"{path}: not a UTF-8 text file (byte {exc.start}: {bad!r}); save the {what} as UTF-8 "
            "(or check that this is the right file)"
        ) from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a {what}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def build_config(cls: type[T], data: dict, overrides: dict | list | None = None, where: str = "config") -> T:
    """``cls`` from already-read settings plus overrides (list of key=value or nested dict)."""
    if overrides:
        if isinstance(overrides, (list, tuple)):
            overrides = parse_overrides(overrides)
        data = merge(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | list | None = None) -> T:
    """Load ``cls`` from a TOML file (or defaults when path is None) plus overrides."""
    data, where = ({}, "config") if path is None else read_toml(path)
    return build_config(cls, data, overrides, str(where))
