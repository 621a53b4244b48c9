"""Feature pages (``scope.dashboard``): one HTML file per feature, readable offline, laid out like
Neuronpedia's and SAEDashboard's.

A page shows, for one feature:

- its label, LLM explanation and detection score when known (:mod:`scope.labels`,
  :func:`scope.explain`, :func:`scope.score_explanations`), its density and Neuronpedia link;
- the activation unit: values are the SAE's feature activations, and the feature's decoder-row
  norm says what one unit adds to the residual stream;
- example groups: the top activating examples, then examples sampled from intervals further
  down the distribution (between quantiles of the feature's non-zero activations; how they are
  sampled: :mod:`scope.interval_examples`), each with its document id and token position, every
  context aligned on its peak token, tokens shown as text (newlines as ``↵``, long space runs
  shortened) and shaded by activation (the value on hover);
- its activation histogram, and the tokens its decoder direction promotes and suppresses.

Pages written together share one ``plotly.min.js`` beside them (written once; ~4.7 MB instead of
4.7 MB inlined in every page) and open offline from disk.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from scope import _checks
from scope._io import check_writable_dir, check_writable_file, write_atomically
from scope.density import DENSE_THRESHOLD
from scope.features import check_feature, feature_logits, neuronpedia_url
from scope.hooks import sae_hook
from scope.interval_examples import Group, check_mined_matches, interval_examples
from scope.labels import CONCEPT, as_labels, feature_labels
from scope.mining import Mined, mine
from scope.splicing import is_transcoder, output_hook

SHADE = (255, 127, 14)  # plotly's orange
PAGE_CONTEXT = 12  # tokens either side of a peak on a page: long enough to read a phrase
PLOTLY_JS = "plotly.min.js"


def dashboard(
    model: Any,
    sae: Any,
    feature: int,
    texts: Any,
    path: str | os.PathLike,
    *,
    k: int = 20,
    context: int = PAGE_CONTEXT,
    groups: int = 4,
    per_group: int = 5,
    mined: Mined | None = None,
    labels: Any = None,
    explanations: pd.DataFrame | None = None,
    scores: pd.DataFrame | None = None,
    window: int = 128,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write the page of ``feature`` to ``path`` (an .html file; ``plotly.min.js`` is written
    beside it once) from ``texts``. Returns the path written.

    Args:
        k: top examples shown; ``context``: tokens shown either side of each peak.
        groups, per_group: interval groups below the top examples, and examples in each
            (``groups=0``: top examples only, no second pass over ``texts``).
        mined: reuse :func:`scope.mine`'s result (same ``texts`` and window); otherwise ``texts``
            is mined for this feature alone.
        labels: a label table (:func:`scope.labels.as_labels` accepts it); default: the labels
            attached to ``sae``, if any.
        explanations, scores: :func:`scope.explain` / :func:`scope.score_explanations` tables.
        seed: the interval sampling.
    """
    feature = check_feature(sae, feature)
    check_writable_file(path, "path")
    return dashboards(
        model,
        sae,
        [feature],
        texts,
        Path(path).parent,
        k=k,
        context=context,
        groups=groups,
        per_group=per_group,
        mined=mined,
        labels=labels,
        explanations=explanations,
        scores=scores,
        window=window,
        seed=seed,
        progress=progress,
        names={feature: Path(path).name},
        index=False,
    )


def dashboards(
    model: Any,
    sae: Any,
    features: Sequence[int],
    texts: Any,
    folder: str | os.PathLike,
    *,
    k: int = 20,
    context: int = PAGE_CONTEXT,
    groups: int = 4,
    per_group: int = 5,
    mined: Mined | None = None,
    labels: Any = None,
    explanations: pd.DataFrame | None = None,
    scores: pd.DataFrame | None = None,
    window: int = 128,
    seed: int = 0,
    progress: bool = True,
    names: dict[int, str] | None = None,
    index: bool = True,
) -> Path:
    """Pages ``feature_N.html`` for ``features`` (one mining pass, one sampling pass), one shared
    ``plotly.min.js``, and ``index.html`` linking them. Returns the index path (the page's path
    when ``index=False``). Arguments as for :func:`dashboard`."""
    features = [check_feature(sae, f) for f in features]
    groups = _checks.non_negative_int(groups, "groups")
    per_group = _checks.positive_int(per_group, "per_group")
    seed = _checks.seed(seed)
    folder = check_writable_dir(folder, "folder")
    known = _Known.of(sae, labels, explanations, scores)
    if mined is None:
        mined = mine(model, sae, texts, features=features, k=k, context=context, window=window, progress=progress)
    else:
        check_mined_matches(model, sae, mined, texts, window)
    missing = [f for f in features if f not in mined.features]
    if missing:
        raise ValueError(
            f"Feature {missing[0]} was not mined; the mined features are {mined.features[:20]}"
            f"{'...' if len(mined.features) > 20 else ''}."
        )
    sampled = interval_examples(model, sae, mined, features, texts, groups, per_group, context, window, seed)
    write_plotly_js(folder)
    names = names or {f: f"feature_{f}.html" for f in features}
    for f in features:
        _write_text(folder / names[f], _page(model, sae, f, mined, sampled[f], known, k))
    if not index:
        return folder / names[features[0]]
    return _write_text(folder / "index.html", _index(sae, mined, features, names, known))


def write_plotly_js(folder: Path) -> Path:
    """``plotly.min.js`` in ``folder``, written once (rewritten only when plotly's differs)."""
    path = folder / PLOTLY_JS
    source = get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(source.encode("utf-8")):
        write_atomically(path, lambda tmp: tmp.write_text(source, encoding="utf-8"))
    return path


# ----------------------------------------------------------------------------- what is known


@dataclass
class _Known:
    """Label, explanation and detection score per feature, from whatever the caller has."""

    labels: dict[int, str] = field(default_factory=dict)
    explanations: dict[int, tuple[str, str]] = field(default_factory=dict)  # text, source
    scores: dict[int, dict[str, Any]] = field(default_factory=dict)
    concepts: dict[int, str] = field(default_factory=dict)  # derived (scope.labels' concept column)

    @classmethod
    def of(cls, sae: Any, labels: Any, explanations: Any, scores: Any) -> _Known:
        known = cls()
        table = as_labels(labels) if labels is not None else feature_labels(sae)
        if table is not None:
            for row in table.to_dict("records"):
                known.labels[int(row["feature"])] = str(row["label"])
                if isinstance(row.get(CONCEPT), str):
                    known.concepts[int(row["feature"])] = row[CONCEPT]
                if isinstance(row.get("explanation"), str) and row["explanation"]:
                    known.explanations[int(row["feature"])] = (row["explanation"], str(row.get("source", "")))
        for name, frame, needed in (
            ("explanations", explanations, "explanation"),
            ("scores", scores, "balanced_accuracy"),
        ):
            if frame is not None and not (
                isinstance(frame, pd.DataFrame) and {"feature", needed} <= set(frame.columns)
            ):
                raise TypeError(
                    f"{name} must be a DataFrame with 'feature' and '{needed}' columns, got {type(frame).__name__}."
                )
        if explanations is not None:
            for row in explanations.to_dict("records"):
                known.explanations[int(row["feature"])] = (row["explanation"], str(row.get("explainer", "")))
        if scores is not None:
            known.scores = {int(row["feature"]): row for row in scores.to_dict("records")}
        return known


# ----------------------------------------------------------------------------- the page


def _page(model, sae, feature: int, mined: Mined, sampled: list[Group], known: _Known, k: int) -> str:
    i = mined.features.index(feature)
    rows = mined.examples.index[mined.examples.feature == feature][:k]
    url = neuronpedia_url(sae, feature)
    link = f" · <a href='{html.escape(url)}'>Neuronpedia</a>" if url else ""
    top = mined.examples.loc[rows]
    max_act = float(top.activation.max()) if len(top) else 0.0
    norm = float(sae.W_dec[feature].detach().norm())
    body = f"""
<h1>Feature {feature}</h1>
{_meaning_html(feature, known)}
<p class="meta">{_site_html(sae)}, width {int(sae.cfg.d_sae)}{link}<br>
density <b>{float(mined.density[i]):.3e}</b> (fires on {int(round(float(mined.density[i]) * mined.n_tokens)):,}
of {mined.n_tokens:,} tokens) · max activation <b>{max_act:.3f}</b>{_dense_note(float(mined.density[i]))}</p>
<p class="unit">Activations are the SAE's feature activations (its encoder's output).
This feature's decoder row has norm <b>{norm:.3g}</b>: an activation <i>a</i> adds
<i>a</i> &times; {norm:.3g} to the residual stream's norm along its direction.</p>
<h2>Top activations</h2>
{_top_html(mined, rows, max_act)}
{"".join(_group_html(g, model, max_act) for g in sampled)}
<h2>Activation histogram</h2>
{_histogram_figure(mined, i, feature).to_html(full_html=False, include_plotlyjs=False, div_id="histogram")}
<h2>Logit lens</h2>
{_logit_lens_html(model, sae, feature)}
"""
    return _html(f"Feature {feature}", body, plotly=True)


def _site_html(sae: Any) -> str:
    """Where the features read (and, for a transcoder, write)."""
    if is_transcoder(sae):
        return (
            f"Transcoder <code>{html.escape(sae_hook(sae))}</code> &rarr; <code>{html.escape(output_hook(sae))}</code>"
        )
    return f"SAE at <code>{html.escape(sae_hook(sae))}</code>"


def _dense_note(density: float) -> str:
    if density <= DENSE_THRESHOLD:
        return ""
    return f" · <b class='dense'>dense</b> (over {DENSE_THRESHOLD:.0%} of tokens): token views hide it by default"


def _meaning_html(feature: int, known: _Known) -> str:
    parts = []
    if feature in known.labels:
        parts.append(f"<p class='label'>Label: <b>{html.escape(known.labels[feature])}</b></p>")
    if feature in known.concepts:
        parts.append(
            f"<p class='concept'>Concept (derived from WordNet): <b>{html.escape(known.concepts[feature])}</b></p>"
        )
    if feature in known.explanations:
        text, source = known.explanations[feature]
        by = f" <span class='by'>({html.escape(source)})</span>" if source else ""
        parts.append(f"<p class='explanation'>Explanation: <b>{html.escape(text)}</b>{by}</p>")
    score = known.scores.get(feature)
    if score is not None:
        parts.append(
            "<p class='score'>Detection score: balanced accuracy "
            f"<b>{_number(score['balanced_accuracy'])}</b> (precision {_number(score.get('precision'))}, "
            f"recall {_number(score.get('recall'))}; {int(score.get('n_activating', 0))} activating and "
            f"{int(score.get('n_non_activating', 0))} non-activating contexts"
            f"{', scored by ' + html.escape(str(score['scorer'])) if score.get('scorer') else ''})</p>"
        )
    if not parts:
        parts.append("<p class='label none'>No label or explanation yet (scope.label_features, scope.explain).</p>")
    return "\n".join(parts)


def _number(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.2f}"


def _top_html(mined: Mined, rows, max_act: float) -> str:
    if len(rows) == 0:
        return "<p class='empty'>The feature never fired on this corpus.</p>"
    c = mined.context_ids.shape[1] // 2
    lines = []
    for row in rows:
        example = mined.examples.loc[row]
        ids = mined.context_ids[row].tolist()
        tokens, acts = mined.span(row)
        peak = c - sum(1 for t in ids[:c] if t < 0)
        lines.append(
            _example_html(
                tokens,
                acts,
                peak,
                max_act,
                float(example["activation"]),
                int(example["text_id"]),
                int(example["position"]),
                rank=int(example["rank"]),
            )
        )
    return "\n".join(lines)


def _group_html(group: Group, model, max_act: float) -> str:
    low_q, high_q = (round(100 * q) for q in group.quantiles)
    high = "max" if math.isinf(group.high) else f"{group.high:.3g}"
    title = f"Interval {group.low:.3g} to {high} <span class='q'>({low_q}-{high_q}% of non-zero activations)</span>"
    if not group.examples:
        return f"<h3>{title}</h3><p class='empty'>No window peaks in this interval (besides top examples).</p>"
    ids = sorted({t for e in group.examples for t in e.tokens})
    pieces = dict(zip(ids, (model.tokenizer.decode([t]) for t in ids)))
    lines = [
        _example_html([pieces[t] for t in e.tokens], e.acts, e.peak, max_act, e.activation, e.text_id, e.position)
        for e in group.examples
    ]
    return f"<h3>{title} · {len(group.examples)} of {group.seen:,} windows</h3>\n" + "\n".join(lines)


def _example_html(
    tokens: list[str],
    acts: list[float],
    peak: int,
    max_act: float,
    activation: float,
    text_id: int,
    position: int,
    rank: int | None = None,
) -> str:
    """One example, aligned on its peak: the left context right-aligned up to the peak column."""
    left = "".join(_token_span(t, a, max_act) for t, a in zip(tokens[:peak], acts[:peak]))
    right = "".join(_token_span(t, a, max_act) for t, a in zip(tokens[peak + 1 :], acts[peak + 1 :]))
    centre = _token_span(tokens[peak], acts[peak], max_act, peak=True)
    data_rank = f" data-rank='{rank}'" if rank is not None else ""
    return (
        f"<div class='example'{data_rank}><span class='act'>{activation:.2f}</span>"
        f"<span class='where'>doc {text_id} · pos {position}</span>"
        f"<span class='left'>{left}</span>{centre}<span class='right'>{right}</span></div>"
    )


def shown_token(token: str) -> str:
    """A token as a reader sees it: newlines as ``↵``, tabs as ``→``, runs of more than two
    spaces shortened (code indentation), every character escaped for HTML."""
    token = token.replace("\r", "").replace("\n", "↵").replace("\t", "→")
    token = re.sub(r" {3,}", "  ", token)
    return html.escape(token).replace(" ", "&nbsp;")


def _token_span(token: str, value: float, max_act: float, peak: bool = False) -> str:
    alpha = 0.0 if max_act <= 0 else min(1.0, max(0.0, value / max_act))
    shown = shown_token(token) or "&#8203;"
    r, g, b = SHADE
    css = "tok peak" if peak else "tok"
    return (
        f"<span class='{css}' title='activation {value:.3f}' data-act='{value:.4f}' "
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
        xaxis_title="activation (SAE units)",
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
            f"<tr><td><code class='token'>{shown_token(r.token)}</code></td><td>{r.logit:+.3f}</td></tr>"
            for r in table[table.direction == direction].itertuples()
        )
        parts.append(f"<table class='lens'><tr><th colspan=2>{direction}</th></tr>{cells}</table>")
    return f"<div class='lenses'>{''.join(parts)}</div>"


def _index(sae, mined: Mined, features: list[int], names: dict[int, str], known: _Known) -> str:
    rows = []
    for feature in features:
        i = mined.features.index(feature)
        top = mined.examples[mined.examples.feature == feature]
        meaning = known.explanations.get(feature, (known.labels.get(feature, ""), ""))[0]
        rows.append(
            f"<tr><td><a href='{html.escape(names[feature])}'>{feature}</a></td>"
            f"<td>{html.escape(known.labels.get(feature, ''))}</td><td>{html.escape(meaning)}</td>"
            f"<td>{float(mined.density[i]):.2e}</td>"
            f"<td>{(top.activation.max() if len(top) else 0.0):.2f}</td>"
            f"<td><code class='token'>{shown_token(top.token.iloc[0]) if len(top) else ''}</code></td></tr>"
        )
    hook = html.escape(sae_hook(sae))
    return _html(
        f"SAE features at {hook}",
        f"""
<h1>Features of the SAE at <code>{hook}</code></h1>
<p>{mined.n_tokens:,} tokens read.</p>
<table><tr><th>feature</th><th>label</th><th>explanation</th><th>density</th><th>max activation</th>
<th>top token</th></tr>
{"".join(rows)}</table>""",
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; color: #222; }
code { background: #f3f3f3; padding: 0 3px; }
.label, .explanation, .score { margin: 2px 0; } .by, .q { color: #777; font-weight: normal; }
.unit { color: #555; font-size: 13px; }
.example { font-family: ui-monospace, monospace; font-size: 13px; margin: 3px 0; line-height: 1.6;
  display: flex; white-space: nowrap; }
.act { flex: 0 0 4.5em; color: #666; }
.where { flex: 0 0 12em; color: #999; font-size: 11px; }
.left { flex: 0 0 38%; display: flex; justify-content: flex-end; overflow: hidden; }
.right { flex: 1 1 auto; overflow: hidden; }
.tok { border-radius: 2px; } .peak { outline: 1px solid #b35900; font-weight: bold; }
.lenses { display: flex; gap: 2em; }
table { border-collapse: collapse; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; text-align: left; }
"""


def _html(title: str, body: str, plotly: bool = False) -> str:
    script = f"<script src='{PLOTLY_JS}' charset='utf-8'></script>" if plotly else ""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style>{script}</head><body>{body}</body></html>"
    )


def _write_text(path: Path, text: str) -> Path:
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
