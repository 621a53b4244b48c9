"""Examples sampled from intervals of a feature's activations (scope/interval_examples.py), checked
against each text's maximum read independently through scope.encode."""

import pytest

import scope
from scope.interval_examples import interval_examples

HOOK = "blocks.1.hook_resid_post"
TEXTS = [
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "def add(a, b): return a + b",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "One two three <b>four</b> five & six.",
]


@pytest.fixture
def sae(make_sae):
    return make_sae(hook=HOOK, d_sae=40, seed=3)[0]


def _firing_feature(model, sae):
    return int(scope.top_examples(model, sae, TEXTS, k=5, progress=False).feature.value_counts().index[0])


def _windows_in(model, sae, feature, low, high):
    """Independently: (text_id, position, activation) of every text whose maximum for the feature
    lies in [low, high) (TEXTS are shorter than a window, so a text is one window)."""
    found = set()
    for text_id, text in enumerate(TEXTS):
        values = scope.encode(model, sae, text).values[1:, feature]  # BOS left out
        value, position = float(values.max()), int(values.argmax()) + 1
        if value > 0 and low <= value < high:
            found.add((text_id, position, round(value, 4)))
    return found


def test_interval_groups_hold_the_windows_of_each_interval(tiny_model, sae):
    feature = _firing_feature(tiny_model, sae)
    mined = scope.mine(tiny_model, sae, TEXTS, features=[feature], k=1, progress=False)
    groups = interval_examples(tiny_model, sae, mined, [feature], TEXTS, 3, 100, 4, 128, 0)[feature]
    assert len(groups) == 3 and groups[0].high == float("inf") and groups[-1].low == 0.0
    assert [g.low for g in groups] == sorted((g.low for g in groups), reverse=True)  # highest first
    top = {(int(r.text_id), int(r.position)) for r in mined.examples.itertuples()}
    for group in groups:
        expected = {w for w in _windows_in(tiny_model, sae, feature, group.low, group.high) if w[:2] not in top}
        got = {(e.text_id, e.position, round(e.activation, 4)) for e in group.examples}
        assert got == expected and group.seen == len(expected)
        for e in group.examples:  # the context is centred on the peak, with its activation there
            assert e.acts[e.peak] == pytest.approx(e.activation)


def test_interval_sampling_keeps_per_group_and_is_seeded(tiny_model, sae):
    feature = _firing_feature(tiny_model, sae)
    mined = scope.mine(tiny_model, sae, TEXTS, features=[feature], k=1, progress=False)

    def sample(seed):
        groups = interval_examples(tiny_model, sae, mined, [feature], TEXTS, 1, 2, 4, 128, seed)[feature]
        return [(e.text_id, e.position) for e in groups[0].examples], groups[0].seen

    (first, seen), (again, _) = sample(0), sample(0)
    assert first == again and len(first) == min(2, seen)
