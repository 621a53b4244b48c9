"""Read the demo SAE's features: top activating examples on held-out text plus the logit lens.

Mines the top ``--k`` held-out examples of every feature in one pass with
:func:`scope.top_examples` (written to ``--out`` as Parquet, reused when present), then prints
candidate features for ``data/README.md``: for each, its density, its top contexts (peak token
⟦marked⟧) and the tokens its decoder direction promotes. Candidates are live features whose top
examples come from several different documents, ranked by how often their top examples peak
on one same token (a cheap "is this one concept?" signal); ``--features`` prints chosen ones.

Usage::

    PYTHONPATH=. python scripts/interpret_demo_sae.py --show 40
    PYTHONPATH=. python scripts/interpret_demo_sae.py --features 12,345
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

DEFAULT_CORPUS = Path(os.environ.get("SCOPE_CACHE", Path.home() / ".cache" / "scope")) / "corpus"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", type=Path, default=DEFAULT_CORPUS / "heldout.jsonl")
    p.add_argument("--out", type=Path, default=DEFAULT_CORPUS.parent / "demo_sae_top_examples.parquet")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--show", type=int, default=30, help="candidate features to print")
    p.add_argument("--features", default=None, help="comma-separated features to print instead")
    p.add_argument("--contexts", type=int, default=6, help="contexts printed per feature")
    return p.parse_args()


def mine(model, sae, args) -> pd.DataFrame:
    import scope

    if args.out.is_file():
        return pd.read_parquet(args.out)
    return scope.top_examples(model, sae, args.heldout, k=args.k, context=8, out=args.out)


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

    model = scope.load_model("gemma-3-270m")
    sae = scope.load_sae("demo")
    density = scope.saes.feature_stats(sae)["density"]  # from scripts/eval_demo_sae.py --save-stats
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
