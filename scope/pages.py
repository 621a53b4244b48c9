"""Feature pages (``scope.dashboard``): one HTML file per feature, readable offline, laid out like
Neuronpedia's and SAEDashboard's.

A page shows, for one feature:

- its label, LLM explanation and detection score when known (:mod:`scope.labels`,
  :func:`scope.explain`, :func:`scope.score_explanations`), its density and Neuronpedia link;
- the activation unit: values are the SAE's feature activations, and the feature's decoder-row
  norm says what one unit adds to the residual stream;
- example groups: the top activating examples, then examples sampled from intervals further
  down the distribution (between quantiles of the feature's non-zero activations), each with its
  document id and token position, every context aligned on its peak token, tokens shown as text
  (newlines as ``↵``, long space runs shortened) and shaded by activation (the value on hover);
- its activation histogram, and the tokens its decoder direction promotes and suppresses.

How the interval groups are sampled (a second pass over the corpus, after :func:`scope.mine`):

1. From the mined histogram, the quantiles of the feature's non-zero activations split
   ``(0, max)`` into ``groups`` intervals (e.g. 0-25%, 25-50%, 50-75%, 75-100%).
2. Each window of the corpus (as mined) whose maximum for the feature falls in an interval is a
   candidate for that interval's group; top examples are skipped.
3. ``per_group`` candidates per interval are kept by seeded reservoir sampling (uniform over the
   candidates, memory bounded by features x groups x per_group).

Pages written together share one ``plotly.min.js`` beside them (written once; ~4.7 MB instead of
4.7 MB inlined in every page) and open offline from disk.
"""

from __future__ import annotations

import html
import itertools
import math
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.offline import get_plotlyjs

from scope import _checks
from scope._io import batched, check_writable_dir, check_writable_file, iter_texts, write_atomically
from scope.density import DENSE_THRESHOLD
from scope.features import check_feature, feature_logits, neuronpedia_url
from scope.hooks import run_to_hooks, sae_hook
from scope.inputs import pad, pad_id
from scope.labels import CONCEPT, as_labels, feature_labels
from scope.mining import Mined, iter_windows, mine
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


# ----------------------------------------------------------------------------- interval sampling


@dataclass
class Sampled:
    """One sampled example: where it is, its peak, and the context around the peak."""

    text_id: int
    position: int
    activation: float
    tokens: list[int]
    acts: list[float]
    peak: int  # index of the peak in ``tokens``


@dataclass
class Group:
    """Examples whose peak lies in ``[low, high)``, between the ``quantiles`` of non-zero activations."""

    low: float
    high: float
    quantiles: tuple[float, float]
    examples: list[Sampled] = field(default_factory=list)
    seen: int = 0  # candidates met (the reservoir keeps ``per_group`` of them)


def activation_quantiles(mined: Mined, feature: int, fractions: Sequence[float]) -> list[float]:
    """Quantiles of the feature's non-zero token activations, read off the mined histogram
    (interpolated geometrically inside a bin, as its bins are log-spaced)."""
    i = mined.features.index(feature)
    counts = mined.histogram[i].double()
    edges = mined.histogram_edges.double()
    total = float(counts.sum())
    cumulative = torch.cumsum(counts, 0)
    out = []
    for q in fractions:
        target = q * total
        b = int(torch.searchsorted(cumulative, torch.tensor(target, dtype=torch.float64)).clamp(max=len(counts) - 1))
        before = float(cumulative[b - 1]) if b else 0.0
        inside = (target - before) / float(counts[b]) if counts[b] > 0 else 0.0
        lo, hi = float(edges[b]), float(edges[b + 1])
        out.append(lo * (hi / lo) ** inside if lo > 0 else hi * inside)
    return out


def check_mined_matches(model: Any, sae: Any, mined: Mined, texts: Any, window: int) -> None:
    """ValueError unless ``mined`` is a mining result of ``sae`` over ``texts`` (with ``window``).

    A :class:`Mined` records no SAE identity, so this re-reads its strongest example: the
    features must lie within the SAE's width, and the SAE must give the recorded activation on
    the recorded token of that text (one window's forward pass). Another SAE, corpus or window
    gives another value there. Skipped for a one-shot iterator of texts (it cannot be re-read).
    """
    beyond = [f for f in mined.features if not 0 <= int(f) < sae.cfg.d_sae]
    if beyond:
        raise ValueError(
            f"mined holds feature(s) {beyond[:5]}, beyond this SAE's {sae.cfg.d_sae} features: it is the "
            "mining result of another SAE. Mine this SAE (scope.mine) or pass its own result."
        )
    if mined.examples.empty or (not isinstance(texts, (str, os.PathLike)) and iter(texts) is texts):
        return
    top = mined.examples.loc[mined.examples["activation"].idxmax()]
    text_id, position, recorded = int(top["text_id"]), int(top["position"]), float(top["activation"])
    text = next(itertools.islice(iter_texts(texts), text_id, None), None)
    found = None if text is None else _activation_at(model, sae, text, window, int(top["feature"]), position)
    if found is None or not math.isclose(found, recorded, rel_tol=1e-3, abs_tol=1e-4):
        read = "texts has no such token" if found is None else f"this SAE reads {found:.6g} there"
        raise ValueError(
            f"mined does not match this SAE and texts: its strongest example is feature {int(top['feature'])} "
            f"at {recorded:.6g} on text {text_id}, token {position}, but {read}. It was mined with another "
            "SAE, corpus or window (a mining result records none of them, so scope re-reads that example): "
            "pass the result of scope.mine(model, sae, texts) for these very arguments."
        )


def _activation_at(model: Any, sae: Any, text: str, window: int, feature: int, position: int) -> float | None:
    """The SAE's activation of ``feature`` at token ``position`` of ``text``, read in the mining
    window that holds it (None when the text is shorter)."""
    for w in iter_windows(model, [text], window):
        if w.start <= position < w.start + len(w.tokens):
            tokens = torch.tensor([[model.tokenizer.bos_token_id, *w.tokens]])
            act = run_to_hooks(model, tokens, [sae_hook(sae)])[sae_hook(sae)]
            with torch.no_grad():
                values = sae.encode(act.to(sae.W_dec.dtype))
            return float(values[0, position - w.start + 1, feature])
    return None


def interval_examples(
    model: Any,
    sae: Any,
    mined: Mined,
    features: list[int],
    texts: Any,
    groups: int,
    per_group: int,
    context: int,
    window: int,
    seed: int,
) -> dict[int, list[Group]]:
    """For each feature, ``groups`` interval groups of up to ``per_group`` sampled examples
    (see the module docstring); one pass over ``texts``, skipped when ``groups`` is 0."""
    plan = {f: _intervals(mined, f, groups) for f in features}
    if not groups or not any(plan.values()):
        return plan
    top = {(int(r.feature), int(r.text_id), int(r.position)) for r in mined.examples.itertuples()}
    hook = sae_hook(sae)
    selected = torch.tensor(features, dtype=torch.long)
    rng = random.Random(seed)
    bos = model.tokenizer.bos_token_id
    for batch in batched(iter_windows(model, iter_texts(texts), window), 16):
        tokens, mask = pad([torch.tensor([bos, *w.tokens]) for w in batch], pad_id(model), side="right")
        act = run_to_hooks(model, tokens, [hook], attention_mask=mask)[hook]
        with torch.no_grad():
            values = sae.encode(act.to(sae.W_dec.dtype))[..., selected.to(act.device)].float().cpu()
        real = mask.bool()
        real[:, 0] = False  # BOS never counts
        for row, w in enumerate(batch):
            real[row, 1 : 1 + w.context_only] = False  # read as context only, scored in the window before
        values = values.masked_fill(~real[..., None], 0.0)  # [batch, pos, features]
        maxima, peaks = values.max(dim=1)
        for b, j in zip(*torch.nonzero(maxima > 0, as_tuple=True)):
            b, j = int(b), int(j)
            feature, value, peak = features[j], float(maxima[b, j]), int(peaks[b, j])
            if (feature, batch[b].text_id, batch[b].start + peak - 1) in top:
                continue
            group = next((g for g in plan[feature] if g.low <= value < g.high), None)
            if group is None:
                continue
            group.seen += 1
            slot = len(group.examples) if len(group.examples) < per_group else rng.randrange(group.seen)
            if slot < per_group:
                example = _sampled(batch[b], tokens[b], values[b, :, j], peak, int(mask[b].sum()), context)
                if slot == len(group.examples):
                    group.examples.append(example)
                else:
                    group.examples[slot] = example
    for intervals in plan.values():
        for group in intervals:
            group.examples.sort(key=lambda e: -e.activation)
    return plan


def _intervals(mined: Mined, feature: int, groups: int) -> list[Group]:
    i = mined.features.index(feature)
    if not groups or float(mined.histogram[i].sum()) == 0:
        return []
    fractions = [g / groups for g in range(groups + 1)]
    edges = activation_quantiles(mined, feature, fractions)
    edges[0], edges[-1] = 0.0, math.inf  # every non-zero activation falls in some interval
    bounds = [(edges[g], edges[g + 1], (fractions[g], fractions[g + 1])) for g in range(groups)]
    return [Group(low, high, q) for low, high, q in reversed(bounds)]  # highest first


def _sampled(window, tokens: torch.Tensor, acts: torch.Tensor, peak: int, length: int, context: int) -> Sampled:
    start, stop = max(1, peak - context), min(length, peak + context + 1)
    return Sampled(
        text_id=window.text_id,
        position=window.start + peak - 1,
        activation=float(acts[peak]),
        tokens=tokens[start:stop].tolist(),
        acts=acts[start:stop].tolist(),
        peak=peak - start,
    )


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
