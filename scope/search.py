"""Feature search: find the feature of a concept by words, by contrast, or by examples.

Three ways in, one result shape (``feature, score, label, ...``, best first):

- ``query="if statement"``: TF-IDF (scikit-learn) over each feature's label, explanation,
  peak tokens and derived concept (``body of water (ocean, sea, lake)``); the score is the
  cosine similarity. No embedding model: nothing to download.
- ``positive=[...]``, ``negative=[...]``: contrastive search, as Goodfire's contrast and
  AxBench's concept detection do it.

  1. Tokenize every text (one BOS each) and sort them by length, so batches pad little.
  2. One batched pass over both sets to the SAE's hook (the model stops there); encode only
     real tokens, never BOS or padding.
  3. Each text's value for a feature is its maximum over the text's tokens.
  4. Per feature, AUROC of those maxima for positive vs negative texts (the Mann-Whitney
     statistic from ranks, ties averaged, every feature at once), and the difference of the
     mean maxima; rank by AUROC, ties broken by the mean difference.

- ``positive=[...]`` alone: features that fire on those texts far more than on the corpus.
  Score: ``log2((active + 1) / (expected + 1))``, where ``active`` counts the positive tokens
  where the feature fires and ``expected`` is that token count times the feature's corpus
  density (from the SAE's feature statistics or its labels); the +1 keeps a feature seen once
  from outranking one seen on every text. Without densities, the mean maximum over the texts
  (divided by the feature's max activation when recorded) is the score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from scope import _checks
from scope.feature_stats import feature_stats
from scope.features import with_urls
from scope.hooks import activation_shape, check_compatible, check_width, run_to_hooks, sae_hook
from scope.inputs import pad, pad_id, to_tokens
from scope.labels import PEAK_CLOSE, PEAK_OPEN, as_labels, feature_labels, label_of

TOKEN_PATTERN = r"(?u)\w+|[^\w\s]"  # words, and punctuation as tokens of its own ("@", "'")


def search_features(
    model: Any,
    sae: Any,
    *,
    query: str | None = None,
    positive: Sequence[str] | None = None,
    negative: Sequence[str] | None = None,
    k: int = 10,
    labels: Any = None,
    batch_size: int = 16,
) -> pd.DataFrame:
    """The ``k`` features that best match a query, separate ``positive`` from ``negative``
    texts, or fire on ``positive`` texts beyond their corpus density.

    Args:
        model: the model the SAE reads (unused, and may be None, for ``query=``).
        query: words to find in the features' labels and explanations.
        positive, negative: texts with and without the concept (contrastive search); or
            ``positive`` alone.
        k: rows returned.
        labels: a label table (or ``{feature: label}``) to search and show; default the labels
            attached to ``sae`` (the demo SAE ships some).
        batch_size: texts per forward pass.

    Returns:
        DataFrame(feature, score, label, ...), best first. Query: plus explanation,
        top_tokens. Contrastive: plus auroc, mean_difference, positive_mean, negative_mean,
        positive_fraction (the share of positive texts where the feature fires). Positive
        alone: plus positive_fraction, positive_mean, active_tokens, expected_tokens. A url
        column when the SAE has a Neuronpedia id.
    """
    k = _checks.positive_int(k, "k")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    table = as_labels(labels) if labels is not None else feature_labels(sae)
    if query is not None:
        if positive is not None or negative is not None:
            raise ValueError("Pass either query= or positive= (with or without negative=), not both.")
        return _finish(_query_search(_checks.text(query, "query"), table, k), sae, table)
    if positive is None:
        raise ValueError(
            "search_features needs query='words', or positive=[texts] (with negative=[texts] for a contrast)."
        )
    positive = _nonempty_texts(positive, "positive")
    check_compatible(model, sae)
    if negative is not None:
        negative = _nonempty_texts(negative, "negative")
        maxima, _, _ = _text_maxima(model, sae, [*positive, *negative], batch_size)
        return _finish(_contrast(maxima[: len(positive)], maxima[len(positive) :], k), sae, table)
    maxima, active, n_tokens = _text_maxima(model, sae, positive, batch_size)
    return _finish(_over_corpus(maxima, active, n_tokens, _density(sae, table), sae, k), sae, table)


def _nonempty_texts(values: Any, name: str) -> list[str]:
    texts = _checks.texts(values, name)
    if not texts:
        raise ValueError(f"{name} must hold at least one text, got an empty list.")
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"{name}[{i}] is empty ({text!r}); every text needs tokens to read features on.")
    return texts


def _finish(frame: pd.DataFrame, sae: Any, table: pd.DataFrame | None) -> pd.DataFrame:
    if "label" not in frame.columns:
        frame.insert(2, "label", label_of(table, frame["feature"]))
    return with_urls(frame.reset_index(drop=True), sae)


# ----------------------------------------------------------------------------- by words


def _query_search(query: str, table: pd.DataFrame | None, k: int) -> pd.DataFrame:
    from sklearn.feature_extraction.text import TfidfVectorizer

    if table is None or table.empty:
        raise ValueError(
            "search_features(query=...) searches feature labels, and this SAE carries none. Pass labels= "
            "(scope.label_features(scope.mine(model, sae, texts)), scope.neuronpedia_explanations(sae), "
            "or a {feature: label} dict), or search by contrast with positive=/negative= texts."
        )
    documents = [_document(row) for row in table.itertuples(index=False)]
    vectorizer = TfidfVectorizer(token_pattern=TOKEN_PATTERN, sublinear_tf=True)
    matrix = vectorizer.fit_transform(documents)
    scores = (matrix @ vectorizer.transform([query]).T).toarray().ravel()  # rows are L2-normalised: cosine
    # equal scores: the label whose top examples agree most on one token first
    share = np.nan_to_num(table["token_share"].to_numpy(dtype=float), nan=0.0)
    order = [i for i in np.lexsort((-share, -scores))[:k] if scores[i] > 0]
    found = table.iloc[order]
    return pd.DataFrame(
        {
            "feature": found["feature"].to_numpy(),
            "score": scores[order],
            "label": found["label"].to_numpy(),
            "explanation": found["explanation"].to_numpy(),
            "top_tokens": found["top_tokens"].to_numpy(),
        }
    )


def _document(row: Any) -> str:
    """What a query is matched against: explanation, peak tokens, context pattern and derived
    concept (the label text itself repeats them with shares and marks that are no words)."""
    pattern = str(row.pattern or "")
    for mark in (PEAK_OPEN, PEAK_CLOSE, "…", "↵", "␣"):  # marks, not words
        pattern = pattern.replace(mark, " ")
    concept = getattr(row, "concept", None)  # scope's derived WordNet concept, when labels carry one
    parts = [row.explanation or "", " ".join(row.top_tokens), pattern, concept if isinstance(concept, str) else ""]
    if not row.top_tokens and not row.explanation:
        parts.append(str(row.label))  # labels from elsewhere: the text is all there is
    return " ".join(parts)


# ----------------------------------------------------------------------------- one batched pass


def _text_maxima(model: Any, sae: Any, texts: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Each text's maximum of every feature over its tokens ``[texts, d_sae]`` (BOS and padding
    excluded), how many of the texts' tokens each feature fires on ``[d_sae]``, and how many
    tokens that is out of."""
    rows = [to_tokens(model, text, name=f"text {i}")[0] for i, text in enumerate(texts)]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths share a batch
    hook = sae_hook(sae)
    maxima = torch.zeros(len(rows), int(sae.cfg.d_sae))
    active = torch.zeros(int(sae.cfg.d_sae), dtype=torch.long)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        tokens, real = pad([rows[i] for i in chosen], pad_id(model), side="right")  # causal: padding unseen
        mask = real.bool()
        mask[:, 0] = False  # BOS
        act = run_to_hooks(model, tokens, [hook])[hook]
        if activation_shape(model, hook) is None:
            check_width(model, sae, tuple(act.shape[2:]))
        with torch.no_grad():
            acts = sae.encode(act[mask.to(act.device)].to(sae.W_dec.dtype)).float().cpu()  # [real tokens, d_sae]
        for i, text_acts in zip(chosen, acts.split(mask.sum(1).tolist())):
            maxima[i] = text_acts.amax(0)
        active += (acts > 0).sum(0)
    return maxima, active, sum(len(r) - 1 for r in rows)


# ----------------------------------------------------------------------------- scores


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> np.ndarray:
    """Per column, the AUROC of ``positive`` rows against ``negative`` rows (0.5 = no
    separation, 1 = every positive above every negative; ties count half)."""
    from scipy.stats import rankdata

    values = torch.cat([positive, negative]).double().numpy()
    ranks = rankdata(values, axis=0)  # average ranks for ties
    n_pos, n_neg = len(positive), len(negative)
    return (ranks[:n_pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _contrast(positive: torch.Tensor, negative: torch.Tensor, k: int) -> pd.DataFrame:
    areas = auroc(positive, negative)
    pos_mean, neg_mean = positive.double().mean(0).numpy(), negative.double().mean(0).numpy()
    difference = pos_mean - neg_mean
    order = np.lexsort((-difference, -areas))[:k]  # last key sorts first: AUROC, then mean difference
    return pd.DataFrame(
        {
            "feature": order,
            "score": areas[order],
            "auroc": areas[order],
            "mean_difference": difference[order],
            "positive_mean": pos_mean[order],
            "negative_mean": neg_mean[order],
            "positive_fraction": (positive > 0).double().mean(0).numpy()[order],
        }
    )


def _density(sae: Any, table: pd.DataFrame | None) -> np.ndarray | None:
    """Each feature's corpus density: the SAE's recorded statistics first, then its labels'."""
    stats = feature_stats(sae)
    if "density" in stats:
        return stats["density"].double().numpy()
    if table is not None and table["density"].notna().any():
        density = np.full(int(sae.cfg.d_sae), math.nan)
        density[table["feature"].to_numpy()] = table["density"].to_numpy(dtype=float)
        return density
    return None


def _over_corpus(
    maxima: torch.Tensor, active: torch.Tensor, n_tokens: int, density: np.ndarray | None, sae: Any, k: int
) -> pd.DataFrame:
    mean = maxima.double().mean(0).numpy()
    counts = active.double().numpy()
    fraction = (maxima > 0).double().mean(0).numpy()
    if density is not None:
        expected = n_tokens * np.nan_to_num(density, nan=0.0)
        score = np.log2((counts + 1) / (expected + 1))
    else:
        expected = np.full_like(mean, math.nan)
        peak = feature_stats(sae).get("max_activation")
        score = mean / peak.double().clamp_min(1e-12).numpy() if peak is not None else mean
    order = np.lexsort((-mean, -score))[:k]
    return pd.DataFrame(
        {
            "feature": order,
            "score": score[order],
            "positive_fraction": fraction[order],
            "positive_mean": mean[order],
            "active_tokens": counts[order].astype(np.int64),
            "expected_tokens": expected[order],
        }
    )
