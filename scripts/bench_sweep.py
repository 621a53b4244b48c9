"""A steering sweep, 8 prompts x 6 strengths: batched against the sequential sweep, in one run.

    python scripts/bench_sweep.py [--tokens 8] [--batch-size 8]

Both runs use the bundled Gemma 3 270M and a random 16k-wide JumpReLU SAE at layer 6 (speed
does not depend on its values), greedy decoding, EOS ignored, the same Clamp strengths. The
sequential sweep is ``batch_size=1`` (one generation at a time, as scope did before batching).
Prints seconds for each, the ratio, and whether the two DataFrames are identical.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch
from bench_generate import PROMPTS, steering_sae  # the sibling script (run as a script)

import scope


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--cpu-time", action="store_true", help="time by CPU time, one thread (a busy host)")
    args = parser.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    if args.cpu_time:
        torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model = scope.load_model("gemma-3-270m")
    sae = steering_sae(model)
    values = [0.0, 5.0, 10.0, 20.0, 40.0, 80.0]
    kwargs = dict(max_new_tokens=args.tokens, stop_at_eos=False, progress=False)

    def run(batch_size: int) -> pd.DataFrame:
        return scope.sweep(
            model, sae, lambda v: scope.Clamp(123, v), values, PROMPTS[:8], batch_size=batch_size, **kwargs
        )

    run(args.batch_size)  # warm-up
    times, frames = {}, {}
    for batch_size in (1, args.batch_size):
        started = clock()
        frames[batch_size] = run(batch_size)
        times[batch_size] = clock() - started
    try:
        pd.testing.assert_frame_equal(frames[1], frames[args.batch_size])
        same = True
    except AssertionError:
        same = False
    print(
        f"Sweep 8 prompts x 6 strengths, {args.tokens} tokens each (bundled Gemma 3 270M, fp32, CPU): "
        f"sequential {times[1]:.1f} s, batched (batch_size={args.batch_size}) {times[args.batch_size]:.1f} s, "
        f"ratio {times[1] / times[args.batch_size]:.2f}x; identical DataFrames: {same}"
    )


if __name__ == "__main__":
    main()
