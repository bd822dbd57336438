#!/usr/bin/env bash
# One-shot GPU benchmark: ViT-B/32 bf16 training (DDP and FSDP2, eager and torch.compile, resident batch and
# through the loader, MFU and peak memory), captioner generation tokens/s (mmfm's and a transformers GIT-base
# captioner against transformers' pipeline) and zero-shot images/s on one GPU, in
# under 8 minutes. Usage: bash bench/gpu.sh [extra bench/gpu.py flags]; bash bench/gpu.sh --smoke checks the
# script on the CPU. Exits 2 with a message when there is no CUDA GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 900 "$PY" bench/gpu.py "$@"
