"""Atomic writes (nothing half-written is ever left looking complete) and the output policy of every command."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from encoderforge import EncoderforgeError


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename, on error it is removed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EncoderforgeError(f"{path}: exists and is not a directory; choose another output path")
    if path.exists() and not overwrite:
        raise EncoderforgeError(f"{path}: already exists; pass --overwrite or choose another output path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a finished checkpoint should look like any new dir
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists() and not overwrite:  # made by someone else while we wrote: keep theirs, drop ours
        shutil.rmtree(tmp, ignore_errors=True)
        raise EncoderforgeError(f"{path}: appeared while this output was written; it was left as is — choose another output path")
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **kw) -> Iterator:
    """Open a temporary sibling file; it replaces `path` only if the block finishes without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    try:
        with open(tmp, mode, **kw) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- the output policy every command goes through, checked before any compute ---------------------------------

RUN_MARKER = ".encoderforge-run.json"  # {"kind": "finetune", "status": "running" | "finished", "config": {...}}


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(out: str | Path, inputs: Iterable[str | Path | None] = (), *, flag: str = "--out", expect: str = "file") -> Path:
    """Refuse an output path that would destroy or shadow an input: equal to an input, inside an input directory
    (a model or corpus), or a directory that holds an input; a directory where a file is expected and the reverse;
    a parent that is not a writable directory. Returns the resolved-as-given path.

    Args:
        out: the output path.
        inputs: input files and directories (None entries and zoo names that are not paths are skipped).
        flag: the option that named `out`, for the message.
        expect: "file" or "dir".
    """
    out = Path(out)
    real = out.resolve()
    for inp in inputs:
        if inp is None or str(inp) in ("", "-"):
            continue
        src = Path(inp).resolve()
        if not src.exists():
            continue
        if real == src:
            raise EncoderforgeError(f"{out}: {flag} is the input {inp}; writing would replace it — choose another {flag}")
        if src.is_dir() and _inside(real, src):
            raise EncoderforgeError(f"{out}: {flag} lies inside the input directory {inp}; choose a path outside it")
        if _inside(src, real):
            raise EncoderforgeError(f"{out}: {flag} holds the input {inp}; choose another {flag}")
    if out.exists() and expect == "file" and out.is_dir():
        raise EncoderforgeError(f"{out}: is a directory; {flag} needs a file path (e.g. {out / 'out.jsonl'})")
    if out.exists() and expect == "dir" and not out.is_dir():
        raise EncoderforgeError(f"{out}: is a file; {flag} needs a directory path")
    parent = next((p for p in [real, *real.parents] if p.exists()), None)
    if parent is not None and parent != real and not parent.is_dir():
        raise EncoderforgeError(f"{out}: {parent} is a file, not a directory; choose another {flag}")
    if parent is not None and not os.access(parent if parent.is_dir() else parent.parent, os.W_OK):
        raise EncoderforgeError(f"{out}: {parent} is not writable; choose another {flag}")
    return out


def read_marker(run: str | Path) -> dict | None:
    """The run marker of a directory an encoderforge command wrote, or None."""
    path = Path(run) / RUN_MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_marker(run: str | Path, kind: str, status: str, config: dict) -> None:
    with atomic_file(Path(run) / RUN_MARKER) as f:
        json.dump({"kind": kind, "status": status, "config": config}, f, indent=2)


def changed_keys(old: Any, new: Any, prefix: str = "", *, defaults: Any = None) -> list[str]:
    """Dotted keys whose values differ between two nested config dicts. With `defaults` (the same nesting), a key
    absent from `old` whose new value is its default is not a change: a field added to the config since the old
    run was recorded, left as it was."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            d = defaults.get(key, _MISSING) if isinstance(defaults, dict) else _MISSING
            if key not in old and d is not _MISSING and new[key] == d:
                continue
            out += changed_keys(old.get(key), new.get(key), f"{prefix}{key}.", defaults=None if d is _MISSING else d)
        return out
    return [] if old == new else [prefix.rstrip(".")]


_MISSING = object()


def prepare_run_dir(
    run: str | Path,
    kind: str,
    config: dict,
    *,
    inputs: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    safe_changes: Iterable[str] = (),
    defaults: dict | None = None,
    finished_resumes: bool = True,
) -> str:
    """Decide what a run command does with its output directory, before any compute. Returns "new", "resume",
    "done" (a finished run of the same config: nothing to do) or "overwrite" (call `clear_run_dir` once the inputs
    have been validated).

    - missing or empty: "new";
    - our marker, same kind, unfinished: "resume" if the config is the same (keys in `safe_changes` may differ),
      else an error listing the changed keys;
    - our marker, same kind, finished: "overwrite" with `overwrite`, "done" with the same config, "resume" when
      only `safe_changes` keys differ ("done" with `finished_resumes=False`: a run that keeps no checkpoint once
      finished, whose safe keys cannot change its result), else an error;
    - anything else (a file, a directory of other files, another kind of run): an error, even with `overwrite`,
      which deletes only directories that carry our marker.
    `defaults`: the config's default values (same nesting); a key the recorded config lacks is unchanged when it
    is at its default (the run was written before that field existed).
    """
    run = Path(run)
    check_output(run, inputs, expect="dir")
    if not run.exists() or not any(run.iterdir()):
        return "new"
    marker = read_marker(run)
    if marker is None:
        raise EncoderforgeError(
            f"{run}: exists and is not an encoderforge run (no {RUN_MARKER}); encoderforge never "
            "deletes it — choose another --out"
        )
    if marker.get("kind") != kind:
        raise EncoderforgeError(f"{run}: holds a {marker.get('kind')} run, not a {kind} run; choose another --out")
    every = changed_keys(marker.get("config"), config, defaults=defaults)
    changed = [k for k in every if k not in set(safe_changes)]
    if marker.get("status") == "finished":
        if overwrite:
            return "overwrite"
        if not every:
            return "done"
        if not changed:  # only safe keys changed: more steps continue from the last checkpoint (pretraining);
            return "resume" if finished_resumes else "done"  # else they cannot change the result: nothing to do
        raise EncoderforgeError(
            f"{run}: already holds a finished run (changed: {', '.join(changed[:6])}); pass "
            "--overwrite to replace it or choose another --out"
        )
    if overwrite:
        return "overwrite"
    if changed:
        raise EncoderforgeError(
            f"{run}: holds an unfinished run with another config (changed: {', '.join(changed[:6])});"
            " rerun with the same settings to resume, pass --overwrite to start over, or choose "
            "another --out"
        )
    return "resume"


def clear_run_dir(run: str | Path) -> None:
    """Delete a directory that carries our run marker (and only such a directory)."""
    run = Path(run)
    if read_marker(run) is None:
        raise EncoderforgeError(f"{run}: not an encoderforge run directory; refusing to delete it")
    shutil.rmtree(run)


def file_digest(path: str | Path) -> str | None:
    """sha256 of a file's bytes (None for a missing path): how a rerun knows its inputs are unchanged."""
    path = Path(path)
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
