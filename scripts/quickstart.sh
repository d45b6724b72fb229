#!/usr/bin/env bash
# Install and run the whole pipeline on the embedded default model (SmolLM2-135M, CPU).
#   bash scripts/quickstart.sh [sedac quickstart args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
exec .venv/bin/sedac quickstart "$@"
