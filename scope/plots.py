"""Plotly figures shared by scope's analyses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
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
        values = np.log10(values)
        colorbar = "log10 norm"
    figure = go.Figure(
        go.Heatmap(
            z=values,
            x=_position_labels(norms),
            y=list(grid.index),
            colorbar={"title": colorbar},
            customdata=grid.values,
            hovertemplate="layer %{y}<br>%{x}<br>norm %{customdata:.1f}<extra></extra>",
        )
    )
    figure.update_layout(
        title="Residual stream norm (hook_resid_post)",
        xaxis_title="position: token",
        yaxis_title="layer",
        yaxis_autorange="reversed",
    )
    return figure


def pareto_front(x: Sequence[float], y: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both ``x`` and ``y`` (higher is better), by ``x``."""
    points = [(float(a), float(b), i) for i, (a, b) in enumerate(zip(x, y)) if np.isfinite(a) and np.isfinite(b)]
    front = []
    for a, b, i in points:
        dominated = any(c >= a and d >= b and (c > a or d > b) for c, d, _ in points)
        if not dominated:
            front.append((a, i))
    return [i for _, i in sorted(front)]


def steering_tradeoff_figure(
    results: pd.DataFrame,
    *,
    x: str | None = None,
    y: str | None = None,
    recommended: float | None = None,
) -> go.Figure:
    """Concept vs fluency over steering strengths (means over prompts), the Pareto front marked.

    ``results``: a :func:`scope.sweep` table (``x="fluency"``, ``y="concept"`` by default) or a
    :func:`scope.evaluate_steering` table (then the judge's ``fluency_score`` and
    ``concept_score`` by default). A ``method`` column (e.g. "SAE clamp", "DiffMean add") draws
    one curve per method. ``recommended`` marks that strength (see
    :func:`scope.steering.evaluation.recommend_strength`). Up is more of the concept in the
    text, right is more fluent: a good strength sits up and right, on the front.
    """
    judged = {"concept_score", "fluency_score"} <= set(results.columns)
    x = x or ("fluency_score" if judged else "fluency")
    y = y or ("concept_score" if judged else "concept")
    for column in (x, y, "value"):
        if column not in results.columns:
            raise ValueError(f"results has no {column!r} column (columns: {', '.join(map(str, results.columns))}).")
    keys = ["method", "value"] if "method" in results.columns else ["value"]
    means = results.groupby(keys, sort=True)[[x, y]].mean().reset_index()
    figure = go.Figure()
    for method, group in means.groupby("method", sort=False) if "method" in means else [(None, means)]:
        figure.add_trace(
            go.Scatter(
                x=group[x],
                y=group[y],
                mode="lines+markers+text",
                name=str(method) if method is not None else "strength",
                text=[f"{v:g}" for v in group["value"]],
                textposition="top center",
                hovertemplate=f"strength %{{text}}<br>{x} %{{x:.2f}}<br>{y} %{{y:.2f}}<extra></extra>",
            )
        )
    front = means.iloc[pareto_front(means[x], means[y])]
    figure.add_trace(
        go.Scatter(
            x=front[x],
            y=front[y],
            mode="lines+markers",
            name="Pareto front",
            line={"dash": "dot", "color": "gray"},
            marker={"size": 14, "symbol": "circle-open", "color": "black"},
            hoverinfo="skip",
        )
    )
    if recommended is not None:
        chosen = means[means["value"] == recommended]
        figure.add_trace(
            go.Scatter(
                x=chosen[x],
                y=chosen[y],
                mode="markers",
                name=f"recommended ({recommended:g})",
                marker={"size": 18, "symbol": "star", "color": "gold", "line": {"width": 1, "color": "black"}},
            )
        )
    labels = {
        "fluency": "fluency (mean log-prob of generated tokens, unsteered model)",
        "concept": "concept (feature's mean activation on the generated text)",
        "fluency_score": "fluency (judge, 0-2)",
        "concept_score": "concept (judge, 0-2)",
    }
    figure.update_layout(
        title="Steering trade-off: concept vs fluency by strength",
        xaxis_title=labels.get(x, x),
        yaxis_title=labels.get(y, y),
    )
    return figure


def trace_heatmap(trace: pd.DataFrame, feature: int | None = None, title: str | None = None):
    """Layers x token positions heatmap of a :func:`scope.trace` table.

    With ``feature=None`` each cell is the strongest activation at that layer and position and
    the hover names its feature. With ``feature=f`` each cell is feature f's activation, blank
    where f is not among the trace's top-k there (trace with a larger k to see more of it).
    Hovers carry the Neuronpedia link when the trace has a ``url`` column.
    """
    _check_trace(trace)
    rows = trace if feature is None else trace[trace["feature"] == feature]
    best = rows.sort_values("activation", ascending=False).drop_duplicates(["layer", "position"])
    layers = sorted(trace["layer"].unique())
    positions = sorted(trace["position"].unique())
    z = _grid(best, layers, positions, "activation", np.nan)
    features = _grid(best, layers, positions, "feature", None)
    urls = _grid(best, layers, positions, "url", "") if "url" in best else None
    tokens = trace.drop_duplicates("position").set_index("position")["token"]
    labels = [f"{p}: {tokens[p]!r}" for p in positions]
    custom = np.dstack([features, urls]) if urls is not None else features[..., None]
    hover = "layer %{y}<br>%{x}<br>feature %{customdata[0]}<br>activation %{z:.3g}"
    if urls is not None:
        hover += "<br>%{customdata[1]}"
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=[str(layer) for layer in layers],
            customdata=custom,
            hovertemplate=hover + "<extra></extra>",
            colorscale="Viridis",
            colorbar={"title": "activation"},
        )
    )
    default = "Top SAE feature per token and layer" if feature is None else f"Feature {feature} across layers"
    figure.update_layout(title=title or default, xaxis_title="token", yaxis_title="layer")
    return figure


def _check_trace(trace: pd.DataFrame) -> None:
    missing = {"layer", "position", "token", "feature", "activation"} - set(trace.columns)
    if missing:
        raise ValueError(f"Not a scope.trace table: missing column(s) {', '.join(sorted(missing))}.")
    if trace.empty:
        raise ValueError("The trace is empty (no feature fired at any traced layer); nothing to plot.")


def _grid(frame: pd.DataFrame, layers: list, positions: list, column: str, fill) -> np.ndarray:
    grid = np.full((len(layers), len(positions)), fill, dtype=object if fill is None or fill == "" else float)
    row = {layer: i for i, layer in enumerate(layers)}
    col = {position: j for j, position in enumerate(positions)}
    for layer, position, value in zip(frame["layer"], frame["position"], frame[column]):
        grid[row[layer], col[position]] = value
    return grid


def attribution_figure(attribution: Any, title: str | None = None) -> go.Figure:
    """Horizontal bars of an :class:`~scope.Attribution` (from :func:`scope.attribute` or
    :func:`scope.shield.attribute`): which features push the metric.

    Right of zero raises the metric (for ShieldGemma: P(Yes)), left lowers it; each bar is
    labelled with the feature and the token where it contributes most. The SAE error term's
    share is drawn as a grey bar, so a metric the SAE does not explain (a large error share) is
    visible next to the features.
    """
    table = getattr(attribution, "table", attribution)
    missing = {"feature", "attribution", "token", "position"} - set(table.columns)
    if missing:
        raise ValueError(f"Not an attribution table: missing column(s) {', '.join(sorted(missing))}.")
    rows = table.sort_values("attribution")
    labels = [f"f{f} @ {p}: {t!r}" for f, p, t in zip(rows["feature"], rows["position"], rows["token"])]
    values = list(rows["attribution"])
    colors = ["crimson" if v >= 0 else "steelblue" for v in values]
    metric_name = getattr(attribution, "metric_name", "metric")
    if hasattr(attribution, "error"):
        labels, values, colors = ["SAE error term"] + labels, [attribution.error] + values, ["grey"] + colors
    default = f"Features behind the verdict (attribution to {metric_name})"
    if metric_name == "logit Yes - logit No":
        default += f"; P(Yes) = {1.0 / (1.0 + np.exp(-attribution.metric)):.3f}"
    elif hasattr(attribution, "metric"):
        default += f"; {metric_name} = {attribution.metric:.3f}"
    figure = go.Figure(
        go.Bar(
            x=values,
            y=labels,
            orientation="h",
            marker_color=colors,
            hovertemplate="%{y}<br>attribution %{x:.3g}<extra></extra>",
        )
    )
    figure.update_layout(
        title=title or default,
        xaxis_title="attribution (+ raises, - lowers)",
        yaxis_title="feature @ position: token",
        height=max(300, 28 * len(labels) + 120),
    )
    return figure
