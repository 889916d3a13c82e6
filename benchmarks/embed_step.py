"""What an embedding fine-tuning step costs on CPU: MiniLM-L6, real BBC title -> article pairs (32 per batch, 256-token
documents), forward + backward of the MNRL loss, four variants interleaved round by round (medians):
length groups on/off (short queries and long documents in separate packed forwards vs one) x attention dropout
0.1 / 0.

    python benchmarks/embed_step.py runs/data/retrieval/bbc/train.pairs.jsonl --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from unittest import mock

import torch

from encoderforge.model import checkpoint
from encoderforge.model.zoo import resolve_model
from encoderforge.tasks import embed_model
from encoderforge.tasks.embed import EmbedModel, EmbedTask
from encoderforge.tokenization import load_tokenizer
from encoderforge.training.fast_linear import use_training_linears


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    path = resolve_model("minilm-l6")
    rows = [json.loads(x) for x in open(a.pairs, encoding="utf-8")][: a.batch * (a.rounds + 1)]
    rows = [((r["query"], r["positive"]), []) for r in rows]
    task = EmbedTask(load_tokenizer(path), rows, rows[:8], max_length=256, batch_rows=a.batch)
    batches = [b for [b] in (next(iter(task.train_batches(k))) for k in range(a.rounds + 1))]
    variants = {(g, p): None for g in ("groups", "one forward") for p in (0.1, 0.0)}
    times: dict[tuple[str, float], list[float]] = {v: [] for v in variants}
    models = {}
    for g, p in variants:
        m = EmbedModel(checkpoint.load(path).encoder, attention_dropout=p).train()
        use_training_linears(m)  # what the loop runs on this CPU
        models[(g, p)] = m
    for r, b in enumerate(batches):
        for (g, p), m in models.items():
            single = (lambda lengths: [torch.arange(lengths.shape[0])]) if g == "one forward" else embed_model.length_groups
            with mock.patch.object(embed_model, "length_groups", single):
                t0 = time.perf_counter()
                out = task.loss(m, b)
                out.total.backward()
                dt = time.perf_counter() - t0
            m.zero_grad(set_to_none=True)
            if r:  # round 0 warms every variant up
                times[(g, p)].append(dt)
    base = statistics.median(times[("one forward", 0.1)])
    print(f"tokens per batch ~{int(batches[0].input_ids.numel())}, {a.threads} threads, {a.rounds} rounds (medians)")
    print("| variant | s / step | vs one forward + attention dropout |")
    print("|---|---|---|")
    for (g, p), ts in times.items():
        med = statistics.median(ts)
        print(f"| {g}, attention dropout {p} | {med:.2f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
