"""Benchmarks of feature labels and feature search on the bundled model and the ``demo-docs`` SAE.

1. Labelling: :func:`scope.label_features` over the demo SAE's mined held-out table (the one
   ``scripts/label_demo_sae.py`` writes and caches; mined here first if it is missing). Prints
   the time and the number of features labelled.
2. Contrastive search over 2 x 50 texts (``tests/concept_texts.py``: Python with ``if``
   statements vs without) against a bare forward to the SAE's layer over the same texts: the
   same tokenization, the same batches (sorted by length, ``--batch-size`` a batch), the model
   stopped after the SAE's block, no hook, no SAE. Runs alternate (which goes first alternates
   too), ``--repeats`` each; the medians of wall-clock and of process CPU time, and their
   ratios, are printed (target: at most 1.15x).

Usage::

    PYTHONPATH=. python scripts/bench_search.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/concept_texts.py holds the texts


def bench_labels() -> None:
    from scope.labels import label_features

    sys.path.insert(0, str(ROOT / "scripts"))
    from label_demo_sae import default_examples, reuse

    examples = default_examples("demo-docs")
    if not examples.with_name(examples.name + ".density.json").is_file():
        print("mining the held-out sample first (scripts/label_demo_sae.py, a few minutes)...")
        subprocess.run([sys.executable, str(ROOT / "scripts" / "label_demo_sae.py"), "--sae", "demo-docs"], check=True)

    mined = reuse(argparse.Namespace(examples=examples))
    start = time.perf_counter()
    labels = label_features(mined)
    seconds = time.perf_counter() - start
    print(f"labels: {len(labels):,} features from {len(mined.examples):,} mined examples in {seconds:.2f} s")


def bare_forward(model, sae, texts: list[str], batch_size: int) -> None:
    """What a contrastive search cannot avoid: tokenize, pad, run the model to the SAE's block."""
    import torch

    from scope.hooks import hook_layer, sae_hook
    from scope.inputs import pad, pad_id, to_tokens

    rows = [to_tokens(model, text)[0] for text in texts]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    layer = hook_layer(sae_hook(sae))
    assert layer is not None, "the demo SAE reads a block's hook"
    stop = layer + 1
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            tokens, _ = pad([rows[i] for i in order[start : start + batch_size]], pad_id(model), side="right")
            model(tokens, stop_at_layer=stop)


def bench_contrast(repeats: int, batch_size: int) -> None:
    import scope
    from tests.concept_texts import IF_STATEMENTS, NO_IF

    model = scope.load_model("gemma-3-270m")
    sae = scope.load_sae("demo-docs", device=model.cfg.device, dtype=model.cfg.dtype)
    texts = [*IF_STATEMENTS, *NO_IF]
    # wall-clock seconds, and CPU seconds of this process (all its threads): on a shared, loaded
    # machine the CPU time is what the work costs, the wall time also what the neighbours took
    search_times: list[tuple[float, float]] = []
    bare_times: list[tuple[float, float]] = []
    found = scope.search_features(model, sae, positive=IF_STATEMENTS, negative=NO_IF, batch_size=batch_size)  # warm-up
    runs = {
        "bare": (bare_times, lambda: bare_forward(model, sae, texts, batch_size)),
        "search": (
            search_times,
            lambda: scope.search_features(model, sae, positive=IF_STATEMENTS, negative=NO_IF, batch_size=batch_size),
        ),
    }
    for repeat in range(repeats):
        for name in ("bare", "search") if repeat % 2 == 0 else ("search", "bare"):  # neither always goes first
            times, run = runs[name]
            start, cpu = time.perf_counter(), time.process_time()
            run()
            times.append((time.perf_counter() - start, time.process_time() - cpu))
    for clock, column in (("wall", 0), ("CPU", 1)):
        search = statistics.median(t[column] for t in search_times)
        bare = statistics.median(t[column] for t in bare_times)
        print(
            f"contrastive search, 2 x 50 texts: {search:.2f} s; bare forward to {sae.cfg.metadata.hook_name}: "
            f"{bare:.2f} s; ratio {search / bare:.3f} ({clock} time, median of {repeats})"
        )
    top = found.iloc[0]
    print(f"top feature {top.feature} (AUROC {top.auroc:.3f}, mean difference {top.mean_difference:.3f}): {top.label}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    bench_labels()
    bench_contrast(args.repeats, args.batch_size)


if __name__ == "__main__":
    main()
