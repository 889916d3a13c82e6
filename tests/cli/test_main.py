"""The console entry point's last line of defence: user and environment errors are one line with exit 1; a real
bug shows its traceback and a line asking to report it (exit 70)."""

from __future__ import annotations

import errno

import pytest
from torch.distributed import DistNetworkError

import encoderforge.cli.app as cli


@pytest.mark.parametrize(
    "exc, code, needle",
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/out.npy"), 1, "error: /data/out.npy: No space left"),
        (DistNetworkError("Connection reset by peer"), 1, "error: distributed training: Connection reset by peer"),
        (ValueError("an internal invariant broke"), 70, "this is a bug in encoderforge"),
    ],
)
def test_main_classifies_what_escapes_a_command(monkeypatch, capsys, exc, code, needle):
    def boom() -> None:
        raise exc

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    assert e.value.code == code and needle in err
    assert ("Traceback" in err) == (code == 70)
