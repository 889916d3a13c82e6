"""CLI flags generated from a recipe's typed config, so each flag's help text and default live in one place: the
config dataclass and its docstring (litgpt's jsonargparse-from-signatures idea, done with Typer signatures).

A flag is `--<field-name>` for every leaf field of the config's sections (`finetune.max_length` ->
`--max-length`), plus aliases kept for flags users already type (`--batch-size` for `train.batch_rows`). Every
generated flag defaults to None ("not given"), so the precedence is: config defaults < `--config FILE` < flags
< `--set key=value`.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from pathlib import Path
from typing import Any, Callable, Collection, List, Optional

import typer

from encoderforge.config import field_help


@dataclasses.dataclass(frozen=True)
class Flag:
    key: str  # dotted config key, e.g. "train.lr"
    names: tuple[str, ...]  # "--lr", aliases
    hint: Any  # the field's type
    default: Any
    help: str


def config_flags(
    cls: type,
    *,
    skip: Collection[str] = frozenset(),
    aliases: dict[str, tuple[str, ...]] | None = None,
    defaults: Any = None,
    prefix: str = "",
) -> list[Flag]:
    """One Flag per leaf field of `cls` (recursing into dataclass sections), except the dotted keys in `skip`."""
    aliases = aliases or {}
    defaults = defaults if defaults is not None else cls()
    hints, docs = typing.get_type_hints(cls), field_help(cls)
    out: list[Flag] = []
    for f in dataclasses.fields(cls):
        key, value = f"{prefix}{f.name}", getattr(defaults, f.name)
        if key in skip:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out += config_flags(hints[f.name], skip=skip, aliases=aliases, defaults=value, prefix=f"{key}.")
            continue
        names = (f"--{f.name.replace('_', '-')}", *aliases.get(key, ()))
        out.append(Flag(key, names, hints[f.name], value, docs.get(f.name, "")))
    seen: dict[str, str] = {}
    for fl in out:
        for n in fl.names:
            if n in seen:
                raise ValueError(f"flag {n} would set both {seen[n]} and {fl.key}; add an alias or skip one")
            seen[n] = fl.key
    return out


def _option_type(hint: Any) -> Any:
    """The Typer parameter type for a config field: Literal -> str with a choice check in the config, list -> List."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        return Optional[List[str]]
    if origin is typing.Literal:
        return Optional[str]
    return Optional[hint]


def with_config_flags(flags: list[Flag], fixed: list[inspect.Parameter]) -> Callable[[Callable], Callable]:
    """Give `fn(**kw)` a signature Typer reads: the `fixed` parameters first, then one option per Flag. The wrapped
    function receives `values={dotted key: value}` (given flags only) next to the fixed parameters."""

    def wrap(fn: Callable) -> Callable:
        params = list(fixed)
        by_name = {}
        for fl in flags:
            name = fl.key.replace(".", "__")
            by_name[name] = fl.key
            default = fl.default if not isinstance(fl.default, list) else ",".join(map(str, fl.default))
            help_text = f"{fl.help} ({fl.key}; default: {default})".strip()
            params.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    annotation=_option_type(fl.hint),
                    default=typer.Option(None, *fl.names, help=help_text, show_default=False),
                )
            )

        def command(**kw: Any) -> Any:
            # a list flag is repeatable and takes commas: `--labels a,b --labels c` -> [a, b, c]
            values = {
                by_name[k]: (
                    [p.strip() for x in v for p in str(x).split(",") if p.strip()] if isinstance(v, (list, tuple)) else v
                )
                for k, v in kw.items()
                if k in by_name
            }
            values = {k: v for k, v in values.items() if v is not None and v != []}
            return fn(values=values, **{k: v for k, v in kw.items() if k not in by_name})

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__doc__, command.__name__ = fn.__doc__, fn.__name__
        return command

    return wrap


def param(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


CONFIG = param("config", Optional[Path], typer.Option(None, "--config", "-c", help="YAML config (see configs/)."))
SET = param("set_", List[str], typer.Option([], "--set", help="Override a field: --set train.lr=1e-4 (repeatable)."))
