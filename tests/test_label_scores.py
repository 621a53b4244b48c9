"""Detection scores of token and concept labels, against counts worked out by hand.

An SAE whose thresholds are out of reach never fires, so every other feature's context is a
verified silent context; the tiny tokenizer's tokens of each context were read off once
(``capital``, ``the``, ``knock``, ``LaMDA`` are whole tokens of it) and the hits counted below.
"""

import math

import pandas as pd
import pytest

import scope
from scope.label_scores import SCORE_COLUMNS, score_labels
from scope.wordnet import WordNet
from tests.sae_util import random_params, write_params
from tests.wordnet_util import EXCEPTIONS, MINI, write_wordnet

EXAMPLES = {  # feature -> contexts by rank (odd ranks make the label, even ranks are held out)
    0: [
        "Paris is the⟦ capital⟧ of France",
        "Rome is the⟦ capital⟧ of Italy",
        "is the⟦ capital⟧ of",
        "over the⟦ lazy⟧ dog.",
    ],
    1: ["jumps over⟦ the⟧ lazy dog.", "spans⟦ the⟧ strait", "⟦The⟧ quick brown fox", "def⟦ add⟧(a, b):"],
    2: [
        "is the⟦ capital⟧ of Rome",
        "LaMDA.⟦ LaMDA⟧ who?",
        "⟦knock⟧ knock.",
        "knock⟦ knock⟧. who",
        "who is there?⟦ LaMDA⟧.",
        "The quick⟦ brown⟧ fox jumps",
    ],
}


def _table():
    rows = []
    for feature, contexts in EXAMPLES.items():
        for rank, context in enumerate(contexts, 1):
            peak = context.split("⟦")[1].split("⟧")[0]
            rows.append((feature, rank, 10.0 - rank, rank, 1, peak, context))
    return pd.DataFrame(rows, columns=["feature", "rank", "activation", "text_id", "position", "token", "context"])


@pytest.fixture(scope="module")
def silent_sae(tmp_path_factory):
    path = write_params(tmp_path_factory.mktemp("silent") / "params.npz", random_params(64, 8, threshold_scale=1e9))
    return scope.load_sae(path, hook="blocks.1.hook_resid_post", device="cpu")


def _expected(tp, fn, fp, tn):
    recall, specificity = tp / (tp + fn), tn / (tn + fp)
    return {"balanced_accuracy": (recall + specificity) / 2, "recall": recall, "precision": tp / (tp + fp)}


def test_token_and_concept_labels_score_as_counted_by_hand(tiny_model, silent_sae, tmp_path):
    wordnet = WordNet(write_wordnet(tmp_path / "wordnet", MINI, EXCEPTIONS))
    scores = score_labels(_table(), model=tiny_model, sae=silent_sae, wordnet=wordnet, progress=False)
    assert list(scores.columns) == SCORE_COLUMNS
    assert scores[["feature", "kind"]].values.tolist() == [[0, "tokens"], [1, "tokens"], [2, "tokens"], [2, "concept"]]
    expected = [
        # 0: label "capital" (ranks 1, 3); held out: rank 2 hit, rank 4 ("lazy") missed;
        #    silent: the 10 others, "is the capital of Rome" a false hit
        _expected(tp=1, fn=1, fp=1, tn=9),
        # 1: label "The", "the" (50% each); held out: "spans the strait" hit, "def add" missed;
        #    silent: all of feature 0's contexts and 3 of feature 2's hold "the"/"The"
        _expected(tp=1, fn=1, fp=7, tn=3),
        # 2: label "LaMDA", "capital", "knock"; held out: 2 hits, "The quick brown" missed;
        #    silent: feature 0's three "capital" contexts are false hits, 5 others not
        _expected(tp=2, fn=1, fp=3, tn=5),
        # 2 as a concept: capital, knock and LaMDA are all under "utterance": the same hits
        _expected(tp=2, fn=1, fp=3, tn=5),
    ]
    for row, want in zip(scores.itertuples(), expected):
        for name, value in want.items():
            assert getattr(row, name) == pytest.approx(value), (row.feature, row.kind, name)
    assert scores["label"].tolist() == [
        "capital",
        "The, the",
        "LaMDA, capital, knock",
        "utterance (capital, knock, lamda)",
    ]
    assert scores["n_non_activating"].tolist() == [10, 10, 8, 8]


def test_without_wordnet_only_token_labels_are_scored(tiny_model, silent_sae):
    scores = score_labels(_table(), model=tiny_model, sae=silent_sae, wordnet=None, features=[2], progress=False)
    assert scores["kind"].tolist() == ["tokens"] and scores["n_activating"].tolist() == [3]
    assert not math.isnan(scores["balanced_accuracy"].iloc[0])


def test_bad_arguments_fail_before_the_model_runs(tiny_model, silent_sae, monkeypatch):
    monkeypatch.setattr(scope.autointerp, "context_maxima", lambda *a, **kw: pytest.fail("the model ran"))
    with pytest.raises(ValueError, match="n_activating"):
        score_labels(_table(), model=tiny_model, sae=silent_sae, n_activating=0)
    with pytest.raises(ValueError, match=r"Features \[7\] have no mined examples"):
        score_labels(_table(), model=tiny_model, sae=silent_sae, features=[7], wordnet=None)
    with pytest.raises(TypeError, match="wordnet must be"):
        score_labels(_table(), model=tiny_model, sae=silent_sae, wordnet=3)
