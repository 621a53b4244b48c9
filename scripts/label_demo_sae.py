"""Regenerate what a bundled SAE ships beside its weights: its mined examples and its labels.

``--sae`` is a bundled SAE's name (``demo``: ``data/demo_sae``; ``demo-docs``:
``data/demo_sae_docs``; see ``scope.saes.DEMO_SAES``) or an SAE folder; the files go next to it.

1. Mine the top ``--k`` examples of every feature over a shipped held-out corpus sample (text the
   SAE was never trained on) with :func:`scope.mine`, in overlapping windows (each window after a
   text's first starts with 16 context-only tokens, so no token is scored without context). One
   pass, resumable; everything it gives is kept under ``$SCOPE_CACHE`` so that ``--reuse`` can
   label and ship again without mining. The samples: ``demo`` (trained on general English and
   documentation) reads the general-English sample ``data/corpus_sample/english/heldout.jsonl``,
   the text its feature pages and ``scope demo`` are about; ``demo-docs`` (trained on the
   documentation corpus only) reads the documentation sample ``data/corpus_sample/heldout.jsonl``,
   its own distribution: on English prose most of its code features would stay silent.
2. Sample examples further down each feature's distribution (:func:`scope.interval_examples.interval_examples`:
   ``--groups`` intervals between quantiles of its non-zero activations, ``--per-group`` examples
   each) from every ``--interval-stride``-th document (a uniform sample of the windows: one more
   pass over a part of the corpus), and write ``examples.parquet`` (the top ``--ship-k`` and the
   interval examples, contexts of 8 tokens either side of the peak) and ``activity.parquet``
   (densities, histograms) into the SAE's folder (:func:`scope.shipped.write_shipped`).
   ``scope serve --sae demo`` and ``scope.shipped.shipped_examples`` read them.
3. Label every feature with :func:`scope.label_features` (no model call), with its derived
   WordNet concept where the peak words share one (:mod:`scope.wordnet`; Debian's
   ``wordnet-base`` is fetched into ``$SCOPE_CACHE/wordnet`` with ``apt-get download`` +
   ``dpkg-deb -x`` when no WordNet is found).
4. Unless ``--no-score``: score every label by detection (:func:`scope.label_scores.score_labels`:
   labels read off the odd-rank examples, held-out even ranks vs verified silent contexts), add
   ``label_score`` and ``concept_score`` (balanced accuracy), and print the score distribution for
   all features and for the features ``scope demo`` shows.
5. Before writing, compare with the labels the folder had: window-start artifacts (features whose
   largest activation is that of a token read right after BOS, with no context: the first token of
   a mining window; checked against a forward pass of ``[BOS, token]`` for every token that starts
   a window in plain 128-token cuts of the corpus), concepts, silent features.

Usage::

    PYTHONPATH=. nice -n 10 python scripts/label_demo_sae.py                  # demo: ~35 min on a loaded 2-core machine
    PYTHONPATH=. nice -n 10 python scripts/label_demo_sae.py --sae demo-docs
    PYTHONPATH=. python scripts/label_demo_sae.py --sae demo-docs --reuse     # label and ship the last mining again
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "corpus_sample"
DOCS_SAMPLE = SAMPLES / "heldout.jsonl"
ENGLISH_SAMPLE = SAMPLES / "english" / "heldout.jsonl"
WINDOW = 128
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
    p.add_argument(
        "--sae",
        default="demo",
        help="a bundled SAE's name (scope.saes.DEMO_SAES) or an SAE folder (default: %(default)s)",
    )
    p.add_argument("--corpus", type=Path, help="the held-out corpus file to mine (default: the sample above)")
    p.add_argument("--examples", type=Path, help="the mined table (default: under $SCOPE_CACHE, one per SAE)")
    p.add_argument("--out", type=Path, help="the label table (default: labels.parquet next to the SAE)")
    p.add_argument("--k", type=int, default=20, help="top examples per feature mined and labelled from")
    p.add_argument("--ship-k", type=int, default=10, help="top examples per feature shipped")
    p.add_argument("--groups", type=int, default=3, help="quantile intervals sampled per feature")
    p.add_argument("--per-group", type=int, default=3, help="examples shipped per interval")
    p.add_argument("--interval-stride", type=int, default=6, help="sample intervals from every n-th document")
    p.add_argument("--reuse", action="store_true", help="label and ship the examples already mined")
    p.add_argument("--no-score", action="store_true", help="skip the detection scores of the labels")
    p.add_argument("--no-ship", action="store_true", help="labels only: write no examples")
    p.add_argument("--no-wordnet", action="store_true", help="token labels only: no derived concepts")
    args = p.parse_args(argv)
    args.corpus = args.corpus or (DOCS_SAMPLE if args.sae == "demo-docs" else ENGLISH_SAMPLE)
    args.examples = args.examples or default_examples(args.sae)
    args.out = args.out or sae_folder(args.sae) / "labels.parquet"
    return args


def parts_path(examples: Path) -> Path:
    return examples.with_name(examples.name + ".mined.pt")


def mine(args: argparse.Namespace, model, sae, texts: list[str]):
    import scope

    start = time.perf_counter()
    mined = scope.mine(model, sae, texts, k=args.k, window=WINDOW, out=args.examples)
    print(f"mined {mined.n_tokens:,} tokens of {args.corpus} in {time.perf_counter() - start:.0f} s -> {args.examples}")
    parts = {
        "features": mined.features,
        "n_tokens": mined.n_tokens,
        "density": mined.density,
        "histogram": mined.histogram,
        "context_ids": mined.context_ids,
        "context_acts": mined.context_acts,
        "token_ids": list(mined.token_strings),
        "token_strings": list(mined.token_strings.values()),
    }
    torch.save(parts, parts_path(args.examples))  # tensors and plain data only: loads with weights_only
    return mined


def reuse(args: argparse.Namespace):
    """The :class:`scope.Mined` of an earlier run, from its table and its saved parts."""
    from scope.mining import HISTOGRAM_EDGES, Mined

    parts = torch.load(parts_path(args.examples), weights_only=True)
    return Mined(
        examples=pd.read_parquet(args.examples),
        features=parts["features"],
        n_tokens=parts["n_tokens"],
        density=parts["density"],
        histogram=parts["histogram"],
        histogram_edges=HISTOGRAM_EDGES.clone(),
        context_ids=parts["context_ids"],
        context_acts=parts["context_acts"],
        token_strings=dict(zip(parts["token_ids"], parts["token_strings"])),
    )


def ship(args: argparse.Namespace, model, sae, mined, texts: list[str]) -> None:
    """The interval examples (one pass over every ``--interval-stride``-th document), then the files."""
    from scope.interval_examples import interval_examples
    from scope.shipped import corpus_label, file_sha256, write_shipped

    chosen = list(range(0, len(texts), args.interval_stride))
    fired = [f for i, f in enumerate(mined.features) if float(mined.histogram[i].sum()) > 0]
    start = time.perf_counter()
    sampled = interval_examples(
        model, sae, mined, fired, [texts[i] for i in chosen], args.groups, args.per_group, 8, WINDOW, seed=0
    )
    for groups in sampled.values():  # text ids of the subset -> of the whole corpus
        for group in groups:
            for example in group.examples:
                example.text_id = chosen[example.text_id]
    print(
        f"sampled interval examples from {len(chosen)} of {len(texts)} documents in {time.perf_counter() - start:.0f} s"
    )
    about = {
        "corpus": corpus_label(args.corpus),
        "corpus_sha256": file_sha256(args.corpus),
        "sae_weights_sha256": file_sha256(sae_folder(args.sae) / "sae_weights.safetensors"),
        "model": "gemma-3-270m",
        "window": WINDOW,
        "overlap": 16,
        "k_mined": args.k,
        "groups": args.groups,
        "per_group": args.per_group,
        "interval_documents": f"every {args.interval_stride}th document ({len(chosen)} of {len(texts)})",
        "command": f"scripts/label_demo_sae.py --sae {args.sae}",
    }
    paths = write_shipped(sae_folder(args.sae), model, mined, sampled, about, top_k=args.ship_k)
    for path in paths:
        print(f"-> {path} ({path.stat().st_size / 1e6:.2f} MB)")


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


def demo_features(model, sae) -> list[int]:
    """The features ``scope demo`` shows for its sentence (dense ones hidden), as it picks them."""
    import scope
    from scope.cli.demo import DEMO_SENTENCE

    return sorted(scope.top_features(model, sae, DEMO_SENTENCE, k=2)["feature"].unique().tolist())


def score(model, sae, mined, labels: pd.DataFrame, wordnet, shown: list[int]) -> pd.DataFrame:
    """``labels`` with each label's detection score; prints the distributions."""
    from scope.label_scores import score_labels

    start = time.perf_counter()
    scores = score_labels(mined, model=model, sae=sae, wordnet=wordnet)
    print(f"scored {len(scores):,} labels in {time.perf_counter() - start:.0f} s")
    for kind in ("tokens", "concept"):
        column = "label_score" if kind == "tokens" else "concept_score"
        found = scores[scores["kind"] == kind].set_index("feature")["balanced_accuracy"]
        labels[column] = labels["feature"].map(found)
    print(f"features scope demo shows (dense hidden): {shown}")
    deciles = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    for name, rows in (("all features", labels), ("scope demo's features", labels[labels["feature"].isin(shown)])):
        print(f"\n{name}: {len(rows)} labels, {int(rows['concept'].notna().sum())} with a concept")
        print(rows[["label_score", "concept_score"]].describe(percentiles=deciles).round(3).to_string())
    return labels


# ----------------------------------------------------------------------------- before / after


def no_context_maxima(model, sae, texts: list[str]) -> dict[int, torch.Tensor]:
    """For every token that starts a window of plain 128-token cuts (what mining did before
    overlapping windows), the SAE's activations on it read right after BOS: ``{token id: [d_sae]}``."""
    from scope.hooks import run_to_hooks, sae_hook

    starts = set()
    for text in texts:
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        starts.update(ids[:: WINDOW - 1])
    ids = sorted(starts)
    bos = model.tokenizer.bos_token_id
    tokens = torch.tensor([[bos, t] for t in ids])
    hook = sae_hook(sae)
    with torch.no_grad():
        acts = sae.encode(run_to_hooks(model, tokens, [hook])[hook][:, 1].to(sae.W_dec.dtype)).float()
    return dict(zip(ids, acts))


def artifacts(labels: pd.DataFrame, table: dict[int, torch.Tensor]) -> int:
    """Features whose largest activation equals (to 1e-4) that of a window-start token read with no context."""
    stacked = torch.stack(list(table.values()))  # [tokens, d_sae]
    largest = labels.set_index("feature")["max_activation"].astype(float)
    features = torch.tensor(largest.index.to_numpy())
    values = torch.tensor(largest.to_numpy(), dtype=torch.float32)
    close = (stacked[:, features] - values).abs() <= 1e-4 * values.abs().clamp(min=1e-6)
    return int((close.any(0) & (values > 0)).sum())


def compare(old: pd.DataFrame | None, new: pd.DataFrame, mined, table: dict[int, torch.Tensor]) -> None:
    """Before / after: window-start artifacts, concepts, silent features."""
    print("\nbefore (the folder's labels) / after (these):")
    for name, labels in (("before", old), ("after", new)):
        if labels is None:
            print(f"  {name}: no labels")
            continue
        concepts = int(labels["concept"].notna().sum()) if "concept" in labels.columns else 0
        silent = int(labels["label"].str.startswith("never active").sum())
        print(
            f"  {name}: {artifacts(labels, table)} features peak on a window-start token read with no context, "
            f"{concepts} concepts, {silent} never active"
        )
    at_start = mined.examples[mined.examples["position"] == 1]
    print(
        f"  after, from positions: {len(at_start)} top examples on a text's first token, the only tokens now "
        f"read with no context ({at_start['feature'].nunique()} features)"
    )


def main(argv: list[str] | None = None) -> None:
    import scope
    from scope._io import read_corpus_file
    from scope.labels import label_features, save_labels

    args = parse_args(argv)
    wordnet = None if args.no_wordnet else ensure_wordnet()
    model = scope.load_model("gemma-3-270m")
    sae = scope.load_sae(args.sae)
    texts = list(read_corpus_file(args.corpus))
    old = pd.read_parquet(args.out) if args.out.is_file() else None
    mined = reuse(args) if args.reuse else mine(args, model, sae, texts)
    if not args.no_ship:
        ship(args, model, sae, mined, texts)
    start = time.perf_counter()
    labels = label_features(mined, wordnet=wordnet)
    silent = int(labels["label"].str.startswith("never active").sum())
    concepts = int(labels["concept"].notna().sum())
    print(f"labelled {len(labels):,} features in {time.perf_counter() - start:.2f} s ({silent} never active on this ")
    print(f"sample, {concepts} with a concept)")
    shown = demo_features(model, sae)
    if not args.no_score:
        labels = score(model, sae, mined, labels, wordnet, shown)
    compare(old, labels, mined, no_context_maxima(model, sae, texts))
    save_labels(labels, args.out)
    print(f"-> {args.out}")
    documented = DOCUMENTED.get(args.sae, labels["feature"].head(15).tolist())
    with pd.option_context("display.width", 200, "display.max_colwidth", 70):
        print(labels.set_index("feature").loc[documented, ["label", "density", "documents"]])
        print(labels.loc[labels["concept"].notna(), ["feature", "label", "concept"]].head(40))


if __name__ == "__main__":
    main()
