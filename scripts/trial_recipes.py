"""Short trials of SAE recipes for the bundled Gemma 3 270M, on English none of them trained on.

    PYTHONPATH=. python scripts/trial_recipes.py [--cache-tokens 60000] [--epochs 3] [--layer 6]

Each trial is a ``scripts/train_demo_sae.py`` command (one shared model load, small activation
caches under ``$SCOPE_CACHE/trials``), then ``scripts/eval_demo_sae.py``'s figures (scope's own
computation, BOS skipped) on: ``faq`` and ``history``, the two evaluation-only sources of
``scripts/build_corpus.py --corpus modern`` (never in any training mix); ``here``, the modern texts
of ``tests/data/modern_english.txt`` as one document; ``english``, the held-out split of the
general-English sample (same sources as training). Prints one row per trial and set: EV, delta LM
loss, CE-loss score, L0, dense features (> 10% of the set's tokens). Small numbers by design: a
few hundred steps on CPU say which recipe learns faster, not where each ends.

- ``today``: the shipped recipe (JumpReLU 8,192, layer 9, docs + general English in equal characters);
- ``batchtopk``: BatchTopK 16,384 (k 50) at ``--layer``, docs : general English : modern = 2 : 2 : 1;
- ``matryoshka``: Matryoshka BatchTopK 16,384 (prefixes 1,024 / 4,096 / 16,384, k 50), same data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import pandas as pd
import torch
from eval_demo_sae import evaluate_split  # the sibling scripts (run as a script)
from eval_demo_sae import parse_args as eval_args
from train_demo_sae import main as train

import scope

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SCOPE_CACHE", Path.home() / ".cache" / "scope"))
TRIALS = CACHE / "trials"
SAMPLE = ROOT / "data" / "corpus_sample"


def trial_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    size = ["--cache-tokens", str(args.cache_tokens), "--cache-shards", "2", "--epochs", str(args.epochs)]
    today = ["--layer", "9", "--width", "8192", "--cache-dir", str(TRIALS / "cache-L9-today")]
    today += ["--corpus", str(SAMPLE / "english/train.jsonl"), str(SAMPLE / "train.jsonl")]
    mix = ["--layer", str(args.layer), "--cache-dir", str(TRIALS / f"cache-L{args.layer}-modern")]
    mix += ["--corpus", str(SAMPLE / "english/train.jsonl"), str(SAMPLE / "train.jsonl")]
    mix += [str(CACHE / "corpus-modern/train.jsonl"), "--corpus-weights", "2", "2", "1", "--width", "16384"]
    return {
        "today": today + size,
        "batchtopk": mix + size + ["--architecture", "batchtopk", "--k", "50"],
        "matryoshka": mix + size + ["--architecture", "matryoshka", "--k", "50"],
    }


def evaluation_sets() -> dict[str, Path]:
    """faq / history from the modern corpus' evaluation-only split; here = tests/data/modern_english.txt."""
    TRIALS.mkdir(parents=True, exist_ok=True)
    docs = [json.loads(line) for line in (CACHE / "corpus-modern" / "eval.jsonl").open()]
    sets = {}
    for name, kind in (("faq", "instructions"), ("history", "history")):
        sets[name] = TRIALS / f"eval-{name}.jsonl"
        sets[name].write_text("".join(json.dumps(d) + "\n" for d in docs if d["kind"] == kind))
    sets["here"] = TRIALS / "eval-here.jsonl"
    text = (ROOT / "tests" / "data" / "modern_english.txt").read_text()
    sets["here"].write_text(json.dumps({"id": "modern_english", "text": text}) + "\n")
    sets["english"] = SAMPLE / "english" / "heldout.jsonl"
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-tokens", type=int, default=60_000)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--layer", type=int, default=6, help="layer of the new recipes (scripts/probe_layers.py)")
    parser.add_argument("--trials", nargs="+", help="a subset of the trials")
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sets = evaluation_sets()
    model = scope.load_model("gemma-3-270m", device="cpu")
    rows = []
    for name, command in trial_commands(args).items():
        if args.trials and name not in args.trials:
            continue
        out = TRIALS / name
        if not (out / "cfg.json").is_file():
            train([*command, "--out", str(out), "--threads", str(args.threads)], model=model)
        sae = scope.load_sae(str(out), device="cpu")
        for set_name, path in sets.items():
            figures, _ = evaluate_split(
                model,
                sae,
                path,
                eval_args(["--skip-sae-lens", "--tokens", str(args.eval_tokens), "--ce-tokens", "2048"]),
            )
            rows.append(
                {
                    "trial": name,
                    "set": set_name,
                    "tokens": figures["tokens"],
                    "ev": figures["explained_variance"],
                    "delta_lm_loss": figures["delta_lm_loss"],
                    "ce_loss_score": figures["ce_loss_score_bos_untouched"],
                    "l0": figures["mean_l0"],
                    "dense": figures["dense_features"],
                }
            )
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(table.to_string(index=False))
    (TRIALS / "trials.json").write_text(table.to_json(orient="records", indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
