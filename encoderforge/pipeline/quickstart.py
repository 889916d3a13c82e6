"""`encoderforge quickstart`: the shipped examples/legal-quickstart.yaml, full or as a smoke run (tiny slices, the
same stages)."""

from __future__ import annotations

from pathlib import Path

from encoderforge import EncoderforgeError
from encoderforge.pipeline.config import PipelineConfig, load_pipeline

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "legal-quickstart.yaml"
SMOKE = [
    "data.max_train=96",
    "data.max_dev=32",
    "data.max_test=64",
    "data.max_chars=240",
    "finetune.finetune.max_length=64",
    "finetune.finetune.epochs=2",
    "finetune.train.batch_rows=16",
    "finetune.train.save_every=4",
    "bench.texts=32",
    "bench.latency_texts=8",
    "bench.rounds=2",
    "evaluate.extra_seeds=[1]",
    "adapt.max_docs=60",
    "adapt.head_steps=4",
    "adapt.steps=4",
    "adapt.batch_rows=8",
    "adapt.max_len=64",
    "index.max_docs=120",
    "index.max_length=64",
]
# measured on 2 AMD EPYC (AVX-512, VNNI) cores (docs/results.md): smoke (2 seeds, tiny adapt) ~1:05; full (adapt 60 + 100
# MLM steps, 3 seeds adapted + 3 not adapted, LP-FT) 10:18 before the index stage, which took 106 s alone (1 thread, a
# busy box; ninth session); a shared box is slower. The compress stage's recipe (tenth session) adds ~2-3 minutes to the
# full run (pruning scores, one recovery epoch, a 6-model report) and ~20 s to the smoke run: estimated from its parts
EXPECTED = {
    True: "about a minute and a half on 2 idle CPU cores, longer on a busy box",
    False: "about 15 minutes on 2 idle CPU cores (adapt ~4, six short fine-tunes ~5, compression ~3, the index stage ~2), longer on a busy box",
}


def quickstart_config(*, smoke: bool, out: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """The quickstart pipeline (smoke: tiny slices) into `out` (default runs/legal-quickstart[-smoke])."""
    if not EXAMPLE.is_file():
        raise EncoderforgeError(
            f"{EXAMPLE}: missing; the quickstart runs from a clone of the repository "
            "(pip install -e .), or run `encoderforge run PIPELINE.yaml` with your own file"
        )
    out = out or Path("runs") / ("legal-quickstart-smoke" if smoke else "legal-quickstart")
    name = "compress-quickstart-smoke.yaml" if smoke else "compress-quickstart.yaml"
    recipe = [f"compress.recipe={EXAMPLE.parent / name}"]  # found from any working directory
    return load_pipeline(EXAMPLE, out, [*(SMOKE if smoke else []), *recipe, *(overrides or [])])
