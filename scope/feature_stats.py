"""Per-feature statistics of an SAE (max activations, densities), kept in its ``cfg.metadata``.

``cfg.metadata`` is the open bag sae-lens provides for such fields, so the statistics are saved
with the SAE and travel with it. ``Clamp(..., unit="max")`` reads each feature's max activation
here, :mod:`scope.density` each feature's density; a bundled demo SAE (:mod:`scope.saes`) loads
with the statistics shipped beside its weights. Feature labels (:mod:`scope.labels`) live in the
same bag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sae_lens import SAE

MAX_ACTIVATIONS = "scope_max_activations"  # cfg.metadata keys scope adds
FEATURE_STATS = "scope_feature_stats"
STATS_TOKENS = "scope_feature_stats_tokens"  # how many tokens the feature statistics were measured on


def set_feature_stats(sae: SAE, stats: Mapping[str, Any]) -> None:
    """Record per-feature statistics (``{"max_activation": [d_sae], "density": [d_sae], ...}``)
    in ``sae.cfg.metadata``; ``max_activation`` serves ``Clamp(..., unit="max")``."""
    values = {}
    for name, column in stats.items():
        tensor = torch.as_tensor(column, dtype=torch.float32).flatten()
        if tensor.numel() != sae.cfg.d_sae:
            raise ValueError(f"{name} must have one value per feature ({sae.cfg.d_sae}), got {tensor.numel()}.")
        values[name] = tensor.tolist()  # plain lists: the metadata is saved as JSON with the SAE
    sae.cfg.metadata[FEATURE_STATS] = {**(sae.cfg.metadata.get(FEATURE_STATS) or {}), **values}


def set_max_activations(sae: SAE, values: torch.Tensor | Sequence[float]) -> None:
    """Record each feature's max activation (used by ``Clamp(..., unit="max")``)."""
    set_feature_stats(sae, {"max_activation": values})


def feature_stats(sae: SAE) -> dict[str, torch.Tensor]:
    """The per-feature statistics recorded for ``sae`` (empty when none are)."""
    stats = sae.cfg.metadata.get(FEATURE_STATS) or {}
    return {name: torch.tensor(values, dtype=torch.float32) for name, values in stats.items()}


def max_activations(sae: SAE) -> torch.Tensor | None:
    """Each feature's recorded max activation ``[d_sae]``, or None."""
    values = (sae.cfg.metadata.get(FEATURE_STATS) or {}).get("max_activation")
    return torch.tensor(values, dtype=torch.float32) if values is not None else None


def max_activation(sae: SAE, feature: int) -> float:
    """One feature's recorded max activation; ValueError naming the fix when none is recorded."""
    values = (sae.cfg.metadata.get(FEATURE_STATS) or {}).get("max_activation")
    if values is None:
        raise ValueError(
            f"Clamp(..., unit='max') on feature {feature} needs the SAE's per-feature max activations, "
            "which this SAE does not carry. Record them with scope.feature_stats.set_max_activations(sae, values) "
            "(e.g. from scope.mine over a corpus), or clamp with unit='act'."
        )
    return float(values[feature])
