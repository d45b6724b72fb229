#!/usr/bin/env bash
# Build .gpu-carry/ for scripts/gpu_vllm.sh: the shared vLLM carry (../shared/tools/vllm-gpu/prepare.sh: vLLM 0.26 +
# this project's wheel from the working tree) plus the small wheels `vllm serve`'s API server needs that the GPU image
# lacks (uvicorn, watchfiles, prometheus-fastapi-instrumentator, model-hosting-container-standards and its deps).
# Run from the project root; re-run after every code change (the wheel is what vLLM imports there).
set -euo pipefail
TOOL=${VLLM_GPU_TOOL:-$(cd "$(dirname "$0")/.." && pwd)/../shared/tools/vllm-gpu}
[ -d "$TOOL" ] || TOOL=/work/shared/tools/vllm-gpu
bash "$TOOL/prepare.sh"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu-carry \
  uvicorn==0.54.0 watchfiles==1.3.0 prometheus-fastapi-instrumentator==8.1.0 model-hosting-container-standards==0.1.16 \
  jmespath==1.1.0 supervisor==4.3.0 python-multipart==0.0.34
echo "[gpu_vllm_prepare] $(du -sh .gpu-carry | cut -f1) in .gpu-carry/"
