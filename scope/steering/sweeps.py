"""Sweeps: generate under each steering strength for each text, and judge each continuation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from scope import _checks
from scope.generation import check_sampling, generate_tokens
from scope.hooks import model_lock, sae_hook
from scope.inputs import to_tokens
from scope.logits import final_logits
from scope.steering.context import Positions, check_positions, steered
from scope.steering.interventions import as_list

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
    progress: bool = True,
    **generate_kwargs: Any,
) -> pd.DataFrame:
    """Generate under each steering strength for each text, and judge each continuation.

    ``intervention_factory(value)`` returns the intervention(s) for one strength, e.g.
    ``lambda v: scope.Clamp(1234, v, unit="max")``. ``texts`` are strings or chats
    (``prompts=`` is the deprecated name). Returns a DataFrame with columns prompt, value, text,
    concept, fluency:

    - ``concept``: the steered feature's mean activation over the generated tokens when the
      text is re-read *without* steering: did the concept make it into the text?
    - ``fluency``: mean log-probability of the generated tokens under the unsteered model.

    Together they give the trade-off steering benchmarks (AxBench) judge strengths by; see
    :func:`scope.plots.steering_tradeoff_figure`.
    """
    values, texts = list(values), list(texts)
    check_positions(positions)
    check_sampling(
        generate_kwargs.get("max_new_tokens", 64),
        generate_kwargs.get("temperature", 0.0),
        generate_kwargs.get("top_k"),
        generate_kwargs.get("top_p", 1.0),
        generate_kwargs.get("seed"),
    )
    max_new_tokens = generate_kwargs.get("max_new_tokens", 64)
    prompts = [to_tokens(model, text, reserve=max_new_tokens) for text in texts]  # every text checked first
    runs = [(value, i) for value in values for i in range(len(texts))]
    rows = []
    for value, i in tqdm(runs, desc="Steering sweep", disable=not progress):
        interventions = as_list(intervention_factory(value))
        concept_sae, feature = _concept_feature(sae, interventions)
        tokens = prompts[i]
        with steered(model, sae, interventions, positions, prompt_length=tokens.shape[1]):
            new = generate_tokens(model, tokens, **generate_kwargs)
        concept, fluency = reread(model, concept_sae, feature, tokens, new)
        text = texts[i]
        rows.append(
            {
                "prompt": text if isinstance(text, str) else str(text),
                "value": value,
                "text": model.tokenizer.decode(new.tolist(), skip_special_tokens=True),
                "concept": concept,
                "fluency": fluency,
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def _concept_feature(sae: Any, interventions: Sequence[Any]) -> tuple[Any, int]:
    if not interventions:
        raise ValueError("intervention_factory returned no intervention.")
    first = interventions[0]
    return (first[0], first[1].feature) if isinstance(first, tuple) else (sae, first.feature)


def reread(
    model: Any, sae: Any, feature: int, prompt_tokens: torch.Tensor, new_tokens: torch.Tensor
) -> tuple[float, float]:
    """(mean activation of ``feature``, mean log-prob) over ``new_tokens``, read by the unsteered model."""
    if new_tokens.numel() == 0:
        return float("nan"), float("nan")
    n_prompt = prompt_tokens.shape[1]
    tokens = torch.cat([prompt_tokens.to(new_tokens.device), new_tokens[None]], dim=1).to(model.cfg.device)
    hook = sae_hook(sae)
    with model_lock(model), torch.no_grad():
        # Logits only where they score a generated token, not over the whole prompt.
        residual, cache = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=model.cfg.n_layers)
        generated = cache[hook][0, n_prompt:]
        concept = sae.encode(generated.to(sae.W_dec.dtype))[:, feature].float().mean().item()
        log_probs = final_logits(model, residual[0, n_prompt - 1 : -1]).float().log_softmax(dim=-1)
        fluency = log_probs.gather(-1, tokens[0, n_prompt:, None]).mean().item()
    return concept, fluency
