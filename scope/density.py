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
