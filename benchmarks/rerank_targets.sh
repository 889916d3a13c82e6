#!/usr/bin/env bash
# Issue 17's re-rankers, trained on their own first stage's mistakes (LCE, Gao et al. 2021): for one retrieval set,
#   1. index the TRAIN split's documents with the fine-tuned first stage (runs/embed/SET, benchmarks/retrieval_targets.sh)
#   2. `encoderforge index mine`: each train pair gets its NEG best-ranked non-relevant documents from it (dev pairs
#      likewise from the full-corpus index that retrieval_targets.sh evaluates); then QUERIES / DEV_QUERIES seeded rows
#   3. `encoderforge finetune rerank` (listwise softmax over positive + negatives) from MiniLM-L6
# then `benchmarks/retrieval_targets.sh` adds the "fine-tuned + re-ranker (top 20)" row.
#
#   benchmarks/rerank_targets.sh SET [DATA EMBED RERANK RETRIEVAL]      e.g. benchmarks/rerank_targets.sh license
#   QUERIES=400 DEV_QUERIES=150 NEGATIVES=7 MAX_LENGTH=192 EPOCHS=1 BATCH=8 LR=5e-5 BASE=minilm-l6 (the defaults)
#   SAMPLE_DEPTH=20: draw the negatives at random from the first stage's top 20 (`index mine --sample-depth`), the
#   candidates the re-ranker will re-score, instead of its best-ranked 7 (0, the default); FOUND_ONLY=1 with it keeps
#   only the rows whose positive is among those top 20 (`index mine --found-only`; dev rows likewise, so dev MRR is
#   measured on the lists the first stage filled). A trained RERANK/SET is kept: give each setting its own RERANK dir
set -euo pipefail
s=$1; D=${2:-runs/data/retrieval}; E=${3:-runs/embed}; R=${4:-runs/rerank}; OUT=${5:-runs/retrieval}
Q=${QUERIES:-400}; DQ=${DEV_QUERIES:-150}; N=${NEGATIVES:-7}; L=${MAX_LENGTH:-192}
SD=${SAMPLE_DEPTH:-0}; m=mined; [ "$SD" = 0 ] || m=mined-d$SD
FO=(); [ -z "${FOUND_ONLY:-}" ] || { FO=(--found-only); m=$m-found; }
export HF_HUB_OFFLINE=1
EF=.venv/bin/encoderforge; w=$R/data-$s; mkdir -p "$w"
# a seeded sample of pair rows: python's random.Random(0).shuffle of the lines, first N
sample() { python3 -c "import random,sys; L=open(sys.argv[1]).read().splitlines(); random.Random(0).shuffle(L); print('\n'.join(L[:int(sys.argv[2])]))" "$1" "$2"; }
python3 -c "import json,sys; sys.stdout.writelines(l for l in open(sys.argv[1]) if json.loads(l)['split'] == 'train')" "$D/$s/corpus.jsonl" > "$w/train-corpus.jsonl"
[ -f "$w/train-index/manifest.json" ] || $EF index build "$w/train-corpus.jsonl" "$w/train-index" --model "$E/$s" --kind flat --threads 2
[ -f "$OUT/$s/index/manifest.json" ] || $EF index build "$D/$s/corpus.jsonl" "$OUT/$s/index" --model "$E/$s" --kind flat --threads 2
# mine from the whole pairs files, then sample rows: every row of a query counts as its positive (wordnet: a synset's
# other lemmas), so a sample taken first would let them come back as negatives
for split in train dev; do
  ix=$w/train-index; [ $split = dev ] && ix=$OUT/$s/index
  [ -f "$w/$split.all.$m.jsonl" ] || $EF index mine "$ix" "$D/$s/$split.pairs.jsonl" "$w/$split.all.$m.jsonl" --negatives "$N" --sample-depth "$SD" "${FO[@]}"
done
sample "$w/train.all.$m.jsonl" "$Q" > "$w/train.$m.jsonl"
sample "$w/dev.all.$m.jsonl" "$DQ" > "$w/dev.$m.jsonl"
[ -f "$R/$s/task.json" ] || $EF finetune rerank --model "${BASE:-minilm-l6}" --train "$w/train.$m.jsonl" --dev "$w/dev.$m.jsonl" \
  --epochs "${EPOCHS:-1}" --batch-size "${BATCH:-8}" --lr "${LR:-5e-5}" --max-length "$L" --threads "${THREADS:-2}" --out "$R/$s"
# the fusion weight (eval-retrieval --rerank-weight, index/fusion.py) chosen on DEV_EVAL seeded dev queries (the same
# depth as the test row: 20), written to RERANK/SET/weight.txt for retrieval_targets.sh's fused row
q=$w/dev-eval.queries.jsonl; sample "$D/$s/dev.queries.jsonl" "${DEV_EVAL:-150}" > "$q"
[ -f "$R/$s.dev-eval/metrics.json" ] || $EF eval-retrieval --threads 2 --overwrite --queries "$q" --qrels "$D/$s/dev.qrels.tsv" \
  --index "$OUT/$s/index" --rerank "$R/$s" --rerank-depth 20 --out "$R/$s.dev-eval"
.venv/bin/python benchmarks/rerank_weight.py "$R/$s.dev-eval" "$D/$s/dev.qrels.tsv" | tee "$R/$s/weights.md"
tail -1 "$R/$s/weights.md" | sed -E 's/best weight on dev: ([0-9.]+).*/\1/' > "$R/$s/weight.txt"
