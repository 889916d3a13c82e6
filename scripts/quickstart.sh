#!/usr/bin/env bash
# The main job on a fresh clone: set up, then run the legal quickstart pipeline (examples/legal-quickstart.yaml):
# MiniLM-L6 fine-tuned on licensedcode rule snippets -> int8 -> evaluated beside TF-IDF -> benchmarked against
# transformers -> exported -> one HTML report (runs/legal-quickstart/report.html). Extra arguments go to
# `encoderforge quickstart` (e.g. --smoke: tiny slices, the same stages).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
encoderforge quickstart "$@"
