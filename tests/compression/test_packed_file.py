"""The compressed-model file reader's one-line errors: missing, another format, corrupt, incomplete."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from encoderforge import EncoderforgeError
from encoderforge.compression.packed_file import incomplete_as_error, read_packed


def test_each_bad_file_is_one_line_naming_the_file_and_the_fix(tmp_path):
    f = tmp_path / "m.safetensors"
    kw = dict(kind="int8", fix="write it again", writer="save_int8")
    with pytest.raises(EncoderforgeError, match=r"m.safetensors: no such file; write one with save_int8"):
        read_packed(f, "x/1", **kw)
    save_file({"a": torch.ones(2)}, str(f), metadata={"format": "other/1"})
    with pytest.raises(EncoderforgeError, match=r"not an encoderforge int8 file \(metadata format 'other/1'\); load it"):
        read_packed(f, "x/1", **kw, foreign_hint="; load it elsewhere")
    save_file({"a": torch.ones(2)}, str(f), metadata={"format": "x/1"})
    meta, tensors = read_packed(f, "x/1", **kw)
    assert meta["format"] == "x/1" and torch.equal(tensors["a"], torch.ones(2))
    f.write_bytes(f.read_bytes()[:-4])  # truncated
    with pytest.raises(EncoderforgeError, match=r"m.safetensors: corrupt or truncated safetensors file .*; write it again"):
        read_packed(f, "x/1", **kw)
    with pytest.raises(EncoderforgeError, match=r"m.safetensors: incomplete int8 file \(KeyError: 'model'\); write it again"):
        with incomplete_as_error(f, kind="int8", fix="write it again"):
            {}["model"]
