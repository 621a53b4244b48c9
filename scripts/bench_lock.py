"""What the per-model lock (scope.hooks.model_lock) costs, and what it buys, in one run.

1. Cost: ``scope.encode`` and a short ``scope.generate`` on the bundled model, alternately with the
   real lock and with the lock swapped for a no-op, median ratio over ``--repeats``.
2. Threads: ``--threads`` threads each generating on the same model (serialised by the lock) vs the
   same calls one after another: the wall time ratio, and whether every output equals its
   sequential result (without the lock, steered and plain calls would mix).

    python scripts/bench_lock.py --repeats 5 --threads 4
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import scope
import scope.hooks

PROMPT = "The Golden Gate Bridge is"


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=8)
    args = parser.parse_args()
    model = scope.load_model("gemma-3-270m")
    sae = scope.load_sae("demo-docs")
    calls = {
        "encode": lambda: scope.encode(model, sae, PROMPT * 4),
        "generate": lambda: scope.generate(model, PROMPT, max_new_tokens=args.tokens),
        "steered generate": lambda: scope.generate(
            model, PROMPT, max_new_tokens=args.tokens, sae=sae, steering=[scope.Clamp(141, 4, unit="max")]
        ),
    }
    for name, call in calls.items():
        call()  # warm up
        ratios = []
        for _ in range(args.repeats):
            with_lock = timed(call)
            scope.hooks._LOCKS[model] = contextlib.nullcontext()  # what model_lock(model) hands out: a no-op
            try:
                without = timed(call)
            finally:
                del scope.hooks._LOCKS[model]
            ratios.append(with_lock / without)
        print(
            f"{name:18s} time with lock / without: {statistics.median(ratios):.3f} "
            f"(per repetition: {', '.join(f'{r:.3f}' for r in ratios)})"
        )

    jobs = [calls["generate"], calls["steered generate"]] * args.threads
    expected = [job() for job in jobs]
    sequential = timed(lambda: [job() for job in jobs])
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        start = time.perf_counter()
        results = list(pool.map(lambda job: job(), jobs))
        threaded = time.perf_counter() - start
    same = sum(r == e for r, e in zip(results, expected))
    print(
        f"{len(jobs)} mixed plain/steered generations on {args.threads} threads: wall time {threaded:.2f} s vs "
        f"{sequential:.2f} s one after another (ratio {threaded / sequential:.2f}); "
        f"{same}/{len(jobs)} outputs equal their sequential result"
    )


if __name__ == "__main__":
    main()
