"""Read a demo SAE's features: top activating examples on held-out text plus the logit lens.

``--sae`` is a bundled SAE's name (``demo`` or ``demo-docs``, see ``scope.saes.DEMO_SAES``) or an
SAE folder. Mines the top ``--k`` held-out examples of every feature in one pass with
:func:`scope.top_examples` over ``--heldout`` (default: the documentation corpus' held-out split for
``demo-docs``, the general-English and documentation ones for the others; written to ``--out`` as
Parquet, one file per SAE, reused when present), then prints
candidate features for ``data/README.md``: for each, its density, its top contexts (peak token
⟦marked⟧) and the tokens its decoder direction promotes. Candidates are live features whose top
examples come from several different documents, ranked by how often their top examples peak
on one same token (a cheap "is this one concept?" signal); ``--features`` prints chosen ones.

Usage::

    PYTHONPATH=. python scripts/interpret_demo_sae.py --show 40
    PYTHONPATH=. python scripts/interpret_demo_sae.py --sae demo-docs --features 141,272
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

CACHE = Path(os.environ.get("SCOPE_CACHE", Path.home() / ".cache" / "scope"))
DOCS_HELDOUT = CACHE / "corpus" / "heldout.jsonl"
ENGLISH_HELDOUT = CACHE / "corpus-english" / "heldout.jsonl"


def sae_folder(spec: str) -> Path:
    """The folder of a bundled SAE's name, or ``spec`` itself as a folder."""
    from scope.saes import DEMO_SAES

    return DEMO_SAES[spec].folder if spec in DEMO_SAES else Path(spec)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--sae",
        default="demo",
        help="a bundled SAE's name (scope.saes.DEMO_SAES) or an SAE folder (default: %(default)s)",
    )
    p.add_argument("--heldout", type=Path, nargs="+", help="held-out corpus files (default: see above)")
    p.add_argument("--out", type=Path, help="the mined table (default: under $SCOPE_CACHE, one per SAE)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--show", type=int, default=30, help="candidate features to print")
    p.add_argument("--features", default=None, help="comma-separated features to print instead")
    p.add_argument("--contexts", type=int, default=6, help="contexts printed per feature")
    args = p.parse_args()
    args.heldout = args.heldout or ([DOCS_HELDOUT] if args.sae == "demo-docs" else [ENGLISH_HELDOUT, DOCS_HELDOUT])
    args.out = args.out or CACHE / f"{sae_folder(args.sae).name}_top_examples.parquet"
    return args


def mine(model, sae, args) -> pd.DataFrame:
    import scope
    from scope._io import read_corpus_file

    if args.out.is_file():
        return pd.read_parquet(args.out)
    texts = [text for path in args.heldout for text in read_corpus_file(path)]
    return scope.top_examples(model, sae, texts, k=args.k, context=8, out=args.out)


def candidates(examples: pd.DataFrame, density: torch.Tensor) -> pd.Series:
    """Live, not-too-dense features whose top examples span several documents, ranked by the
    share of top examples that peak on their most common token."""
    grouped = examples.groupby("feature")
    documents = grouped.text_id.nunique()
    same_token = grouped.token.agg(lambda t: t.value_counts().iloc[0] / len(t))
    ok = documents[documents >= 4].index
    ok = [f for f in ok if 1e-4 < float(density[f]) < 0.02]
    return same_token.loc[ok].sort_values(ascending=False, kind="stable")


def show(model, sae, examples: pd.DataFrame, density: torch.Tensor, feature: int, n: int) -> None:
    import scope

    rows = examples[examples.feature == feature].head(n)
    promoted = scope.feature_logits(model, sae, feature, k=8)
    promoted = promoted[promoted.direction == "promoted"].token.tolist()
    print(
        f"\n## feature {feature}  density {float(density[feature]):.2e}  "
        f"max {rows.activation.max():.2f}  promotes {promoted}"
    )
    for row in rows.itertuples():
        print(f"  {row.activation:7.2f}  {json.dumps(row.context, ensure_ascii=False)}")


def main() -> None:
    args = parse_args()
    import scope
    from scope.feature_stats import feature_stats

    model = scope.load_model("gemma-3-270m")
    sae = scope.load_sae(args.sae)
    density = feature_stats(sae)["density"]  # from scripts/eval_demo_sae.py --save-stats
    examples = mine(model, sae, args)
    if args.features:
        chosen = [int(f) for f in args.features.split(",")]
    else:
        ranked = candidates(examples, density)
        print(f"{len(ranked)} candidate features; top {args.show} by top-example token agreement")
        chosen = ranked.index[: args.show].tolist()
    for feature in chosen:
        show(model, sae, examples, density, feature, args.contexts)


if __name__ == "__main__":
    main()
