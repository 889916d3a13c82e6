"""The ONE training loop (nanoGPT `train.py`, litgpt `fit()`), used by pretraining, fine-tuning and distillation.

Read it top to bottom: set the LR, run the micro-batches (backward on *summed* losses), normalise the gradient by
the number of loss units over all micro-batches and processes, clip, step, log, evaluate, checkpoint.
What differs between uses is only the task object (encoderforge.tasks.Task) and the model.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from encoderforge.fileio import atomic_file
from encoderforge.training.args import TrainArgs
from encoderforge.training.distributed import (
    Dist,
    all_reduce_dict,
    all_reduce_sum,
    barrier,
)
from encoderforge.training.fast_linear import restore_linears, use_training_linears
from encoderforge.training.memory import HeapTrimmer, rss_mb
from encoderforge.training.precision import autocast_dtype
from encoderforge.training.progress import Progress
from encoderforge.training.schedules import lr_at
from encoderforge.training.state import (
    Stateful,
    TrainState,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from encoderforge.training.task import Task


def build_optimizer(model: nn.Module, args: TrainArgs, groups: list[dict[str, Any]] | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: biases, LayerNorm weights and other vectors are not decayed
    (BERT's exclusion list, stated by shape so new modules need no name rules). `groups` replaces these two
    groups (e.g. training.params.param_groups for layer-wise LR decay); a group's `lr_scale` multiplies the LR."""
    if groups is None:
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    params = [p for g in groups for p in g["params"]]
    # torch's fused AdamW (one kernel per parameter instead of a dozen): 2-3% of a CPU MLM step here
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps, fused=fused or None)


def train(
    model: nn.Module,
    task: Task,
    args: TrainArgs,
    dist: Dist,
    *,
    tokenizer_dir: str | Path | None = None,
    param_groups: list[dict[str, Any]] | None = None,
    on_eval: Callable[[int, dict[str, float]], bool] | None = None,
    extra_state: Stateful | None = None,
    after_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train `model` on `task` for `args.steps` optimizer steps, resuming from `args.out_dir` if possible.

    Args:
        model: the unwrapped model; moved to `dist.device` here.
        task: supplies batches (with `.to(device)`), the summed loss and the metric names.
        args: the training hyperparameters.
        dist: rank / world / device from `training.distributed.setup`.
        tokenizer_dir: copied into checkpoints so each is self-contained.
        param_groups: optimizer groups replacing the default decay/no-decay pair; each may carry `lr_scale`
            (its LR = scheduled LR x lr_scale), e.g. layer-wise LR decay for fine-tuning.
        on_eval: called as on_eval(step, dev_metrics) after every evaluation past step 0 (the same reduced
            metrics on every rank); returning True stops training there (early stopping), after a checkpoint.
        extra_state: saved in every checkpoint and restored on resume (e.g. the best-weights keeper).
        after_step: called as after_step(step) right after each optimizer step (`step` = steps done), before
            logging, evaluation and checkpointing: compression holds its pruning masks and runs its sparsity
            schedule here (encoderforge.compression), so evaluations and checkpoints see the pruned weights.
    Returns:
        the final metrics (also written to out_dir/metrics.json).
    """
    run = Path(args.out_dir)
    amp = autocast_dtype(args.precision, dist.device)  # bf16 on a CPU without native bf16 fails here, before any work
    model.to(dist.device)
    if dist.device.type == "cpu":  # same Parameters, oneDNN GEMMs where measured faster than MKL; undone before returning
        use_training_linears(model)
    optimizer = build_optimizer(model, args, param_groups)
    state = TrainState()
    ckpts = list_checkpoints(run) if args.resume else []
    if ckpts:
        state = load_checkpoint(ckpts[-1], model, optimizer, extra=extra_state)
    if dist.main:
        _truncate_metrics(run / "metrics.jsonl", state.step)  # drop lines logged after the checkpoint we resume from
    ddp = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None) if dist.world > 1 else model
    log = open(run / "metrics.jsonl", "a", encoding="utf-8") if dist.main else None
    bar = Progress(args.steps, initial=state.step, enabled=dist.main and args.progress, desc=run.name)
    last: dict[str, Any] = {}
    t0, tokens0 = time.perf_counter(), state.tokens

    if state.step == 0 and args.eval_every:  # the baseline every later eval is compared with
        base = {f"eval_{k}": v for k, v in evaluate(model, task, dist, amp).items()}
        if log is not None:
            log.write(json.dumps({"step": 0, **base}) + "\n")
        t0 = time.perf_counter()  # tokens/s measures training only

    batches = task.train_batches(state.step)
    trimmer = HeapTrimmer(args.trim_heap_every if dist.device.type == "cpu" else 0, args.trim_heap_growth)
    # a run that stopped early and was killed before its caller finished stays stopped when resumed
    stopped_before = bool(getattr(on_eval, "stopped", False))
    while state.step < args.steps and not stopped_before:
        step = state.step
        lr = lr_at(
            step,
            peak=args.lr,
            total=args.steps,
            warmup=args.warmup_steps,
            schedule=args.schedule,
            min_ratio=args.min_lr_ratio,
            decay_fraction=args.decay_fraction,
        )
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        # dropout RNG as a pure function of (seed, step, rank): resume and DDP need no saved RNG state
        torch.manual_seed(args.seed * 1_000_003 + step * 97 + dist.rank)
        model.train()
        micro = next(batches)
        total, count, tokens = 0.0, 0.0, 0.0
        for i, batch in enumerate(micro):
            sync = i == len(micro) - 1
            # DDP exactly when world > 1: all-reduce once per step, on the last micro-batch
            with ddp.no_sync() if isinstance(ddp, DDP) and not sync else contextlib.nullcontext():
                with _autocast(amp, dist.device):
                    out = task.loss(ddp, batch.to(dist.device))
                out.total.backward()  # summed loss; normalised below once the global count is known
            total, count, tokens = total + out.total.item(), count + out.count, tokens + out.tokens
        total, count, tokens = all_reduce_sum([total, count, tokens], dist)
        # DDP averaged gradients over `world` processes; world / count turns the sum into the global mean
        scale = dist.world / max(count, 1)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip if args.grad_clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step, state.tokens, state.rows = step + 1, state.tokens + int(tokens), state.rows + args.batch_rows
        if after_step is not None:
            after_step(state.step)
        trimmer.after_step(state.step)

        loss = total / max(count, 1)
        elapsed = time.perf_counter() - t0
        tok_s = (state.tokens - tokens0) / max(elapsed, 1e-9)
        bar.update(1, loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")
        record: dict[str, Any] = {}
        if args.log_every and (state.step % args.log_every == 0 or state.step == 1):
            record.update(
                loss=loss, lr=lr, grad_norm=float(grad_norm), tokens=state.tokens, tokens_per_s=tok_s, rss_mb=round(rss_mb(), 1)
            )
        done = state.step == args.steps
        stop = False
        if (args.eval_every and state.step % args.eval_every == 0) or done:
            metrics = evaluate(model, task, dist, amp)
            trimmer.check()  # evaluation batches have shapes of their own
            record.update({f"eval_{k}": v for k, v in metrics.items()})
            stop = on_eval is not None and bool(on_eval(state.step, metrics)) and not done
        if record and log is not None:
            log.write(json.dumps({"step": state.step, **record}) + "\n")
            log.flush()
        last.update(record)
        if (args.save_every and state.step % args.save_every == 0) or done or stop:
            if dist.main:
                save_checkpoint(
                    run, model, optimizer, state, keep=args.keep_checkpoints, tokenizer_dir=tokenizer_dir, extra=extra_state
                )
            barrier(dist)
        if stop:
            break
    bar.close()
    final = {"step": state.step, "tokens": state.tokens, **{k: v for k, v in last.items() if k.startswith("eval_")}}
    if log is not None:
        log.close()
        with atomic_file(run / "metrics.json") as f:
            json.dump(final, f, indent=2)
    restore_linears(model)
    return final


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, dist: Dist, amp: torch.dtype | None = None) -> dict[str, float]:
    """Summed loss and stats over this process's held-out batches, reduced over processes, turned into metrics.
    Pass the unwrapped model: ranks may hold different numbers of eval batches, and DDP forwards must match."""
    model.eval()
    sums: dict[str, float] = {"loss": 0.0, "count": 0.0}
    for batch in task.eval_batches():
        with _autocast(amp, dist.device):
            out = task.loss(model, batch.to(dist.device))
        sums["loss"] += out.total.item()
        sums["count"] += out.count
        for k, v in out.stats.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    sums = all_reduce_dict(sums, dist)
    model.train()
    return task.metrics(sums) if sums["count"] else {}


def _autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only metric lines up to `step` (a killed run may have logged past its last checkpoint); a fresh run
    (step 0) starts an empty file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return
    keep = [
        ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip() and 0 < step and json.loads(ln)["step"] <= step
    ]
    with atomic_file(path) as f:
        f.write("".join(ln + "\n" for ln in keep))
