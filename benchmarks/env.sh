# Sourced by the benchmark run scripts: strict mode, repository root, offline and one-thread settings, paths.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the repository root, whoever sources this
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
EF="${EF:-.venv/bin/encoderforge}"
DATA="${DATA:-runs/data}"
