"""Attribution-graph time and memory against prompt length.

For each prompt length: the time of ``scope.attribution_graph`` as a ratio to one plain forward pass
of the same prompt measured in the same run (median of ``--repeats`` alternating runs), the active
features, the feature rows computed, the completeness error, and the growth of peak RSS.

Models: the tiny Gemma 3 of the tests (random, 6 layers, width 64) with random transcoders of width
64, (``--full``) the bundled Gemma 3 270M (real weights, 18 layers, width 640) with random
transcoders of width 16384 whose thresholds give about ``--l0`` active features per token and layer
(Gemma Scope 2's 270M transcoder shape), and (``--gemma2-2b``) a full-size Gemma 2 2B with random
bf16 weights (26 layers, width 2304) with 26 random bf16 transcoders of width 16384, the shape of
``gemma-scope-2b-pt-transcoders``: the memory a graph needs at the size circuit-tracer users trace.

    PYTHONPATH=$PWD python scripts/bench_graph.py --lengths 8 16 32 --full --full-lengths 8 16
    PYTHONPATH=$PWD python scripts/bench_graph.py --lengths 8 --gemma2-2b --2b-lengths 8 16 32 64
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

import scope

SENTENCE = "the capital of France is Paris and the capital of Italy is Rome while the river runs"


def random_transcoders(model, d_sae: int, l0: float, seed: int = 0, dtype: str = "float32") -> dict:
    """JumpReLU transcoders with N(0, 1) pre-activations on unit-RMS inputs and a threshold at the
    quantile that leaves ``l0`` of ``d_sae`` active per token."""
    from sae_lens import JumpReLUTranscoder

    g = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    threshold = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(1 - l0 / d_sae)).item()
    out = {}
    for layer in range(model.cfg.n_layers):
        transcoder = JumpReLUTranscoder.from_dict(
            {
                "d_in": d,
                "d_sae": d_sae,
                "d_out": d,
                "dtype": dtype,
                "device": "cpu",
                "apply_b_dec_to_input": False,
                "metadata": {
                    "hook_name": f"blocks.{layer}.ln2.hook_normalized",
                    "hook_name_out": f"blocks.{layer}.hook_mlp_out",
                },
            }
        )
        with torch.no_grad():
            transcoder.W_enc.copy_(torch.randn(d, d_sae, generator=g).div_(d**0.5))
            transcoder.b_enc.zero_()
            transcoder.W_dec.copy_(torch.randn(d_sae, d, generator=g).mul_(0.05))
            transcoder.b_dec.zero_()
            transcoder.threshold.fill_(threshold)
        out[layer] = transcoder
    return out


def prompt_of(model, length: int) -> str:
    """A prompt of exactly ``length`` tokens with BOS."""
    words = SENTENCE.split()
    words = (words * (length // len(words) + 2))[: length * 2]
    for n in range(1, len(words) + 1):
        if model.to_tokens(" ".join(words[:n])).shape[1] >= length:
            return " ".join(words[:n])
    raise ValueError(f"no prompt of {length} tokens")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_gemma2_2b(dtype: torch.dtype = torch.bfloat16):
    """A full-size Gemma 2 2B with random weights through ``scope.load_model`` (the checkpoint of
    ``bench_generate.py``, in ``dtype``). Speed and memory do not depend on weight values."""
    from scripts.bench_generate import random_gemma2_2b_checkpoint

    return scope.load_model("gemma-2-2b", weights=random_gemma2_2b_checkpoint(dtype), dtype=dtype)


def bench(label: str, model, transcoders, lengths: list[int], repeats: int, max_feature_nodes, batch_size: int) -> None:
    print(
        f"\n{label}: {model.cfg.n_layers} layers, d_model {model.cfg.d_model}, batch_size {batch_size}, "
        f"max_feature_nodes {max_feature_nodes}"
    )
    print(
        f"{'tokens':>6} {'active':>7} {'rows':>6} {'graph s':>8} {'forward s':>9} {'ratio':>7} "
        f"{'compl.err':>9} {'+peak MB':>8}"
    )
    for length in lengths:
        prompt = prompt_of(model, length)
        tokens = model.to_tokens(prompt)
        graph_times, forward_times = [], []
        before = peak_rss_mb()
        for _ in range(repeats):  # alternate graph and baseline
            start = time.perf_counter()
            graph = scope.attribution_graph(
                model, transcoders, prompt, max_feature_nodes=max_feature_nodes, batch_size=batch_size
            )
            graph_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            with torch.no_grad():
                model(tokens)
            forward_times.append(time.perf_counter() - start)
        g, f = statistics.median(graph_times), statistics.median(forward_times)
        active = sum(int((t.encode(x) > 0).sum()) for t, x in _inputs(model, transcoders, tokens))
        rows = int((graph.nodes["kind"] == "feature").sum())
        print(
            f"{tokens.shape[1]:>6} {active:>7} {rows:>6} {g:>8.2f} {f:>9.3f} {g / f:>7.0f} "
            f"{graph.completeness_error():>9.1e} {peak_rss_mb() - before:>8.0f}"
        )


def _inputs(model, transcoders, tokens):
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("ln2.hook_normalized"))
    return [(t, cache[f"blocks.{layer}.ln2.hook_normalized"][0]) for layer, t in transcoders.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also the bundled Gemma 3 270M, 16k-wide transcoders")
    parser.add_argument("--full-lengths", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--full-max-feature-nodes", type=int, default=256)
    parser.add_argument("--l0", type=float, default=40.0)
    parser.add_argument("--gemma2-2b", action="store_true", help="also a full-size random Gemma 2 2B, bf16")
    parser.add_argument("--2b-lengths", dest="lengths_2b", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--2b-batch-size", dest="batch_2b", type=int, default=32)
    args = parser.parse_args()
    print(f"load: {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    from tests.tiny import save_tiny_gemma3

    with tempfile.TemporaryDirectory() as folder:
        tiny = scope.load_model("gemma-3-270m", weights=save_tiny_gemma3(Path(folder)), device="cpu")
    bench("tiny Gemma 3", tiny, random_transcoders(tiny, 64, 8.0), args.lengths, args.repeats, None, 64)
    if args.full:
        model = scope.load_model("gemma-3-270m")
        transcoders = random_transcoders(model, 16384, args.l0)
        bench(
            "Gemma 3 270M (bundled) + random 16k transcoders",
            model,
            transcoders,
            args.full_lengths,
            1,
            args.full_max_feature_nodes,
            64,
        )
        del model, transcoders
    if args.gemma2_2b:
        model = random_gemma2_2b()
        transcoders = random_transcoders(model, 16384, args.l0, dtype="bfloat16")
        bench(
            "Gemma 2 2B (random bf16) + random bf16 16k transcoders",
            model,
            transcoders,
            args.lengths_2b,
            1,
            args.full_max_feature_nodes,
            args.batch_2b,
        )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
