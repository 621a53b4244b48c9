"""Mining many SAEs in one pass, its memory, and the Ray engine, on the bundled model.

Three measurements, each against a baseline measured in the same run:

1. **one pass vs separate runs**: ``scope.mine`` of 4 SAEs at 4 layers (a dict) against 4
   single-SAE ``scope.mine`` runs over the same corpus (alternating, best of ``--repeats``);
   the results are checked equal. The SAEs are the bundled ``demo-docs`` SAE (trained at layer 6) read
   at layers 3, 6, 9 and 12: the same width and cost per token as 4 real SAEs, though they fire
   differently off their own layer.
2. **memory**: peak RSS of the 4-SAE run in fresh processes for the corpus and for ``--scale``
   times it (large blocks straight from the OS, ``MALLOC_MMAP_THRESHOLD_``, so that peak RSS
   counts live memory rather than heap fragmentation; see tests/test_mining.py).
3. **Ray** (``--ray``): ``engine="ray"`` with 2 local workers of 1 CPU thread each (each loads
   the model itself) against this process with 2 threads, same SAEs and corpus; the Ray time is
   given whole and without its fixed cost (workers starting and loading the model, measured by
   a run over one short text).

Usage::

    PYTHONPATH=. python scripts/bench_mine_many.py --texts 2 --repeats 1 --scale 3
    PYTHONPATH=. python scripts/bench_mine_many.py --texts 2 --repeats 1 --scale 3 --ray
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

import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAYERS = (3, 6, 9, 12)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus_sample" / "heldout.jsonl")
    p.add_argument("--texts", type=int, default=32, help="documents read from the corpus")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--scale", type=int, default=4, help="memory: the larger corpus is this many times the corpus")
    p.add_argument("--ray", action="store_true", help="also time engine='ray' with 2 local workers")
    p.add_argument("--memory-only", type=int, default=None, help=argparse.SUPPRESS)  # child process mode
    return p.parse_args(argv)


def read_texts(path: Path, n: int) -> list[str]:
    with path.open() as f:
        return [json.loads(line)["text"] for line in itertools.islice(f, n)]


def load_saes() -> dict[int, object]:
    import scope

    return {
        layer: scope.load_sae("demo-docs", hook=f"blocks.{layer}.hook_resid_post", device="cpu") for layer in LAYERS
    }


def sae_specs() -> dict[int, object]:
    """The same SAEs as each Ray worker loads them."""
    import functools

    import scope

    return {
        layer: functools.partial(scope.load_sae, "demo-docs", hook=f"blocks.{layer}.hook_resid_post")
        for layer in LAYERS
    }


def memory_child(args) -> None:
    import scope

    model = scope.load_model("gemma-3-270m")
    texts = read_texts(args.corpus, args.texts) * args.memory_only
    scope.mine(model, load_saes(), texts, k=20, batch_size=args.batch, progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_mb(args, copies: int) -> float:
    command = [sys.executable, __file__, "--texts", str(args.texts), "--batch", str(args.batch)]
    run = subprocess.run(
        [*command, "--corpus", str(args.corpus), "--memory-only", str(copies)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
    )
    return int(run.stdout.split()[-1]) / 1024


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def one_pass_vs_separate(args, model, saes, texts) -> None:
    import scope

    options = dict(k=20, batch_size=args.batch, progress=False)
    scope.mine(model, saes[LAYERS[0]], texts[:2], **options)  # warm-up
    best = {"one pass": float("inf"), "separate": float("inf")}
    for _ in range(args.repeats):
        seconds, together = timed(lambda: scope.mine(model, saes, texts, **options))
        best["one pass"] = min(best["one pass"], seconds)
        seconds, apart = timed(lambda: {layer: scope.mine(model, sae, texts, **options) for layer, sae in saes.items()})
        best["separate"] = min(best["separate"], seconds)
    for layer in LAYERS:
        pd.testing.assert_frame_equal(together[layer].examples, apart[layer].examples)
    n_tokens = together[LAYERS[0]].n_tokens
    for name, seconds in best.items():
        print(f"{name:>9}: {seconds:6.1f} s  ({n_tokens / seconds:6.0f} tokens/s through all 4 SAEs)")
    print(f"one pass vs 4 separate runs: {best['separate'] / best['one pass']:.2f}x faster (results equal)")
    for layer in LAYERS:
        print(f"  layer {layer:>2}: mean L0 {float(together[layer].density.sum()):7.1f}")


def ray_vs_threads(args, texts) -> None:
    import ray

    import scope

    options = dict(k=20, batch_size=args.batch, progress=False)
    torch.set_num_threads(2)
    model = scope.load_model("gemma-3-270m")
    local_seconds, local = timed(lambda: scope.mine(model, load_saes(), texts, **options))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        fixed, _ = timed(
            lambda: scope.mine("gemma-3-270m", sae_specs(), texts[:1], engine="ray", workers=2, shards=2, **options)
        )
        ray_seconds, on_ray = timed(
            lambda: scope.mine("gemma-3-270m", sae_specs(), texts, engine="ray", workers=2, shards=8, **options)
        )
    finally:
        ray.shutdown()
    same = all(
        local[layer]
        .examples[["feature", "text_id", "position"]]
        .equals(on_ray[layer].examples[["feature", "text_id", "position"]])
        for layer in LAYERS
    )
    print(f"1 process x 2 threads: {local_seconds:6.1f} s")
    print(f"Ray 2 workers x 1 thread: {ray_seconds:6.1f} s whole, of which ~{fixed:.1f} s fixed (start, load model)")
    without = f"{local_seconds / (ray_seconds - fixed):.2f}x" if ray_seconds > fixed else "n/a (noise exceeds it)"
    print(
        f"ratio Ray / 1 process: {local_seconds / ray_seconds:.2f}x whole, {without} without the fixed cost; "
        f"rows equal: {same}"
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_only is not None:
        return memory_child(args)
    import scope

    model = scope.load_model("gemma-3-270m")
    saes = load_saes()
    texts = read_texts(args.corpus, args.texts)
    print(
        f"{len(texts)} texts, 4 SAEs of {saes[LAYERS[0]].cfg.d_sae} features at layers {LAYERS} (all features mined), "
        f"batch {args.batch}, {torch.get_num_threads()} threads"
    )
    one_pass_vs_separate(args, model, saes, texts)
    small, large = peak_rss_mb(args, 1), peak_rss_mb(args, args.scale)
    print(
        f"peak RSS, 4 SAEs: {small:.0f} MB for the corpus, "
        f"{large:.0f} MB for {args.scale}x it ({large - small:+.0f} MB)"
    )
    if args.ray:
        del model
        ray_vs_threads(args, texts)


if __name__ == "__main__":
    main()
