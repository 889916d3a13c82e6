#!/usr/bin/env bash
# The main job on a fresh clone: set up, then embed the bundled sample texts with the bundled MiniLM-L6
# through the padding-free engine, and print which sample text is nearest to each one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
encoderforge embed encoderforge/samples/quickstart.txt --out runs/quickstart/vectors.npy --model minilm-l6
encoderforge neighbors encoderforge/samples/quickstart.txt runs/quickstart/vectors.npy
