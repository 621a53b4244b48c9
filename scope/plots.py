"""Plotly figures shared by the rest of scope."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go


def _position_labels(table: pd.DataFrame) -> list[str]:
    tokens = table.drop_duplicates("position").sort_values("position")
    return [f"{p}: {t!r}" for p, t in zip(tokens["position"], tokens["token"])]


def residual_norms_figure(norms: pd.DataFrame, *, log_scale: bool = True) -> go.Figure:
    """Heatmap of :func:`scope.residuals.residual_norms`: layers down, token positions across."""
    grid = norms.pivot(index="layer", columns="position", values="norm")
    values = grid.values
    colorbar = "norm"
    if log_scale:  # BOS dwarfs everything else; a log scale keeps the rest readable
        import numpy as np

        values = np.log10(values)
        colorbar = "log10 norm"
    figure = go.Figure(go.Heatmap(
        z=values, x=_position_labels(norms), y=list(grid.index), colorbar={"title": colorbar},
        customdata=grid.values, hovertemplate="layer %{y}<br>%{x}<br>norm %{customdata:.1f}<extra></extra>",
    ))
    figure.update_layout(title="Residual stream norm (hook_resid_post)", xaxis_title="position: token",
                         yaxis_title="layer", yaxis_autorange="reversed")
    return figure
