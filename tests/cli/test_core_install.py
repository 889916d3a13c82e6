"""A core install (`pip install encoderforge`, no extras): the CLI starts, and a command that needs an extra fails
with one line that names it (`error: ... pip install 'encoderforge[onnx]'`), never with a traceback.

The optional packages are installed in the test environment, so a subprocess hides them first: every import
finder is wrapped to answer "no such module" for them, which is what Python sees when they are not installed
(`import x` raises ModuleNotFoundError, `importlib.util.find_spec("x")` returns None).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

OPTIONAL = ("transformers", "onnx", "onnxruntime", "seqeval", "scipy", "sklearn", "matplotlib")

HIDE = """
import sys

hidden = set(sys.argv[1].split(","))


class Hide:
    '''A meta-path finder that finds nothing for the hidden packages and defers to the real finder otherwise.'''

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attr):
        return getattr(self.finder, attr)


sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
for name in [m for m in sys.modules if m.partition(".")[0] in hidden]:
    del sys.modules[name]
"""
CORE_PYTHON = (
    HIDE
    + """
import importlib

sys.argv = ["encoderforge", *sys.argv[2:]]
if sys.argv[1:2] == ["--import-all"]:  # import every module of the package, print the ones that fail
    import pkgutil, encoderforge
    for info in pkgutil.walk_packages(encoderforge.__path__, "encoderforge."):
        try:
            importlib.import_module(info.name)
        except Exception as e:
            print(f"{info.name}: {type(e).__name__}: {e}")
    sys.exit(0)
module, _, attr = sys.argv.pop(1).partition(":")  # the console script, as `pip install` wires it
getattr(importlib.import_module(module), attr)()
"""
)


def console_script() -> str:
    """`module:function` of the `encoderforge` command, from pyproject.toml (the source of truth)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the installed metadata says the same after `pip install -e .`
        from importlib.metadata import entry_points

        return entry_points(group="console_scripts", name="encoderforge")[0].value
    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"]["encoderforge"]


def core(*args: str) -> subprocess.CompletedProcess:
    """Run `encoderforge *args` as in an install without the optional packages."""
    cmd = [sys.executable, "-c", CORE_PYTHON, ",".join(OPTIONAL)]
    cmd += args if args == ("--import-all",) else (console_script(), *args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def assert_one_line_naming(r: subprocess.CompletedProcess, extra: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert f"pip install 'encoderforge[{extra}]'" in lines[0], lines[0]


def test_the_hiding_works():
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            HIDE
            + (
                "import importlib.util\nassert importlib.util.find_spec('onnx') is None\n"
                "try:\n    import onnxruntime.quantization\nexcept ModuleNotFoundError:\n    print('hidden')\n"
            ),
            ",".join(OPTIONAL),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "hidden", r.stderr


def test_every_module_imports_without_the_extras():
    r = core("--import-all")
    assert r.returncode == 0, r.stderr
    assert not r.stdout.strip(), (
        "modules that fail to import without the extras (import an optional package "
        "where it is used, through encoderforge.require):\n" + r.stdout
    )


def test_help_works_without_the_extras():
    r = core("--help")
    assert r.returncode == 0, r.stderr
    assert "export" in r.stdout and "bench" in r.stdout


def test_export_onnx_names_the_onnx_extra(minilm_path, tmp_path):
    r = core("export", "onnx", "--model", str(minilm_path), "--out", str(tmp_path / "m.onnx"))
    assert_one_line_naming(r, "onnx")
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary directory


@pytest.mark.parametrize(
    "args, extra",
    [
        (["bench", "infer"], "hf"),
        (["bench", "infer", "--no-onnx"], "hf"),
        (["bench", "train"], "hf"),
    ],
)
def test_bench_names_the_hf_extra(minilm_path, tmp_path, args, extra):
    r = core(*args, "--out", str(tmp_path / "bench"), *(["--model", str(minilm_path)] if args[1] == "infer" else []))
    assert_one_line_naming(r, extra)
    assert not (tmp_path / "bench").exists()
