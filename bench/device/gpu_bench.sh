#!/usr/bin/env bash
# ON a lent GPU machine (the device tool), after bench/device/prepare.sh here:
#   run(command="bash bench/device/gpu_bench.sh minilm", carry=[".whl", ".device"], timeout_s=600)
#   run(command="bash bench/device/gpu_bench.sh bert-base", carry=[".whl", ".device"], timeout_s=600)
# Issue 13's GPU rows with bench/run_benchmark.py on the shipped WNUT-17 copy, 1 epoch, SEEDS (default 42,1,2:
# the median of 3 runs per arm, with its spread), random-init encoders (speed and MFU only; accuracy parity is
# measured on CPU with the pretrained MiniLM):
#   minilm     MiniLM-L6 shape: stock, stock_best, ours_fast (the 2x-over-stock_best target)
#   bert-base  bert-base shape (110 M): stock_best, ours_fast at BERT_BATCH (default 32) (the MFU >= 40 % target)
# JSONs and logs go to $OUT (the device tool's folder; bench/results/device when run elsewhere). DRY_RUN=1 runs a
# few steps on a slice of the data (a check of this script on a CPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
part=${1:-minilm}
seeds=${SEEDS:-42,1,2}
OUT=${OUT:-bench/results/device}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/machine_$part.txt"
models=/tmp/device-models
extra=()
if [ "${DRY_RUN:-0}" = 1 ]; then extra=(--max-steps 4 --train-samples 64 --eval-samples 32 --no-peaks); fi
case "$part" in
    minilm)
        $PY bench/device/make_random_model.py --source .device/minilm --output $models/minilm
        $PY bench/run_benchmark.py --arms stock,stock_best,ours_fast --model-path $models/minilm \
            --data-dir pipelines/data/wnut17 --epochs 1 --seeds "$seeds" "${extra[@]}" \
            --workdir /tmp/bench-minilm --output "$OUT/gpu_minilm.json" 2>&1 | tee "$OUT/gpu_minilm.log" ;;
    bert-base)
        $PY bench/device/make_random_model.py --source .device/minilm --output $models/bert-base \
            --set hidden_size=768 num_hidden_layers=12 num_attention_heads=12 intermediate_size=3072
        $PY bench/run_benchmark.py --arms stock_best,ours_fast --model-path $models/bert-base \
            --data-dir pipelines/data/wnut17 --epochs 1 --seeds "$seeds" --batch-size "${BERT_BATCH:-32}" \
            "${extra[@]}" --workdir /tmp/bench-bert --output "$OUT/gpu_bert_base.json" 2>&1 | tee "$OUT/gpu_bert_base.log" ;;
    *) echo "usage: gpu_bench.sh minilm|bert-base" >&2; exit 2 ;;
esac
