"""Explanation throughput and detection scores with the bundled model as explainer and scorer.

    python scripts/bench_explain.py                   # 16 features of the demo-docs SAE
    python scripts/bench_explain.py --features 8 --max-tokens 24

1. Mine the demo SAE's features (a seeded sample of those that fire) over held-out documents.
2. Explain them with the bundled Gemma 3 270M as a LocalLLM twice, in the same run: one feature
   at a time (batch 1), then batched (``--batch`` chats generated together). Prints
   explanations per minute for each and the ratio, and whether the greedy explanations agree.
3. Score the explanations by detection with the same model (batched) and print each feature's
   balanced accuracy, precision, recall and unparsed replies, and the mean.

The bundled model is a 270M *base* model standing in for a chat explainer (gemma-2-9b-it on a
GPU, or any OpenAI-compatible endpoint): its explanations and detection answers are weak, and the
scores say how weak. A scorer that cannot answer in the list format scores 0.5 (chance).
"""

from __future__ import annotations

import argparse
import random
import time

import pandas as pd

import scope
from scope._io import iter_texts

CORPUS = "data/corpus_sample/heldout.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=16, help="features explained")
    parser.add_argument("--chars", type=int, default=30_000, help="characters of held-out documents mined")
    parser.add_argument("--batch", type=int, default=8, help="chats generated together when batched")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per explanation")
    parser.add_argument("--n-examples", type=int, default=8, help="examples shown per feature")
    parser.add_argument("--corpus", default=CORPUS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-sequential", action="store_true", help="skip the one-at-a-time pass (detection scores only, faster)"
    )
    args = parser.parse_args()

    model = scope.load_model("gemma-3-270m")
    sae = scope.load_sae("demo-docs", device=model.cfg.device)
    texts, size = [], 0
    for text in iter_texts(args.corpus):  # whole documents up to --chars
        texts.append(text[: args.chars - size])
        size += len(texts[-1])
        if size >= args.chars:
            break
    mined = scope.mine(model, sae, texts, k=20, progress=False)
    # features with 20 examples (10 shown, 10 held out), sampled with a seed (not picked by hand)
    counts = mined.examples.groupby("feature").size()
    features = sorted(random.Random(args.seed).sample(sorted(counts[counts == 20].index.tolist()), args.features))
    print(f"{len(features)} features with 20 examples in {len(texts)} held-out documents ({size:,} chars): {features}")

    timings = {}
    tables = {}
    runs = [("one at a time", 1)] * (not args.no_sequential) + [(f"batched ({args.batch})", args.batch)]
    for name, batch in runs:
        llm = scope.LocalLLM(model, batch_size=batch)
        start = time.perf_counter()
        tables[name] = scope.explain(
            mined,
            features,
            explainer=llm,
            n_examples=args.n_examples,
            max_tokens=args.max_tokens,
            batch_size=batch,
            progress=False,
        )
        timings[name] = time.perf_counter() - start
        print(f"{name:>15}: {len(features) / timings[name] * 60:6.1f} explanations/min ({timings[name]:.1f} s)")
    if len(timings) == 2:
        one, batched = timings.values()
        print(f"batched / one at a time: {one / batched:.2f}x")
        first, second = tables.values()
        same = (first.explanation == second.explanation).mean()
        print(f"identical explanations (greedy, batched vs alone): {same:.0%}")

    explanations = list(tables.values())[-1]
    llm = scope.LocalLLM(model, batch_size=args.batch)
    start = time.perf_counter()
    scores = scope.score_explanations(
        mined, explanations, scorer=llm, model=model, sae=sae, batch_size=args.batch, progress=False
    )
    print(f"\ndetection scoring: {time.perf_counter() - start:.1f} s, scorer {llm.name}")
    table = explanations[["feature", "explanation"]].merge(
        scores[["feature", "balanced_accuracy", "precision", "recall", "n_prompts", "n_unparsed"]], on="feature"
    )
    with pd.option_context("display.max_colwidth", 70, "display.width", 200):
        print(table.to_string(index=False))
    print(
        f"\nmean balanced accuracy {scores.balanced_accuracy.mean():.3f} over {len(scores)} features "
        f"(chance 0.5); unparsed replies {int(scores.n_unparsed.sum())} of {int(scores.n_prompts.sum())}"
    )


if __name__ == "__main__":
    main()
