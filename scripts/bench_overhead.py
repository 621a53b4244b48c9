"""Per-token framework overhead: scope's greedy generation against transformers' on a deep, narrow
Gemma 2, where matrix work is negligible and every microsecond is Python and op dispatch.

    python scripts/bench_overhead.py                 # 26 layers, width 64, batch 1 and 8
    python scripts/bench_overhead.py --bundled       # plus the bundled Gemma 3 270M (real weights)
    python scripts/bench_overhead.py --assisted      # plus assisted generation (a 4-layer draft)
    python scripts/bench_overhead.py --tokens 64 --reps 5

A Gemma 2 of 26 layers (Gemma 2 2B's depth) and width 64 (tests/tiny.py, random weights, sliding
window, softcaps) spends its time the way a full-size model spends it on a GPU: launching small
operations. Its ratio against transformers reproduces the H200's (issue 25: 0.50x there, 0.53x
here on the old path), at no GPU cost.

For each batch size: tokens/s of transformers' ``generate`` (HF model with the same weights), of
scope's plain transformer-lens step (``decode="plain"``, the path before the fast step) and of
scope's default path; greedy, EOS ignored (every run makes the same number of tokens), one torch
thread, the three alternated, medians over repetitions. Prints the ratios against transformers
and whether the greedy tokens are identical on all three sides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tiny

import scope
from scope.generation import generate_batch
from scope.inputs import pad, pad_id

PROMPTS = [
    "Paris is the capital of France, and",
    "knock knock",
    "def add(a, b):",
    "The quick brown fox",
    "Golden Gate Bridge spans",
    "Sparse autoencoders find",
    "Rome is the capital of Italy",
    "who is there?",
]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def hf_generate(hf_model, tokens: torch.Tensor, mask: torch.Tensor, n: int) -> list[list[int]]:
    """Greedy, ``n`` tokens, EOS an ordinary token (as scope's ``stop_at_eos=False``)."""
    with torch.no_grad():
        out = hf_model.generate(tokens, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[:, tokens.shape[1] :].tolist()


def scope_generate(model, prompts: list[torch.Tensor], n: int, decode: str) -> list[list[int]]:
    completions = generate_batch(
        model, prompts, max_new_tokens=n, stop_at_eos=False, batch_size=len(prompts), decode=decode
    )
    return [c.tokens for c in completions]


def measure(model, hf_model, texts: list, n: int, reps: int) -> dict:
    """Tokens/s of transformers, scope's plain step and scope's default path on ``texts`` (one
    batch), their ratios, and whether all three made the same greedy tokens. Importable: the GPU
    check calls it on the device (``hf_model=None`` skips transformers)."""
    prompts = [scope.to_tokens(model, t)[0] for t in texts]
    tokens, mask = pad(prompts, pad_id(model), side="left")
    device = model.cfg.device
    runs = {
        "scope plain": lambda: scope_generate(model, prompts, n, "plain"),
        "scope": lambda: scope_generate(model, prompts, n, "auto"),
    }
    if hf_model is not None:
        runs["transformers"] = lambda: hf_generate(hf_model, tokens.to(device), mask.to(device), n)
    outputs = {side: run() for side, run in runs.items()}  # also the warm-up
    times: dict[str, list[float]] = {side: [] for side in runs}
    for _ in range(reps):
        for side, run in runs.items():
            times[side].append(timed(run))
    made = n * len(texts)
    figures = {f"{side} tok/s": made / statistics.median(t) for side, t in times.items()}
    figures["identical"] = all(out == outputs["scope"] for out in outputs.values())
    figures["scope / plain"] = statistics.median(p / s for p, s in zip(times["scope plain"], times["scope"]))
    if hf_model is not None:
        for side in ("scope plain", "scope"):
            ratios = (h / s for h, s in zip(times["transformers"], times[side]))
            figures[f"{side} / transformers"] = statistics.median(ratios)
    return figures


def compare(name: str, model, hf_model, texts: list, n: int, reps: int) -> None:
    f = measure(model, hf_model, texts, n, reps)
    print(
        f"{name}, batch {len(texts)}: transformers {f['transformers tok/s']:.1f} tok/s, "
        f"scope plain step {f['scope plain tok/s']:.1f} ({f['scope plain / transformers']:.2f}x), "
        f"scope {f['scope tok/s']:.1f} ({f['scope / transformers']:.2f}x transformers, "
        f"{f['scope / plain']:.2f}x the plain step); greedy tokens identical: {f['identical']}"
    )


def deep_narrow(n: int, reps: int, batch: int) -> None:
    from transformers import AutoModelForCausalLM

    from tests.tiny import save_tiny_gemma2

    folder = save_tiny_gemma2(Path(tempfile.mkdtemp()) / "gemma2-26x64", num_hidden_layers=26)
    model = scope.load_model("gemma-2-2b", weights=folder, device="cpu", dtype=torch.float32)
    hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    hf_model.generation_config.eos_token_id = None
    name = "Gemma 2, 26 layers x width 64 (random, fp32)"
    compare(name, model, hf_model, PROMPTS[:1], n, reps)
    compare(name, model, hf_model, (PROMPTS * batch)[:batch], n, reps)


def assisted(n: int, reps: int, batch: int) -> None:
    """The 26-layer target alone against assisted by a 4-layer draft made of the target's own
    embedding, first 4 blocks and unembedding (random weights: an untrained draft agrees only by
    structure, so the acceptance rate, printed, is what the speed-up depends on)."""
    from scope.assisted import summary
    from tests.tiny import save_tiny_gemma2

    root = Path(tempfile.mkdtemp())
    target = scope.load_model("gemma-2-2b", weights=save_tiny_gemma2(root / "t", num_hidden_layers=26), device="cpu")
    draft = scope.load_model("gemma-2-2b", weights=save_tiny_gemma2(root / "d", num_hidden_layers=4), device="cpu")
    with torch.no_grad():
        source = dict(target.named_parameters())
        for name, param in draft.named_parameters():
            param.copy_(source[name])
    for texts in (PROMPTS[:1], (PROMPTS * batch)[:batch]):
        kwargs = dict(max_new_tokens=n, stop_at_eos=False, batch_size=len(texts))
        same = [c.tokens for c in scope.generate_completions(target, texts, assistant=draft, **kwargs)] == [
            c.tokens for c in scope.generate_completions(target, texts, **kwargs)
        ]
        alone_t, assisted_t, stats = [], [], {}
        for _ in range(reps):
            started = time.perf_counter()
            scope.generate_completions(target, texts, **kwargs)
            alone_t.append(time.perf_counter() - started)
            started = time.perf_counter()
            stats = summary(scope.generate_completions(target, texts, assistant=draft, **kwargs))
            assisted_t.append(time.perf_counter() - started)
        made = n * len(texts)
        print(
            f"Assisted, 26-layer target + 4-layer draft, batch {len(texts)}: alone "
            f"{made / statistics.median(alone_t):.1f} tok/s, assisted {made / statistics.median(assisted_t):.1f} tok/s "
            f"({statistics.median(a / b for a, b in zip(alone_t, assisted_t)):.2f}x), acceptance "
            f"{stats['acceptance_rate']:.2f}, {stats['tokens_per_target_pass']:.2f} tokens per target pass; "
            f"greedy tokens identical: {same}"
        )


def bundled(n: int, reps: int, batch: int) -> None:
    from transformers import AutoModelForCausalLM

    from scope.bundled import ensure_bundled_checkpoint

    model = scope.load_model("gemma-3-270m")
    hf_model = AutoModelForCausalLM.from_pretrained(str(ensure_bundled_checkpoint()), dtype=torch.float32).eval()
    hf_model.generation_config.eos_token_id = None
    name = "Gemma 3 270M (bundled, fp32)"
    compare(name, model, hf_model, PROMPTS[:1], n, reps)
    compare(name, model, hf_model, (PROMPTS * batch)[:batch], n, reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bundled", action="store_true", help="also the bundled Gemma 3 270M")
    parser.add_argument("--assisted", action="store_true", help="also assisted generation (4-layer draft)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, 1 thread, load average {load:.2f} on {os.cpu_count()} cores")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    deep_narrow(args.tokens, args.reps, args.batch)
    if args.assisted:
        assisted(args.tokens, args.reps, args.batch)
    if args.bundled:
        bundled(max(args.tokens // 2, 4), max(args.reps // 2, 2), args.batch)


if __name__ == "__main__":
    main()
