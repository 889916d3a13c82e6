"""Is the budget enough for one trial? Measured, not guessed: time two training steps of the start model on the
first rows of the real training file (one thread, as a trial runs), then cost the cheapest trial in the space
(its fewest epochs over every training row, plus a dev pass per epoch); for pretraining, a step of the smallest
architecture in the space times its steps."""

from __future__ import annotations

import time
from typing import Any

import torch

from encoderforge import EncoderforgeError
from encoderforge.search.space import SearchSpace

ROWS = 16  # rows per timed step


def seconds_per_row(cfg: Any) -> tuple[float, int, int]:
    """(training seconds per row, train rows, dev rows) of `cfg` on this machine, one thread."""
    from encoderforge.data.readers import read_dataset
    from encoderforge.model import checkpoint
    from encoderforge.model.zoo import resolve_model
    from encoderforge.recipes.finetune import schema_of
    from encoderforge.tokenization import load_tokenizer

    d, schema = cfg.data, schema_of(cfg)
    train = read_dataset(d.train, schema)
    n_dev = len(read_dataset(d.dev, schema)) if d.dev else round(len(train) * d.dev_fraction)
    texts = [" ".join(" ".join(t) if isinstance(t, (list, tuple)) else str(t) for t in ex.texts) for ex in train.examples[:ROWS]]
    model_dir = resolve_model(cfg.model)
    tok, encoder = load_tokenizer(model_dir), checkpoint.load(model_dir).encoder
    tok.enable_truncation(cfg.finetune.max_length)
    ids = [e.ids for e in tok.encode_batch(texts)]
    flat = torch.tensor([t for row in ids for t in row])
    lengths = torch.tensor([len(r) for r in ids])
    step = _timed(lambda: encoder.forward_packed(flat, lengths).hidden.mean().backward())
    return step / len(ids), len(train), n_dev


def pretrain_step_s(cfg: Any) -> float:
    """Seconds of one pretraining step of `cfg`'s model on this machine (one thread; a forward and backward of the
    encoder over one batch of random tokens: the MLM head and optimizer are left out, so this is a lower bound)."""
    from encoderforge.model.zoo import resolve_model
    from encoderforge.recipes.pretrain import build_model
    from encoderforge.tokenization import load_tokenizer

    tok = load_tokenizer(resolve_model(cfg.model.tokenizer or cfg.model.init_from))
    encoder = build_model(cfg, tok.get_vocab_size()).encoder
    n, length = cfg.train.batch_rows, cfg.data.max_len
    ids = torch.randint(5, tok.get_vocab_size(), (n * length,))
    return _timed(lambda: encoder.forward_packed(ids, torch.full((n,), length)).hidden.mean().backward())


def _timed(fn: Any) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)
    finally:
        torch.set_num_threads(threads)


def check_budget(space: SearchSpace, budget_s: float) -> float:
    """The cheapest trial's estimated seconds; an error naming both numbers when the budget cannot pay for it."""
    first = {p.key: min(p.extremes(), key=lambda v: v if isinstance(v, (int, float)) else 0) for p in space.params}
    cfg = space.config(first, "estimate")
    if space.kind == "pretrain":
        step_s = pretrain_step_s(cfg)
        cost, what = cfg.train.steps * step_s, f"{cfg.train.steps:,} steps at {step_s * 1000:.0f} ms/step"
    else:
        per_row, n_train, n_dev = seconds_per_row(cfg)
        cost = cfg.finetune.epochs * (n_train + n_dev / 3) * per_row
        what = f"{cfg.finetune.epochs:g} epochs over {n_train:,} rows at {per_row * 1000:.0f} ms/row"
    if budget_s < cost:
        raise EncoderforgeError(
            f"--budget {budget_s:.0f}s is less than one trial: the cheapest in {space.where} (~{what} measured "
            f"here) needs ~{cost:.0f} s; raise --budget or make the space's trials smaller"
        )
    return cost
