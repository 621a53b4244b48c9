"""Steering benchmark: SAE clamp vs SAE add vs DiffMean add vs prompting, per concept, with a report.

    python scripts/steering_benchmark.py --out runs/steering               # bundled model + demo-docs SAE
    python scripts/steering_benchmark.py --model gemma-2-2b \\
        --sae gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical \\
        --concepts concepts.json --judge http://127.0.0.1:8080/v1 --judge-model gemma-2-9b-it

For each concept (a JSON list of {"concept", "feature", "positive", "negative"}; the default is
the ``demo-docs`` SAE's Python-code feature) it computes a DiffMean direction at the SAE's hook from the
positive and negative texts, runs :func:`scope.compare_steering` on the prompts (one batched
generation, each row steered its own way), scores every output with the judge-free signals and,
with ``--judge``, AxBench's three judge ratings, picks a recommended strength per method on a
held-out half of the prompts, and writes ``steering_benchmark.parquet`` and
``steering_benchmark.html`` (trade-off figures, recommendations, mean scores) under ``--out``.

``--judge model`` uses the subject itself as a stand-in judge (labelled so in the report);
a URL uses an OpenAI-compatible endpoint.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

import scope
from scope.plots import steering_tradeoff_figure

DEMO_CONCEPTS = [
    {
        "concept": "Python code",
        "feature": 141,
        "positive": [
            "def add(a, b):\n    return a + b",
            "if x > 0:\n    print('positive')",
            "for item in items:\n    if item is None:\n        continue",
            "import os\nfiles = os.listdir('.')",
        ],
        "negative": [
            "The river wound slowly through the valley.",
            "She bought bread and cheese at the market.",
            "The meeting was moved to Thursday afternoon.",
            "Autumn leaves covered the quiet street.",
        ],
    }
]
PROMPTS = [
    "My favourite thing to do on a weekend is",
    "The best way to start the day is",
    "Yesterday I went to the",
    "Here is some advice for new students:",
    "The weather this morning was",
    "Let me tell you about my family.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m", help="subject name (default: %(default)s)")
    parser.add_argument("--sae", default="demo-docs", help="SAE spec for scope.load_sae (default: %(default)s)")
    parser.add_argument("--concepts", type=Path, help="JSON list of {concept, feature, positive, negative}")
    parser.add_argument("--prompts", type=Path, help="a text file, one prompt per line (default: 6 neutral prompts)")
    parser.add_argument("--judge", default="none", help="'none', 'model' (the subject as stand-in) or an endpoint URL")
    parser.add_argument("--judge-model", default="judge", help="model name sent to an endpoint judge")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens per output (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per generation batch (default: %(default)s)")
    parser.add_argument(
        "--out", type=Path, default=Path("steering_benchmark"), help="output folder (default: %(default)s)"
    )
    args = parser.parse_args()

    concepts = json.loads(args.concepts.read_text()) if args.concepts else DEMO_CONCEPTS
    prompts = [line for line in args.prompts.read_text().splitlines() if line.strip()] if args.prompts else PROMPTS
    model = scope.load_model(args.model)
    sae = scope.load_sae(args.sae)
    judge = _judge(args.judge, args.judge_model, model)
    hook = sae.cfg.metadata.hook_name
    tables = []
    for spec in concepts:
        print(f"{spec['concept']}: feature {spec['feature']}, DiffMean at {hook}, {len(prompts)} prompts")
        direction = scope.diffmean(model, hook, spec["positive"], spec["negative"], label=f"DiffMean {spec['concept']}")
        table = scope.compare_steering(
            model,
            prompts,
            spec["concept"],
            sae=sae,
            feature=int(spec["feature"]),
            direction=direction,
            judge=judge,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
        table.insert(0, "concept", spec["concept"])
        tables.append(table)
    results = pd.concat(tables, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    parquet = args.out / "steering_benchmark.parquet"
    results.to_parquet(parquet)
    report = args.out / "steering_benchmark.html"
    report.write_text(_report(results, judge))
    print(f"Wrote {parquet} and {report}")


def _judge(judge: str, judge_model: str, model):
    if judge == "none":
        return None
    if judge == "model":
        return scope.LocalLLM(model)
    return scope.Endpoint(judge, judge_model)


def _report(results: pd.DataFrame, judge) -> str:
    by = "harmonic_mean" if "harmonic_mean" in results.columns else "concept_activation"
    judged = "harmonic_mean" in results.columns
    parts = [
        "<html><head><meta charset='utf-8'><title>Steering benchmark</title></head><body>",
        "<h1>Steering benchmark</h1>",
        f"<p>Judge: {html.escape(judge.name) if judge is not None else 'none (judge-free signals only)'}. "
        f"Recommended strengths maximise mean {by} on half of the prompts and are reported on the other half.</p>",
    ]
    for n, (concept, table) in enumerate(results.groupby("concept", sort=False)):
        parts.append(f"<h2>{html.escape(str(concept))}</h2>")
        recommendations = []
        for method, rows in table.groupby("method", sort=False):
            if rows["instruction"].nunique() >= 2:
                recommendations.append(scope.recommend_strength(rows, by=by).rename(method))
        if recommendations:
            parts.append(pd.DataFrame(recommendations).to_html(float_format="%.3g"))
        # Judge-free: fluency is the mean log-prob (-log perplexity), so that up and right is better.
        signals = table.assign(fluency=-np.log(table["perplexity"]), concept=table["concept_activation"])
        figure = steering_tradeoff_figure(table if judged else signals)
        figure.update_layout(title=f"{concept}: trade-off by method and strength")
        parts.append(figure.to_html(full_html=False, include_plotlyjs=n == 0))  # plotly.js once, inline
        columns = [
            c
            for c in (
                "concept_activation",
                "perplexity",
                "concept_score",
                "instruction_score",
                "fluency_score",
                "harmonic_mean",
            )
            if c in table
        ]
        parts.append(table.groupby(["method", "value"])[columns].mean().to_html(float_format="%.3g"))
        parts.append("<h3>Outputs</h3>")
        parts.append(table[["method", "value", "prompt", "text"]].to_html(index=False))
    parts.append("</body></html>")
    return "\n".join(parts)


if __name__ == "__main__":
    main()
