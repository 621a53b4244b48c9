"""Detection scores of scope's own labels: does a label tell where its feature fires?

A label is checked the way :func:`scope.score_explanations` checks an LLM's explanation, with a
deterministic matcher in place of the LLM scorer:

1. Split each feature's mined examples by rank (:func:`scope.autointerp.split_examples`): the
   odd ranks make the label, the even ranks are held out.
2. Token label: the peak tokens of the odd-rank examples, as :func:`scope.label_features`
   lists them. Concept label (derived, where WordNet gives one): the WordNet concept of those
   peak tokens (:meth:`scope.wordnet.WordNet.concept`).
3. Contexts: the held-out examples (activating) and other features' contexts on which this
   feature is silent on every token, checked with the model and SAE
   (:func:`scope.autointerp.silent_contexts`, the same as the LLM scorer's).
4. Matcher: a context "matches" a token label when one of its tokens (as a reader sees it,
   :func:`scope.labels.token_key`) is one of the label's tokens; a concept label when one of its
   words falls under the concept's synset (:meth:`scope.wordnet.WordNet.matches`).
5. Balanced accuracy, precision, recall (:func:`scope.autointerp.detection_metrics`): 0.5 is
   a label that says nothing of where the feature fires; 1.0 a perfect detector.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from scope import _checks
from scope.autointerp import (
    Example,
    chosen_features,
    detection_metrics,
    mined_examples,
    silent_contexts,
    split_examples,
)
from scope.hooks import check_compatible
from scope.labels import as_wordnet, peak_tokens, token_key
from scope.wordnet import Concept, WordNet

SCORE_COLUMNS = [
    "feature",
    "kind",
    "label",
    "balanced_accuracy",
    "precision",
    "recall",
    "accuracy",
    "n_activating",
    "n_non_activating",
]
KINDS = ("tokens", "concept")


def score_labels(
    mined: Any,
    *,
    model: Any,
    sae: Any,
    features: list[int] | None = None,
    wordnet: Any = "auto",
    n_activating: int = 10,
    n_non_activating: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Each feature's token label (and concept label, where there is one) scored by detection.

    Args:
        mined: a :class:`scope.Mined`, a top-examples DataFrame or its Parquet path.
        model, sae: the subject and SAE the examples were mined with (they check that the
            non-activating contexts really are silent).
        features: the features to score (default: every feature with examples).
        wordnet: as for :func:`scope.label_features` (None: token labels only).
        n_activating: held-out (even-rank) contexts per feature, at most.
        n_non_activating: silent contexts per feature.
        seed: the choice of silent contexts.

    Returns DataFrame(feature, kind ("tokens" / "concept"), label, balanced_accuracy, precision,
    recall, accuracy, n_activating, n_non_activating), one row per feature and kind. A metric
    that is undefined (no held-out activating context) is NaN.
    """
    n_activating = _checks.positive_int(n_activating, "n_activating")
    n_non_activating = _checks.positive_int(n_non_activating, "n_non_activating")
    seed = _checks.seed(seed)
    lexicon = as_wordnet(wordnet)
    check_compatible(model, sae)
    examples = mined_examples(mined)
    chosen = chosen_features(examples, features)
    silent = silent_contexts(model, sae, examples, chosen, n_non_activating, seed) if chosen else {}
    words = _token_keys(model.tokenizer)
    rows = []
    for feature in tqdm(chosen, desc="score labels", unit="feature", disable=not progress):
        shown, held = split_examples(examples[feature])
        contexts = [(e.text.strip(), 1) for e in held[:n_activating]] + [(t, 0) for t in silent[feature]]
        keys = [words(text) for text, _ in contexts]
        truth = [label for _, label in contexts]
        rows += _scored(feature, _peaks(shown), keys, truth, lexicon)
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _peaks(examples: list[Example]) -> list[str]:
    return [e.pieces[e.peak] for e in examples]


def _scored(
    feature: int, peaks: list[str], keys: list[frozenset[str]], truth: list[int], wordnet: WordNet | None
) -> list[dict[str, Any]]:
    tokens = {token for token, _ in peak_tokens(peaks)}
    rows = [_row(feature, "tokens", ", ".join(sorted(tokens)), [bool(k & tokens) for k in keys], truth)]
    concept = wordnet.concept(token_key(p) for p in peaks) if wordnet is not None else None
    if wordnet is not None and concept is not None:
        predicted = [_under(wordnet, concept, k) for k in keys]
        rows.append(_row(feature, "concept", concept.text, predicted, truth))
    return rows


def _under(wordnet: WordNet, concept: Concept, keys: frozenset[str]) -> bool:
    return any(wordnet.matches(concept, key) for key in keys)


def _row(feature: int, kind: str, label: str, predicted: list[bool], truth: list[int]) -> dict[str, Any]:
    return {
        "feature": feature,
        "kind": kind,
        "label": label,
        **detection_metrics(truth, [int(p) for p in predicted]),
        "n_activating": sum(truth),
        "n_non_activating": len(truth) - sum(truth),
    }


def _token_keys(tokenizer: Any):
    """text -> the set of its tokens as a reader sees them (cached: silent contexts repeat)."""
    piece = cache(lambda token_id: token_key(tokenizer.decode([token_id])))

    @cache
    def keys(text: str) -> frozenset[str]:
        return frozenset(piece(i) for i in tokenizer.encode(text, add_special_tokens=False))

    return keys
