"""Feature search checked against scikit-learn's AUROC on maxima computed text by text here."""

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

import scope
from scope.feature_stats import set_feature_stats
from scope.search import auroc, search_features
from tests.concept_texts import IF_STATEMENTS, NO_IF
from tests.sae_util import jumprelu

HOOK = "blocks.1.hook_resid_post"
D_SAE = 40
POSITIVE = [
    "Paris is the capital of France.",
    "Rome is the capital of Italy, and a very old city.",
    "Berlin is the capital of Germany.",
    "Madrid",
]
NEGATIVE = [
    "def add(a, b): return a + b",
    "for i in range(10): print(i)",
    "import os\nos.path.join('a', 'b')",
    "x = [1, 2, 3]",
    "while True: break",
]


@pytest.fixture
def sae_and_params(make_sae):
    return make_sae(hook=HOOK, d_sae=D_SAE, seed=5)


@pytest.fixture
def forwards(tiny_model, monkeypatch):
    calls = []
    cls = type(tiny_model)
    original = cls.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", counting)
    return calls


def brute_maxima(model, params, texts):
    """Each text run alone (no batch, no padding); every feature's max over its tokens, BOS dropped;
    and how many tokens each feature fires on."""
    maxima, active, n_tokens = [], torch.zeros(D_SAE), 0
    for text in texts:
        tokens = torch.tensor([[model.tokenizer.bos_token_id, *model.tokenizer.encode(text, add_special_tokens=False)]])
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
        acts, _ = jumprelu(cache[HOOK][0, 1:], params)
        maxima.append(acts.max(0).values)
        active += (acts > 0).sum(0)
        n_tokens += acts.shape[0]
    return torch.stack(maxima).numpy(), active.numpy(), n_tokens


def test_auroc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    pos = torch.tensor(rng.integers(0, 4, size=(23, 30)).astype(float))  # few values: many ties
    neg = torch.tensor(rng.integers(0, 3, size=(17, 30)).astype(float))
    labels = [1] * 23 + [0] * 17
    expected = [roc_auc_score(labels, np.concatenate([pos[:, j], neg[:, j]])) for j in range(30)]
    np.testing.assert_allclose(auroc(pos, neg), expected)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_contrast_equals_brute_force(tiny_model, sae_and_params, batch_size):
    sae, params = sae_and_params
    found = search_features(tiny_model, sae, positive=POSITIVE, negative=NEGATIVE, k=D_SAE, batch_size=batch_size)
    pos, _, _ = brute_maxima(tiny_model, params, POSITIVE)
    neg, _, _ = brute_maxima(tiny_model, params, NEGATIVE)
    labels = [1] * len(POSITIVE) + [0] * len(NEGATIVE)
    expected = pd.DataFrame(
        {
            "feature": range(D_SAE),
            "auroc": [roc_auc_score(labels, np.concatenate([pos[:, f], neg[:, f]])) for f in range(D_SAE)],
            "mean_difference": pos.mean(0) - neg.mean(0),
            "positive_fraction": (pos > 0).mean(0),
        }
    )
    by_feature = found.set_index("feature").sort_index()
    assert sorted(found["feature"]) == list(range(D_SAE))
    np.testing.assert_allclose(by_feature["auroc"], expected["auroc"], atol=1e-9)
    np.testing.assert_allclose(by_feature["mean_difference"], expected["mean_difference"], atol=1e-4)
    np.testing.assert_allclose(by_feature["positive_fraction"], expected["positive_fraction"])
    assert (found["score"] == found["auroc"]).all()
    # ranked by AUROC, ties by mean difference
    keys = list(zip(-found["auroc"].round(9), -found["mean_difference"]))
    assert keys == sorted(keys)


def test_positive_alone_scores_against_corpus_density(tiny_model, sae_and_params):
    sae, params = sae_and_params
    density = np.linspace(0.001, 0.5, D_SAE)
    set_feature_stats(sae, {"density": density})
    found = search_features(tiny_model, sae, positive=POSITIVE, k=5)
    maxima, active, n_tokens = brute_maxima(tiny_model, params, POSITIVE)
    expected = np.log2((active + 1) / (n_tokens * density.astype(np.float32) + 1))
    order = np.lexsort((-maxima.mean(0), -expected))[:5]
    assert found["feature"].tolist() == order.tolist()
    np.testing.assert_allclose(found["score"], expected[order], rtol=1e-5)
    np.testing.assert_array_equal(found["active_tokens"], active[order])


def test_query_ranks_labels_by_tf_idf(tiny_model, sae_and_params):
    sae, _ = sae_and_params
    labels = {0: "the word directory", 1: "if statements in Python code", 2: "Python decorators", 3: "apostrophes"}
    found = search_features(tiny_model, sae, query="if statement", labels=labels)
    assert found["feature"].tolist() == [1]  # only labels sharing a word with the query are returned
    found = search_features(tiny_model, sae, query="python", labels=labels)
    assert found["feature"].tolist() == [2, 1]  # the shorter label: "python" weighs more in it
    assert found["label"].tolist() == [labels[2], labels[1]]
    assert (found["score"].diff().dropna() <= 0).all()


def test_bad_requests_fail_before_any_forward(tiny_model, sae_and_params, forwards):
    sae, _ = sae_and_params
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        (dict(query="x", positive=POSITIVE), ValueError, "either query= or positive="),
        (dict(), ValueError, "needs query="),
        (dict(negative=NEGATIVE), ValueError, "needs query="),
        (dict(positive=[]), ValueError, "at least one text"),
        (dict(positive=POSITIVE, negative=["fine", "  "]), ValueError, r"negative\[1\] is empty"),
        (dict(positive=[1, 2]), TypeError, "item 0 is a int"),
        (dict(positive=POSITIVE, k=0), ValueError, "k"),
        (dict(query="if"), ValueError, "carries none"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            search_features(tiny_model, sae, **kwargs)
    assert forwards == []
    assert not tiny_model.hook_dict[HOOK].fwd_hooks


@pytest.mark.slow
def test_contrast_finds_the_demo_if_feature(bundled_model):
    """data/README.md documents feature 141 as "`if` opening a Python statement"; Python with
    `if` statements against Python without them (and prose using the word "if") finds it first."""
    sae = scope.load_sae("demo-docs")
    # two of the five names of every template: 20 texts a side keep the test short
    positive, negative = ([t for i, t in enumerate(texts) if i % 5 < 2] for texts in (IF_STATEMENTS, NO_IF))
    found = search_features(bundled_model, sae, positive=positive, negative=negative, k=5)
    assert found["feature"].iloc[0] == 141
    assert found["auroc"].iloc[0] == 1.0 and found["auroc"].iloc[1] < 1.0
    assert found["label"].iloc[0].startswith('"if" 100%')
    by_words = search_features(bundled_model, sae, query="if", k=20)
    assert 141 in by_words["feature"].tolist()


def test_cli_search_by_words_and_its_usage_errors(capsys):
    from scope.cli import main

    assert main(["search", "--sae", "demo-docs", "--query", "directory", "--k", "3"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[1:]]
    assert {row[0] for row in rows} == {"99", "2986", "3583"}  # the docs demo SAE's "directory" features
    assert all('"directory"' in line for line in out.splitlines()[1:])
    assert main(["search", "--query", "if", "--negative", "x.txt"]) == 2
    assert "--negative goes with --positive" in capsys.readouterr().err
    assert main(["search", "--positive", "missing.txt", "--negative", "missing.txt"]) == 1  # a missing file
    assert "No corpus file at missing.txt" in capsys.readouterr().err
    assert main(["search"]) == 2  # one of --query / --positive is required
