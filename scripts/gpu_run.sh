#!/usr/bin/env bash
# Issue 18's GPU check, as run on the device machine (one H100/H200, no network, Python 3.12 with
# torch and transformers but without transformer-lens/sae-lens): installs the wheels carried in .whl/
# (see the report of issue 18 for how they were made), then runs scripts/gpu_check.py on full-size
# Gemma 2 2B and 9B shapes in bf16, writing gpu_check.json, gpu_check.md and gpu_check.log to $OUT.
#
#   device run:  command "bash scripts/gpu_run.sh", carry [".whl"], timeout_s 590
#   env:         BUDGET (seconds for the check's sections, default 360), MODELS (default 2b,9b)
#
# Sections that would not fit BUDGET are reported as "skipped: budget"; a hard stop at 540 s
# leaves the JSON/Markdown written after the last finished section.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# sae-lens imports wandb at module level (config.py) and calls it only when logging to wandb; the
# image has no wandb and its wheel drags in pydantic, sentry and more: an empty stand-in is enough.
if ! python3 -c "import wandb" 2>/dev/null; then
  mkdir -p /tmp/site/wandb && echo '"""Device-only stand-in: sae-lens imports wandb; nothing here calls it."""' >/tmp/site/wandb/__init__.py
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
df -h /tmp | tail -1
python3 -m pip list 2>/dev/null | grep -iE "^(torch|transformers|transformer-lens|sae-lens|datasets|pyarrow|fsspec|huggingface.hub|numpy|pandas|accelerate) "
timeout 540 python3 scripts/gpu_check.py --device cuda --budget "${BUDGET:-360}" --models "${MODELS:-2b,9b}" \
    --work /tmp/gpu-check --out "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
