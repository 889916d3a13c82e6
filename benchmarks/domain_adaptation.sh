#!/usr/bin/env bash
# Domain adaptation of MiniLM-L6 to legal text (issue: "Domain pretraining"), as run for docs/results-pretrain.md.
#   1. continued MLM on the training split's license texts: a head-only warm-up (phase 1: the unadapted
#      encoder's held-out loss with a trained head), then the whole encoder (phase 2), and a control that keeps
#      training the head only for the same steps (so "adapted" is compared against as much head training);
#      and a general-domain control: the same phase 2 on BBC News text instead of legal text (news-adapt);
#      two later phase-2 variants that move MiniLM's sentence features less: adapt-gentle (lr 3e-5) and
#      adapt-anchored (model.anchor_weight=10: unmasked tokens' features held near the start's);
#   2. license-category fine-tuning from the unadapted, the legal-adapted and the news-adapted encoder, the same
#      recipe for all (lr 3e-4, 4 epochs: R8's 1e-4 x 3 left the small categories at F1 0), seeds 0 and 1;
#   3. held-out legal MLM loss of every phase-2 model on the same rows and masks (heldout).
# A second downstream task (license-expression multi-label) is benchmarks/adapt_multilabel.sh. Results and reading:
# docs/results-pretrain.md, "Domain adaptation".
# Usage: benchmarks/domain_adaptation.sh PART [SEEDS...]
#   PART = prepare | head | adapt | adapt-gentle | adapt-anchored | control | news-adapt | heldout
#          | unadapted | adapted | newsadapted | gentle | anchored   (fine-tuning parts take SEEDS, default 0 1)
# After "prepare", chains can run side by side, one thread each (the box has 2 cores):
#   (head; adapt; adapted)  and  (unadapted; control; news-adapt; newsadapted) -- the parts after head need it.
source "$(dirname "$0")/env.sh"
OUT="${OUT:-runs/adapt}"
part="${1:-}"; shift || true
seeds=("${@:-0 1}"); seeds=(${seeds[*]})
CFG=configs/continue-minilm.yaml
finetune() {  # $1 = model, $2 = run name, $3 = seed
  "$EF" finetune classify --model "$1" --train "$DATA/license-category/train.jsonl" \
    --dev "$DATA/license-category/dev.jsonl" --test "$DATA/license-category/test.jsonl" \
    --out "$OUT/ft/$2-seed$3" --max-length 128 --epochs 4 --batch-size 32 --lr 3e-4 --seed "$3" --threads 1
}
case "$part" in
  prepare)
    [ -f "$DATA/license-category/pretrain.jsonl" ] || .venv/bin/python benchmarks/prepare_finetune_data.py --out "$DATA"
    "$EF" data prepare "$DATA/license-category/pretrain.jsonl=licenses" --tokenizer minilm-l6 --out "$OUT/shards" \
      --eval-fraction 0.05
    "$EF" data prepare "$DATA/news-mlm/pretrain.jsonl=news" --tokenizer minilm-l6 --out "$OUT/news-shards" \
      --eval-fraction 0.05 ;;
  head)      # phase 1: fresh MLM head on the frozen encoder
    "$EF" pretrain --config "$CFG" --set data.shards="$OUT/shards" --set model.freeze_encoder=true \
      --set train.steps=200 --set train.lr=1e-3 --set train.warmup_steps=20 --set train.eval_every=50 \
      --set train.out_dir="$OUT/head" ;;
  adapt)     # phase 2: the whole encoder, from phase 1's head
    "$EF" pretrain --config "$CFG" --set data.shards="$OUT/shards" --set model.init_from="$OUT/head/model" \
      --set train.out_dir="$OUT/mlm" ;;
  control)   # phase 2 with the encoder still frozen: the same steps and schedule for the head alone
    "$EF" pretrain --config "$CFG" --set data.shards="$OUT/shards" --set model.init_from="$OUT/head/model" \
      --set model.freeze_encoder=true --set train.out_dir="$OUT/mlm-head-only" ;;
  adapt-gentle)  # phase 2 at a third of the LR (3e-5): moves the sentence features less
    "$EF" pretrain --config "$CFG" --set data.shards="$OUT/shards" --set model.init_from="$OUT/head/model" \
      --set train.lr=3e-5 --set train.out_dir="$OUT/mlm-gentle" ;;
  adapt-anchored)  # phase 2 at lr 1e-4 with the feature anchor: unmasked tokens' features held near MiniLM's
    "$EF" pretrain --config "$CFG" --set data.shards="$OUT/shards" --set model.init_from="$OUT/head/model" \
      --set model.anchor_weight=10 --set train.out_dir="$OUT/mlm-anchored" ;;
  news-adapt)  # control: phase 2 on news text, from the same phase-1 head
    "$EF" pretrain --config "$CFG" --set data.shards="$OUT/news-shards" --set model.init_from="$OUT/head/model" \
      --set train.out_dir="$OUT/mlm-news" ;;
  heldout)
    .venv/bin/python benchmarks/mlm_heldout.py --shards "$OUT/shards" --start minilm-l6 "$OUT/head/model" "$OUT/mlm-head-only/model" \
      "$OUT/mlm-news/model" "$OUT/mlm/model" $(ls -d "$OUT"/mlm-{gentle,anchored}/model 2>/dev/null) \
      | tee "$OUT/heldout.jsonl" ;;
  unadapted) for s in "${seeds[@]}"; do finetune minilm-l6 unadapted "$s"; done ;;
  adapted)   for s in "${seeds[@]}"; do finetune "$OUT/mlm/model" adapted "$s"; done ;;
  newsadapted) for s in "${seeds[@]}"; do finetune "$OUT/mlm-news/model" newsadapted "$s"; done ;;
  gentle)    for s in "${seeds[@]}"; do finetune "$OUT/mlm-gentle/model" gentle "$s"; done ;;
  anchored)  for s in "${seeds[@]}"; do finetune "$OUT/mlm-anchored/model" anchored "$s"; done ;;
  *) echo "unknown part $part; see the usage at the top of $0" >&2; exit 2 ;;
esac
