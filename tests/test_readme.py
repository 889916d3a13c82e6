"""The README stays true: its two commands exist, and every `encoderforge ...` line of the tour names a real
command whose options exist (checked through --help, so heavy commands are not run here; the quickstart
and the commands themselves run in tests/test_cli.py and the per-stage tests)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from encoderforge.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
runner = CliRunner()


def test_the_two_commands_exist_and_ci_runs_the_test_command():
    assert "./scripts/quickstart.sh" in README and "./scripts/test.sh" in README
    assert (ROOT / "scripts" / "quickstart.sh").exists() and (ROOT / "scripts" / "test.sh").exists()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()


def _tour_lines() -> list[list[str]]:
    lines = []
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    for line in "\n".join(blocks).splitlines():
        line = line.split("#")[0].strip()
        m = re.search(r"(?:^|\| )encoderforge (.+)$", line)
        if m and not line.startswith("from "):
            lines.append(shlex.split(m.group(1)))
    return lines


def test_every_tour_command_and_option_exists():
    lines = _tour_lines()
    assert len(lines) >= 10
    for argv in lines:
        words = [a for a in argv if not a.startswith("-")]
        opts = [a.split("=")[0] for a in argv if a.startswith("--")]
        # the command path is the leading words that are sub-commands; find it by asking --help
        path: list[str] = []
        for w in words:
            r = runner.invoke(app, [*path, w, "--help"])
            if r.exit_code != 0:
                break
            path.append(w)
        if not path and argv == ["--help"]:
            continue
        assert path, f"README line 'encoderforge {' '.join(argv)}' names no command"
        help_text = runner.invoke(app, [*path, "--help"], terminal_width=200).output
        for opt in opts:
            assert opt in help_text or opt.replace("--no-", "--") in help_text, f"{opt} not an option of {path}"
