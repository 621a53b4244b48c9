"""Throughput of scope.encode, from one run (the bundled Gemma 3 270M by default).

A random JumpReLU SAE (16k wide by default) reads blocks.6.hook_resid_post (d_in 640).
Timed, interleaved round by round so that machine noise hits every variant alike:

  bare      model(tokens, stop_at_layer=L+1): the forward to the SAE's layer, no SAE
  by hand   the same forward, then sae.encode on its output: the least work that
            yields the features
  scope     scope.encode(model, sae, text): tokenization, early-stopped forward,
            width checks, encode, token strings
  sae-lens  model.run_with_cache_with_saes(tokens, saes=[sae]): the usual sae-lens way,
            a full forward (every layer, final norm, 262k-token unembedding)

Prints tokens/s of each and the ratios, from the fastest round of each variant (as timeit does:
on a shared machine other processes only ever add time), with the medians alongside.

    python scripts/bench_encode.py [--layer 6] [--width 16384] [--tokens 128] [--rounds 7]
    python scripts/bench_encode.py --model gemma-2-2b --weights ~/.cache/scope/bench/gemma-2-2b-random \
        --layer 20 --rounds 3 --repeats 1       # full-size Gemma 2 2B, random weights
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import scope
from scope.saes import load_gemma_scope_npz


def random_sae(d_in: int, d_sae: int, hook: str, path):
    rng = np.random.default_rng(0)
    np.savez(
        path,
        W_enc=(rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in)).astype(np.float32),
        W_dec=rng.normal(size=(d_sae, d_in)).astype(np.float32),
        b_enc=np.zeros(d_sae, np.float32),
        b_dec=np.zeros(d_in, np.float32),
        threshold=np.full(d_sae, 0.5, np.float32),
    )
    return load_gemma_scope_npz(path, hook=hook, device="cpu")


def text_of(model, n_tokens: int) -> str:
    base = (
        "Sparse autoencoders decompose the residual stream of a language model into features that "
        "people can read. The Golden Gate Bridge spans the strait in San Francisco. "
    )
    text = base
    while len(model.to_tokens(text)[0]) < n_tokens:
        text += base
    ids = model.to_tokens(text)[0][1:n_tokens]
    return model.tokenizer.decode(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="calls per variant per round")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument(
        "--weights",
        default=None,
        help="a local checkpoint folder for --model, e.g. the random full-size Gemma 2 2B "
        "that scripts/bench_generate.py --gemma2-2b saves under the scope cache",
    )
    args = parser.parse_args()

    import tempfile

    model = scope.load_model(args.model, device="cpu", dtype=torch.float32, weights=args.weights)
    hook = f"blocks.{args.layer}.hook_resid_post"
    with tempfile.TemporaryDirectory() as tmp:
        sae = random_sae(model.cfg.d_model, args.width, hook, f"{tmp}/params.npz")
    text = text_of(model, args.tokens)
    n_tokens = len(model.to_tokens(text)[0])

    def bare():
        model(model.to_tokens(text), stop_at_layer=args.layer + 1)

    def by_hand():
        sae.encode(model(model.to_tokens(text), stop_at_layer=args.layer + 1))

    def scope_encode():
        scope.encode(model, sae, text)

    def sae_lens():
        _, cache = model.run_with_cache_with_saes(model.to_tokens(text), saes=[sae])
        cache[f"{hook}.hook_sae_acts_post"]

    variants = {"bare": bare, "by hand": by_hand, "scope": scope_encode, "sae-lens": sae_lens}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                for _ in range(args.repeats):
                    fn()
                times[name].append((time.perf_counter() - start) / args.repeats)

    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"{args.model}{' (' + args.weights + ')' if args.weights else ''}, float32, cpu "
        f"({torch.get_num_threads()} threads); SAE {hook}, "
        f"d_in {model.cfg.d_model}, width {args.width}; {n_tokens} tokens per call; "
        f"{args.rounds} rounds x {args.repeats} calls"
    )
    for name in variants:
        print(
            f"  {name:9s} {n_tokens / best[name]:8.1f} tok/s best ({best[name] * 1000:7.1f} ms/call), "
            f"{n_tokens / median[name]:8.1f} tok/s median"
        )
    for label, stat in (("best", best), ("median", median)):
        print(
            f"[{label}] scope.encode throughput / bare forward to layer {args.layer} (no SAE): "
            f"{stat['bare'] / stat['scope']:.3f}x; / forward + sae.encode by hand: "
            f"{stat['by hand'] / stat['scope']:.3f}x; vs sae-lens run_with_cache_with_saes (full model): "
            f"{stat['sae-lens'] / stat['scope']:.2f}x faster ({1 - stat['scope'] / stat['sae-lens']:.0%} less time)"
        )


if __name__ == "__main__":
    main()
