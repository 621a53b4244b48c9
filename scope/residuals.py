"""Residual-stream summaries: how large the stream is at each layer and position."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from scope import _checks
from scope.hooks import model_lock
from scope.inputs import TextOrMessages, str_tokens, to_tokens


@_checks.renamed(prompt_or_messages="text")
def residual_norms(model: Any, text: TextOrMessages) -> pd.DataFrame:
    """L2 norm of ``blocks.L.hook_resid_post`` for every layer and position.

    Returns a long DataFrame with columns layer, position, token, norm. Gemma's BOS
    position carries a residual far larger than every other: a reason SAEs skip it.
    """
    tokens = to_tokens(model, text)
    with model_lock(model), torch.no_grad():
        _, cache = model.run_with_cache(
            tokens, names_filter=lambda name: name.endswith("hook_resid_post"), return_type=None
        )
    strings = str_tokens(model, tokens[0])
    rows: list[dict[str, Any]] = []
    for layer in range(model.cfg.n_layers):
        norms = cache[f"blocks.{layer}.hook_resid_post"][0].float().norm(dim=-1).tolist()
        rows.extend({"layer": layer, "position": p, "token": strings[p], "norm": n} for p, n in enumerate(norms))
    return pd.DataFrame(rows)
