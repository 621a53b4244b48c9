"""Steering evaluation: AxBench's three judge scores beside judge-free signals, and a held-out strength.

:func:`evaluate_steering` scores steered outputs:

1. Judge-free, always: each output is re-read by the *unsteered* model after its instruction:
   the concept feature's (or direction's) mean activation over the output tokens
   (``concept_activation``) and the output's perplexity (``perplexity``).
2. With a ``judge`` (any :class:`scope.llm.LLM`: a loaded chat subject, or an OpenAI-compatible
   :class:`scope.llm.Endpoint`), AxBench's three ratings, each 0, 1 or 2, one judge call per output
   and rating: ``concept_score`` (is the concept in the output?), ``instruction_score`` (does it
   answer the instruction?), ``fluency_score`` (is it fluent?). A reply without a rating is NaN.
3. ``harmonic_mean`` of the three (0 when any is 0), AxBench's aggregate.

:func:`recommend_strength` picks a strength without overfitting the prompts it is judged on:
it splits the instructions into two halves, chooses the strength with the best mean score on
one half, and reports that strength's score on the other half.

:func:`compare_steering` runs AxBench's comparison (SAE clamp, SAE add, DiffMean add, prompting)
on one concept as one batched generation with per-row steering, then evaluates it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from scope import _checks
from scope.feature_stats import max_activation
from scope.hooks import run_to_hooks
from scope.inputs import as_text, to_tokens
from scope.llm import as_llm
from scope.steering.directions import Direction
from scope.steering.interventions import Add, Clamp
from scope.steering.steered_generation import generate
from scope.steering.sweeps import reread

SCORES = ("concept_score", "instruction_score", "fluency_score")

# The judge prompts follow AxBench's (Wu et al., 2025) wording and 0-2 scale.
JUDGE_PROMPTS = {
    "concept_score": (
        "Please act as an impartial judge and evaluate whether the specified concept is presented in the "
        "text fragment provided below. Focus solely on whether the concept is clearly incorporated, "
        "without regard for grammar or logical coherence.\n\n"
        "Rate the concept's relevance on a scale from 0 to 2, where 0 indicates the concept is not present "
        "at all, 1 indicates the concept is somewhat present but minimally or awkwardly incorporated, and 2 "
        "indicates the concept is more fully and effectively incorporated, with stronger and more natural "
        "integration.\n\n"
        "Provide your rating using this exact format: Rating: [[score]].\n\n"
        "[Concept Start]\n{concept}\n[Concept End]\n\n[Text Fragment Start]\n{output}\n[Text Fragment End]"
    ),
    "instruction_score": (
        "Please act as an impartial judge and evaluate whether the text fragment provided below is related "
        "to the instruction. Focus solely on the degree of relatedness in terms of topic, regardless of "
        "grammar, coherence, or informativeness.\n\n"
        "Rate the instruction relevance on a scale from 0 to 2, where 0 indicates the text is unrelated to "
        "the instruction, 1 indicates it is somewhat related but only minimally or indirectly relevant in "
        "terms of topic, and 2 indicates it is more clearly and directly related to the instruction.\n\n"
        "Provide your rating using this exact format: Rating: [[score]].\n\n"
        "[Instruction Start]\n{instruction}\n[Instruction End]\n\n"
        "[Text Fragment Start]\n{output}\n[Text Fragment End]"
    ),
    "fluency_score": (
        "Please act as an impartial judge and evaluate the fluency of the text fragment provided below. "
        "Focus solely on fluency, disregarding its completeness, relevance, coherence with any broader "
        "context, or informativeness.\n\n"
        "Rate the text on a scale from 0 to 2, where 0 indicates the text is not fluent and highly "
        "unnatural (e.g., incomprehensible or repetitive), 1 indicates it is somewhat fluent but contains "
        "noticeable errors or awkward phrasing, and 2 indicates the text is fluent and almost perfect.\n\n"
        "Provide your rating using this exact format: Rating: [[score]].\n\n"
        "[Text Fragment Start]\n{output}\n[Text Fragment End]"
    ),
}
_NUMBER = r"(-?\d+(?:\.\d+)?)(?!\w)"
_SCALE = r"(?:\s*(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?"  # "2/10", "2 out of 10": a rating on another scale
_RATING = re.compile(r"Rating:\s*\[*\s*" + _NUMBER + _SCALE, re.IGNORECASE)
_LONE = re.compile(r"(?<![\w.-])" + _NUMBER + _SCALE)


def evaluate_steering(
    model: Any,
    outputs: pd.DataFrame | Sequence[str],
    concept: str,
    instructions: Sequence[Any] | None = None,
    *,
    judge: Any = None,
    sae: Any = None,
    feature: int | Direction | None = None,
    max_tokens: int = 16,
) -> pd.DataFrame:
    """Score steered outputs for concept, instruction following and fluency.

    Args:
        model: the subject the outputs came from; it re-reads them unsteered.
        outputs: a :func:`scope.sweep` DataFrame (columns prompt, value, text, ...) or a list of
            output strings.
        concept: the concept, in words, for the judge (e.g. ``"the Golden Gate Bridge"``).
        instructions: the prompt (text or chat) each output answers; by default the DataFrame's
            ``prompt`` column. Required with a list of outputs.
        judge: None (judge-free signals only), an :class:`scope.llm.LLM`, a loaded chat model
            or an :class:`scope.llm.Endpoint`. Greedy (temperature 0).
        sae, feature: the concept's SAE feature (an index on ``sae``) or a :class:`scope.Direction`,
            re-read on each output; without one, ``concept_activation`` is NaN.
        max_tokens: the judge's reply budget (a rating is a few tokens).

    Returns the input table (or ``output``/``instruction`` columns for a list) plus
    ``concept_activation``, ``perplexity`` and, with a judge, ``concept_score``,
    ``instruction_score``, ``fluency_score``, ``harmonic_mean``, ``judge``.
    """
    table = _table(outputs, instructions)
    if not isinstance(concept, str) or not concept.strip():
        raise ValueError(f"concept must be a non-empty description of the concept, got {concept!r}.")
    concept_sae, concept_feature = _concept(sae, feature)
    llm = as_llm(judge) if judge is not None else None
    max_tokens = _checks.positive_int(max_tokens, "max_tokens")
    prompts = [to_tokens(model, instruction, name="instruction") for instruction in table["instruction"]]
    signals = [
        _reread(model, concept_sae, concept_feature, prompt, text) for prompt, text in zip(prompts, table["output"])
    ]
    table["concept_activation"] = [s[0] for s in signals]
    table["perplexity"] = [s[1] for s in signals]
    if llm is None:
        return table
    instructions_text = [as_text(i, "instruction") for i in table["instruction"]]
    for score, template in JUDGE_PROMPTS.items():
        conversations = [
            [{"role": "user", "content": template.format(concept=concept, instruction=i, output=o)}]
            for i, o in zip(instructions_text, table["output"])
        ]
        replies = llm.chat(conversations, max_tokens=max_tokens, temperature=0.0)
        table[score] = [parse_rating(reply) for reply in replies]
    table["harmonic_mean"] = [harmonic_mean(row) for row in table[list(SCORES)].itertuples(index=False)]
    table["judge"] = llm.name
    return table


def parse_rating(reply: str) -> float:
    """The 0-2 rating in a judge's reply (``Rating: [[2]]``, else the first number in it); NaN
    when there is none, when it lies outside 0-2 (``Rating: [[10]]``), or when it is given on
    another scale (``2 out of 10``, ``2/10``)."""
    match = _RATING.search(reply) or _LONE.search(reply)
    if match is None or (match[2] is not None and float(match[2]) != 2.0):
        return float("nan")
    value = float(match[1])
    return value if 0.0 <= value <= 2.0 else float("nan")


def harmonic_mean(scores: Sequence[float]) -> float:
    """AxBench's aggregate: the harmonic mean of the ratings, 0 when any is 0, NaN when any is NaN."""
    values = [float(s) for s in scores]
    if any(math.isnan(v) for v in values):
        return float("nan")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def recommend_strength(
    scores: pd.DataFrame, by: str = "harmonic_mean", *, seed: int = 0, method: str | None = None
) -> pd.Series:
    """The strength with the best mean ``by`` on a random half of the instructions, and its mean ``by``
    on the other, held-out half (what to expect on new prompts).

    ``scores`` is an :func:`evaluate_steering` table with a ``value`` column (from a sweep) and
    at least two distinct instructions. A :func:`compare_steering` table holds several methods,
    whose strengths mean different things: name the one to recommend for with ``method=``.
    Returns a Series: value, selection_score, held_out_score, selection_prompts,
    held_out_prompts, by (and method, when given).
    """
    for column in ("value", "instruction", by):
        if column not in scores.columns:
            raise ValueError(
                f"scores has no {column!r} column; give an evaluate_steering table of a sweep "
                f"(columns: {', '.join(map(str, scores.columns))})."
            )
    seed = _checks.seed(seed)
    scores = _one_method(scores, method)
    keys = scores["instruction"].map(str)
    unique = sorted(keys.unique())
    if len(unique) < 2:
        raise ValueError(
            "recommend_strength needs at least two distinct instructions (one half to choose, one to report)."
        )
    order = np.random.default_rng(seed).permutation(len(unique))
    selection = {unique[i] for i in order[: len(unique) // 2]}
    chosen = keys.isin(selection)
    means = scores[chosen].groupby("value")[by].mean()
    if means.isna().all():
        raise ValueError(f"Every {by!r} score is NaN on the selection half: nothing to choose by.")
    best = means.idxmax()
    held_out = scores[~chosen & (scores["value"] == best)][by].mean()
    return pd.Series(
        {
            "value": best,
            "selection_score": float(means[best]),
            "held_out_score": float(held_out),
            "selection_prompts": len(selection),
            "held_out_prompts": len(unique) - len(selection),
            "by": by,
            **({"method": method} if method is not None else {}),
        }
    )


def _one_method(scores: pd.DataFrame, method: str | None) -> pd.DataFrame:
    """The rows of ``method``; ValueError listing the methods when a table of several names none."""
    methods = list(dict.fromkeys(scores["method"].map(str))) if "method" in scores.columns else []
    if method is None:
        if len(methods) > 1:
            raise ValueError(
                f"scores holds {len(methods)} steering methods ({', '.join(map(repr, methods))}), whose strengths "
                "are not comparable: pass method=... to recommend a strength for one of them."
            )
        return scores
    method = _checks.choice(method, methods, "method") if methods else method
    if not methods:
        raise ValueError(f"method={method!r} was given, but scores has no 'method' column.")
    return scores[scores["method"].map(str) == method]


def _table(outputs: Any, instructions: Sequence[Any] | None) -> pd.DataFrame:
    if isinstance(outputs, pd.DataFrame):
        if "text" not in outputs.columns:
            raise ValueError(f"outputs has no 'text' column (columns: {', '.join(map(str, outputs.columns))}).")
        table = outputs.reset_index(drop=True).copy()
        table["output"] = table["text"]
        if instructions is None:
            if "prompt" not in table.columns:
                raise ValueError("outputs has no 'prompt' column: pass instructions=.")
            instructions = list(table["prompt"])
    else:
        if isinstance(outputs, str) or not isinstance(outputs, Sequence):
            raise TypeError(f"outputs must be a sweep DataFrame or a list of strings, got {type(outputs).__name__}.")
        table = pd.DataFrame({"output": list(outputs)})
        if instructions is None:
            raise ValueError("instructions is required when outputs is a list of strings.")
    for n, output in enumerate(table["output"]):
        if not isinstance(output, str):
            raise TypeError(f"outputs[{n}] must be a string, got {type(output).__name__}.")
    instructions = list(instructions)
    if len(instructions) != len(table):
        raise ValueError(f"{len(instructions)} instructions for {len(table)} outputs: give one per output.")
    table["instruction"] = instructions
    return table


def _concept(sae: Any, feature: Any) -> tuple[Any, int | None]:
    if feature is None:
        return None, None
    if isinstance(feature, Direction):
        return feature, 0
    if sae is None:
        raise ValueError(f"feature {feature!r} needs its SAE: pass sae=..., or a scope.Direction as feature.")
    return sae, _checks.index(feature, int(sae.cfg.d_sae), "feature")


def _reread(model: Any, sae: Any, feature: int | None, prompt: torch.Tensor, output: str) -> tuple[float, float]:
    """(concept activation, perplexity) of ``output`` after ``prompt``, unsteered; NaN for an empty output."""
    new = model.to_tokens(output, prepend_bos=False, truncate=False)[0] if output else torch.zeros(0, dtype=torch.long)
    concept, log_prob = reread(model, sae, feature, prompt, new.to("cpu"))
    return concept, math.exp(-log_prob) if not math.isnan(log_prob) else float("nan")


def compare_steering(
    model: Any,
    prompts: Sequence[Any],
    concept: str,
    *,
    sae: Any = None,
    feature: int | None = None,
    direction: Direction | None = None,
    strengths: Mapping[str, Sequence[float]] | None = None,
    judge: Any = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
) -> pd.DataFrame:
    """AxBench's comparison on one concept: SAE clamp, SAE add, direction add and prompting, on the
    same prompts, generated in one batched pass (each row its own steering), scored by
    :func:`evaluate_steering`.

    Methods (each strength a row per prompt; strength 0 is the unsteered baseline):

    - ``"SAE clamp"``: ``Clamp(feature, v, unit="max")`` (``unit="act"`` when ``sae`` carries no
      max activations);
    - ``"SAE add"``: ``Add(feature, v * max activation)`` (``v`` itself without max activations);
    - ``"DiffMean add"``: ``Add(direction, v * r)``, ``r`` the mean residual norm at the
      direction's hook over the prompts (so ``v`` is a fraction of the stream's size);
    - ``"prompting"``: no steering; the prompt asks for the concept (``v`` 1), or not (``v`` 0).

    ``strengths`` maps method names to values (a method left out is not run); the default runs
    every method that the given ``sae``/``feature``/``direction`` allow. Returns the
    :func:`evaluate_steering` table with columns method, value, prompt, text, ... (the concept is
    re-read with ``feature`` when given, else with ``direction``).
    """
    prompts = list(prompts)
    strengths = dict(strengths) if strengths is not None else _default_strengths(feature, direction)
    unknown = set(strengths) - set(METHODS)
    if unknown:
        raise ValueError(f"Unknown steering methods {sorted(unknown)}; valid: {', '.join(METHODS)}.")
    if feature is not None and sae is None:
        raise ValueError("feature needs its SAE: pass sae=...")
    scales = _scales(model, sae, feature, direction, prompts, strengths)
    runs, texts, steering = [], [], []
    for method, values in strengths.items():
        for value in values:
            value = _checks.finite(value, f"{method} strength")
            for prompt in prompts:
                runs.append({"method": method, "value": value, "prompt": prompt})
                texts.append(_ask_for(concept, prompt) if method == "prompting" and value else prompt)
                steering.append(_steering(method, value, sae, feature, direction, scales))
    outputs = generate(model, texts, sae=sae, steering=steering, max_new_tokens=max_new_tokens, batch_size=batch_size)
    table = pd.DataFrame(runs)
    table["prompt"] = [p if isinstance(p, str) else str(p) for p in table["prompt"]]
    table["text"] = list(outputs)
    reader = feature if feature is not None else direction
    return evaluate_steering(
        model, table, concept, [run["prompt"] for run in runs], judge=judge, sae=sae, feature=reader
    )


METHODS = ("SAE clamp", "SAE add", "DiffMean add", "prompting")


def _default_strengths(feature: Any, direction: Any) -> dict[str, list[float]]:
    strengths: dict[str, list[float]] = {}
    if feature is not None:
        strengths["SAE clamp"] = [0.0, 2.0, 4.0, 8.0]
        strengths["SAE add"] = [0.0, 2.0, 4.0, 8.0]
    if direction is not None:
        strengths["DiffMean add"] = [0.0, 0.25, 0.5, 1.0]
    strengths["prompting"] = [0.0, 1.0]
    return strengths


def _scales(model: Any, sae: Any, feature: Any, direction: Any, prompts: list[Any], strengths: Mapping) -> dict:
    """What one unit of strength means per method: a max activation, a residual norm."""
    scales: dict[str, Any] = {"unit": "act", "max": 1.0, "norm": 1.0}
    if ("SAE clamp" in strengths or "SAE add" in strengths) and feature is None:
        raise ValueError("The SAE methods need sae= and feature=.")
    if feature is not None:
        _checks.index(feature, int(sae.cfg.d_sae), "feature")
        try:
            scales["max"] = max_activation(sae, feature)
            scales["unit"] = "max"
        except ValueError:  # no recorded max activations: strengths are plain activations
            pass
    if "DiffMean add" in strengths:
        if direction is None:
            raise ValueError("The DiffMean method needs direction= (see scope.diffmean).")
        scales["norm"] = _mean_norm(model, direction.hook, prompts)
    return scales


def _mean_norm(model: Any, hook: str, prompts: list[Any]) -> float:
    norms = []
    for prompt in prompts:
        acts = run_to_hooks(model, to_tokens(model, prompt), [hook])[hook][0, 1:]  # BOS excluded
        norms.append(acts.float().norm(dim=-1).mean().item())
    return float(np.mean(norms))


def _steering(method: str, value: float, sae: Any, feature: Any, direction: Any, scales: dict) -> list[Any]:
    if method == "prompting" or value == 0.0:
        return []
    if method == "SAE clamp":
        return [Clamp(feature, value, unit=scales["unit"])]
    if method == "SAE add":
        return [Add(feature, value * scales["max"])]
    return [Add(direction, value * scales["norm"])]


def _ask_for(concept: str, prompt: Any) -> Any:
    """The prompting baseline: the same prompt, asking for the concept (AxBench's prompt steering)."""
    request = f"Talk about {concept}."
    if isinstance(prompt, str):
        return f"{request} {prompt}"
    messages = [dict(m) for m in prompt]
    first_user = next(i for i, m in enumerate(messages) if m.get("role") == "user")
    messages[first_user]["content"] = f"{request} {messages[first_user]['content']}"
    return messages
