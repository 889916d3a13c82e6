"""Typed YAML configs with `--set key=value` overrides, shared by every recipe (litgpt `args.py`).

A config is a (nested) dataclass. Every field is validated in its `__post_init__` with a message naming the
field; an unknown field in a YAML file or an override is an error that names it and lists the known ones; a
value of the wrong type is an error naming the dotted key and the file.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from encoderforge import EncoderforgeError

T = TypeVar("T")


def from_dict(cls: type[T], raw: dict[str, Any], *, where: str) -> T:
    """Build a (nested) dataclass from a dict, naming any unknown field with its dotted path."""
    if not isinstance(raw, dict):
        raise EncoderforgeError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # T is always a dataclass here
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EncoderforgeError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    kw = {}
    for name, value in raw.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kw[name] = from_dict(hint, value or {}, where=f"{where}.{name}")
        else:
            kw[name] = _coerce(value, hint, f"{where}.{name}")
    try:
        return cls(**kw)
    except TypeError as e:
        raise EncoderforgeError(f"{where}: {e}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Light type check: YAML gives int for float fields (accept), str for numbers is an error naming the field."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            choices = [repr(a) for a in typing.get_args(hint)]
            raise EncoderforgeError(f"{where}={value!r}; use {', '.join(choices[:-1])} or {choices[-1]}")
        return value
    if origin is list:
        if isinstance(value, str):  # `--set data.labels=a,b` or a single YAML string
            value = [v.strip() for v in value.split(",") if v.strip()]
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            raise EncoderforgeError(f"{where}: expected a list, got {value!r}")
        if item is int:  # CLI list flags and `--set k=a,b` arrive as strings: "96" is the int 96
            value = [int(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else v for v in value]
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise EncoderforgeError(f"{where}: must be a finite number, got {value!r}")
    expected = {int: int, float: float, bool: bool, str: str}.get(hint)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise EncoderforgeError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise EncoderforgeError(f"{path}: no such config file" if not path.exists() else f"{path}: not a file; pass a YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise EncoderforgeError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise EncoderforgeError(f"{path}: expected a mapping of sections (e.g. `train: {{lr: 1e-4}}`), got {type(raw).__name__}")
    return raw


def set_key(raw: dict[str, Any], key: str, value: Any, *, where: str) -> None:
    """Set a dotted key (`train.lr`) in a nested dict, creating sections; `where` names the source in errors."""
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise EncoderforgeError(f"{where}: {p!r} is not a section")
    node[leaf] = value


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` over `base`, section by section (a new dict; neither input changes)."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = merge(out[k] if isinstance(out.get(k), dict) else {}, v) if isinstance(v, dict) else copy.deepcopy(v)
    return out


def load_config(
    path: str | Path | None,
    overrides: list[str] | None,
    cls: type[T],
    *,
    base: dict[str, Any] | None = None,
    where: str | None = None,
) -> T:
    """Read a YAML config and apply `key.sub=value` overrides (values parsed as YAML: 1e-4, true, [a, b]).

    Args:
        path: the YAML file (None = all defaults).
        overrides: e.g. ["train.lr=1e-4", "model.preset=bert-small"].
        cls: the config dataclass.
        base: raw values applied before the file (e.g. a recipe's per-task defaults).
        where: the source named in errors (default: the file, else "config").
    Returns:
        the validated config.
    """
    raw: dict[str, Any] = dict(base or {})
    where = where or (str(path) if path is not None else "config")
    if path is not None:
        raw = merge(raw, read_yaml(path))
    for item in overrides or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise EncoderforgeError(f"--set {item!r}: expected key=value, e.g. --set train.lr=1e-4")
        set_key(raw, key, _parse_value(value), where=f"--set {item!r}")
    return from_dict(cls, raw, where=where)


def field_help(cls: type) -> dict[str, str]:
    """Each field's help from the dataclass docstring's `Args:` lines (`name: text`, `a / b: text` or `a, b: text`),
    so `--help` and the config reference read the same words as the code."""
    doc = cls.__doc__ or ""
    out: dict[str, str] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    current: list[str] = []
    for line in doc.splitlines():
        m = re.match(r"^\s{4,8}([\w ,/]+):\s*(.*)$", line)
        keys = [k.strip() for k in re.split(r"[,/]", m.group(1))] if m else []
        if m and keys and all(k in names for k in keys):
            current = keys
            for k in keys:
                out[k] = m.group(2).strip()
        elif current and line.strip() and line.startswith(" " * 8):
            for k in current:
                out[k] += " " + line.strip()
        else:
            current = []
    return out


def _parse_value(text: str) -> Any:
    """Parse an override value as YAML ("true", "[a, b]", "3"); numbers YAML 1.1 misses ("1e-4") are fixed by _coerce."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (for the run directory's resolved config)."""
    return dataclasses.asdict(cfg)
