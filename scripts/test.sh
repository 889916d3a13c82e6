#!/usr/bin/env bash
# The test command: set up the environment, lint, then run the whole suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check encoderforge tests benchmarks  # lint + import order (pyproject.toml [tool.ruff])
ruff format --check -q encoderforge tests benchmarks
mypy  # the package, as configured in pyproject.toml [tool.mypy]
python -m pytest -q "$@"
