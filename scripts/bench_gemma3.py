"""Gemma 3 at full size, random weights, CPU: scope's load time and memory, and its speed against
transformers on the same weights, in one run.

    python scripts/bench_gemma3.py                  # Gemma 3 1B shapes, bfloat16
    python scripts/bench_gemma3.py --size 270m      # the 270M shapes (quicker)
    python scripts/bench_gemma3.py --new-tokens 8 --repeats 2   # quicker on a busy machine

Builds a ``Gemma3ForCausalLM`` with the published 1B config (random weights: speed and memory do not
depend on the values), loads it through scope's own path (``scope.models.hooked_from_hf`` with the
official transformer-lens template, the HF weights freed as they convert), and prints:

- load time and the process' peak RSS before/after the load (``ru_maxrss``);
- prefill tokens/s (one forward pass over the prompt) and greedy decode tokens/s for
  ``scope.generate`` against ``transformers`` ``generate`` (KV cache on both sides, EOS ignored),
  median over repetitions that alternate the two, and the ratio scope / transformers;
- whether both greedy continuations are the same tokens.

The transformers baseline is a second copy of the same weights (same seed), so two bf16 copies of
1B (~2 GB each) are resident: about 5 GB peak. The bundled model's tokenizer (the Gemma 3 vocabulary)
supplies the tokens, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

import scope
from scope.bundled import ensure_bundled_checkpoint
from scope.models import hooked_from_hf

# The published text configs (config.json of google/gemma-3-270m and gemma-3-1b-pt).
CONFIGS = {
    "270m": dict(hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                 max_position_embeddings=32768, vocab_size=262144),
    "1b": dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
               num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
               max_position_embeddings=32768, vocab_size=262144),
}  # fmt: skip
TEMPLATES = {"270m": "google/gemma-3-270m", "1b": "google/gemma-3-1b-pt"}
PROMPT = "The history of the Roman Empire began when the first settlers on the Palatine hill"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def random_hf_model(size: str, dtype: torch.dtype, seed: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    n = CONFIGS[size]["num_hidden_layers"]
    config = Gemma3TextConfig(
        **CONFIGS[size],
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)],
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
    )
    torch.manual_seed(seed)
    return Gemma3ForCausalLM._from_config(config, dtype=dtype).eval()  # built in dtype: no fp32 copy


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(CONFIGS), default="1b")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_bundled_checkpoint()))
    print(f"Gemma 3 {args.size}, random weights, {args.dtype}, CPU, {torch.get_num_threads()} threads")

    rss_start = peak_rss_gb()
    source = random_hf_model(args.size, dtype, seed=0)
    rss_hf = peak_rss_gb()
    start = time.perf_counter()
    model = hooked_from_hf(TEMPLATES[args.size], source, tokenizer, dtype=dtype, device="cpu", consume_hf=True)
    load_s = time.perf_counter() - start
    del source
    rss_loaded = peak_rss_gb()
    print(f"load (hooked_from_hf, HF model -> transformer-lens): {load_s:.1f} s")
    print(f"peak RSS: {rss_start:.2f} GB at start, {rss_hf:.2f} GB with the HF model, {rss_loaded:.2f} GB after load")

    baseline = random_hf_model(args.size, dtype, seed=0)  # the same weights again
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    print(f"peak RSS with both copies: {peak_rss_gb():.2f} GB; prompt {ids.shape[1]} tokens")

    with torch.inference_mode():
        hf_prefill, ours_prefill = [], []
        for _ in range(args.repeats):  # alternate, so that machine noise hits both alike
            hf_prefill.append(median_time(lambda: baseline(ids), 1))
            ours_prefill.append(median_time(lambda: model(ids), 1))
        hf_out = baseline.generate(ids, max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None)
        hf_text = tokenizer.decode(hf_out[0, ids.shape[1] :])
        hf_gen, ours_gen, ours_text = [], [], ""
        for _ in range(args.repeats):
            hf_gen.append(median_time(lambda: baseline.generate(ids, max_new_tokens=args.new_tokens,
                                                                do_sample=False, eos_token_id=None), 1))  # fmt: skip
            start = time.perf_counter()
            ours_text = scope.generate(model, PROMPT, max_new_tokens=args.new_tokens, stop_at_eos=False)
            ours_gen.append(time.perf_counter() - start)
    n = ids.shape[1]
    hf_p, ours_p = n / statistics.median(hf_prefill), n / statistics.median(ours_prefill)
    hf_g, ours_g = args.new_tokens / statistics.median(hf_gen), args.new_tokens / statistics.median(ours_gen)
    print(f"prefill tok/s: transformers {hf_p:.1f}, scope {ours_p:.1f}, ratio scope/transformers {ours_p / hf_p:.2f}")
    print(f"greedy decode tok/s (incl. prefill): transformers {hf_g:.2f}, scope {ours_g:.2f}, "
          f"ratio {ours_g / hf_g:.2f}")  # fmt: skip
    print(f"same greedy text: {ours_text == hf_text}")
    print(f"peak RSS overall: {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
