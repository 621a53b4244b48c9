"""Regenerate the shipped labels of the demo SAE: ``data/demo_sae/labels.parquet``.

1. Mine the top ``--k`` examples of all 4,096 features over the held-out corpus sample
   (``data/corpus_sample/heldout.jsonl``, text the SAE was never trained on) with
   :func:`scope.mine`: one pass, resumable, its examples table written to ``--examples``.
   The densities of the same pass go beside it (``<examples>.density.json``), so that
   ``--reuse`` can label again without mining.
2. Label every feature with :func:`scope.label_features` (no model call) and write the table.
3. Print how long labelling took, how many features got a label, and the documented features
   of ``data/README.md`` for a look.

Usage::

    PYTHONPATH=. python scripts/label_demo_sae.py            # mine (~3 min on 2 cores) + label
    PYTHONPATH=. python scripts/label_demo_sae.py --reuse    # label the last mining again
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = [1, 31, 73, 85, 94, 95, 99, 120, 141, 142, 155, 183, 220, 272, 285]  # data/README.md


def parse_args() -> argparse.Namespace:
    from scope.bundled import cache_root

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=ROOT / "data" / "corpus_sample" / "heldout.jsonl")
    p.add_argument("--examples", type=Path, default=cache_root() / "demo_sae_heldout_sample_examples.parquet")
    p.add_argument("--out", type=Path, default=ROOT / "data" / "demo_sae" / "labels.parquet")
    p.add_argument("--k", type=int, default=20, help="top examples per feature")
    p.add_argument("--reuse", action="store_true", help="label the examples and densities already mined")
    return p.parse_args()


def density_path(examples: Path) -> Path:
    return examples.with_name(examples.name + ".density.json")


def mine(args: argparse.Namespace):
    import scope

    model = scope.load_model("gemma-3-270m")
    sae = scope.load_sae("demo")
    start = time.perf_counter()
    mined = scope.mine(model, sae, args.corpus, k=args.k, out=args.examples)
    print(f"mined {mined.n_tokens:,} tokens in {time.perf_counter() - start:.0f} s -> {args.examples}")
    density = {"n_tokens": mined.n_tokens, "features": mined.features, "density": mined.density.tolist()}
    density_path(args.examples).write_text(json.dumps(density), encoding="utf-8")
    return mined


def reuse(args: argparse.Namespace):
    """The parts of a ``scope.Mined`` that labelling reads, from the files of an earlier run."""
    stats = json.loads(density_path(args.examples).read_text(encoding="utf-8"))
    return SimpleNamespace(
        examples=pd.read_parquet(args.examples),
        features=stats["features"],
        density=torch.tensor(stats["density"], dtype=torch.float64),
        n_tokens=stats["n_tokens"],
    )


def main() -> None:
    from scope.labels import label_features, save_labels

    args = parse_args()
    mined = reuse(args) if args.reuse else mine(args)
    start = time.perf_counter()
    labels = label_features(mined)
    seconds = time.perf_counter() - start
    save_labels(labels, args.out)
    silent = int(labels["label"].str.startswith("never active").sum())
    print(f"labelled {len(labels):,} features in {seconds:.2f} s ({silent} never active on this sample) -> {args.out}")
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(labels.set_index("feature").loc[DOCUMENTED, ["label", "density", "documents"]])


if __name__ == "__main__":
    main()
