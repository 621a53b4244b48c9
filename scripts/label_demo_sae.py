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
2. Label every feature with :func:`scope.label_features` (no model call), with its derived
   WordNet concept where the peak words share one (:mod:`scope.wordnet`; Debian's
   ``wordnet-base`` is fetched into ``$SCOPE_CACHE/wordnet`` with ``apt-get download`` +
   ``dpkg-deb -x`` when no WordNet is found), and write the table.
3. With ``--score``: score every label by detection (:func:`scope.label_scores.score_labels`:
   labels read off the odd-rank examples, held-out even ranks vs verified silent contexts),
   add ``label_score`` and ``concept_score`` (balanced accuracy) to the table, and print the
   score distribution for all features and for the features ``scope demo`` shows.
4. Print how long labelling took, how many features got a label, and the features
   ``data/README.md`` documents (the first ones, for an SAE it documents none) for a look.

Usage::

    PYTHONPATH=. python scripts/label_demo_sae.py                    # the general demo SAE
    PYTHONPATH=. python scripts/label_demo_sae.py --sae demo-docs    # mine (~3 min on 2 cores) + label
    PYTHONPATH=. python scripts/label_demo_sae.py --sae demo-docs --reuse    # label the last mining again
    PYTHONPATH=. python scripts/label_demo_sae.py --corpus data/corpus_sample/english/heldout.jsonl --score
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
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
    p.add_argument("--score", action="store_true", help="score every label by detection (loads the model)")
    p.add_argument("--no-wordnet", action="store_true", help="token labels only: no derived concepts")
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


def ensure_wordnet() -> Path:
    """A WordNet folder: the one scope finds, else Debian's wordnet-base unpacked into the cache."""
    from scope.bundled import cache_root
    from scope.wordnet import wordnet_dir

    found = wordnet_dir()
    if found is not None:
        return found
    target = cache_root() / "wordnet"
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["apt-get", "download", "wordnet-base"], cwd=tmp, capture_output=True, text=True)
        debs = sorted(Path(tmp).glob("wordnet-base_*.deb"))
        if result.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download wordnet-base failed: {result.stderr.strip()[-400:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(Path(tmp) / "x")], check=True)
        staging = Path(tempfile.mkdtemp(dir=cache_root()))
        for name in ("index.noun", "data.noun", "noun.exc"):
            shutil.copy(Path(tmp) / "x" / "usr" / "share" / "wordnet" / name, staging / name)
        staging.chmod(0o755)  # mkdtemp made it private
        os.replace(staging, target)
    print(f"WordNet 3.0 (Debian's wordnet-base, BSD-style licence) -> {target}")
    return target


def score(args: argparse.Namespace, mined, labels: pd.DataFrame, wordnet) -> pd.DataFrame:
    """``labels`` with each label's detection score; prints the distributions."""
    import scope
    from scope.cli.demo import DEMO_SENTENCE
    from scope.label_scores import score_labels

    model = scope.load_model("gemma-3-270m")
    sae = scope.load_sae(args.sae)
    start = time.perf_counter()
    scores = score_labels(mined.examples, model=model, sae=sae, wordnet=wordnet)
    print(f"scored {len(scores):,} labels in {time.perf_counter() - start:.0f} s")
    for kind in ("tokens", "concept"):
        column = "label_score" if kind == "tokens" else "concept_score"
        found = scores[scores["kind"] == kind].set_index("feature")["balanced_accuracy"]
        labels[column] = labels["feature"].map(found)
    demo = scope.top_features(model, sae, DEMO_SENTENCE, k=2)["feature"].unique().tolist()
    print(f"features scope demo shows (dense hidden): {sorted(demo)}")
    for name, rows in (("all features", labels), ("scope demo's features", labels[labels["feature"].isin(demo)])):
        print(f"\n{name}: {len(rows)} labels, {int(rows['concept'].notna().sum())} with a concept")
        print(rows[["label_score", "concept_score"]].describe(percentiles=[0.1, 0.25, 0.5, 0.75, 0.9]).round(3))
    return labels


def main(argv: list[str] | None = None) -> None:
    from scope.labels import label_features, save_labels

    args = parse_args(argv)
    wordnet = None if args.no_wordnet else ensure_wordnet()
    mined = reuse(args) if args.reuse else mine(args)
    start = time.perf_counter()
    labels = label_features(mined, wordnet=wordnet)
    seconds = time.perf_counter() - start
    silent = int(labels["label"].str.startswith("never active").sum())
    concepts = int(labels["concept"].notna().sum())
    print(f"labelled {len(labels):,} features in {seconds:.2f} s ({silent} never active on this sample, ", end="")
    print(f"{concepts} with a concept)")
    if args.score:
        labels = score(args, mined, labels, wordnet)
    save_labels(labels, args.out)
    print(f"-> {args.out}")
    shown = DOCUMENTED.get(args.sae, labels["feature"].head(15).tolist())
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(labels.set_index("feature").loc[shown, ["label", "density", "documents"]])
        print(labels.loc[labels["concept"].notna(), ["feature", "label", "concept"]].head(40))


if __name__ == "__main__":
    main()
