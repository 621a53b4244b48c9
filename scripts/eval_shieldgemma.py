"""Evaluate a model as a ShieldGemma classifier on a local labelled file.

    python scripts/eval_shieldgemma.py data/shield_examples.jsonl
    python scripts/eval_shieldgemma.py toxicchat.csv --model shieldgemma-2b \\
        --prompt-column user_input --label-column toxicity --policy harassment

The file is JSONL (one object per line) or CSV, with a prompt column, an optional
response column (prompt-response use case when present), and a 0/1 label column
(1 = violates the policy), as the OpenAI moderation and ToxicChat sets can be
exported. Prints optimal F1, its threshold and AU-PRC, the model card's metrics.

The default model is the bundled Gemma 3 270M, which runs offline but is NOT a
safety classifier: its numbers are a stand-in that exercises the pipeline. Use
``--model shieldgemma-2b`` (or ``--weights`` with a local snapshot) for real results.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

STAND_IN_NOTE = (
    "note: {model} is not ShieldGemma; its P(Yes) is a stand-in that exercises the pipeline, not a safety verdict."
)


def read_labelled(path: Path) -> pd.DataFrame:
    """A JSONL or CSV file as a DataFrame (by extension: .jsonl/.json/.ndjson or .csv)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return pd.DataFrame(rows)
    if suffix == ".csv":
        return pd.read_csv(path, keep_default_na=False)
    raise ValueError(f"Cannot read {str(path)!r}: expected a .jsonl or .csv file.")


def columns_of(frame: pd.DataFrame, prompt: str, response: str | None, label: str) -> tuple:
    """Prompts, responses (or None) and 0/1 labels from the named columns."""
    missing = [c for c in (prompt, label) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"Column(s) {missing} not in the file; its columns are {list(frame.columns)}. "
            "Name others with --prompt-column / --label-column."
        )
    responses = None
    if response is not None and response in frame.columns:
        given = frame[response].notna() & (frame[response].astype(str).str.strip() != "")
        if not given.all():
            raise ValueError(
                f"Column {response!r} is empty in row(s) {frame.index[~given].tolist()[:5]}; "
                "a file is either all prompt-only or all prompt-response."
            )
        responses = frame[response].astype(str).tolist()
    labels = pd.to_numeric(frame[label], errors="coerce")
    bad = frame.index[~labels.isin([0, 1])].tolist()
    if bad:
        raise ValueError(
            f"Label column {label!r} must hold 0 or 1; row(s) {bad[:5]} hold {frame[label].iloc[bad[:5]].tolist()}."
        )
    return frame[prompt].astype(str).tolist(), responses, labels.astype(int).to_numpy()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="labelled .jsonl or .csv file")
    parser.add_argument(
        "--model", default="gemma-3-270m", help="model name (default: the bundled gemma-3-270m, a stand-in)"
    )
    parser.add_argument("--weights", default=None, help="local checkpoint folder for --model")
    parser.add_argument(
        "--policy", action="append", dest="policies", help="policy key (repeatable; default dangerous_content)"
    )
    parser.add_argument("--prompt-column", default="prompt")
    parser.add_argument("--response-column", default="response")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import scope
    from scope import shield

    try:
        frame = read_labelled(args.path)
        if args.limit is not None:
            frame = frame.head(args.limit)
        prompts, responses, labels = columns_of(frame, args.prompt_column, args.response_column, args.label_column)
        policies = args.policies or ["dangerous_content"]
        shield.resolve_policies(policies)  # fail before loading a model
        model = scope.load_model(args.model, weights=args.weights)
        if not args.model.startswith("shieldgemma"):
            print(STAND_IN_NOTE.format(model=args.model), file=sys.stderr)
        scores = shield.score(model, prompts, policies, responses=responses, batch_size=args.batch_size)
        metrics = shield.evaluate(scores, labels)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"eval_shieldgemma: error: {err}", file=sys.stderr)
        return 2
    use_case = "prompt-response" if responses is not None else "prompt-only"
    print(
        f"{args.path.name}: {metrics['n']} examples ({metrics['positives']} violating), {use_case}, "
        f"policies {', '.join(policies)}, model {args.model}"
    )
    print(
        f"optimal F1 {metrics['optimal_f1']:.3f} at threshold {metrics['threshold']:.4f}; AU-PRC {metrics['auprc']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
