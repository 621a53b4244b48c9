"""``scope serve`` against scope in-process, on the bundled model: request overhead, concurrency,
time to first streamed token.

    python scripts/bench_serve.py [--max-tokens 32] [--reps 5] [--concurrent 8]

1. Overhead: one greedy non-streaming request through the server (the official ``openai``
   client over loopback HTTP) vs ``generate_completions`` in-process on the same prompt;
   tokens/s of each (median of ``--reps``, runs interleaved so machine load hits both alike) and
   their ratio (target >= 0.9x).
2. Concurrency: ``--concurrent`` different prompts sent at once vs the same requests one after
   another; aggregate tokens/s and the ratio (the server batches requests that arrive together).
3. Streaming: time to the first streamed token vs time for the whole (streamed) completion.

Every figure is measured in this run, against a baseline from this run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import openai

import scope
from scope.serve import create_app, serving
from scope.steering.steered_generation import generate_completions

PROMPTS = [
    "The Golden Gate Bridge is",
    "Paris is the capital of",
    "The recipe calls for two cups of",
    "In the beginning of the universe",
    "The best way to learn a language is",
    "Photosynthesis is the process by which",
    "The old lighthouse keeper",
    "To install the package, run",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--only", type=int, choices=[1, 2, 3], default=None, help="run one section")
    args = parser.parse_args()

    model = scope.load_model("gemma-3-270m")
    sae = scope.load_sae("demo-docs")
    app = create_app(model, {"demo-docs": sae})
    n = args.max_tokens
    print(f"bundled gemma-3-270m on {model.cfg.device}, {n} new tokens per request, greedy, stop at EOS off")

    with serving(app) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=600)

        def in_process(prompt: str) -> int:
            return len(generate_completions(model, [prompt], max_new_tokens=n, stop_at_eos=False)[0].tokens)

        def served(prompt: str) -> int:
            reply = client.completions.create(model="gemma-3-270m", prompt=prompt, max_tokens=n, temperature=0)
            return reply.usage.completion_tokens

        def timed(fn, *a) -> tuple[float, int]:
            start = time.perf_counter()
            tokens = fn(*a)
            return time.perf_counter() - start, tokens

        # Server requests stop at EOS; pick prompts whose greedy text runs the full n tokens.
        prompts = [p for p in PROMPTS if served(p) == n] or PROMPTS
        in_process(prompts[0])  # warm-up (weight layout, caches)

        # 1. request overhead
        local, remote = [], []
        if args.only not in (None, 1):
            args.reps = 0
        for rep in range(args.reps):
            for kind, fn in (
                (("local", in_process), ("server", served))
                if rep % 2 == 0
                else (
                    ("server", served),
                    ("local", in_process),
                )
            ):
                seconds, tokens = timed(fn, prompts[0])
                (local if kind == "local" else remote).append(tokens / seconds)
        if local:
            ratio = statistics.median(remote) / statistics.median(local)
            print("\n1. one request, tokens/s (median of runs)")
            print(f"   in-process generate_completions  {statistics.median(local):8.2f}")
            print(f"   server (openai client, HTTP)     {statistics.median(remote):8.2f}")
            print(f"   ratio server / in-process        {ratio:8.3f}x   (target >= 0.9x)")
        if args.only == 1:
            return

        # 2. concurrency
        if args.only not in (None, 2):
            return _streaming(client, prompts[0], n, args.reps)
        batch = [prompts[i % len(prompts)] for i in range(args.concurrent)]
        start = time.perf_counter()
        sequential_tokens = sum(served(p) for p in batch)
        sequential = sequential_tokens / (time.perf_counter() - start)
        before = list(app.state.engine.batches)
        start = time.perf_counter()
        with ThreadPoolExecutor(len(batch)) as pool:
            concurrent_tokens = sum(pool.map(served, batch))
        concurrent = concurrent_tokens / (time.perf_counter() - start)
        sizes = app.state.engine.batches[len(before) :] if len(before) < 99 else "n/a"
        print(f"\n2. {len(batch)} requests, aggregate tokens/s")
        print(f"   one after another                {sequential:8.2f}")
        print(f"   all at once                      {concurrent:8.2f}   (batches run: {sizes})")
        print(f"   ratio concurrent / sequential    {concurrent / sequential:8.3f}x   (target >= 2x)")

        if args.only is None:
            _streaming(client, prompts[0], n, args.reps)


def _streaming(client: openai.OpenAI, prompt: str, n: int, reps: int) -> None:
    """3. time to the first streamed token vs the whole streamed completion."""
    firsts, wholes = [], []
    for _ in range(reps):
        start = time.perf_counter()
        first = None
        stream = client.completions.create(
            model="gemma-3-270m", prompt=prompt, max_tokens=n, temperature=0, stream=True
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].text:
                first = time.perf_counter() - start
        wholes.append(time.perf_counter() - start)
        firsts.append(first if first is not None else wholes[-1])
    print(f"\n3. streaming, {n} tokens (median of runs)")
    print(f"   time to first token              {statistics.median(firsts) * 1000:8.0f} ms")
    print(f"   time to whole completion         {statistics.median(wholes) * 1000:8.0f} ms")
    print(f"   ratio first / whole              {statistics.median(firsts) / statistics.median(wholes):8.3f}")


if __name__ == "__main__":
    main()
