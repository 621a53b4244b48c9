"""Throughput of mining top examples vs a bare forward to the SAE's layer, and peak memory.

Over the same corpus (the shipped held-out sample by default) and the same windows and batches:

- **bare**: tokenize, batch, and run the model up to the hook (``stop_at_layer``), nothing else;
- **scope**: ``scope.mine`` for *all* features of the SAE (top-k buffers, densities,
  histograms, contexts).

Prints tokens/s of both and their ratio from one run (alternating, best of ``--repeats``), then
the peak RSS of ``mine`` in fresh processes for the corpus and for ``--scale`` times the corpus:
bounded memory means the two peaks are close.

``--widen 4`` mines an SAE four times as wide (16,384 features, as wide as a 16k Gemma Scope
SAE): the demo SAE's features repeated, each copy's encoder perturbed by 5% noise so copies do
not tie, so it fires about four times as often (L0 near 200; Gemma Scope's 16k SAEs list L0s
of 20 to 445).

Usage::

    PYTHONPATH=. python scripts/bench_examples.py            # demo-docs SAE, 4096 features
    PYTHONPATH=. python scripts/bench_examples.py --texts 20 --repeats 2
    PYTHONPATH=. python scripts/bench_examples.py --texts 20 --repeats 1 --widen 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus_sample" / "heldout.jsonl")
    p.add_argument("--texts", type=int, default=60, help="documents read from the corpus")
    p.add_argument("--sae", default="demo-docs")
    p.add_argument("--widen", type=int, default=1, help="mine an SAE this many times as wide (see above)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--scale", type=int, default=4, help="memory: the larger corpus is this many times the corpus")
    p.add_argument("--memory-only", type=int, default=None, help=argparse.SUPPRESS)  # child process mode
    return p.parse_args(argv)


def read_texts(path: Path, n: int) -> list[str]:
    with path.open() as f:
        return [json.loads(line)["text"] for line in itertools.islice(f, n)]


def bare_forward(model, sae, texts: list[str], batch_size: int) -> int:
    """Tokens read by the same windows and batches as mine(), with only the forward to the hook."""
    from scope._io import batched
    from scope.hooks import sae_hook, stop_layer
    from scope.mining.windows import batch_tokens, iter_windows

    stop = stop_layer([sae_hook(sae)])
    n = 0
    with torch.no_grad():
        for batch in batched(iter_windows(model, texts, 128), batch_size):
            tokens, mask = batch_tokens(model, batch)
            model(tokens, stop_at_layer=stop)
            n += int(mask.sum())
    return n


def load_sae(args):
    import scope

    sae = scope.load_sae(args.sae)
    return sae if args.widen == 1 else widened(sae, args.widen)


def widened(sae, times: int):
    """``sae``'s features repeated ``times`` times, each copy's encoder perturbed (seeded)."""
    import tempfile

    import numpy as np

    from scope.hooks import sae_hook
    from scope.saes import load_gemma_scope_npz

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w_enc = sae.W_enc.float().repeat(1, times)
        w_enc *= 1 + 0.05 * torch.randn(w_enc.shape, generator=generator)
        b_dec = sae.b_dec.float()
        # Gemma Scope's format adds no b_dec subtraction on input: fold it into b_enc.
        b_enc = (
            sae.b_enc.float().repeat(times) - b_dec @ w_enc
            if sae.cfg.apply_b_dec_to_input
            else sae.b_enc.float().repeat(times)
        )
        params = {
            "W_enc": w_enc,
            "W_dec": sae.W_dec.float().repeat(times, 1) / times,
            "b_enc": b_enc,
            "b_dec": b_dec,
            "threshold": sae.threshold.float().repeat(times),
        }
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(f"{tmp}/params.npz", **{name: value.detach().numpy() for name, value in params.items()})
        return load_gemma_scope_npz(f"{tmp}/params.npz", hook=sae_hook(sae), device="cpu")


def memory_child(args) -> None:
    import scope

    model = scope.load_model("gemma-3-270m")
    sae = load_sae(args)
    texts = read_texts(args.corpus, args.texts) * args.memory_only
    scope.mine(model, sae, texts, k=20, batch_size=args.batch, progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_mb(args, copies: int) -> float:
    run = subprocess.run(
        [
            sys.executable,
            __file__,
            "--texts",
            str(args.texts),
            "--sae",
            args.sae,
            "--widen",
            str(args.widen),
            "--batch",
            str(args.batch),
            "--corpus",
            str(args.corpus),
            "--memory-only",
            str(copies),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return int(run.stdout.split()[-1]) / 1024


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_only is not None:
        return memory_child(args)
    import scope

    model = scope.load_model("gemma-3-270m")
    sae = load_sae(args)
    texts = read_texts(args.corpus, args.texts)
    print(
        f"{len(texts)} texts, SAE at {scope.hooks.sae_hook(sae)} with {sae.cfg.d_sae} features (all mined), "
        f"batch {args.batch}, {torch.get_num_threads()} threads"
    )
    bare_forward(model, sae, texts[:4], args.batch)  # warm-up
    best = {"bare": float("inf"), "scope": float("inf")}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        n_tokens = bare_forward(model, sae, texts, args.batch)
        best["bare"] = min(best["bare"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        mined = scope.mine(model, sae, texts, k=20, batch_size=args.batch, progress=False)
        best["scope"] = min(best["scope"], time.perf_counter() - t0)
    assert mined.n_tokens == n_tokens
    for name, seconds in best.items():
        print(f"{name:>6}: {n_tokens / seconds:8.0f} tokens/s  ({seconds:.1f} s for {n_tokens:,} tokens)")
    print(f"ratio scope / bare forward: {best['bare'] / best['scope']:.2f}x")
    print(f"mean L0 {float(mined.density.sum()):.1f}; {len(mined.examples):,} example rows")
    small, large = peak_rss_mb(args, 1), peak_rss_mb(args, args.scale)
    print(
        f"peak RSS of mine(): {small:.0f} MB for {n_tokens:,} tokens, "
        f"{large:.0f} MB for {args.scale}x that ({large - small:+.0f} MB)"
    )


if __name__ == "__main__":
    main()
