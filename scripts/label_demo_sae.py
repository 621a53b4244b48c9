"""Regenerate the shipped labels of a demo SAE: ``labels.parquet`` in its folder.

``--sae`` is a bundled SAE's name (``demo``: ``data/demo_sae``; ``demo-docs``:
``data/demo_sae_docs``; see ``scope.saes.DEMO_SAES``) or an SAE folder; the labels go next to it.

1. Mine the top ``--k`` examples of every feature over the shipped held-out corpus samples
   (text the SAE was never trained on) with :func:`scope.mine`: one pass, resumable, its
   examples table written to ``--examples``. By default ``demo-docs`` is mined over the
   documentation sample (``data/corpus_sample/heldout.jsonl``), ``demo`` (and a folder) over
   the general-English sample (``data/corpus_sample/english/heldout.jsonl``) and the
   documentation sample together.
   The densities of the same pass go beside it (``<examples>.density.json``), so that
   ``--reuse`` can label again without mining.
2. Label every feature with :func:`scope.label_features` (no model call) and write the table.
3. Print how long labelling took, how many features got a label, and the features
   ``data/README.md`` documents (the first ones, for an SAE it documents none) for a look.

Usage::

    PYTHONPATH=. python scripts/label_demo_sae.py                    # the general demo SAE
    PYTHONPATH=. python scripts/label_demo_sae.py --sae demo-docs    # mine (~3 min on 2 cores) + label
    PYTHONPATH=. python scripts/label_demo_sae.py --sae demo-docs --reuse    # label the last mining again
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
SAMPLES = ROOT / "data" / "corpus_sample"
DOCS_SAMPLE = SAMPLES / "heldout.jsonl"
ENGLISH_SAMPLE = SAMPLES / "english" / "heldout.jsonl"
# the features data/README.md documents, by SAE
DOCUMENTED = {"demo-docs": [1, 31, 73, 85, 94, 95, 99, 120, 141, 142, 155, 183, 220, 272, 285]}


def sae_folder(spec: str) -> Path:
    """The folder of a bundled SAE's name, or ``spec`` itself as a folder."""
    from scope.saes import DEMO_SAES

    return DEMO_SAES[spec].folder if spec in DEMO_SAES else Path(spec)


def default_examples(spec: str) -> Path:
    """Where the mined held-out examples of an SAE are kept (one file per SAE folder)."""
    from scope.bundled import cache_root

    return cache_root() / f"{sae_folder(spec).name}_heldout_sample_examples.parquet"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", default="demo", help="'demo', 'demo-docs' or an SAE folder (default: %(default)s)")
    p.add_argument(
        "--corpus",
        type=Path,
        nargs="+",
        help="held-out corpus files to mine (default: the shipped samples the SAE reads, see above)",
    )
    p.add_argument("--examples", type=Path, help="the mined table (default: under $SCOPE_CACHE, one per SAE)")
    p.add_argument("--out", type=Path, help="the label table (default: labels.parquet next to the SAE)")
    p.add_argument("--k", type=int, default=20, help="top examples per feature")
    p.add_argument("--reuse", action="store_true", help="label the examples and densities already mined")
    args = p.parse_args(argv)
    args.corpus = args.corpus or ([DOCS_SAMPLE] if args.sae == "demo-docs" else [ENGLISH_SAMPLE, DOCS_SAMPLE])
    args.examples = args.examples or default_examples(args.sae)
    args.out = args.out or sae_folder(args.sae) / "labels.parquet"
    return args


def density_path(examples: Path) -> Path:
    return examples.with_name(examples.name + ".density.json")


def mine(args: argparse.Namespace):
    import scope
    from scope._io import read_corpus_file

    model = scope.load_model("gemma-3-270m")
    sae = scope.load_sae(args.sae)
    # one list, in the order given: text_id numbers the documents of all files together
    texts = [text for path in args.corpus for text in read_corpus_file(path)]
    start = time.perf_counter()
    mined = scope.mine(model, sae, texts, k=args.k, out=args.examples)
    corpora = " + ".join(str(path) for path in args.corpus)
    print(f"mined {mined.n_tokens:,} tokens of {corpora} in {time.perf_counter() - start:.0f} s -> {args.examples}")
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


def main(argv: list[str] | None = None) -> None:
    from scope.labels import label_features, save_labels

    args = parse_args(argv)
    mined = reuse(args) if args.reuse else mine(args)
    start = time.perf_counter()
    labels = label_features(mined)
    seconds = time.perf_counter() - start
    save_labels(labels, args.out)
    silent = int(labels["label"].str.startswith("never active").sum())
    print(f"labelled {len(labels):,} features in {seconds:.2f} s ({silent} never active on this sample) -> {args.out}")
    shown = DOCUMENTED.get(args.sae, labels["feature"].head(15).tolist())
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(labels.set_index("feature").loc[shown, ["label", "density", "documents"]])


if __name__ == "__main__":
    main()
