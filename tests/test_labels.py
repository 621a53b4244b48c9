"""Feature labels from mined examples, checked against counts done by hand; where labels live."""

import json
from collections import Counter

import pandas as pd
import pytest
import torch

import scope
from scope.labels import (
    LABEL_COLUMNS,
    as_labels,
    feature_labels,
    label_features,
    merge_labels,
    read_labels,
    save_labels,
    set_labels,
)
from scope.mining import Mined

HOOK = "blocks.1.hook_resid_post"
TEXTS = [
    "Paris is the capital of France. Rome is the capital of Italy.",
    "def add(a, b):\n    if a:\n        return a + b\n    return b",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
]


def _examples(rows):
    return pd.DataFrame(rows, columns=["feature", "rank", "activation", "text_id", "position", "token", "context"])


def _mined(examples, n_features, density, n_tokens=1000):
    return Mined(
        examples=examples,
        features=list(range(n_features)),
        n_tokens=n_tokens,
        density=torch.tensor(density, dtype=torch.float64),
        histogram=torch.zeros(n_features, 1),
        histogram_edges=torch.zeros(2),
        context_ids=torch.zeros(len(examples), 1),
        context_acts=torch.zeros(len(examples), 1),
        token_strings={},
    )


HAND = _examples(
    [
        (1, 1, 1.5, 0, 5, " if", "x = 1\n    ⟦ if⟧ self.ok:"),
        (1, 2, 1.2, 1, 9, "if", "\n⟦if⟧ other:"),
        (1, 3, 0.9, 1, 30, " if", "y\n⟦ if⟧ self.b"),
        (1, 4, 0.4, 2, 3, " elif", "\n ⟦ elif⟧ z"),
        (2, 1, 0.3, 0, 7, "'", "they don⟦'⟧t read"),
        (2, 2, 0.2, 3, 4, "'", "it doesn⟦'⟧t work"),
    ]
)


def test_labels_match_hand_counts():
    labels = label_features(_mined(HAND, 3, [0.0, 0.01, 0.002]))
    assert list(labels.columns) == [*LABEL_COLUMNS, "concept"]
    assert labels["feature"].tolist() == [0, 1, 2]
    silent, if_feature, apostrophe = (labels.iloc[i] for i in range(3))
    # feature 0 never fired: still a row, labelled as such, with the tokens read
    assert silent["label"] == "never active in 1,000 tokens" and silent["top_tokens"] == []
    # feature 1: "if" is 3 of 4 peaks (" if" and "if" are one token to a reader), "elif" 1 of 4;
    # every example opens a line; the word after differs ("self.ok:", "other:", "self.b", "z")
    assert if_feature["top_tokens"] == ["if", "elif"]
    assert if_feature["token_share"] == pytest.approx(0.75)
    assert if_feature["pattern"] == "↵⟦if⟧…"
    assert if_feature["label"] == '"if" 75%, "elif" 25% | ↵⟦if⟧…'
    assert if_feature["max_activation"] == 1.5 and if_feature["examples"] == 4 and if_feature["documents"] == 3
    assert if_feature["density"] == pytest.approx(0.01)
    # feature 2: both peaks on the apostrophe, both followed by "t"; the words before differ
    assert apostrophe["pattern"] == "…⟦'⟧t" and apostrophe["token_share"] == 1.0
    assert apostrophe["label"] == "\"'\" 100% | …⟦'⟧t"
    assert (labels["source"] == "mined").all() and labels["explanation"].isna().all()
    # a feature firing on 30% of all tokens peaks wherever activations are largest: the label says so
    dense = label_features(_mined(HAND, 3, [0.0, 0.01, 0.3])).iloc[2]
    assert dense["label"] == "dense (30% of tokens) peaks: \"'\" 100% | …⟦'⟧t"


def test_labels_do_not_depend_on_row_order_and_accept_the_parquet_table(tmp_path):
    shuffled = HAND.sample(frac=1.0, random_state=1)
    shuffled_labels = label_features(shuffled)
    assert shuffled_labels.equals(label_features(HAND))
    HAND.to_parquet(tmp_path / "examples.parquet")
    from_file = label_features(tmp_path / "examples.parquet")
    assert from_file.equals(label_features(HAND))
    assert from_file["density"].isna().all()  # a table alone carries no densities


@pytest.fixture
def tiny_mined(tiny_model, make_sae):
    sae, _ = make_sae(hook=HOOK, d_sae=40, seed=3)
    return sae, scope.mine(tiny_model, sae, TEXTS, k=5, progress=False)


def test_every_mined_feature_gets_a_label_matching_its_examples(tiny_mined):
    sae, mined = tiny_mined
    labels = label_features(mined)
    assert labels["feature"].tolist() == list(range(sae.cfg.d_sae))
    assert labels["label"].str.len().gt(0).all()
    for feature, group in mined.examples.groupby("feature"):
        row = labels.set_index("feature").loc[feature]
        counts = Counter(t.strip() or t for t in group["token"])
        top = max(counts.values())
        assert row["token_share"] == pytest.approx(top / len(group))
        assert counts[row["top_tokens"][0].replace("␣", " ").replace("↵", "\n")] == top
        assert row["max_activation"] == pytest.approx(group["activation"].max())
        assert row["documents"] == group["text_id"].nunique()
        assert row["density"] == pytest.approx(float(mined.density[feature]))
    silent = set(range(sae.cfg.d_sae)) - set(mined.examples["feature"])
    assert all(labels.loc[f, "label"].startswith("never active") for f in silent)


def test_labels_live_in_the_sae_metadata_and_survive_json(tiny_mined):
    sae, mined = tiny_mined
    labels = label_features(mined)
    set_labels(sae, labels)
    json.loads(json.dumps(sae.cfg.to_dict()))  # the metadata is saved as JSON with the SAE
    back = feature_labels(sae)
    pd.testing.assert_frame_equal(back, labels, check_dtype=False)
    with pytest.raises(ValueError, match="outside this SAE's features 0..39"):
        set_labels(sae, {40: "too far"})


def test_top_features_shows_labels_passed_or_attached(tiny_model, make_sae):
    sae, _ = make_sae(hook=HOOK, d_sae=40, seed=3)
    plain = scope.top_features(tiny_model, sae, TEXTS[0], k=3)
    assert "label" not in plain.columns
    names = {f: f"feature number {f}" for f in range(40)}
    passed = scope.top_features(tiny_model, sae, TEXTS[0], k=3, labels=names)
    assert passed["label"].tolist() == [f"feature number {f}" for f in passed["feature"]]
    set_labels(sae, {f: f"attached {f}" for f in range(0, 40, 2)})  # only even features labelled
    attached = scope.top_features(tiny_model, sae, TEXTS[0], k=3)
    expected = [f"attached {f}" if f % 2 == 0 else None for f in attached["feature"]]
    assert [label if isinstance(label, str) else None for label in attached["label"]] == expected
    with pytest.raises(TypeError, match="labels must be a DataFrame"):
        scope.top_features(tiny_model, sae, TEXTS[0], labels=["a", "b"])
    # Neuronpedia links stay, beside the labels
    sae.cfg.metadata.neuronpedia_id = "gemma-2-2b/1-test-res-16k"
    linked = scope.top_features(tiny_model, sae, TEXTS[0], k=1)
    assert list(linked.columns[-2:]) == ["label", "url"]
    assert linked["url"].tolist() == [
        f"https://www.neuronpedia.org/gemma-2-2b/1-test-res-16k/{f}" for f in linked["feature"]
    ]


def test_label_tables_from_anywhere_take_one_shape(tmp_path):
    user = as_labels({3: "three", 1: "one"})
    assert list(user.columns) == LABEL_COLUMNS and user["feature"].tolist() == [1, 3]
    assert (user["source"] == "user").all()
    save_labels(user, tmp_path / "labels.parquet")
    pd.testing.assert_frame_equal(read_labels(tmp_path / "labels.parquet"), user)
    explained = as_labels(pd.DataFrame({"feature": [3, 5], "label": ["x", "y"], "explanation": ["Three.", "Five."]}))
    merged = merge_labels(user, explained)
    assert merged["feature"].tolist() == [1, 3, 5]
    assert merged["label"].tolist() == ["one", "three", "y"]
    assert merged["explanation"].tolist()[1:] == ["Three.", "Five."]
    with pytest.raises(ValueError, match=r"feature\(s\) \[2\] more than once"):
        as_labels(pd.DataFrame({"feature": [2, 2], "label": ["a", "b"]}))
    with pytest.raises(ValueError, match="lacks column"):
        as_labels(pd.DataFrame({"feature": [1]}))


def test_the_docs_demo_sae_ships_a_label_for_every_feature():
    sae = scope.load_sae("demo-docs", device="cpu")
    labels = feature_labels(sae)
    assert labels is not None and labels["feature"].tolist() == list(range(4096))
    assert labels["label"].str.len().gt(0).all()
    by_feature = labels.set_index("feature")
    # data/README.md's documented features, read from their top examples
    for feature, token in [(141, "if"), (272, "async"), (183, "@"), (31, "integer"), (85, "'"), (120, "Note")]:
        assert by_feature.loc[feature, "top_tokens"][0] == token, (feature, by_feature.loc[feature, "label"])


def test_bad_mined_inputs_are_named(tmp_path):
    with pytest.raises(TypeError, match="mined must be a scope.Mined"):
        label_features(42)
    with pytest.raises(FileNotFoundError, match="No mined examples"):
        label_features(tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match="lacks column"):
        label_features(pd.DataFrame({"feature": [1]}))


def test_a_run_where_no_feature_fired_labels_every_feature_silent():
    mined = _mined(_examples([]), 3, [0.0, 0.0, 0.0])
    table = label_features(mined)
    assert table["feature"].tolist() == [0, 1, 2]
    assert table["label"].str.startswith("never active").all() and (table["examples"] == 0).all()
    assert label_features(_examples([])).empty  # the examples table alone: no feature to label


@pytest.mark.parametrize(
    "feature, error, message",
    [
        (1.7, ValueError, r"labels name feature 1\.7, which is not a feature index"),
        (float("nan"), ValueError, r"labels name feature nan, which is not a feature index"),
        ("141", TypeError, r"a labels feature must be an integer, got '141'"),
        (None, ValueError, r"labels name feature (None|nan), which is not"),
    ],
)
def test_label_features_must_be_integers(feature, error, message):
    sae = type("SAE", (), {"cfg": type("Cfg", (), {"d_sae": 200, "metadata": {}})()})()
    with pytest.raises(error, match=message):
        set_labels(sae, pd.DataFrame({"feature": [3, feature], "label": ["a", "b"]}))
    with pytest.raises(error, match=message):
        set_labels(sae, {feature: "b"})
    set_labels(sae, pd.DataFrame({"feature": [3.0, 141.0], "label": ["a", "b"]}))  # a widened int column
    assert feature_labels(sae)["feature"].tolist() == [3, 141]


def test_a_concept_is_derived_where_the_peak_words_share_a_synset_and_search_finds_it(tmp_path, tiny_model, make_sae):
    from scope.wordnet import WordNet
    from tests.wordnet_util import EXCEPTIONS, MINI, write_wordnet

    wordnet = WordNet(write_wordnet(tmp_path / "wordnet", MINI, EXCEPTIONS))
    rows = [  # feature 4: dogs, foxes, wolves and "the" (3 of 4 distinct words canine); feature 5: dog, Paris, France
        (4, 1, 3.0, 0, 1, " dogs", "the⟦ dogs⟧ ran"),
        (4, 2, 2.0, 1, 1, " fox", "a⟦ fox⟧ ran"),
        (4, 3, 1.5, 2, 1, " wolves", "two⟦ wolves⟧ ran"),
        (4, 4, 1.0, 3, 1, " the", "to⟦ the⟧ den"),
        (5, 1, 3.0, 0, 1, " dog", "a⟦ dog⟧ in"),
        (5, 2, 2.0, 1, 1, " Paris", "in⟦ Paris⟧ and"),
        (5, 3, 1.0, 2, 1, " France", "in⟦ France⟧ ."),
    ]
    labels = label_features(_examples(rows), wordnet=wordnet)
    assert _texts(labels["concept"]) == ["canine (dogs, fox, wolves)", None]  # 5: only "object" is common
    assert label_features(_examples(rows), wordnet=None)["concept"].isna().all()
    assert labels["label"].tolist() == label_features(_examples(rows), wordnet=None)["label"].tolist()  # unchanged

    found = scope.search_features(None, _sae_of_width(make_sae, 8), query="canine", labels=labels)
    assert found["feature"].tolist() == [4]
    sae = _sae_of_width(make_sae, 8)
    set_labels(sae, labels)
    top = scope.top_features(tiny_model, sae, TEXTS[0], k=8)
    concepts = dict(zip(labels["feature"], _texts(labels["concept"])))
    assert 4 in set(top["feature"]) and _texts(top["concept"]) == [concepts.get(f) for f in top["feature"]]


def _texts(column):
    return [value if isinstance(value, str) else None for value in column]


def _sae_of_width(make_sae, d_sae):
    return make_sae(d_sae=d_sae)[0]
