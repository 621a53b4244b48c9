"""Sweeps: generate under each steering strength for each text, and judge each continuation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from scope import _checks
from scope.generation import check_sampling, generate_batch
from scope.hooks import model_lock, sae_hook
from scope.inputs import to_tokens
from scope.logits import final_logits
from scope.steering.context import Positions, check_positions, steered
from scope.steering.directions import Direction
from scope.steering.interventions import as_list, is_pair

COLUMNS = ["prompt", "value", "text", "concept", "fluency"]


@_checks.renamed(prompts="texts")
def sweep(
    model: Any,
    sae: Any,
    intervention_factory: Callable[[Any], Any],
    values: Sequence[float],
    texts: Sequence[Any],
    *,
    positions: Positions = "all",
    batch_size: int = 8,
    progress: bool = True,
    **generate_kwargs: Any,
) -> pd.DataFrame:
    """Generate under each steering strength for each text, and judge each continuation.

    ``intervention_factory(value)`` returns the intervention(s) for one strength, e.g.
    ``lambda v: scope.Clamp(1234, v, unit="max")`` or ``lambda v: scope.Add(direction, v)``.
    ``texts`` are strings or chats (``prompts=`` is the deprecated name). The (value, text) runs
    are generated ``batch_size`` at a time, each row steered with its own strength; a row's
    greedy result equals generating it alone (``batch_size=1``). Returns a DataFrame with
    columns prompt, value, text, concept, fluency:

    - ``concept``: the steered feature's (or direction's) mean activation over the generated
      tokens when the text is re-read *without* steering: did the concept make it into the text?
    - ``fluency``: mean log-probability of the generated tokens under the unsteered model.

    Together they give the trade-off steering benchmarks (AxBench) judge strengths by; see
    :func:`scope.plots.steering_tradeoff_figure` and :func:`scope.evaluate_steering`.
    """
    values, texts = list(values), list(texts)
    check_positions(positions)
    batch_size = _checks.positive_int(batch_size, "batch_size")
    max_new_tokens = generate_kwargs.get("max_new_tokens", 64)
    check_sampling(
        max_new_tokens,
        generate_kwargs.get("temperature", 0.0),
        generate_kwargs.get("top_k"),
        generate_kwargs.get("top_p", 1.0),
    )
    prompts = [to_tokens(model, text, reserve=max_new_tokens)[0] for text in texts]  # every text checked first
    runs = [(value, i) for value in values for i in range(len(texts))]
    steering = {value: as_list(intervention_factory(value)) for value in values}
    concepts = {value: _concept_feature(sae, steering[value]) for value in values}
    rows = []
    bar = tqdm(total=len(runs), desc="Steering sweep", disable=not progress)
    for start in range(0, len(runs), batch_size):
        batch = runs[start : start + batch_size]
        lengths = [len(prompts[i]) for _, i in batch]
        with steered(model, sae, [steering[v] for v, _ in batch], positions, prompt_length=lengths) as generation:
            completions = generate_batch(
                model,
                [prompts[i] for _, i in batch],
                batch_size=batch_size,
                on_rows=generation.set_rows,
                **generate_kwargs,
            )
        for (value, i), completion in zip(batch, completions):
            concept_sae, feature = concepts[value]
            new = torch.tensor(completion.tokens, dtype=torch.long)
            concept, fluency = reread(model, concept_sae, feature, prompts[i][None], new)
            text = texts[i]
            rows.append(
                {
                    "prompt": text if isinstance(text, str) else str(text),
                    "value": value,
                    "text": completion.text,
                    "concept": concept,
                    "fluency": fluency,
                }
            )
        bar.update(len(batch))
    bar.close()
    return pd.DataFrame(rows, columns=COLUMNS)


def _concept_feature(sae: Any, interventions: Sequence[Any]) -> tuple[Any, int]:
    if not interventions:
        raise ValueError("intervention_factory returned no intervention.")
    first = interventions[0]
    target, intervention = first if is_pair(first) else (sae, first)
    if isinstance(intervention.feature, Direction):
        return intervention.feature, 0
    return target, intervention.feature


def reread(
    model: Any, sae: Any, feature: int | None, prompt_tokens: torch.Tensor, new_tokens: torch.Tensor
) -> tuple[float, float]:
    """(mean activation of ``feature``, mean log-prob) over ``new_tokens``, read by the unsteered model.

    ``sae`` may be an SAE or a :class:`~scope.steering.directions.Direction` (feature 0); with
    ``sae=None`` only the log-prob is computed (the activation is NaN).
    """
    if new_tokens.numel() == 0:
        return float("nan"), float("nan")
    n_prompt = prompt_tokens.shape[1]
    tokens = torch.cat([prompt_tokens.to(new_tokens.device), new_tokens[None]], dim=1).to(model.cfg.device)
    hooks = [sae_hook(sae)] if sae is not None else []
    with model_lock(model), torch.no_grad():
        # Logits only where they score a generated token, not over the whole prompt.
        residual, cache = model.run_with_cache(tokens, names_filter=hooks, stop_at_layer=model.cfg.n_layers)
        concept = float("nan")
        if sae is not None:
            generated = cache[hooks[0]][0, n_prompt:]
            concept = sae.encode(generated.to(sae.W_dec.dtype))[:, feature].float().mean().item()
        log_probs = final_logits(model, residual[0, n_prompt - 1 : -1]).float().log_softmax(dim=-1)
        fluency = log_probs.gather(-1, tokens[0, n_prompt:, None]).mean().item()
    return concept, fluency
