"""The model card's moderation metrics for P(Yes) scores: optimal F1 and AU-PRC."""

from __future__ import annotations

from typing import Any

import numpy as np


def _binary_labels(labels: Any, n: int) -> np.ndarray:
    values = np.asarray(labels)
    if values.shape != (n,):
        raise ValueError(f"labels must be {n} values, one per score; got shape {values.shape}.")
    if values.dtype == bool:
        return values.astype(int)
    unexpected = sorted({v for v in values.tolist() if v not in (0, 1)}, key=repr)
    if unexpected:
        raise ValueError(f"labels must be 0/1 (or booleans); found {unexpected[:5]!r}.")
    return values.astype(int)


def evaluate(scores: Any, labels: Any) -> dict[str, float]:
    """The model card's metrics for P(Yes) ``scores`` against 0/1 ``labels`` (1 = violation).

    Returns ``optimal_f1`` (the best F1 over all thresholds), ``threshold`` (the smallest
    score counted as a violation at that F1: predict 1 when ``score >= threshold``),
    ``auprc`` (area under the precision-recall curve as average precision), plus ``n``
    and ``positives``. Computed with scikit-learn.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    truth = _binary_labels(labels, len(values))
    if not np.isfinite(values).all():
        raise ValueError("scores contain NaN or infinite values.")
    if truth.sum() == 0:
        raise ValueError("labels contain no positive (1) example: F1 and AU-PRC are undefined.")
    precision, recall, thresholds = precision_recall_curve(truth, values)
    # The last (precision 1, recall 0) point has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return {
        "optimal_f1": float(f1[best]),
        "threshold": float(thresholds[best]),
        "auprc": float(average_precision_score(truth, values)),
        "n": int(len(values)),
        "positives": int(truth.sum()),
    }
