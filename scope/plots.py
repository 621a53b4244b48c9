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


def steering_tradeoff_figure(results: pd.DataFrame) -> go.Figure:
    """Concept vs fluency over steering strengths, from :func:`scope.sweep` (means over prompts).

    Up is more of the concept in the text, right is more fluent: a good strength sits up and right.
    """
    means = results.groupby("value", sort=True)[["concept", "fluency"]].mean().reset_index()
    figure = go.Figure(go.Scatter(
        x=means["fluency"], y=means["concept"], mode="lines+markers+text",
        text=[f"{v:g}" for v in means["value"]], textposition="top center",
        hovertemplate="strength %{text}<br>fluency %{x:.2f}<br>concept %{y:.2f}<extra></extra>",
    ))
    figure.update_layout(title="Steering trade-off: concept vs fluency by strength",
                         xaxis_title="fluency (mean log-prob of generated tokens, unsteered model)",
                         yaxis_title="concept (feature's mean activation on the generated text)")
    return figure
