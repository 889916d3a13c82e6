#!/usr/bin/env bash
# infinity-emb, the embedding server `encoderforge bench serve` compares against, in its own venv (.venv-infinity):
# it pins its own fastapi/transformers/sentence-transformers versions, so it does not go into the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-infinity/bin/python ] || "$PY" -m venv .venv-infinity
.venv-infinity/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv-infinity/bin/python -m pip install -q "infinity-emb[server,torch]==0.0.78"
echo "infinity-emb: $(pwd)/.venv-infinity/bin/infinity_emb (encoderforge bench serve finds it there)"
