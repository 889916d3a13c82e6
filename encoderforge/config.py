"""Typed YAML configs with `--set key=value` overrides, shared by every recipe (litgpt `args.py`).

A config is a (nested) dataclass. Every field is validated in its `__post_init__` with a message naming the
field; an unknown field in a YAML file or an override is an error that names it and lists the known ones; a
value of the wrong type is an error naming the dotted key and the file.
"""

from __future__ import annotations

import dataclasses
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
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise EncoderforgeError(f"{where}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    kw = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
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
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    expected = {int: int, float: float, bool: bool, str: str}.get(hint)
    if expected is not None and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
        raise EncoderforgeError(f"{where}: expected {expected.__name__}, got {value!r}")
    return value


def load_config(path: str | Path | None, overrides: list[str] | None, cls: type[T]) -> T:
    """Read a YAML config and apply `key.sub=value` overrides (values parsed as YAML: 1e-4, true, [a, b]).

    Args:
        path: the YAML file (None = all defaults).
        overrides: e.g. ["train.lr=1e-4", "model.preset=bert-small"].
        cls: the config dataclass.
    Returns:
        the validated config.
    """
    raw: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.exists():
            raise EncoderforgeError(f"{path}: no such config file")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise EncoderforgeError(f"{path}: invalid YAML ({e})") from None
    for item in overrides or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise EncoderforgeError(f"--set {item!r}: expected key=value, e.g. --set train.lr=1e-4")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise EncoderforgeError(f"--set {item!r}: {p!r} is not a section")
        node[leaf] = _parse_value(value)
    return from_dict(cls, raw, where=where)


def _parse_value(text: str) -> Any:
    """Parse an override value as YAML ("true", "[a, b]", "3"); numbers YAML 1.1 misses ("1e-4") are fixed by _coerce."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as plain data (for the run directory's resolved config)."""
    return dataclasses.asdict(cfg)
