#!/usr/bin/env bash
# Issue 15, "defaults that win": the default recipe (random head) vs LP-FT (head_init=probe) on real tasks, with
# nothing else set but the data paths; every run also reports the frozen-features + logistic-regression probe
# (metrics.json "probe"), the floor the fine-tuned model must beat. One thread per run, two runs side by side.
# Usage: benchmarks/lpft.sh prepare
#        benchmarks/lpft.sh category HEAD_INIT SEED...     # license category (classification), runs/data/license-category
#        benchmarks/lpft.sh rules HEAD_INIT SEED...        # license keys of rule snippets (multi-label), runs/data/license-multilabel
#        benchmarks/lpft.sh vader HEAD_INIT FOLD...        # VADER tweets, 3 classes, runs/data/vader-cv/foldK
#        benchmarks/lpft.sh summary                        # the table of every finished run under runs/lpft
source "$(dirname "$0")/env.sh"
OUT="${OUT:-runs/lpft}"
part="${1:-}"; shift || true
run() {  # $1 = task, $2 = data dir, $3 = head_init, $4 = seed
  "$EF" finetune "$1" --train "$DATA/$2/train.jsonl" --dev "$DATA/$2/dev.jsonl" --test "$DATA/$2/test.jsonl" \
    --out "$OUT/$2-$3-seed$4" --seed "$4" --threads 1 --set finetune.head_init="$3" --set train.progress=false
}
case "$part" in
  prepare) [ -f "$DATA/license-category/train.jsonl" ] || .venv/bin/python benchmarks/prepare_finetune_data.py --out "$DATA" ;;
  category) init="$1"; shift; for s in "$@"; do run classify license-category "$init" "$s"; done ;;
  rules) init="$1"; shift; for s in "$@"; do run multilabel license-multilabel "$init" "$s"; done ;;
  vader) init="$1"; shift; for k in "$@"; do  # fold k of the 5-fold split; the recipe holds out a tenth of train as dev
      "$EF" finetune classify --train "$DATA/vader-cv/fold$k/train.jsonl" --test "$DATA/vader-cv/fold$k/test.jsonl" \
        --labels negative,neutral,positive --out "$OUT/vader-fold$k-$init" --threads 1 \
        --set finetune.head_init="$init" --set train.progress=false; done ;;
  summary)
    .venv/bin/python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
for m in sorted(Path(sys.argv[1]).glob("*/metrics.json")):
    r = json.loads(m.read_text()); t, p = r.get("test", {}), r.get("probe", {}).get("test", {})
    keys = ("accuracy", "macro_f1") if "accuracy" in t else ("micro_f1", "macro_f1")
    print(f"{m.parent.name:45s} " + " ".join(f"{k} {t.get(k, float('nan')):.4f} (probe {p.get(k, float('nan')):.4f})" for k in keys)
          + f"  {r.get('train_s')} s, best epoch {r.get('best_epoch')}")
PY
    ;;
  *) echo "usage: $0 prepare | category HEAD_INIT SEED... | rules HEAD_INIT SEED... | summary" >&2; exit 2 ;;
esac
