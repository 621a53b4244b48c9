"""``scope demo``: the main job on the bundled model, offline, printed for a person to read."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

import scope
from scope.cli.common import table
from scope.cli.features import view_options
from scope.labels import feature_labels
from scope.residuals import residual_norms
from scope.saes import DEMO_SAES

DEMO_PROMPT = "The Golden Gate Bridge is"
DEMO_SENTENCE = "The Golden Gate Bridge spans the strait between San Francisco and Marin."


def demo(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    model = scope.load_model("gemma-3-270m")
    print(
        f"Loaded the bundled Gemma 3 270M ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}) "
        f"in {time.perf_counter() - started:.1f} s\n"
    )

    started = time.perf_counter()
    continuation = scope.generate(model, DEMO_PROMPT, max_new_tokens=args.max_new_tokens)
    elapsed = time.perf_counter() - started
    print(f"Greedy continuation ({elapsed:.1f} s):\n  {DEMO_PROMPT}{continuation}\n")

    folder = DEMO_SAES["demo"].folder
    if not (folder / "cfg.json").is_file():
        _print_residual_norms(model)
        return
    sae = scope.load_sae("demo", device=model.cfg.device, dtype=model.cfg.dtype)
    features = scope.top_features(model, sae, DEMO_SENTENCE, k=2, **view_options(args))
    print(f"Top demo-SAE features per token ({sae.cfg.metadata.hook_name}) of: {DEMO_SENTENCE!r}")
    columns = ("position", "token", "feature", "activation", "relative", "label", "concept")
    shown = [c for c in columns if c in features]
    print(table(features[shown].round({"activation": 1, "relative": 2})))
    print(features.attrs["dense_note"])
    _print_golden_gate(model, sae, folder / "golden_gate.json", args.max_new_tokens)


def _print_golden_gate(model: Any, sae: Any, sweep_file: Path, max_new_tokens: int) -> None:
    """The demo SAE's concept feature clamped on a neutral prompt, at the strength its Golden Gate
    sweep (``scripts/golden_gate.py``, shipped as ``golden_gate.json``) picked."""
    if not sweep_file.is_file():
        return
    sweep = json.loads(sweep_file.read_text())
    chosen = sweep.get("pick")
    if not chosen:
        return
    feature, value, prompt = sweep["feature"], chosen["value"], sweep["prompts"][0]
    steering = scope.Clamp(feature, value) if sweep["method"] == "clamp" else scope.Add(feature, value)
    plain = scope.generate(model, prompt, max_new_tokens=max_new_tokens)
    steered = scope.generate(model, prompt, max_new_tokens=max_new_tokens, sae=sae, steering=steering)
    print(
        f"\nGolden Gate: feature {feature} ({_label(sae, feature)}) {sweep['method']}ed at {value:.0f}. "
        f"Over {len(sweep['prompts'])} neutral prompts "
        f"it brought up the concept in {chosen['mention_fraction']:.0%} of greedy continuations "
        f"(unsteered: {_unsteered_mentions(sweep):.0%}) at {chosen['perplexity_ratio']:.2f}x the perplexity."
    )
    print(table(pd.DataFrame({"": ["unsteered", "clamped"], "continuation": [prompt + plain, prompt + steered]})))


def _label(sae: Any, feature: int) -> str:
    labels = feature_labels(sae)
    found = None if labels is None else labels.loc[labels["feature"] == feature, "label"]
    return "unlabelled" if found is None or found.empty else str(found.iloc[0])


def _unsteered_mentions(sweep: dict[str, Any]) -> float:
    return next(row["mention_fraction"] for row in sweep["sweep"] if row["strength"] == 0)


def _print_residual_norms(model: Any) -> None:
    """Without the demo SAE: the residual stream's norms per layer, BOS apart."""
    norms = residual_norms(model, DEMO_SENTENCE)
    summary = (
        norms.assign(is_bos=norms["position"] == 0)
        .pivot_table(index="layer", columns="is_bos", values="norm", aggfunc="mean")
        .rename(columns={True: "norm at BOS", False: "mean norm elsewhere"})
        .reset_index()
    )
    summary.columns.name = None
    print(f"Residual stream (blocks.L.hook_resid_post) on: {DEMO_SENTENCE!r}")
    print("(the bundled demo SAE is not in data/demo_sae yet: scripts/train_demo_sae.py builds it)")
    print(table(summary.round(1)))
