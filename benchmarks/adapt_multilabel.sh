#!/usr/bin/env bash
# Second downstream task of the domain-adaptation experiment (benchmarks/domain_adaptation.sh): license-expression
# multi-label classification of ScanCode rule texts (20 license keys), fine-tuned from the unadapted MiniLM-L6
# and from the legal-adapted encoder (runs/adapt/mlm/model), with the recipe of docs/results-finetune.md.
# Usage: benchmarks/adapt_multilabel.sh unadapted|adapted [SEED]
source "$(dirname "$0")/env.sh"
OUT="${OUT:-runs/adapt}"
case "${1:-}" in
  unadapted) model=minilm-l6 ;;
  adapted) model="$OUT/mlm/model" ;;
  *) echo "usage: $0 unadapted|adapted [SEED]" >&2; exit 2 ;;
esac
seed="${2:-0}"
"$EF" finetune multilabel --model "$model" --train "$DATA/license-multilabel/train.jsonl" \
  --dev "$DATA/license-multilabel/dev.jsonl" --test "$DATA/license-multilabel/test.jsonl" \
  --out "$OUT/ft-multilabel/$1-seed$seed" --max-length 128 --max-chunks 2 --stride 32 --chunk-pooling max \
  --epochs 6 --batch-size 32 --lr 3e-4 --seed "$seed" --threads 1
