"""The measured-kernel chooser and its per-machine cache (issue 19): the fastest candidate that passes its numerical
check wins; the cache is atomic and ignored when the CPU or library versions change; a forced candidate that fails
its check falls back with a message."""

from __future__ import annotations

import json
import time

import pytest
import torch

from encoderforge.hardware import cache as cache_mod
from encoderforge.hardware.cache import cache_path, read_choices
from encoderforge.hardware.choose import choose, rel_error
from encoderforge.hardware.cpu import CpuInfo, cpu_info


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ENCODERFORGE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _candidates(calls: list[str] | None = None):
    x = torch.randn(64, 32)
    w = torch.randn(32, 32)

    def fast() -> torch.Tensor:
        if calls is not None:
            calls.append("fast")
        return x @ w

    def slow() -> torch.Tensor:
        if calls is not None:
            calls.append("slow")
        time.sleep(0.02)  # far slower than a 64 x 32 matmul even on a loaded machine
        return x @ w

    def wrong() -> torch.Tensor:  # fast but numerically broken: must never be picked
        return (x @ w) * 1.5

    return {"slow": slow, "fast": fast, "wrong": wrong}, (x.double() @ w.double())


def test_fastest_correct_candidate_wins_and_is_cached(cache_dir):
    cands, ref = _candidates()
    c = choose("toy", cands, reference=ref, tol=1e-5, rounds=3)
    assert (c.picked, c.source) == ("fast", "measured")
    assert "wrong" in c.rejected and "relative error" in c.rejected["wrong"]
    assert c.ms["slow"] > c.ms["fast"]
    calls: list[str] = []
    cands, ref = _candidates(calls)
    again = choose("toy", cands, reference=lambda: pytest.fail("the reference is not needed on a cache hit"), tol=1e-5)
    assert (again.picked, again.source, calls) == ("fast", "cache", [])  # nothing ran
    stored = json.loads(cache_path().read_text())
    assert stored["machine"]["cpu"] == cpu_info().model and f"toy@{torch.get_num_threads()}t" in stored["choices"]


def test_cache_ignored_and_remeasured_when_cpu_or_versions_change(cache_dir, monkeypatch):
    cands, ref = _candidates()
    choose("toy", cands, reference=ref, tol=1e-5, rounds=2)
    assert read_choices()
    real = cache_mod.machine_key()
    for changed in ({**real, "cpu": "Intel(R) Xeon(R) Platinum 8480+"}, {**real, "torch": "9.9.9"}, {**real, "onednn": "0.1"}):
        monkeypatch.setattr(cache_mod, "machine_key", lambda changed=changed: changed)
        assert read_choices() == {}  # another machine's choices are not used
        c = choose("toy", cands, reference=ref, tol=1e-5, rounds=2)
        assert c.source == "measured"
        assert json.loads(cache_path().read_text())["machine"] == changed  # rewritten for the new machine
    monkeypatch.setattr(cache_mod, "machine_key", lambda: real)


def test_cache_write_is_atomic_and_a_corrupt_file_is_remeasured(cache_dir, monkeypatch):
    cands, ref = _candidates()
    choose("toy", cands, reference=ref, tol=1e-5, rounds=2)
    before = cache_path().read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt  # killed mid-write

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
        m.setattr(json, "dump", crash)
        choose("other", cands, reference=ref, tol=1e-5, rounds=2)
    assert cache_path().read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in cache_dir.iterdir()) == ["kernels.json", "kernels.lock"]  # no temp file left behind
    cache_path().write_text('{"machine": ')  # truncated by something else
    assert read_choices() == {}
    assert choose("toy", cands, reference=ref, tol=1e-5, rounds=2).source == "measured"


def test_forced_candidate_that_fails_its_check_falls_back_with_a_message(cache_dir, caplog):
    cands, ref = _candidates()
    ok = choose("toy", cands, reference=ref, tol=1e-5, forced="slow", forced_by="TOY_ENV")
    assert (ok.picked, ok.source) == ("slow", "forced")  # a sound forced choice is obeyed even though slower
    with caplog.at_level("WARNING"):
        c = choose("toy", cands, reference=ref, tol=1e-5, forced="wrong", forced_by="TOY_ENV", rounds=2)
    assert (c.picked, c.source) == ("fast", "fallback")
    assert "TOY_ENV=wrong failed its numerical check" in c.note and "TOY_ENV=wrong" in caplog.text
    with pytest.raises(ValueError, match="unknown candidate 'nope'"):
        choose("toy", cands, reference=ref, tol=1e-5, forced="nope")


def test_no_candidate_passing_is_an_error_and_rel_error_catches_nan(cache_dir):
    cands, ref = _candidates()
    with pytest.raises(RuntimeError, match="no candidate passed"):
        choose("toy", {"wrong": cands["wrong"]}, reference=ref, tol=1e-5)
    assert rel_error(torch.tensor([float("nan"), 1.0]), torch.tensor([1.0, 1.0])) == float("inf")


def test_cpu_info_reports_flags_it_was_given():
    info = CpuInfo(model="x", flags=("avx2", "avx512_bf16"))
    assert info.bf16 and not info.vnni and not info.amx
    assert "avx512_bf16" in info.describe()
    assert CpuInfo(model="y", flags=("avx2",)).bf16 is False
    real = cpu_info()
    assert set(real.flags) <= {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}


CONCURRENT = """
import sys, time, torch
from encoderforge.hardware.choose import choose
x = torch.randn(8, 8)
def slow():
    time.sleep(0.05)
    return x * 2
c = choose("race", {"a": slow, "b": lambda: x * 2}, reference=x * 2, tol=1e-6, rounds=3)
print(c.source, c.picked)
"""


def test_concurrent_processes_measure_once_and_agree(cache_dir):
    """DDP ranks or search trials starting together: one measures, the other waits and reads its choice."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ENCODERFORGE_CACHE_DIR": str(cache_dir)}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT], env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = sorted(p.communicate(timeout=120)[0].split() for p in procs)
    assert [o[0] for o in outs] == ["cache", "measured"], outs
    assert outs[0][1] == outs[1][1] == "b"


def test_a_near_tie_keeps_the_preferred_default_and_a_clear_win_does_not(cache_dir):
    x = torch.ones(4)

    def sleeper(s: float):
        def run() -> torch.Tensor:
            time.sleep(s)
            return x * 2

        return run

    near = {"a": sleeper(0.010), "b": sleeper(0.010)}  # equal: any measured gap is noise (wide window: a busy CI box)
    c = choose("tie", near, reference=x * 2, tol=1e-6, rounds=3, prefer="b", use_cache=False, tie=0.5)
    assert c.picked == "b"  # measured fastest outright, or kept as the default within the window
    assert ("kept the default b" in c.note) == (c.ms["b"] > c.ms["a"])
    clear = {"a": sleeper(0.005), "b": sleeper(0.050)}  # 10x apart: outside any tie window
    c = choose("win", clear, reference=x * 2, tol=1e-6, rounds=3, prefer="b", use_cache=False, tie=0.5)
    assert c.picked == "a" and c.note == ""


def test_timers_are_timed_while_the_candidates_are_checked(cache_dir):
    # a whole training step (the timer) can rank kernels differently from their isolated GEMMs (the candidates):
    # the check still runs each candidate against the reference, the clock runs the timer
    x = torch.ones(4)
    checked: list[str] = []

    def cand(name: str):
        def run() -> torch.Tensor:
            checked.append(name)
            return x * 2

        return run

    def sleeper(s: float):
        return lambda: time.sleep(s) or x

    timers = {"a": sleeper(0.05), "b": sleeper(0.005)}
    c = choose("timed", {"a": cand("a"), "b": cand("b")}, reference=x * 2, tol=1e-6, rounds=3, timers=timers, use_cache=False)
    assert c.picked == "b" and c.ms["a"] > 5 * c.ms["b"]
    assert sorted(checked) == ["a", "b"]  # each candidate checked once, never timed
    with pytest.raises(ValueError, match="timers.*c"):
        choose("timed", {"a": cand("a"), "c": cand("c")}, reference=x * 2, tol=1e-6, timers=timers, use_cache=False)
