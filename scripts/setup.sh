#!/usr/bin/env bash
# Create ./.venv and install factembed with its test dependencies.
# On machines without a GPU we pin the CPU build of torch first, so that the
# library's own range requirement (torch>=2.1) does not pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    .venv/bin/python -m pip install -q "torch>=2.1"
  else
    .venv/bin/python -m pip install -q "torch==2.13.0"
  fi
fi
.venv/bin/python -m pip install -q -e ".[dev,all]"
# The browser tests of the interactive page drive Debian's headless Chromium with its own
# chromedriver (no browser downloads); install them where missing and we may (root, apt).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
      >/dev/null 2>&1 || echo "setup.sh: could not install chromium; the browser tests will be skipped" >&2
  else
    echo "setup.sh: chromium/chromedriver not found (apt-get install chromium chromium-driver as root);" \
         "the browser tests will be skipped" >&2
  fi
fi
