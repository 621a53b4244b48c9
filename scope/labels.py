"""Labels for every feature, read off a mining result: what each feature peaks on, in seconds.

A label is deterministic and needs no model call: it is what Neuronpedia and SAEDashboard show
as a feature's "top tokens", computed from :func:`scope.mine`'s top examples.

1. Group the mined top examples (``k`` per feature) by feature.
2. Peak tokens: the token each example peaks on, whitespace stripped (``" if"`` and ``"if"``
   are one token to a reader), counted; ``top_tokens`` are the most common (up to three),
   ``token_share`` the share of the top examples that peak on the first.
3. Context pattern: the word just before and just after the peak in each example's context; a
   neighbour shared by more than half of the examples is kept (``don⟦'⟧t``, ``e.⟦g⟧.``), any
   other is ``…``.
4. Label: the top tokens with their shares, then the pattern
   (``"if" 85%, "elif" 10% | ↵⟦if⟧…``); ``mixed:`` in front when no token reaches 20%, and
   ``dense (N% of tokens)`` when the feature fires on more than 10% of the tokens (such a
   feature peaks wherever activations are largest: its top tokens say little about it).
   Features that never fire get ``never active`` and the number of tokens read.
5. Concept (derived, kept apart from the label): when WordNet is at hand (:mod:`scope.wordnet`)
   and at least 60% (and 3) of the distinct peak tokens are nouns under one synset that is not
   too generic, that synset and the words under it: ``body of water (ocean, sea, lake)``.
   :func:`scope.label_scores.score_labels` checks both kinds against held-out contexts.

**The label table** (one shape for scope's labels, Neuronpedia's, LLM explanations and labels a
user passes; :func:`as_labels` brings any of them to it). One row per feature:

=================  ========================================================================
``feature``        int, the feature index
``label``          str, a short label (the pattern above, or an explanation when that is all
                   a source has)
``top_tokens``     list[str], most common peak tokens, most common first (may be empty)
``token_share``    float, share of the top examples peaking on ``top_tokens[0]`` (NaN if unknown)
``pattern``        str, the context pattern (``""`` if unknown)
``density``        float, fraction of the mined tokens where the feature fires (NaN if unknown)
``max_activation`` float, the largest activation seen (NaN if unknown)
``examples``       int, top examples the label was read from (0 if unknown)
``documents``      int, distinct texts among them (0 if unknown)
``explanation``    str or None, a one-sentence explanation (Neuronpedia's, an LLM's)
``source``         str, where the row comes from: ``"mined"``, ``"neuronpedia"``, ``"user"``...
=================  ========================================================================

:func:`label_features` adds ``concept`` (str or None: the derived WordNet concept of step 5).

**Where an SAE's labels live**: in ``sae.cfg.metadata["scope_labels"]`` (column -> list), beside
the per-feature statistics :mod:`scope.feature_stats` keeps there, so they travel and save with the SAE.
:func:`set_labels` attaches a table, :func:`feature_labels` reads it back;
``scope.load_sae("demo")`` (or ``"demo-docs"``) attaches the ``labels.parquet`` shipped in its folder, and
:func:`scope.top_features` adds a ``label`` column whenever labels are attached (or passed).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scope import _checks
from scope._io import write_parquet
from scope.wordnet import WordNet, load

LABELS = "scope_labels"  # the sae.cfg.metadata key
LABEL_COLUMNS = [
    "feature",
    "label",
    "top_tokens",
    "token_share",
    "pattern",
    "density",
    "max_activation",
    "examples",
    "documents",
    "explanation",
    "source",
]
CONCEPT = "concept"  # scope's labels add it after the columns above (other sources have none)
_DEFAULTS: dict[str, Any] = {
    "top_tokens": None,  # filled per row with []
    "token_share": math.nan,
    "pattern": "",
    "density": math.nan,
    "max_activation": math.nan,
    "examples": 0,
    "documents": 0,
    "explanation": None,
}
PEAK_OPEN, PEAK_CLOSE = "\u27e6", "\u27e7"  # ⟦peak token⟧ inside a mined context string (scope.examples)
TOP_TOKENS = 3
MIN_SHARE = 0.1  # a peak token under this share of the examples is not listed after the first
MIXED = 0.2  # under this share for the commonest peak token, the label says "mixed"
DENSE = 0.1  # a feature firing on more than this share of tokens is labelled "dense"
PATTERN_SHARE = 0.5  # a neighbour shared by more than this share of the examples enters the pattern
NEIGHBOUR_CHARS = 12
_BEFORE = re.compile(r"(\S*)(\s*)$")
_AFTER = re.compile(r"^(\s*)(\S*)")
_WHITESPACE = {"\n": "↵", "\t": "⇥", " ": "␣"}


# ----------------------------------------------------------------------------- labelling


def label_features(mined: Any, *, source: str = "mined", wordnet: Any = "auto") -> pd.DataFrame:
    """Every feature's label from a mining result, deterministic and without a model call.

    Args:
        mined: a :class:`scope.Mined` (then every mined feature gets a row, silent ones
            included, with densities), or the examples table of :func:`scope.top_examples` as
            a DataFrame or a Parquet path (then only features with examples, density NaN).
        source: the ``source`` column's value.
        wordnet: for the derived ``concept`` column: ``"auto"`` (WordNet where
            :func:`scope.wordnet.wordnet_dir` finds it, else no concepts), a WordNet folder, a
            :class:`scope.wordnet.WordNet`, or None (no concepts).

    Returns:
        The label table (columns in the module docstring), one row per feature, by feature.
    """
    lexicon = as_wordnet(wordnet)
    examples, features, density, n_tokens = _mined_parts(mined)
    groups = _groups(examples)
    rows = []
    for feature in features:
        feature_density = math.nan if density is None else float(density[feature])
        if feature in groups:
            rows.append(_label_row(feature, groups[feature], feature_density, source, lexicon))
        else:
            rows.append(_silent_row(feature, feature_density, n_tokens, source))
    return as_labels(pd.DataFrame(rows, columns=[*LABEL_COLUMNS, CONCEPT]))


def as_wordnet(wordnet: Any) -> WordNet | None:
    """A WordNet from ``"auto"`` (found or None), a folder, a WordNet, or None."""
    if wordnet is None or isinstance(wordnet, WordNet):
        return wordnet
    if isinstance(wordnet, str) and wordnet == "auto":
        return load()
    if isinstance(wordnet, (str, os.PathLike)):
        return load(Path(wordnet))
    raise TypeError(f"wordnet must be 'auto', a WordNet folder, a scope.wordnet.WordNet or None, got {wordnet!r}.")


def _mined_parts(mined: Any) -> tuple[pd.DataFrame, list[int], dict[int, float] | None, int | None]:
    """(examples table, features to label, density by feature or None, tokens read or None)."""
    if isinstance(mined, (str, os.PathLike)):
        path = Path(mined)
        if not path.is_file():
            raise FileNotFoundError(
                f"No mined examples at {str(path)!r}; write them with scope.top_examples(..., out=)."
            )
        mined = pd.read_parquet(path)
    if isinstance(mined, pd.DataFrame):
        _require_columns(mined, ["feature", "activation", "text_id", "token", "context"], "the examples table")
        return mined, sorted(int(f) for f in mined["feature"].unique()), None, None
    if all(hasattr(mined, name) for name in ("examples", "features", "density", "n_tokens")):
        density = dict(zip(mined.features, mined.density.tolist()))
        return mined.examples, list(mined.features), density, int(mined.n_tokens)
    raise TypeError(
        "mined must be a scope.Mined (from scope.mine), an examples DataFrame or its Parquet path, "
        f"got {type(mined).__name__}."
    )


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, frame.columns))}.")


def _silent_row(feature: int, density: float, n_tokens: int | None, source: str) -> dict[str, Any]:
    read = f" in {n_tokens:,} tokens" if n_tokens is not None else ""
    return {
        "feature": feature,
        "label": f"never active{read}",
        "top_tokens": [],
        "token_share": 0.0,
        "pattern": "",
        "density": 0.0 if not math.isnan(density) else density,
        "max_activation": 0.0,
        "examples": 0,
        "documents": 0,
        "explanation": None,
        "source": source,
        CONCEPT: None,
    }


def _groups(examples: pd.DataFrame) -> dict[int, dict[str, list]]:
    """feature -> its examples as plain lists (``token``, ``context``, ``activation``,
    ``text_id``): tens of thousands of rows, so no pandas call per feature."""
    ordered = examples.sort_values("feature", kind="stable")
    features = ordered["feature"].to_numpy()
    columns = {name: ordered[name].tolist() for name in ("token", "context", "activation", "text_id")}
    if not len(features):  # nothing fired: no groups
        return {}
    starts = [0, *(i for i in range(1, len(features)) if features[i] != features[i - 1])]
    ends = [*starts[1:], len(features)]
    return {int(features[a]): {name: values[a:b] for name, values in columns.items()} for a, b in zip(starts, ends)}


def peak_tokens(tokens: list[str]) -> list[tuple[str, int]]:
    """The peak tokens a label lists, with their counts: the commonest (as a reader sees it,
    :func:`token_key`), then up to two more that reach ``MIN_SHARE`` of the examples."""
    counts = Counter(token_key(t) for t in tokens)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))  # ties: alphabetical, deterministic
    return [ranked[0]] + [(t, c) for t, c in ranked[1:TOP_TOKENS] if c / len(tokens) >= MIN_SHARE]


def concept_of(tokens: list[str], wordnet: WordNet | None) -> str | None:
    """The derived concept of a feature's peak tokens (:meth:`scope.wordnet.WordNet.concept`)."""
    found = wordnet.concept(token_key(t) for t in tokens) if wordnet is not None else None
    return found.text if found is not None else None


def _label_row(
    feature: int, group: dict[str, list], density: float, source: str, wordnet: WordNet | None = None
) -> dict[str, Any]:
    n = len(group["token"])
    listed = peak_tokens(group["token"])
    share = listed[0][1] / n
    pattern = _pattern(group["context"], listed[0][0])
    tokens = ", ".join(f"{_quoted(t)} {c / n:.0%}" for t, c in listed)
    return {
        "feature": feature,
        "label": f"{_caveats(share, density)}{tokens} | {pattern}",
        "top_tokens": [t for t, _ in listed],
        "token_share": share,
        "pattern": pattern,
        "density": density,
        "max_activation": float(max(group["activation"])),
        "examples": n,
        "documents": len(set(group["text_id"])),
        "explanation": None,
        "source": source,
        CONCEPT: concept_of(group["token"], wordnet),
    }


def _caveats(share: float, density: float) -> str:
    """What a reader must know before the tokens: a feature firing on a large share of all
    tokens peaks wherever activations are largest, so its top tokens say little of it."""
    dense = f"dense ({density:.0%} of tokens) " if density > DENSE else ""
    mixed = "mixed: " if share < MIXED else ""
    return f"{dense}{mixed}" if not dense or mixed else f"{dense}peaks: "


def token_key(token: str) -> str:
    """A peak token as a reader sees it: surrounding whitespace stripped; a token that is only
    whitespace shown with visible marks (``↵``, ``␣``)."""
    stripped = token.strip()
    return stripped if stripped else "".join(_WHITESPACE.get(c, c) for c in token)


def _quoted(token: str) -> str:
    return f'"{token}"'


def split_peak(context: str) -> tuple[str, str, str]:
    """``(before, peak, after)`` of a context string ``"...⟦peak⟧..."`` as mining writes it."""
    before, _, rest = context.partition(PEAK_OPEN)
    peak, _, after = rest.partition(PEAK_CLOSE)
    return before, peak, after


def _pattern(contexts: list[str], peak: str) -> str:
    befores: Counter[str] = Counter()
    afters: Counter[str] = Counter()
    for context in contexts:
        before, _, after = split_peak(context)
        befores[_neighbour_before(before)] += 1
        afters[_neighbour_after(after)] += 1
    return f"{_majority(befores, len(contexts))}{PEAK_OPEN}{peak}{PEAK_CLOSE}{_majority(afters, len(contexts))}"


def _neighbour_before(text: str) -> str:
    """The word before the peak and the space between; a line break there is all that matters
    (the peak opens a line), shown as ``↵``."""
    word, space = _BEFORE.search(text).groups()  # type: ignore[union-attr]  # the pattern always matches
    if "\n" in space or (not word and not space and text):
        return "↵" if "\n" in space else ""
    return word[-NEIGHBOUR_CHARS:] + (" " if space else "")


def _neighbour_after(text: str) -> str:
    space, word = _AFTER.search(text).groups()  # type: ignore[union-attr]
    if "\n" in space:
        return "↵"
    return (" " if space else "") + word[:NEIGHBOUR_CHARS]


def _majority(counts: Counter, n: int) -> str:
    value, count = max(counts.items(), key=lambda item: (item[1], item[0]))
    return value if count / n > PATTERN_SHARE else "…"


# ----------------------------------------------------------------------------- one shape for every source


def as_labels(labels: Any, *, source: str = "user") -> pd.DataFrame:
    """Any labels as the label table: a DataFrame with at least ``feature`` and ``label`` (other
    columns kept, missing ones filled), or a ``{feature: label}`` mapping. Sorted by feature,
    one row per feature (ValueError on a repeated feature)."""
    if isinstance(labels, Mapping):
        labels = pd.DataFrame({"feature": list(labels), "label": [str(v) for v in labels.values()]})
    if not isinstance(labels, pd.DataFrame):
        raise TypeError(
            f"labels must be a DataFrame with feature and label columns or a {{feature: label}} dict, "
            f"got {type(labels).__name__}."
        )
    _require_columns(labels, ["feature", "label"], "labels")
    frame = labels.copy()
    frame["feature"] = [_feature_index(value) for value in frame["feature"]]
    if frame["feature"].duplicated().any():
        repeated = sorted(frame.loc[frame["feature"].duplicated(), "feature"].unique().tolist())[:5]
        raise ValueError(f"labels list feature(s) {repeated} more than once; give one row per feature.")
    frame["feature"] = frame["feature"].astype("int64")
    for column, default in _DEFAULTS.items():
        if column not in frame.columns:
            frame[column] = [[] for _ in range(len(frame))] if column == "top_tokens" else default
    frame["top_tokens"] = [list(t) if t is not None and not _is_missing(t) else [] for t in frame["top_tokens"]]
    if "source" not in frame.columns:
        frame["source"] = source
    extra = [c for c in frame.columns if c not in LABEL_COLUMNS]
    return frame[LABEL_COLUMNS + extra].sort_values("feature", kind="stable").reset_index(drop=True)


def _feature_index(value: Any) -> int:
    """A label table's feature as an int: an integer, or a float holding one (a column pandas
    widened); TypeError/ValueError naming the value for 1.7, "141", NaN or None."""
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, (float, np.floating)) or value is None:
        raise ValueError(f"labels name feature {value!r}, which is not a feature index (an integer 0, 1, 2...).")
    return _checks.integer(value, "a labels feature")


def _is_missing(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def merge_labels(labels: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """``labels`` with ``other``'s explanations (and any columns it adds) joined on feature;
    features only ``other`` has are appended. The label text of ``labels`` is kept where it
    exists; an explanation from ``other`` replaces a missing one."""
    base, extra = as_labels(labels), as_labels(other)
    merged = base.merge(extra, on="feature", how="outer", suffixes=("", "_other"))
    for column in [c for c in merged.columns if c.endswith("_other")]:
        name = column[: -len("_other")]
        if name == "explanation":
            merged[name] = merged[column].where(merged[column].notna(), merged[name])
        else:
            merged[name] = merged[name].where(merged[name].notna(), merged[column])
        merged = merged.drop(columns=column)
    return as_labels(merged)


# ----------------------------------------------------------------------------- files and SAEs


def save_labels(labels: Any, path: str | os.PathLike) -> Path:
    """Write a label table to Parquet, atomically."""
    return write_parquet(as_labels(labels), path)


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """A label table from a Parquet (or .csv / .jsonl) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No labels file at {str(path)!r}.")
    if path.suffix == ".csv":
        return as_labels(pd.read_csv(path))
    if path.suffix == ".jsonl":
        return as_labels(pd.read_json(path, lines=True))
    return as_labels(pd.read_parquet(path))


def set_labels(sae: Any, labels: Any) -> None:
    """Attach labels to ``sae`` (kept in ``sae.cfg.metadata`` and saved with it). Features must
    be indices of the SAE."""
    frame = as_labels(labels)
    d_sae = int(sae.cfg.d_sae)
    bad = frame.loc[(frame["feature"] < 0) | (frame["feature"] >= d_sae), "feature"].tolist()
    if bad:
        raise ValueError(f"labels name feature(s) {bad[:5]} outside this SAE's features 0..{d_sae - 1}.")
    # plain lists and None for NaN: the metadata is saved as JSON with the SAE
    sae.cfg.metadata[LABELS] = {
        column: [None if _is_missing(v) else v for v in frame[column].tolist()] for column in frame.columns
    }


def feature_labels(sae: Any) -> pd.DataFrame | None:
    """The labels attached to ``sae``, or None when it has none."""
    columns = sae.cfg.metadata.get(LABELS) if hasattr(sae.cfg.metadata, "get") else None
    if not columns:
        return None
    frame = pd.DataFrame(columns)
    for column in ("token_share", "density", "max_activation"):
        if column in frame.columns:
            frame[column] = frame[column].astype("float64")
    return as_labels(frame)


def label_of(labels: pd.DataFrame | None, features: Any) -> list[str | None]:
    """The label of each of ``features`` (None where the table has none)."""
    if labels is None:
        return [None for _ in features]
    lookup = dict(zip(labels["feature"].tolist(), labels["label"].tolist()))
    return [lookup.get(int(f)) for f in features]


def with_labels(frame: pd.DataFrame, sae: Any, labels: Any = None) -> pd.DataFrame:
    """``frame`` (with a ``feature`` column) plus a ``label`` column when labels are passed or
    attached to ``sae``, and a ``concept`` column when they carry derived concepts; unchanged
    otherwise. Passed labels win over attached ones."""
    table = as_labels(labels) if labels is not None else feature_labels(sae)
    if table is None:
        return frame
    frame["label"] = label_of(table, frame["feature"])
    if CONCEPT in table.columns and table[CONCEPT].notna().any():
        concepts = dict(zip(table["feature"].tolist(), table[CONCEPT].tolist()))
        frame[CONCEPT] = [concepts.get(int(f)) for f in frame["feature"]]
    return frame
