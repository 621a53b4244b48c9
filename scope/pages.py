"""Feature pages (``scope.dashboard``): one self-contained HTML file per feature, readable offline.

A page shows the feature's top activating examples with every token shaded by the feature's
activation (the value on hover), its activation histogram and density over the corpus, the
tokens its decoder direction promotes and suppresses (logit lens), and its Neuronpedia link when
the SAE has one. Figures are plotly, with plotly.js inlined so the page needs no network.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from scope._io import check_writable_dir, check_writable_file, write_atomically
from scope.examples import DEFAULT_CONTEXT, Mined, mine
from scope.features import check_feature, feature_logits, neuronpedia_url
from scope.hooks import sae_hook

SHADE = (255, 127, 14)  # plotly's orange


def dashboard(
    model: Any,
    sae: Any,
    feature: int,
    texts: Any,
    path: str | os.PathLike,
    *,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    mined: Mined | None = None,
    progress: bool = True,
) -> Path:
    """Write the page of ``feature`` to ``path`` (an .html file) from its top examples in ``texts``.

    ``mined``: reuse the result of :func:`scope.examples.mine` (one pass serves many pages);
    otherwise ``texts`` is mined for this feature alone. Returns the path written.
    """
    feature = check_feature(sae, feature)
    check_writable_file(path, "path")
    if mined is None:
        mined = mine(model, sae, texts, features=[feature], k=k, context=context, progress=progress)
    if feature not in mined.features:
        raise ValueError(
            f"Feature {feature} was not mined; the mined features are {mined.features[:20]}"
            f"{'...' if len(mined.features) > 20 else ''}."
        )
    page = _page(model, sae, feature, mined)
    return _write_text(Path(path), page)


def dashboards(
    model: Any,
    sae: Any,
    features: Sequence[int],
    texts: Any,
    folder: str | os.PathLike,
    *,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    progress: bool = True,
) -> Path:
    """Pages for ``features`` from one pass over ``texts``, plus ``index.html`` linking them.
    Returns the index path."""
    folder = check_writable_dir(folder, "folder")
    mined = mine(model, sae, texts, features=list(features), k=k, context=context, progress=progress)
    rows = []
    for i, feature in enumerate(mined.features):
        dashboard(model, sae, feature, texts, folder / f"feature_{feature}.html", mined=mined)
        top = mined.examples[mined.examples.feature == feature]
        rows.append(
            f"<tr><td><a href='feature_{feature}.html'>{feature}</a></td>"
            f"<td>{float(mined.density[i]):.2e}</td>"
            f"<td>{(top.activation.max() if len(top) else 0.0):.2f}</td>"
            f"<td>{html.escape(top.token.iloc[0]) if len(top) else ''}</td></tr>"
        )
    index = _html(
        f"SAE features at {html.escape(sae_hook(sae))}",
        f"""
<h1>Features of the SAE at <code>{html.escape(sae_hook(sae))}</code></h1>
<p>{mined.n_tokens:,} tokens read.</p>
<table><tr><th>feature</th><th>density</th><th>max activation</th><th>top token</th></tr>
{"".join(rows)}</table>""",
    )
    return _write_text(folder / "index.html", index)


# ----------------------------------------------------------------------------- the page


def _page(model, sae, feature: int, mined: Mined) -> str:
    i = mined.features.index(feature)
    rows = mined.examples.index[mined.examples.feature == feature]
    url = neuronpedia_url(sae, feature)
    link = f" · <a href='{html.escape(url)}'>Neuronpedia</a>" if url else ""
    top = mined.examples.loc[rows]
    max_act = float(top.activation.max()) if len(top) else 0.0
    body = f"""
<h1>Feature {feature}</h1>
<p class="meta">SAE at <code>{html.escape(sae_hook(sae))}</code>, width {int(sae.cfg.d_sae)}{link}<br>
density <b>{float(mined.density[i]):.3e}</b> (fires on {int(round(float(mined.density[i]) * mined.n_tokens)):,}
of {mined.n_tokens:,} tokens) · max activation <b>{max_act:.3f}</b></p>
<h2>Top activating examples</h2>
{_examples_html(mined, rows, max_act)}
<h2>Activation histogram</h2>
{_histogram_figure(mined, i, feature).to_html(full_html=False, include_plotlyjs=True, div_id="histogram")}
<h2>Logit lens</h2>
{_logit_lens_html(model, sae, feature)}
"""
    return _html(f"Feature {feature}", body)


def _examples_html(mined: Mined, rows, max_act: float) -> str:
    if len(rows) == 0:
        return "<p class='empty'>The feature never fired on this corpus.</p>"
    lines = []
    for row in rows:
        example = mined.examples.loc[row]
        spans = "".join(_token_span(token, value, max_act) for token, value in zip(*mined.span(row)))
        lines.append(
            f"<div class='example' data-rank='{int(example['rank'])}'>"
            f"<span class='act'>{example['activation']:.2f}</span> {spans}</div>"
        )
    return "\n".join(lines)


def _token_span(token: str, value: float, max_act: float) -> str:
    alpha = 0.0 if max_act <= 0 else min(1.0, max(0.0, value / max_act))
    shown = html.escape(token).replace("\n", "↵").replace(" ", "&nbsp;") or "&#8203;"
    r, g, b = SHADE
    return (
        f"<span class='tok' title='activation {value:.3f}' data-act='{value:.4f}' "
        f"style='background: rgba({r},{g},{b},{alpha:.3f})'>{shown}</span>"
    )


def _histogram_figure(mined: Mined, i: int, feature: int) -> go.Figure:
    edges = mined.histogram_edges.tolist()
    counts = mined.histogram[i].tolist()
    centres = [(a * b) ** 0.5 for a, b in zip(edges[:-1], edges[1:])]
    used = [j for j, c in enumerate(counts) if c > 0]
    figure = go.Figure(
        go.Bar(
            x=[centres[j] for j in used],
            y=[counts[j] for j in used],
            marker_color="rgb({},{},{})".format(*SHADE),
            hovertemplate="activation ~%{x:.3g}<br>%{y} tokens<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"Feature {feature}: non-zero activations",
        xaxis_type="log",
        xaxis_title="activation",
        yaxis_title="tokens",
        height=320,
        margin=dict(l=50, r=20, t=50, b=40),
    )
    return figure


def _logit_lens_html(model, sae, feature: int) -> str:
    table = feature_logits(model, sae, feature, k=10)
    parts = []
    for direction in ("promoted", "suppressed"):
        cells = "".join(
            f"<tr><td>{html.escape(repr(r.token))}</td><td>{r.logit:+.3f}</td></tr>"
            for r in table[table.direction == direction].itertuples()
        )
        parts.append(f"<table class='lens'><tr><th colspan=2>{direction}</th></tr>{cells}</table>")
    return f"<div class='lenses'>{''.join(parts)}</div>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222; }
code { background: #f3f3f3; padding: 0 3px; }
.example { font-family: ui-monospace, monospace; font-size: 13px; margin: 4px 0; line-height: 1.6; }
.act { display: inline-block; width: 4.5em; color: #666; }
.tok { border-radius: 2px; }
.lenses { display: flex; gap: 2em; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
"""


def _html(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _write_text(path: Path, text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
