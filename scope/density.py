"""Which features are dense: each feature's measured firing rate, and the filter views apply.

A handful of features fire on a large share of all tokens (the demo SAE has 4 at ~40%); they
peak wherever activations are large and take most of the top-k slots of any text while saying
little about it. Neuronpedia hides such features by default (its dense-feature filter); scope's
views (:func:`scope.top_features`, ``scope demo``, ``scope features``, the explorer) do the same:
a feature whose density is above ``threshold`` (default 10% of tokens) is left out unless asked.

Where densities come from, first found wins:

1. ``densities=`` given to the view: a :class:`scope.Mined` (``scope.mine``'s result), a label
   table with a ``density`` column (:func:`scope.label_features` of a mining result), or one
   number per feature.
2. The SAE's recorded statistics (``feature_stats(sae)["density"]``): the demo SAEs ship them
   (``feature_stats.safetensors``); :func:`set_densities` records a mining result on any SAE.
3. The labels attached to the SAE, when they carry densities (the demo SAEs' do).

Where none is known (a registry SAE nobody has mined), nothing is hidden and
:class:`DenseFilter` says so. A feature whose own density is unknown (NaN) is never hidden.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from scope import _checks
from scope.feature_stats import feature_stats, set_feature_stats
from scope.labels import feature_labels

DENSE_THRESHOLD = 0.1  # Neuronpedia's dense-feature filter hides features above 10% of tokens
SHOW_DENSE_HINT = (
    "Show them with dense=True (CLI: --show-dense; explorer: 'show dense features'); dense_threshold= moves the cut"
)


@dataclass(frozen=True)
class DenseFilter:
    """The dense features of one SAE at one threshold, and where their densities came from."""

    dense: frozenset[int]  # features over the threshold
    threshold: float
    source: str | None  # "given", "sae statistics", "labels"; None when no density is known

    @property
    def known(self) -> bool:
        return self.source is not None

    def note(self, hidden: list[int]) -> str:
        """One line for a reader: what was hidden from this view and how to see it."""
        if not self.known:
            return "No feature densities are known for this SAE, so no dense feature is hidden (mine it: scope.mine)."
        if not hidden:
            return f"No dense feature (over {self.threshold:.0%} of tokens) fired here."
        listed = ", ".join(map(str, hidden))
        return (
            f"{len(hidden)} dense feature(s) (firing on over {self.threshold:.0%} of tokens) hidden: {listed}. "
            f"{SHOW_DENSE_HINT}."
        )


def feature_densities(sae: Any, densities: Any = None) -> tuple[np.ndarray | None, str | None]:
    """Each feature's density ``[d_sae]`` (NaN where unknown) and its source, or ``(None, None)``."""
    d_sae = int(sae.cfg.d_sae)
    if densities is not None:
        return _given(densities, d_sae), "given"
    stats = feature_stats(sae)
    if "density" in stats:
        return stats["density"].double().numpy(), "sae statistics"
    labels = feature_labels(sae)
    if labels is not None and labels["density"].notna().any():
        return _from_table(labels, d_sae), "labels"
    return None, None


def dense_filter(sae: Any, *, threshold: float = DENSE_THRESHOLD, densities: Any = None) -> DenseFilter:
    """The features of ``sae`` whose density is above ``threshold`` (a fraction in (0, 1])."""
    threshold = check_threshold(threshold)
    values, source = feature_densities(sae, densities)
    if values is None:
        return DenseFilter(frozenset(), threshold, None)
    dense = np.flatnonzero(np.nan_to_num(values, nan=0.0) > threshold)
    return DenseFilter(frozenset(int(f) for f in dense), threshold, source)


def antipodal_pairs(
    sae: Any,
    features: Any = None,
    *,
    max_cosine: float = -0.9,
    threshold: float = DENSE_THRESHOLD,
    densities: Any = None,
) -> pd.DataFrame:
    """Pairs among ``features`` whose decoder rows point in opposite directions.

    Dense features of residual-stream SAEs mostly come in such pairs (Sun et al. 2025, "Dense
    SAE latents are features, not bugs"): together a pair reconstructs one direction with either
    sign, a signed linear coordinate of a dense subspace rather than a concept. ``features``
    defaults to the SAE's dense features (:func:`dense_filter` at ``threshold``). Each feature is
    matched with its most opposite partner among ``features``; pairs at or below ``max_cosine``
    are returned once each (``feature < partner``), with columns feature, partner, cosine (of the
    decoder rows), density, partner_density (NaN where unknown), most opposite first.
    """
    if not -1.0 <= _checks.finite(max_cosine, "max_cosine") < 0.0:
        raise ValueError(f"max_cosine must be in [-1, 0) (opposite directions), got {max_cosine!r}.")
    d_sae = int(sae.cfg.d_sae)
    values, _ = feature_densities(sae, densities)
    if features is None:
        if values is None:
            raise ValueError(
                "No densities are known for this SAE, so its dense features are unknown: pass features=[...] "
                "or densities= (a scope.Mined, a label table or one number per feature)."
            )
        features = sorted(dense_filter(sae, threshold=threshold, densities=densities).dense)
    chosen = np.unique(np.asarray(list(features), dtype=np.int64))
    _check_features(chosen, d_sae, "features")
    columns = ["feature", "partner", "cosine", "density", "partner_density"]
    if chosen.size < 2:
        return pd.DataFrame(columns=columns)
    rows = sae.W_dec.detach()[torch.from_numpy(chosen)].double()
    unit = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cosines = unit @ unit.T
    cosines.fill_diagonal_(math.inf)
    best, partner = cosines.min(dim=1)
    density = values if values is not None else np.full(d_sae, math.nan)
    pairs = {
        tuple(sorted((int(chosen[i]), int(chosen[j])))): float(c)
        for i, (c, j) in enumerate(zip(best.tolist(), partner.tolist()))
        if c <= max_cosine
    }
    table = pd.DataFrame([(a, b, c, density[a], density[b]) for (a, b), c in pairs.items()], columns=columns)
    return table.sort_values(["cosine", "feature"], ignore_index=True)


def check_threshold(threshold: Any) -> float:
    value = _checks.finite(threshold, "dense_threshold")
    if not 0.0 < value <= 1.0:
        raise ValueError(
            f"dense_threshold must be a fraction of tokens in (0, 1] (e.g. 0.1 for 10%), got {threshold!r}."
        )
    return value


def set_densities(sae: Any, mined: Any) -> None:
    """Record a mining result's densities on ``sae`` (features it did not mine: NaN, never
    hidden), so that every view of this SAE leaves its dense features out."""
    set_feature_stats(sae, {"density": torch.from_numpy(_given(mined, int(sae.cfg.d_sae)))})


def _given(densities: Any, d_sae: int) -> np.ndarray:
    if all(hasattr(densities, name) for name in ("features", "density", "n_tokens")):  # a scope.Mined
        values = np.full(d_sae, math.nan)
        features = np.asarray(list(densities.features), dtype=np.int64)
        _check_features(features, d_sae, "the mining result")
        values[features] = torch.as_tensor(densities.density).double().numpy()
        return values
    if isinstance(densities, pd.DataFrame):
        if "feature" not in densities.columns or "density" not in densities.columns:
            has = ", ".join(map(str, densities.columns))
            raise ValueError(f"densities as a table need feature and density columns; it has {has}.")
        return _from_table(densities, d_sae)
    values = torch.as_tensor(densities, dtype=torch.float64).flatten().numpy()
    if values.shape != (d_sae,):
        raise ValueError(
            f"densities must hold one value per feature ({d_sae}), got {values.size}; or pass a scope.Mined "
            "or a label table with a density column."
        )
    return values


def _from_table(table: pd.DataFrame, d_sae: int) -> np.ndarray:
    values = np.full(d_sae, math.nan)
    features = table["feature"].to_numpy(dtype=np.int64)
    _check_features(features, d_sae, "the density table")
    values[features] = table["density"].to_numpy(dtype=float)
    return values


def _check_features(features: np.ndarray, d_sae: int, what: str) -> None:
    bad = features[(features < 0) | (features >= d_sae)]
    if bad.size:
        raise ValueError(f"{what} names feature(s) {bad[:5].tolist()} outside this SAE's features 0..{d_sae - 1}.")
