"""What a run command does with an existing run directory when the config class has grown a key since that run was
written: a key absent from the old record counts as unchanged when the new value is its default (so a run from an
older encoderforge still resumes, or is "done"), and as changed otherwise (named in the one-line error)."""

from __future__ import annotations

import pytest

from encoderforge import EncoderforgeError
from encoderforge.fileio import changed_keys, prepare_run_dir, write_marker

DEFAULTS = {"embed": {"dims": [], "dim_weights": []}, "train": {"lr": 5e-5}}


def test_a_key_added_since_at_its_default_is_not_a_change():
    old = {"embed": {"dims": [96]}, "train": {"lr": 1e-4}}
    assert changed_keys(old, {"embed": {"dims": [96], "dim_weights": []}, "train": {"lr": 1e-4}}, defaults=DEFAULTS) == []
    assert changed_keys(old, {"embed": {"dims": [96], "dim_weights": [2.0]}, "train": {"lr": 1e-4}}, defaults=DEFAULTS) == [
        "embed.dim_weights"
    ]
    # without defaults every added key is a change, and a key present in both is compared as before
    assert changed_keys(old, {"embed": {"dims": [96], "dim_weights": []}, "train": {"lr": 1e-4}}) == ["embed.dim_weights"]
    assert changed_keys(old, {"embed": {"dims": [48], "dim_weights": []}, "train": {"lr": 1e-4}}, defaults=DEFAULTS) == [
        "embed.dims"
    ]
    # a key the new config dropped is still a change
    assert changed_keys({"train": {"lr": 1e-4, "old": 1}}, {"train": {"lr": 1e-4}}, defaults=DEFAULTS) == ["train.old"]


@pytest.mark.parametrize("status, want", [("finished", "done"), ("running", "resume")])
def test_a_run_from_before_the_key_existed_is_done_or_resumes(tmp_path, status, want):
    old = {"embed": {"dims": [96]}, "train": {"lr": 1e-4}}
    write_marker(tmp_path, "finetune", status, old)
    (tmp_path / "config.json").write_text("{}")
    new = {"embed": {"dims": [96], "dim_weights": []}, "train": {"lr": 1e-4}}
    assert prepare_run_dir(tmp_path, "finetune", new, defaults=DEFAULTS) == want
    changed = {"embed": {"dims": [96], "dim_weights": [3.0]}, "train": {"lr": 1e-4}}
    with pytest.raises(EncoderforgeError, match=r"changed: embed.dim_weights"):
        prepare_run_dir(tmp_path, "finetune", changed, defaults=DEFAULTS)


def test_atomic_dir_without_overwrite_keeps_a_directory_that_appeared_meanwhile(tmp_path):
    from encoderforge.fileio import atomic_dir

    out = tmp_path / "out"
    with pytest.raises(EncoderforgeError, match="appeared while this output was written; it was left as is"):
        with atomic_dir(out, overwrite=False) as tmp:
            (tmp / "ours.txt").write_text("ours")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")  # another process made it while we wrote
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # our temporary directory is gone too
