"""scope.explain / scope.score_explanations: prompts, parsing, detection metrics, and end-to-end
runs through a real loopback OpenAI-compatible server and through the tiny model as a LocalLLM."""

import random
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, precision_score, recall_score

import scope
from scope.autointerp import (
    Example,
    detection_metrics,
    explain_conversation,
    marked,
    mined_examples,
    parse_detection,
    parse_explanation,
    readable,
    split_examples,
)
from scope.llm import LLMError
from tests.openai_server import ChatServer, serve_chat

HOOK = "blocks.1.hook_resid_post"
TEXTS = [
    f"The {animal} sat on the {thing} near {n} houses."
    for animal in ["cat", "dog", "bird", "fish", "cow", "horse", "sheep", "goat"]
    for thing in ["mat", "rug", "bed", "roof"]
    for n in range(2)
]


@pytest.fixture(scope="module")
def mined_setup(tiny_model, tmp_path_factory):
    """A random SAE (thresholds raised so some features are sparse) mined over TEXTS, and the
    sparse features: they fire on some contexts and are silent on others."""
    from tests.sae_util import random_params, write_params

    path = write_params(tmp_path_factory.mktemp("sae") / "params.npz", random_params(64, 24, seed=1, threshold_scale=3))
    sae = scope.load_sae(path, hook=HOOK, device="cpu")
    mined = scope.mine(tiny_model, sae, TEXTS, k=10, progress=False)
    counts = mined.examples.groupby("feature").size()
    sparse = [f for i, f in enumerate(mined.features) if 0 < float(mined.density[i]) < 0.06 and counts.get(f, 0) == 10]
    assert len(sparse) >= 4, "the fixture needs sparse features with 10 examples"
    return sae, mined, sparse[:4]


def _last_user(messages):
    return messages[-1]["content"]


def _shown(messages):
    """The example texts of a detection prompt, in order."""
    return re.findall(r"^Example \d+: (.*)$", _last_user(messages), flags=re.M)


# ----------------------------------------------------------------------------- units


def test_marked_puts_activating_runs_between_delimiters():
    example = Example(0, 1, 5.0, 0, 3, ("The", " big", " red", " dog", "\n", "ran"), (0, 2.0, 5.0, 0.5, 0, 3.0), 2)
    assert marked(example, mark=0.3) == "The<< big red>> dog\\n<<ran>>"
    assert marked(example, mark=0.9) == "The big<< red>> dog\\nran"  # the peak is always marked
    table_row = Example(0, 1, 5.0, 0, 3, ("if x", " ==", " 1:\n        return"), None, 1)
    assert marked(table_row) == "if x<< ==>> 1:\\n  return"  # space runs shortened
    assert readable("a\tb\n   c") == "a\\tb\\n  c"


def test_parse_explanation_and_detection():
    assert parse_explanation("thinking...\n[EXPLANATION]: Nouns for animals.\n") == "Nouns for animals."
    assert parse_explanation('\n  "Numbers in dates"\nmore') == "Numbers in dates"
    assert parse_detection("Sure: [1, 0, 1]", 3) == [1, 0, 1]
    assert parse_detection("[2, 0] then [0,0,1]", 3) == [0, 0, 1]  # the first valid list of the right length
    assert parse_detection("[1, 0]", 3) is None
    assert parse_detection("yes no yes", 3) is None


@pytest.mark.parametrize("seed", range(5))
def test_detection_metrics_match_scikit_learn(seed):
    rng = random.Random(seed)
    truth = [1] * 7 + [0] * 9
    predicted = [rng.randint(0, 1) for _ in truth]
    metrics = detection_metrics(truth, predicted)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert metrics["recall"] == pytest.approx(recall_score(truth, predicted))
    if sum(predicted):
        assert metrics["precision"] == pytest.approx(precision_score(truth, predicted))
    else:
        assert np.isnan(metrics["precision"])


def test_examples_from_mined_and_from_its_parquet_agree(mined_setup, tmp_path):
    _, mined, _ = mined_setup
    path = tmp_path / "mined.parquet"
    mined.examples.to_parquet(path)
    rich, flat = mined_examples(mined), mined_examples(path)
    assert rich.keys() == flat.keys()
    for feature in rich:
        for a, b in zip(rich[feature], flat[feature]):
            assert (a.rank, a.text_id, a.position, a.activation) == (b.rank, b.text_id, b.position, b.activation)
            assert a.text == b.text and a.pieces[a.peak] == b.pieces[b.peak]
            assert a.acts[a.peak] == pytest.approx(a.activation)
    shown, held_out = split_examples(rich[mined.features[1]])
    assert [e.rank for e in shown] == [1, 3, 5, 7, 9] and [e.rank for e in held_out] == [2, 4, 6, 8, 10]


# ----------------------------------------------------------------------------- explain


def _peak_responder(messages):
    """Explains a feature as the marked runs of its first example: what the prompt shows, so checkable."""
    first = _last_user(messages).splitlines()[0]
    return "Let me look.\n[EXPLANATION]: marks " + " | ".join(re.findall(r"<<(.*?)>>", first))


def test_explain_through_a_real_http_endpoint(mined_setup):
    _, mined, features = mined_setup
    with ChatServer(_peak_responder) as server:
        table = scope.explain(mined, features, explainer=scope.Endpoint(server.base_url, "explainer-x"), progress=False)
    assert list(table.columns) == ["feature", "explanation", "explainer", "n_examples", "reply"]
    assert table.feature.tolist() == features
    assert (table.explainer == "explainer-x").all() and (table.n_examples == 5).all()
    for row in table.itertuples():
        top = mined.examples[(mined.examples.feature == row.feature) & (mined.examples["rank"] == 1)].iloc[0]
        assert top.token in row.explanation  # the rank-1 example's peak is marked
    # every request showed 5 examples (odd ranks) and never a held-out (even-rank) context
    assert len(server.requests) == len(features)
    for body in server.requests:
        assert len(re.findall(r"^Example \d+:", body["messages"][-1]["content"], flags=re.M)) == 5


def test_explain_with_the_tiny_model_as_local_llm(tiny_model, mined_setup, monkeypatch):
    _, mined, features = mined_setup
    # the tiny model reads ~1 token a character in a 256-token context: shorten the instructions
    monkeypatch.setattr(scope.autointerp, "EXPLAIN_SYSTEM", "Explain the marks.")
    monkeypatch.setattr(scope.autointerp, "EXPLAIN_EXAMPLE", ("Example 1: <<a>>", "[EXPLANATION]: a"))
    table = scope.explain(mined, features[:2], explainer=tiny_model, n_examples=2, max_tokens=6, progress=False)
    assert (table.n_examples == 2).all()
    for row in table.itertuples():
        shown = split_examples(mined_examples(mined)[row.feature])[0][:2]
        expected = scope.generate(tiny_model, explain_conversation(shown), max_new_tokens=6)
        assert row.reply == expected and row.explanation == parse_explanation(expected)
    assert (table.explainer == "shieldgemma-2b").all()


def test_explain_resumes_from_its_parquet(mined_setup, tmp_path):
    _, mined, features = mined_setup
    out = tmp_path / "explanations.parquet"
    calls = []

    def failing_after_two(messages):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("explainer went away")
        return _peak_responder(messages)

    with serve_chat(failing_after_two) as base_url:
        endpoint = scope.Endpoint(base_url, "x", concurrency=1)
        with pytest.raises(LLMError):
            scope.explain(mined, features, explainer=endpoint, batch_size=2, out=out, progress=False)
    assert pd.read_parquet(out).feature.tolist() == features[:2]  # the first batch survived, whole

    with ChatServer(_peak_responder) as server:
        endpoint = scope.Endpoint(server.base_url, "x")
        table = scope.explain(mined, features, explainer=endpoint, batch_size=2, out=out, progress=False)
        assert len(server.requests) == len(features) - 2  # only the missing feature was asked
        again = scope.explain(mined, features, explainer=endpoint, out=out, progress=False)
        assert len(server.requests) == len(features) - 2  # nothing left to ask
    assert table.feature.tolist() == features
    pd.testing.assert_frame_equal(again, table)
    pd.testing.assert_frame_equal(
        pd.read_parquet(out).sort_values("feature", ignore_index=True), table.sort_values("feature", ignore_index=True)
    )
    other = scope.Endpoint("http://127.0.0.1:1/v1", "another-model")
    with pytest.raises(ValueError, match="another-model"):
        scope.explain(mined, features, explainer=other, out=out, progress=False)


def test_explain_bad_inputs(mined_setup):
    _, mined, features = mined_setup
    endpoint = scope.Endpoint("http://127.0.0.1:1/v1", "x")
    with pytest.raises(TypeError, match="load_model"):
        scope.explain(mined, features, explainer="gemma-2-9b-it")
    with pytest.raises(ValueError, match=r"Features \[23\] have no mined examples"):
        scope.explain(mined, [23], explainer=endpoint)
    with pytest.raises(TypeError, match="several SAEs"):
        scope.explain({"a": mined, "b": mined}, explainer=endpoint)
    with pytest.raises(ValueError, match="mark"):
        scope.explain(mined, features, explainer=endpoint, mark=0)


# ----------------------------------------------------------------------------- detection


def _truth(mined, features):
    """Each feature's held-out activating contexts (even ranks), from the mined table directly."""
    examples = mined_examples(mined)
    return {f: {readable(e.text).strip() for e in examples[f] if e.rank % 2 == 0} for f in features}


def _feature(messages):
    return int(re.search(r"explanation of (\d+)", _last_user(messages)).group(1))


def _perfect(truth):
    return lambda m: str([int(t in truth[_feature(m)]) for t in _shown(m)])


def _score(mined_setup, model, responder, **kwargs):
    sae, mined, features = mined_setup
    explanations = {f: f"explanation of {f}" for f in features}
    with ChatServer(responder) as server:
        table = scope.score_explanations(
            mined,
            explanations,
            scorer=scope.Endpoint(server.base_url, "scorer"),
            model=model,
            sae=sae,
            progress=False,
            **kwargs,
        )
    return table, server.requests


# Scorers whose answers are known, one per feature: the metrics they must get.
BEHAVIOURS = {
    "perfect": (lambda shown, truth: str([int(t in truth) for t in shown]), (1.0, 1.0, 1.0)),
    "always-yes": (lambda shown, truth: str([1] * len(shown)), (0.5, 0.5, 1.0)),
    "inverted": (lambda shown, truth: str([int(t not in truth) for t in shown]), (0.0, 0.0, 0.0)),
    "unparseable": (lambda shown, truth: "I think the first one, maybe.", (0.5, float("nan"), 0.0)),
}


@pytest.fixture(scope="module")
def known_scores(tiny_model, mined_setup):
    """One scoring run in which feature i is scored by the i-th known behaviour."""
    _, mined, features = mined_setup
    truth = _truth(mined, features)
    behaviour = dict(zip(features, BEHAVIOURS))

    def responder(messages):
        feature = _feature(messages)
        return BEHAVIOURS[behaviour[feature]][0](_shown(messages), truth[feature])

    table, requests = _score(mined_setup, tiny_model, responder)
    return table.set_index("feature"), requests, behaviour, truth


@pytest.mark.parametrize("name", list(BEHAVIOURS))
def test_known_scorers_give_known_scores(known_scores, name):
    table, _, behaviour, _ = known_scores
    feature = next(f for f, b in behaviour.items() if b == name)
    row = table.loc[feature]
    assert (row.n_activating, row.n_non_activating, row.n_prompts) == (5, 5, 2)
    assert row.n_unparsed == (2 if name == "unparseable" else 0)
    expected = BEHAVIOURS[name][1]
    np.testing.assert_equal((row.balanced_accuracy, row.precision, row.recall), expected)


def test_non_activating_contexts_are_really_silent(tiny_model, mined_setup, known_scores):
    sae = mined_setup[0]
    _, requests, _, truth = known_scores
    by_feature = {}
    for body in requests:
        by_feature.setdefault(_feature(body["messages"]), []).extend(_shown(body["messages"]))
    for feature, shown in by_feature.items():
        negatives = [t for t in shown if t not in truth[feature]]
        assert len(negatives) == 5 and len(shown) == 10
        for text in negatives:  # the feature is zero on every token (scope.encode, BOS left out)
            assert float(scope.encode(tiny_model, sae, text).values[1:, feature].max()) == 0.0


def test_coin_flip_scorer_is_near_chance(tiny_model, mined_setup):
    rng = random.Random(0)
    table, _ = _score(
        mined_setup,
        tiny_model,
        lambda m: str([rng.randint(0, 1) for _ in _shown(m)]),
        n_activating=5,
        n_non_activating=40,
        examples_per_prompt=3,
    )
    # per feature few examples; pooled over features the predictions are chance
    assert 0.3 < table.balanced_accuracy.mean() < 0.7


def test_scores_resume_and_shuffle_is_seeded(tiny_model, mined_setup, tmp_path):
    sae, mined, features = mined_setup
    truth = _truth(mined, features)
    out = tmp_path / "scores.parquet"
    explanations = {f: f"explanation of {f}" for f in features}
    with ChatServer(_perfect(truth)) as server:
        scorer = scope.Endpoint(server.base_url, "scorer")
        kwargs = dict(scorer=scorer, model=tiny_model, sae=sae, out=out, progress=False)
        first = scope.score_explanations(mined, {features[0]: explanations[features[0]]}, **kwargs)
        n = len(server.requests)
        both = scope.score_explanations(mined, explanations, **kwargs)
        assert len(server.requests) == n + 2 * (len(features) - 1)
        pd.testing.assert_frame_equal(both.iloc[:1], first)
        prompts = [b["messages"][-1]["content"] for b in server.requests]
        scope.score_explanations(mined, explanations, **(kwargs | {"out": None}))
        rerun = [b["messages"][-1]["content"] for b in server.requests[len(prompts) :]]
    assert sorted(rerun) == sorted(prompts)  # the same seed shows the same contexts in the same order


def test_score_bad_inputs(tiny_model, mined_setup, make_sae):
    sae, mined, features = mined_setup
    endpoint = scope.Endpoint("http://127.0.0.1:1/v1", "x")
    kwargs = dict(scorer=endpoint, model=tiny_model, sae=sae)
    with pytest.raises(TypeError, match="explanations must be"):
        scope.score_explanations(mined, ["a", "b"], **kwargs)
    with pytest.raises(ValueError, match="'feature' and 'explanation'"):
        scope.score_explanations(mined, pd.DataFrame({"feature": [1]}), **kwargs)
    with pytest.raises(ValueError, match="n_activating"):
        scope.score_explanations(mined, {features[0]: "e"}, n_activating=0, **kwargs)
    wrong = make_sae(hook=HOOK, d_in=32)[0]
    with pytest.raises(ValueError):
        scope.score_explanations(mined, {features[0]: "e"}, **(kwargs | {"sae": wrong}))


def test_cli_explain_through_an_endpoint(mined_setup, tmp_path, capsys):
    from scope.cli import main

    _, mined, features = mined_setup
    table = tmp_path / "mined.parquet"
    mined.examples.to_parquet(table)
    out = tmp_path / "explanations.parquet"
    with serve_chat(_peak_responder) as base_url:
        argv = ["explain", "--mined", str(table), "--out", str(out), "--endpoint", base_url]
        assert main([*argv, "--features", ",".join(map(str, features[:2]))]) == 0
    written = pd.read_parquet(out)
    assert written.feature.tolist() == features[:2] and (written.explainer == "default").all()
    assert "2 explanations by default" in capsys.readouterr().out
    assert main(["explain", "--mined", str(tmp_path / "none.parquet"), "--out", str(out)]) == 1


@pytest.mark.slow
def test_bundled_model_explains_and_scores_end_to_end(bundled_model):
    """The bundled base model as a stand-in explainer and scorer: the pipeline runs and reports
    what it got (the scores of a 270M base model are near chance; scripts/bench_explain.py)."""
    sae = scope.load_sae("demo-docs")
    texts = ["if x > 1:\n    return x", "The cat sat on the mat.", "for i in range(10):\n    print(i)"] * 4
    mined = scope.mine(bundled_model, sae, texts, features=[1, 9, 3], k=6, progress=False)
    features = sorted(mined.examples.feature.unique().tolist())[:2]
    table = scope.explain(mined, features, explainer=bundled_model, n_examples=3, max_tokens=12, progress=False)
    assert (table.explainer == "gemma-3-270m (base model stand-in)").all()
    assert table.reply.map(len).gt(0).all()
    scores = scope.score_explanations(
        mined,
        table,
        scorer=bundled_model,
        model=bundled_model,
        sae=sae,
        n_activating=2,
        n_non_activating=2,
        max_tokens=12,
        progress=False,
    )
    assert scores.feature.tolist() == features
    assert (scores.n_non_activating <= 2).all()
    # balanced accuracy is undefined (NaN) where this tiny corpus left no silent or no held-out context
    scorable = (scores.n_activating > 0) & (scores.n_non_activating > 0)
    assert scores.balanced_accuracy[scorable].between(0, 1).all()
    assert scores.balanced_accuracy[~scorable].isna().all()
