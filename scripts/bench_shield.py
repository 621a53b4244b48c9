"""ShieldGemma scoring speed: the model card's loop against scope.shield.score, in one run.

    python scripts/bench_shield.py              # bundled Gemma 3 270M (real weights), CPU
    python scripts/bench_shield.py --hf         # also time the loop on the transformers model

The model card's loop: one prompt at a time, the full logits of the whole sequence
(every position x the whole vocabulary), then a softmax over the Yes/No logits at the
last position. scope.shield.score: prompts batched by length with left padding, the
blocks run once, and only the two needed unembedding columns applied at the last
position. Both run on the same loaded model, over the same prompts (data/shield_examples.jsonl
under two policies). Prints the time of each, their ratio and the largest |difference| of P(Yes).

The bundled model is not ShieldGemma, so its P(Yes) is a stand-in; the speed does not
depend on what the weights mean.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import scope
from scope import shield

EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "shield_examples.jsonl"
POLICIES = ("dangerous_content", "harassment")


def card_loop(model, texts: list[str]) -> np.ndarray:
    """The model card's computation, on the transformer-lens model."""
    yes, no = shield.yes_no_ids(model)
    scores = []
    with torch.no_grad():
        for text in texts:
            logits = model(model.to_tokens(text, prepend_bos=True, truncate=False))
            scores.append(torch.softmax(logits[0, -1, [yes, no]].float(), dim=0)[0].item())
    return np.array(scores)


def card_loop_hf(hf_model, tokenizer, texts: list[str]) -> np.ndarray:
    """The model card's code as written, on the transformers model."""
    vocab = tokenizer.get_vocab()
    scores = []
    with torch.no_grad():
        for text in texts:
            logits = hf_model(**tokenizer(text, return_tensors="pt")).logits
            scores.append(torch.softmax(logits[0, -1, [vocab["Yes"], vocab["No"]]].float(), dim=0)[0].item())
    return np.array(scores)


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3, help="alternating repetitions of each path")
    parser.add_argument("--hf", action="store_true", help="also time the model card's code on transformers")
    args = parser.parse_args()

    model = scope.load_model("gemma-3-270m")
    prompts = [json.loads(line)["prompt"] for line in EXAMPLES.read_text().splitlines() if line.strip()]
    pairs = [(p, policy) for policy in POLICIES for p in prompts]
    texts = [shield.build_prompt(p, policy) for p, policy in pairs]
    lengths = [model.to_tokens(t).shape[1] for t in texts]

    card_loop(model, texts[:1])  # warm up both paths
    shield.score(model, [pairs[0][0]], pairs[0][1], progress=False)
    card_times, ours_times = [], []
    for _ in range(args.reps):  # alternate, so that load from other processes hits both alike
        card, seconds = timed(lambda: card_loop(model, texts))
        card_times.append(seconds)
        ours, seconds = timed(
            lambda: np.concatenate(
                [
                    shield.score(model, prompts, policy, batch_size=args.batch_size, progress=False)
                    for policy in POLICIES
                ]
            )
        )
        ours_times.append(seconds)
    ratios = [c / o for c, o in zip(card_times, ours_times)]
    print(
        f"Gemma 3 270M (bundled, fp32, CPU, {torch.get_num_threads()} threads): {len(texts)} prompts of "
        f"{min(lengths)}-{max(lengths)} tokens, {args.reps} alternating repetitions"
    )
    print(f"  model card loop (transformer-lens, full logits): {statistics.median(card_times):.2f} s (median)")
    print(f"  scope.shield.score (batch {args.batch_size}):            {statistics.median(ours_times):.2f} s (median)")
    print(
        f"  speed ratio {statistics.median(ratios):.2f}x (per repetition: {', '.join(f'{r:.2f}' for r in ratios)}); "
        f"max |P(Yes) difference| {np.abs(card - ours).max():.2e}"
    )
    ours_s = statistics.median(ours_times)
    if args.hf:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from scope.bundled import ensure_bundled_checkpoint

        folder = str(ensure_bundled_checkpoint())
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        card_loop_hf(hf_model, tokenizer, texts[:1])
        hf, hf_s = timed(lambda: card_loop_hf(hf_model, tokenizer, texts))
        print(
            f"  model card loop (transformers): {hf_s:.2f} s, ratio to scope {hf_s / ours_s:.2f}x; "
            f"max |P(Yes) difference| {np.abs(hf - ours).max():.2e}"
        )


if __name__ == "__main__":
    main()
