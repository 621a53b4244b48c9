"""Generation speed: scope.generate against transformers' generate, measured in one run.

    python scripts/bench_generate.py                 # the bundled Gemma 3 270M (real weights)
    python scripts/bench_generate.py --gemma2-2b     # plus a full-size Gemma 2 2B, random weights
    python scripts/bench_generate.py --stock         # plus transformer-lens' own generate, with
                                                     # its default and with scope's weight layout
    python scripts/bench_generate.py --batched       # batches of 1/4/8/16 prompts only

Batched (bundled model): scope.generate on a list of prompts against transformers' batched
generate on the same left-padded batch, against scope generating the prompts one at a time, and
steered with a different Clamp strength per row against unsteered batched scope.

Prints tokens/s for each and the ratio scope / transformers (median over repetitions,
alternating the two so that machine noise hits both alike). Greedy decoding, KV cache on
both sides, the same prompt tokens, EOS ignored so that every run makes the same number of
tokens. Speed does not depend on weight values, so random weights are an honest stand-in
for Gemma 2 2B's size. The 2B checkpoint is saved once (~10 GB under the scope cache) and each
side loads it in its own process (two fp32 copies do not fit in 24 GB together), which also
gives each side's peak memory and lets the script compare their greedy tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import scope

PROMPT = "The history of the Roman Empire began when"
PROMPTS = [
    "The history of the Roman Empire began when",
    "My favourite recipe for bread",
    "In a small village by the sea, there lived an old fisherman who",
    "The theory of relativity",
    "Once upon a time",
    "The best way to learn a new language is to",
    "Scientists announced today that",
    "Dear diary, today I",
    "The stock market fell sharply after",
    "Photosynthesis is the process by which",
    "Here is a short poem about autumn:",
    "The capital of France is",
    "To install the package, first",
    "The old castle on the hill had been empty for",
    "Water boils at",
    "My grandmother always said that",
]


CLOCK = time.perf_counter  # --cpu-time: time.process_time, steadier on a busy shared host


def timed(fn) -> float:
    started = CLOCK()
    fn()
    return CLOCK() - started


def hf_generate(hf_model, tokens: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        out = hf_model.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, tokens.shape[1] :]


def scope_generate(model, tokens: torch.Tensor, n: int) -> torch.Tensor:
    return scope.generate_tokens(model, tokens, max_new_tokens=n, stop_at_eos=False)


def steering_sae(model, width: int = 16384):
    """A random Gemma Scope-format JumpReLU SAE at layer 6 (steering cost does not depend on its values)."""
    import tempfile

    import numpy as np

    rng = np.random.default_rng(0)
    d_in = model.cfg.d_model
    params = {
        "W_enc": rng.normal(size=(d_in, width)).astype(np.float32) / np.sqrt(d_in),
        "W_dec": rng.normal(size=(width, d_in)).astype(np.float32) / np.sqrt(d_in),
        "b_enc": np.zeros(width, np.float32),
        "b_dec": np.zeros(d_in, np.float32),
        "threshold": np.full(width, 0.5, np.float32),
    }
    path = Path(tempfile.mkdtemp()) / "params.npz"
    np.savez(path, **params)
    return scope.load_sae(path, hook="blocks.6.hook_resid_post", device="cpu")


def steered_generate(model, sae, tokens: torch.Tensor, n: int) -> torch.Tensor:
    from scope.steering import steered

    with steered(model, sae, [scope.Clamp(123, 50.0)], "all", prompt_length=tokens.shape[1]):
        return scope.generate_tokens(model, tokens, max_new_tokens=n, stop_at_eos=False)


def tl_generate(model, tokens: torch.Tensor, n: int) -> torch.Tensor:
    return model.generate(tokens, max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False)


def report(name: str, n: int, hf_times: list[float], scope_times: list[float], extra: str = "") -> None:
    hf_rate = n / statistics.median(hf_times)
    scope_rate = n / statistics.median(scope_times)
    ratios = [h / s for h, s in zip(hf_times, scope_times)]
    print(
        f"{name}: transformers {hf_rate:.2f} tok/s, scope {scope_rate:.2f} tok/s, "
        f"ratio scope/transformers {statistics.median(ratios):.2f} "
        f"(per repetition: {', '.join(f'{r:.2f}' for r in ratios)}){extra}"
    )


def bench_bundled(n: int, reps: int, stock: bool) -> None:
    from transformers import AutoModelForCausalLM

    from scope.bundled import ensure_bundled_checkpoint

    model = scope.load_model("gemma-3-270m")
    hf_model = AutoModelForCausalLM.from_pretrained(str(ensure_bundled_checkpoint()), dtype=torch.float32).eval()
    tokens = scope.to_tokens(model, PROMPT)
    same = torch.equal(hf_generate(hf_model, tokens, n), scope_generate(model, tokens, n))  # also warms up
    sae = steering_sae(model)
    steered_run = lambda: steered_generate(model, sae, tokens, n)  # noqa: E731
    steered_run()
    hf_times, scope_times, steered_times = [], [], []
    for _ in range(reps):
        hf_times.append(timed(lambda: hf_generate(hf_model, tokens, n)))
        scope_times.append(timed(lambda: scope_generate(model, tokens, n)))
        steered_times.append(timed(steered_run))
    report(
        f"Gemma 3 270M (bundled, fp32, CPU, {n} tokens)", n, hf_times, scope_times, f"; greedy tokens identical: {same}"
    )
    report(
        f"  steered (Clamp on a {sae.cfg.d_sae}-wide JumpReLU SAE at {sae.cfg.metadata.hook_name}, "
        "every position) vs unsteered transformers",
        n,
        hf_times,
        steered_times,
    )
    if stock:
        relaid_time = timed(lambda: tl_generate(model, tokens, n))
        for param in model.parameters():  # back to transformer-lens' default layout
            param.data = param.data.contiguous()
        stock_time = timed(lambda: tl_generate(model, tokens, n))
        print(
            f"  transformer-lens' own generate: {n / stock_time:.2f} tok/s with its default weight layout, "
            f"{n / relaid_time:.2f} tok/s with scope's layout (transformers {n / statistics.median(hf_times):.2f})"
        )


def gemma2_2b_hf_config():
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=256000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        max_position_embeddings=8192,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def random_gemma2_2b_checkpoint(dtype: torch.dtype = torch.float32) -> Path:
    """A full-size Gemma 2 2B with random weights saved as a HF checkpoint (made once per dtype,
    ~10 GB in fp32, ~5 GB in bf16)."""
    from transformers import AutoTokenizer, Gemma2ForCausalLM

    from scope.bundled import cache_root, ensure_bundled_checkpoint

    suffix = "" if dtype == torch.float32 else "-" + str(dtype).removeprefix("torch.")
    folder = cache_root() / "bench" / f"gemma-2-2b-random{suffix}"
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    Gemma2ForCausalLM._from_config(gemma2_2b_hf_config(), dtype=dtype).save_pretrained(folder)
    # Any Gemma tokenizer will do for timing: the bundled one (its ids overlap Gemma 2's).
    AutoTokenizer.from_pretrained(str(ensure_bundled_checkpoint())).save_pretrained(folder)
    return folder


def run_2b_side(side: str, n: int, reps: int) -> None:
    """One side of the 2B comparison, in its own process so that its peak memory is its own."""
    import resource

    from transformers import AutoModelForCausalLM

    folder = random_gemma2_2b_checkpoint()
    tokens = torch.tensor([[2, 651, 4281, 576, 573, 11344, 20936, 6343, 1185, 573, 1370, 576]])
    started = time.perf_counter()
    if side == "transformers":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        run = lambda: hf_generate(model, tokens, n)  # noqa: E731
    else:
        model = scope.load_model("gemma-2-2b", weights=folder, device="cpu", dtype=torch.float32)
        run = lambda: scope_generate(model, tokens, n)  # noqa: E731
    load_s = time.perf_counter() - started
    generated = run()
    times = [timed(run) for _ in range(reps)]
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps({"times": times, "tokens": generated.tolist(), "load_s": load_s, "peak_gb": peak_gb}))


def bench_gemma2_2b(n: int, reps: int) -> None:
    random_gemma2_2b_checkpoint()
    results = {}
    for side in ("transformers", "scope"):
        out = subprocess.run(
            [sys.executable, __file__, "--side", side, "--tokens", str(n), "--reps", str(reps)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[side] = json.loads(out.strip().splitlines()[-1])
    same = results["transformers"]["tokens"] == results["scope"]["tokens"]
    report(
        f"Gemma 2 2B (full size, random weights, fp32, CPU, {n} tokens)",
        n,
        results["transformers"]["times"],
        results["scope"]["times"],
        f"; greedy tokens identical: {same}",
    )
    for side, r in results.items():
        print(f"  {side}: load {r['load_s']:.0f} s, peak RSS {r['peak_gb']:.1f} GB")


def hf_generate_batch(hf_model, tokens: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        out = hf_model.generate(
            tokens, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
        )
    return out[:, tokens.shape[1] :]


def bench_batched(n: int, reps: int) -> None:
    """Batches of 1/4/8/16 prompts: scope vs transformers (same padded batch), vs scope one at a
    time (batch 8), and per-row-steered vs unsteered batched scope (batch 8)."""
    from transformers import AutoModelForCausalLM

    from scope.bundled import ensure_bundled_checkpoint

    model = scope.load_model("gemma-3-270m")
    hf_model = AutoModelForCausalLM.from_pretrained(str(ensure_bundled_checkpoint()), dtype=torch.float32).eval()
    sae = steering_sae(model)
    print(f"Batched greedy generation, Gemma 3 270M (bundled, fp32, CPU, {n} new tokens per prompt, median of {reps})")
    for size in (1, 4, 8, 16):
        _bench_batch(model, hf_model, sae, PROMPTS[:size], n, reps)


def _bench_batch(model, hf_model, sae, texts: list[str], n: int, reps: int) -> None:
    from scope.inputs import pad, pad_id

    size = len(texts)
    kwargs = dict(max_new_tokens=n, stop_at_eos=False, batch_size=size)
    tokens, mask = pad([scope.to_tokens(model, t)[0] for t in texts], pad_id(model), side="left")

    def scope_run():
        return scope.generate(model, texts, **kwargs)

    def hf_run():
        return hf_generate_batch(hf_model, tokens, mask, n)

    same = [c.tokens for c in scope.generate_completions(model, texts, **kwargs)] == hf_run().tolist()
    hf_times, scope_times = [], []
    for _ in range(reps):
        hf_times.append(timed(hf_run))
        scope_times.append(timed(scope_run))
    report(f"  batch {size:2d}", n * size, hf_times, scope_times, f"; greedy tokens identical: {same}")
    if size != 8:
        return
    clamps = [[scope.Clamp(123, 10.0 * (i + 1))] for i in range(size)]

    def one_at_a_time():
        return [scope.generate(model, t, max_new_tokens=n, stop_at_eos=False) for t in texts]

    def steered_run():
        return scope.generate(model, texts, sae=sae, steering=clamps, **kwargs)

    steered_run()
    solo_times, steered_times, batched_times = [], [], []
    for _ in range(reps):
        solo_times.append(timed(one_at_a_time))
        batched_times.append(timed(scope_run))
        steered_times.append(timed(steered_run))
    solo, batched, steered = (statistics.median(t) for t in (solo_times, batched_times, steered_times))
    print(
        f"  batch 8 vs the same 8 prompts one at a time: {n * size / batched:.2f} vs {n * size / solo:.2f} tok/s, "
        f"ratio batched/one-at-a-time {solo / batched:.2f}"
    )
    print(
        f"  batch 8 steered (a different Clamp strength per row, {sae.cfg.d_sae}-wide SAE at "
        f"{sae.cfg.metadata.hook_name}) vs unsteered batched: {n * size / steered:.2f} vs "
        f"{n * size / batched:.2f} tok/s, ratio steered/unsteered {batched / steered:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--gemma2-2b", action="store_true", help="also a full-size random Gemma 2 2B (~13 GB)")
    parser.add_argument("--stock", action="store_true", help="also time transformer-lens' own generate")
    parser.add_argument("--batched", action="store_true", help="only the batched comparison")
    parser.add_argument(
        "--cpu-time", action="store_true", help="time by this process's CPU time, one thread (a busy host)"
    )
    parser.add_argument("--side", choices=["transformers", "scope"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return run_2b_side(args.side, args.tokens, args.reps)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
        torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.batched:
        bench_bundled(args.tokens, args.reps, args.stock)
    bench_batched(max(args.tokens // 2, 4), args.reps)
    if args.gemma2_2b:
        bench_gemma2_2b(max(args.tokens // 2, 4), args.reps)


if __name__ == "__main__":
    main()
