"""Held-out MLM loss of several checkpoints on the same shards, rows and masks (the pretraining loop's evaluation,
on every held-out row by default): compares an unadapted encoder (with a head trained on a frozen encoder), a
domain-adapted one and controls on one footing. With --start, also how far each model's final features of the
unmasked tokens moved from the start encoder's (mean 1 - cosine, as `model.anchor_weight` measures it).

    python benchmarks/mlm_heldout.py --shards runs/adapt/shards --start minilm-l6 runs/adapt/head/model runs/adapt/mlm/model
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from encoderforge import EncoderforgeError
from encoderforge.data.masking import MaskingConfig, MaskVocab
from encoderforge.data.shards import load_documents
from encoderforge.model import checkpoint
from encoderforge.model.encoder import Encoder
from encoderforge.model.zoo import resolve_model
from encoderforge.tasks.anchor import AnchoredMLMTask
from encoderforge.tasks.mlm import MaskedLM, MLMTask
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.distributed import Dist
from encoderforge.training.loop import evaluate


def heldout(
    model_dir: str, shards: str, *, rows: int, max_len: int, ratio: float, strategy: str, seed: int, start: Encoder | None = None
) -> dict:
    tok = load_tokenizer(model_dir)
    docs = load_documents(shards, "eval", tokenizer=tok)
    mlm = MLMTask(
        docs,
        docs,
        MaskVocab.from_tokenizer(tok),
        MaskingConfig(ratio=ratio, strategy=strategy),
        max_len=max_len,
        batch_rows=16,
        eval_rows=rows,
        seed=seed,
    )
    task: MLMTask | AnchoredMLMTask = mlm
    if start is not None:  # weight 0: the loss is plain MLM; the metrics add the feature distance from the start encoder
        task = AnchoredMLMTask(mlm, start, weight=0.0)
    model = MaskedLM.from_checkpoint(model_dir, require_head=True)
    m = evaluate(model, task, Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu")))
    n_rows = sum(int(b.lengths.numel()) for b in task.eval_batches())
    out = {
        "model": model_dir,
        "mlm_loss": m["mlm_loss"],
        "mlm_accuracy": m["mlm_accuracy"],
        "perplexity": math.exp(m["mlm_loss"]),
        "segments": n_rows,
        "masked_tokens": sum(int(b.labels.numel()) for b in task.eval_batches()),
    }
    if start is not None:
        out["feature_distance"] = m["anchor_cos_dist"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="checkpoint directories with an MLM head (ours, from `pretrain`)")
    p.add_argument("--shards", required=True, help="prepared shards; their held-out ('eval') split is scored")
    p.add_argument("--rows", type=int, default=100_000, help="held-out rows (default: all)")
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--ratio", type=float, default=0.15)
    p.add_argument("--strategy", default="whole_word")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--start", help="zoo name or checkpoint: also report each model's feature distance from it")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    try:
        start = MaskedLM(checkpoint.load(resolve_model(a.start)).encoder).encoder if a.start else None  # varlen, once
        for m in a.models:
            print(
                json.dumps(
                    heldout(
                        m, a.shards, rows=a.rows, max_len=a.max_len, ratio=a.ratio, strategy=a.strategy, seed=a.seed, start=start
                    )
                ),
                flush=True,
            )
    except EncoderforgeError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
