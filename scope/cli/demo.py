"""``scope demo``: the main job on the bundled model, offline, printed for a person to read."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
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
    loaded = {"demo": sae}

    def sae_for(spec: str) -> Any:
        if spec not in loaded:
            loaded[spec] = scope.load_sae(spec, device=model.cfg.device, dtype=model.cfg.dtype)
        return loaded[spec]

    _print_golden_gate(model, sae_for, golden_gate_file(), args.max_new_tokens)


def golden_gate_file() -> Path:
    """The Golden Gate search result ``scope demo`` shows: the first bundled SAE's (in
    :data:`DEMO_SAES` order) whose SAE feature reaches the target on the held-out prompts; when
    none does, the general demo SAE's (its best feature's honest figure beside the DiffMean
    direction)."""
    files = [demo.folder / "golden_gate.json" for demo in DEMO_SAES.values()]
    for path in files:
        result = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        heldout, target = result.get("heldout"), result.get("target", {})
        if result.get("meets_target") and heldout is not None and reaches_target(heldout, target):
            return path
    return files[0]


def _print_golden_gate(model: Any, sae_for: Callable[[str], Any], result_file: Path, max_new_tokens: int) -> None:
    """What the Golden Gate search (``scripts/steering_benchmark.py``, shipped as ``golden_gate.json``)
    found, as it is: the SAE feature as the Golden Gate moment only when its held-out figures reach
    the target; otherwise the best SAE feature's figure beside the DiffMean result, labelled a
    direction. ``sae_for(spec)`` gives the loaded SAE of a spec."""
    if not result_file.is_file():
        return
    result = json.loads(result_file.read_text(encoding="utf-8"))
    if "heldout" not in result:
        return  # a file from before the search: nothing honest to show
    target = result.get("target", {})
    prompt = result["prompts"][0]
    if result.get("meets_target") and reaches_target(result["heldout"], target):
        sae = sae_for(result["sae"])
        feature, value = result["feature"], result["value"]
        steering = scope.Clamp(feature, value) if result["method"] == "clamp" else scope.Add(feature, value)
        print(
            f"\nThe Golden Gate moment: feature {feature} ({_label(sae, feature)}; "
            f"promotes {_promoted(model, sae, feature)}) of the {result['sae']} SAE, {_how(result)}: "
            f"{_figure(result['heldout'])} ({result['concept']}; "
            f"unsteered {result['heldout']['unsteered_mention_fraction']:.0%})."
        )
        _print_example(
            model, prompt, max_new_tokens, "steered", sae=sae, steering=steering, positions=result["positions"]
        )
        return
    print(
        f"\nGolden Gate: no SAE feature reached the target yet (the concept in >= "
        f"{target.get('mention_fraction', 0.5):.0%} of held-out continuations at <= "
        f"{target.get('max_perplexity_ratio', 2.0):g}x perplexity). Best SAE feature: {result['feature']} of the "
        f"{result['sae']} SAE for {result['concept']}, {_how(result)}: {_figure(result['heldout'])}."
    )
    direction = result.get("diffmean_best")
    if not direction or not reaches_target(direction["heldout"], target):
        print("No DiffMean direction reached it either (data/README.md, 'The Golden Gate attempt').")
        return
    vector = scope.diffmean(model, direction["hook"], direction["positive"], direction["negative"])
    print(
        f"What does work is a direction, not a feature: DiffMean add for {direction['concept']} at "
        f"{direction['hook']} ({direction['value']:.0f}, {direction['fraction_of_residual']:.0%} of the residual "
        f"norm, {direction['positions']} positions): {_figure(direction['heldout'])}."
    )
    _print_example(
        model, prompt, max_new_tokens, "DiffMean add", steering=scope.Add(vector, direction["value"]),
        positions=direction["positions"],
    )  # fmt: skip


def reaches_target(figures: dict[str, Any], target: dict[str, Any]) -> bool:
    """The target read off the held-out figures themselves (never a flag alone)."""
    mention, ratio = figures.get("mention_fraction"), figures.get("perplexity_ratio")
    if mention is None or ratio is None:
        return False
    return mention >= target.get("mention_fraction", 0.5) and ratio <= target.get("max_perplexity_ratio", 2.0)


def _how(result: dict[str, Any]) -> str:
    unit = f"{result['strength']:g} x its max activation" if result.get("unit") == "max" else f"{result['value']:.4g}"
    return f"{result['method']} at {unit} on {result['positions']} positions"


def _figure(figures: dict[str, Any]) -> str:
    return (
        f"{figures['mention_fraction']:.0%} of {figures.get('n_prompts', '?')} held-out continuations mention it at "
        f"{figures['perplexity_ratio']:.2f}x the perplexity (distinct-word share {figures['distinct_words']:.2f})"
    )


def _print_example(model: Any, prompt: str, max_new_tokens: int, name: str, **steering: Any) -> None:
    plain = scope.generate(model, prompt, max_new_tokens=max_new_tokens)
    steered = scope.generate(model, prompt, max_new_tokens=max_new_tokens, **steering)
    print(table(pd.DataFrame({"": ["unsteered", name], "continuation": [f"{prompt}{plain}", f"{prompt}{steered}"]})))


def _promoted(model: Any, sae: Any, feature: int, k: int = 5) -> str:
    """The tokens the feature's decoder direction promotes most (logit lens): an output feature's
    token label names its context ("red ⟦to⟧ pink"), what it promotes names its concept."""
    logits = scope.feature_logits(model, sae, feature, k=k)
    promoted = logits.loc[logits["direction"] == "promoted", "token"]
    return ", ".join(repr(t) for t in dict.fromkeys(t.strip() for t in promoted))  # " Color" and "Color": once


def _label(sae: Any, feature: int) -> str:
    labels = feature_labels(sae)
    found = None if labels is None else labels.loc[labels["feature"] == feature, "label"]
    return "unlabelled" if found is None or found.empty else str(found.iloc[0])


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
