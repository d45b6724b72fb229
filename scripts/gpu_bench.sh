#!/usr/bin/env bash
# One call on the GPU machine (H100/H200): the gpu-marked kernel tests, the soft-skip benchmark (issue 12:
# MLP microbenchmarks + decode steps eager and compiled, writes decode-soft-<card>.json), then the skip
# benchmark's never-firing / always-firing rows, eager (batch 1, 32) and compiled (batch 1).
# Logs go to $OUT (the device tool's output folder; /tmp/sedac_gpu if unset). Needs only torch, triton,
# pytest, typer, pyyaml (no vLLM): run from a plain checkout with PYTHONPATH=. (no pip install).
#   bash scripts/gpu_bench.sh [extra `decode` options for every benchmark, e.g. --repeats 5]
# Exit status: non-zero when any step fails (a failing GPU test included); every step still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/sedac_gpu}"
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
FAILED=()

step() {  # step NAME TIMEOUT CMD...: run, tee to $OUT/NAME.txt, remember a non-zero status
  local name=$1 limit=$2
  shift 2
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "[$name] exit status $rc"
  [ "$rc" -eq 0 ] || FAILED+=("$name($rc)")
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/env.txt"
# 1. soft skip: MLP level per sparsity, decode steps at batch 1/4/8/32, eager and compiled
step soft "${SOFT_TIMEOUT:-300}" "$PY" -m sedac.bench.decode decode --shape qwen2.5-7b --soft \
  --batch 1 --batch 4 --batch 8 --batch 32 --out "$OUT/soft.json" --evidence-dir "$OUT" "$@"
# 2. correctness of every kernel path on the GPU (skip kernels and soft-skip kernels)
step gpu_tests "${TEST_TIMEOUT:-240}" "$PY" -m pytest -q -m gpu tests/runtime/test_kernels.py \
  tests/runtime/test_sparse_ops.py -p no:cacheprovider
# 3. skip mechanism: never-firing and always-firing band of 14 (eager batch 1 and 32; compiled batch 1)
step decode "${BENCH_TIMEOUT:-150}" "$PY" -m sedac.bench.decode decode --shape qwen2.5-7b --band 14 \
  --fraction 0 --fraction 1 "$@"
step decode_compiled "${COMPILE_TIMEOUT:-150}" "$PY" -m sedac.bench.decode decode --shape qwen2.5-7b --band 14 \
  --fraction 0 --fraction 1 --compile --batch 1 "$@"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed"
