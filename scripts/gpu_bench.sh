#!/usr/bin/env bash
# One call on the GPU machine (H100/H200): the decode benchmark, then the gpu-marked kernel tests.
# Logs go to $OUT (the device tool's output folder; /tmp/sedac_gpu if unset). Needs only torch, triton,
# pytest, typer, pyyaml (no vLLM): run from a plain checkout with PYTHONPATH=. (no pip install).
#   bash scripts/gpu_bench.sh [extra `decode` options, e.g. --repeats 5]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/sedac_gpu}"
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"
# 1. eager PyTorch ops (what HF modules run), every step in one CUDA graph
timeout "${BENCH_TIMEOUT:-200}" "$PY" -m sedac.bench.decode decode --shape qwen2.5-7b --backend torch \
  --out "$OUT/decode.json" "$@" 2>&1 | tee "$OUT/decode.txt"
# 2. correctness of every kernel path on the GPU
timeout "${TEST_TIMEOUT:-150}" "$PY" -m pytest -q -m gpu tests/runtime/test_kernels.py -p no:cacheprovider \
  2>&1 | tee "$OUT/gpu_tests.txt"
# 3. the same with the non-MLP parts torch.compile-d (as vLLM runs them), batch 1
timeout "${COMPILE_TIMEOUT:-220}" "$PY" -m sedac.bench.decode decode --shape qwen2.5-7b --backend torch --compile \
  --batch 1 --out "$OUT/decode_compiled.json" "$@" 2>&1 | tee "$OUT/decode_compiled.txt"
