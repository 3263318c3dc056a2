#!/usr/bin/env bash
# The ONNX Runtime training stack (apply_ort=true) in its own virtual environment, for tests/test_ort.py:
# images/requirements-ort.txt (torch 2.6.0 + onnxruntime-training-cpu 1.19.2), then ORTModule's C++ extensions.
# The trainer itself comes from the repository (PYTHONPATH), as in the image it comes from /src.
#
#   bash scripts/install_ort_env.sh          # -> .cache/ort-venv (skipped when already complete)
#
# Measured on 2 shared CPU cores: ~2.5 min of pip (torch 2.6.0 from PyPI is the CUDA build: ~4 GB of nvidia
# wheels; set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu where that index is reachable) and 5-11 min
# building the extensions; 6.6 GB on disk, which is also the peak (measured on a clean clone, 2026-12-06).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ORT_VENV:-.cache/ort-venv}
PY=${PYTHON:-python3}
if [ -f "$VENV/.complete" ]; then
  echo "ORT environment ready: $VENV"
  exit 0
fi
rm -rf "$VENV"
start=$(date +%s)
$PY -m venv "$VENV"
# This machine's pip configuration may cap torch for the main environment; this one pins its own.
export PIP_CONSTRAINT=/dev/null
torch_req=$(grep -E '^torch==' images/requirements-ort.txt)
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$VENV/bin/pip" install -q --index-url "$TORCH_INDEX_URL" "$torch_req"
fi
# torch 2.6.0 from PyPI is the CUDA build, whose requirements are ~3.6 GB of wheels (nvidia-*, triton). One pip call
# keeps every wheel it downloads in a temporary folder until it ends: 9.6 GB of disk at the peak for a 6.6 GB
# environment (measured); a CI run ran out of disk in that call. So torch and each of its requirements go in alone.
"$VENV/bin/pip" install -q --no-deps "$torch_req"
"$VENV/bin/python" -c 'import importlib.metadata as m; print("\n".join(m.requires("torch")))' | grep -v 'extra ==' \
  | while read -r req; do "$VENV/bin/pip" install -q "$req"; done
"$VENV/bin/pip" install -q -r images/requirements-ort.txt
"$VENV/bin/python" -m onnxruntime.training.ortmodule.torch_cpp_extensions.install >"$VENV/extensions.log" 2>&1 \
  || { tail -20 "$VENV/extensions.log"; exit 1; }
touch "$VENV/.complete"
echo "ORT environment ready: $VENV ($(( $(date +%s) - start )) s)"
