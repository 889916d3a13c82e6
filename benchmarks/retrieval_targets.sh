#!/usr/bin/env bash
# Issue 17's retrieval targets on the three real sets (benchmarks/prepare_retrieval_data.py), test split, one run:
# BM25, off-the-shelf MiniLM-L6, MiniLM-L6 fine-tuned on the train split (`finetune embed`, Matryoshka 192/96/48),
# the fine-tuned model at 1/4 of its dimensions (96), and a cross-encoder re-ranking the fine-tuned model's top 20.
#
#   benchmarks/retrieval_targets.sh runs/data/retrieval runs/embed runs/rerank runs/retrieval
#   python benchmarks/retrieval_table.py runs/retrieval
#
# The fine-tuned runs come from (runs/lane-main.sh of the ninth session; 2 threads, one job at a time):
#   encoderforge finetune embed --model minilm-l6 --threads 2 --dims 192,96,48 --train D/SET/train.pairs.jsonl \
#       --dev D/SET/dev.pairs.jsonl --test D/SET/test.pairs.jsonl --out runs/embed/SET ...
#   bbc: --epochs 2 (max length 256); license: a seeded 2,000 of its 4,192 train pairs, --epochs 1 --max-length 192;
#   wordnet: a seeded 24,000 of its 60,000 train pairs, dev = its first 3,000 pairs, --epochs 1 --batch-size 64
#   --max-length 48 (the samples: python's random.Random(0).shuffle of the lines, first N)
# and the re-rankers from benchmarks/prepare_rerank_data.py (--queries 320, wordnet 1500; 3 BM25 negatives each) +
#   encoderforge finetune classify --model minilm-l6 --text-field query --text-field doc --epochs 1 \
#       --train D/SET/rerank-train.jsonl --dev D/SET/rerank-dev.jsonl --max-length 192 (wordnet 48) --threads 2 --out runs/rerank/SET
# WordNet's rows use a seeded 2,000-query sample of its 10,785 test queries (python's random.Random(0).shuffle of the
# lines, first 2,000): one-query-at-a-time search of 147k headwords per row would take the session's time on 2 cores.
set -euo pipefail
D=${1:-runs/data/retrieval}; E=${2:-runs/embed}; R=${3:-runs/rerank}; OUT=${4:-runs/retrieval}
export HF_HUB_OFFLINE=1
# a row whose run directory already holds metrics.json is kept (FORCE=1 redoes it): the script resumes after a kill
ev() {
  local out; out=$(printf '%s\n' "$@" | grep -A1 -x -- --out | tail -1)
  if [ -z "${FORCE:-}" ] && [ -f "$out/metrics.json" ]; then echo "kept $out"; return; fi
  .venv/bin/encoderforge eval-retrieval --threads "${THREADS:-2}" --overwrite "$@"
}
ONLY=${ONLY:-all}  # ONLY=base: BM25 and off-the-shelf MiniLM rows only (they need no training)
for s in ${SETS:-bbc license wordnet}; do
  q=$D/$s/test.queries.jsonl; r=$D/$s/test.qrels.tsv; c=$D/$s/corpus.jsonl; o=$OUT/$s
  if [ "$s" = wordnet ]; then
    python3 -c "import random; L=open('$q').read().splitlines(); random.Random(0).shuffle(L); print('\n'.join(L[:2000]))" > "$D/$s/test2k.queries.jsonl"
    q=$D/$s/test2k.queries.jsonl
  fi
  ev --queries "$q" --qrels "$r" --corpus "$c" --bm25 --out "$o/bm25"
  ev --queries "$q" --qrels "$r" --corpus "$c" --model minilm-l6 --out "$o/minilm-l6"
  [ "$ONLY" = base ] && continue
  # the fine-tuned model's exact (flat) index, built once: its row and the re-ranking row search it
  [ -f "$o/index/manifest.json" ] || .venv/bin/encoderforge index build "$c" "$o/index" --model "$E/$s" --kind flat --threads "${THREADS:-2}"
  ev --queries "$q" --qrels "$r" --index "$o/index" --out "$o/finetuned"
  ev --queries "$q" --qrels "$r" --corpus "$c" --model "$E/$s" --dims 96 --out "$o/finetuned-d96"
  if [ -f "$R/$s/task.json" ]; then  # task.json: written when the run finished (metrics.json also mid-run)
    ev --queries "$q" --qrels "$r" --corpus "$c" --index "$o/index" --rerank "$R/$s" --rerank-depth 20 --out "$o/finetuned+rerank"
    if [ -f "$R/$s/weight.txt" ]; then  # fused with the first stage, the weight chosen on dev (benchmarks/rerank_targets.sh)
      ev --queries "$q" --qrels "$r" --corpus "$c" --index "$o/index" --rerank "$R/$s" --rerank-depth 20 \
        --rerank-weight "$(cat "$R/$s/weight.txt")" --out "$o/finetuned+rerank-fused"
    fi
  fi
done
