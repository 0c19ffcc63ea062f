"""Typed, validated configuration built from dataclasses.

Layers, lowest first: dataclass defaults < YAML preset (configs/) < ``--config FILE`` <
``key=value`` on the command line. A misspelt key is an error naming the key and the
valid keys, never silently ignored. Each config class validates its own ranges in
``__post_init__`` (raise :class:`~freqd.errors.ConfigError` naming the option).

Nested sections are dataclass fields whose type is another config dataclass; dotted keys
address them on the command line, e.g. ``model.dim=64`` or ``method.alpha=0.3``.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_hints(cls: type) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - forward refs we cannot resolve
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X] / X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errs = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errs.append(str(e))
        raise ConfigError(errs[0] if errs else f"option {key!r}: bad value {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        if isinstance(value, str):
            for a in args:
                if str(a) == value:
                    return a
        raise ConfigError(f"option {key!r}: {value!r} is not one of {list(args)}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.strip("[]() ").split(",") if v.strip() != ""]
        if not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        out = [_coerce(v.strip() if isinstance(v, str) else v, inner, key) for v in value]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"option {key!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"option {key!r}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            try:
                f = float(str(value))
            except ValueError:
                f = None
            if f is not None and f.is_integer():
                return int(f)
            raise ConfigError(f"option {key!r}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"option {key!r}: expected a number, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"option {key!r}: expected a number, got {value!r}") from None
        if f != f:
            raise ConfigError(f"option {key!r}: NaN is not allowed")
        return f
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"option {key!r}: expected a string, got {value!r}")
        return str(value)
    return value


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"unknown option {key!r}{where}{hint}; valid options: {', '.join(sorted(valid))}"
    )


def from_dict(cls: type, data: Mapping[str, Any] | None, prefix: str = "", where: str = ""):
    """Build ``cls`` from a (nested) mapping; unknown keys are errors."""
    data = dict(data or {})
    hints = _type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise _unknown(prefix + k, [prefix + n for n in names], where)
        tp = hints[k]
        if _is_config(tp):
            if v is not None and not isinstance(v, Mapping):
                raise ConfigError(f"option {prefix + k!r}{where}: expected a mapping of options")
            kwargs[k] = from_dict(tp, v, prefix + k + ".", where)
        else:
            kwargs[k] = _coerce(v, tp, prefix + k)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if where and where not in str(e):
            raise ConfigError(f"{e}{where}") from None
        raise


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (YAML/JSON friendly; tuples become lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def merge(base: dict, over: Mapping[str, Any]) -> dict:
    """Deep-merge ``over`` into a copy of ``base``."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": "1"}, "c": "x"}`` (values stay strings)."""
    out: dict = {}
    for it in items:
        if "=" not in it:
            raise ConfigError(f"bad override {it!r}: expected key=value")
        key, val = it.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"bad override {it!r}: empty key")
        parts = key.split(".")
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"bad override {it!r}: {p!r} is not a section")
        cur[parts[-1]] = val
    return out


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of options at the top level")
    return data


def dump_yaml(cfg: Any) -> str:
    import yaml

    d = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return yaml.safe_dump(d, sort_keys=False)


def check(cond: bool, option: str, msg: str) -> None:
    """Validation helper for ``__post_init__``: raise ConfigError naming ``option``."""
    if not cond:
        raise ConfigError(f"option {option!r}: {msg}")
