"""The dense-feature filter and relative ranking, against densities and top-k computed by hand."""

import math

import numpy as np
import pytest
import torch

import scope
from scope.cli import main
from scope.density import dense_filter, feature_densities, set_densities
from scope.feature_stats import set_feature_stats, set_max_activations
from scope.serve.explorer import feature_data, token_features
from scope.serve.state import Served
from tests.sae_util import jumprelu

TEXTS = [
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore every summer morning.",
    "def add(a, b):\n    return a + b\n",
]
TEXT = "The river flows past the old mill and into the sea."
THRESHOLD = 0.3


@pytest.fixture(scope="module")
def sae_and_params(tiny_model, tmp_path_factory):
    from tests.sae_util import random_params, write_params

    params = random_params(64, 48, seed=3)
    path = write_params(tmp_path_factory.mktemp("dense") / "params.npz", params)
    sae = scope.load_sae(path, hook="blocks.1.hook_resid_post", device="cpu")
    sae.cfg.metadata["test_path"] = str(path)
    return sae, params


@pytest.fixture(scope="module")
def hand_density(tiny_model, sae_and_params):
    """Each feature's share of the texts' tokens (BOS apart) where it fires, from a JumpReLU
    written out on activations of ordinary forward passes."""
    _, params = sae_and_params
    fired, total = torch.zeros(48, dtype=torch.float64), 0
    for text in TEXTS:
        _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(text), names_filter="blocks.1.hook_resid_post")
        acts, _ = jumprelu(cache["blocks.1.hook_resid_post"][0, 1:], params)
        fired += (acts > 0).sum(0)
        total += acts.shape[0]
    return (fired / total).numpy()


@pytest.fixture(scope="module")
def text_acts(tiny_model, sae_and_params):
    """TEXT's feature activations from a JumpReLU written out (one forward pass, shared)."""
    _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(TEXT), names_filter="blocks.1.hook_resid_post")
    return jumprelu(cache["blocks.1.hook_resid_post"][0], sae_and_params[1])[0]


def _hand_top(acts, k, hidden=(), maxima=None):
    """(position, feature, activation) of the top-k by hand: hidden features never compete."""
    rows = []
    for position in range(1, acts.shape[0]):
        scores = {
            f: float(acts[position, f]) / (1.0 if maxima is None else float(maxima[f]))
            for f in range(acts.shape[1])
            if f not in hidden and acts[position, f] > 0
        }
        for f in sorted(scores, key=lambda f: -scores[f])[:k]:
            rows.append((position, f, float(acts[position, f])))
    return rows


def test_mined_densities_hide_exactly_the_features_above_the_threshold(
    tiny_model, sae_and_params, hand_density, text_acts
):
    sae, _ = sae_and_params
    mined = scope.mine(tiny_model, sae, TEXTS, k=3, progress=False)
    np.testing.assert_allclose(feature_densities(sae, mined)[0], hand_density, atol=1e-9)
    dense = {int(f) for f in np.flatnonzero(hand_density > THRESHOLD)}
    assert 0 < len(dense) < 48 and (hand_density[list(dense)] < 1).all()  # the data exercise the cut

    found = scope.top_features(tiny_model, sae, TEXT, k=3, densities=mined, dense_threshold=THRESHOLD)
    expected = _hand_top(text_acts, 3, hidden=dense)
    assert [(r.position, r.feature) for r in found.itertuples()] == [(p, f) for p, f, _ in expected]
    np.testing.assert_allclose(found["activation"], [a for *_, a in expected], rtol=1e-5)
    unfiltered = {f for _, f, _ in _hand_top(text_acts, 3)}
    assert found.attrs["dense_hidden"] == sorted(unfiltered & dense) != []
    assert f"{len(found.attrs['dense_hidden'])} dense feature(s)" in found.attrs["dense_note"]

    shown = scope.top_features(tiny_model, sae, TEXT, k=3, densities=mined, dense_threshold=THRESHOLD, dense=True)
    assert [(r.position, r.feature) for r in shown.itertuples()] == [(p, f) for p, f, _ in _hand_top(text_acts, 3)]
    assert shown.attrs["dense_hidden"] == []

    set_densities(sae, mined)  # recorded on the SAE: the default view now hides them
    try:
        assert dense_filter(sae, threshold=THRESHOLD).dense == frozenset(dense)
    finally:
        sae.cfg.metadata["scope_feature_stats"] = None


def test_without_densities_nothing_is_hidden_and_the_note_says_so(tiny_model, sae_and_params, text_acts):
    sae, _ = sae_and_params
    found = scope.top_features(tiny_model, sae, TEXT, k=2)
    assert [(r.position, r.feature) for r in found.itertuples()] == [(p, f) for p, f, _ in _hand_top(text_acts, 2)]
    assert found.attrs["dense_hidden"] == [] and "No feature densities are known" in found.attrs["dense_note"]


def test_relative_ranking_is_activation_over_the_recorded_max(tiny_model, sae_and_params, text_acts):
    sae, _ = sae_and_params
    maxima = torch.linspace(0.5, 5.0, 48)[torch.randperm(48, generator=torch.Generator().manual_seed(0))]
    set_max_activations(sae, maxima)
    try:
        found = scope.top_features(tiny_model, sae, TEXT, k=3, rank_by="relative")
    finally:
        sae.cfg.metadata["scope_feature_stats"] = None
    expected = _hand_top(text_acts, 3, maxima=maxima)
    assert [(r.position, r.feature) for r in found.itertuples()] == [(p, f) for p, f, _ in expected]
    np.testing.assert_allclose(found["relative"], [a / float(maxima[f]) for _, f, a in expected], rtol=1e-5)
    by_activation = _hand_top(text_acts, 3)
    assert [f for _, f, _ in by_activation] != [f for _, f, _ in expected]  # the ranking really changed


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rank_by": "relative"}, "max activation"),
        ({"rank_by": "max"}, "'activation', 'relative'"),
        ({"dense_threshold": 0.0}, r"\(0, 1\]"),
        ({"dense_threshold": math.nan}, "dense_threshold"),
        ({"densities": [0.5, 0.1]}, "one value per feature"),
    ],
)
def test_bad_view_arguments_fail_before_the_model_runs(tiny_model, sae_and_params, monkeypatch, kwargs, message):
    sae, _ = sae_and_params
    monkeypatch.setattr(scope.features, "encode", lambda *a, **kw: pytest.fail("the model ran"))
    with pytest.raises(ValueError, match=message):
        scope.top_features(tiny_model, sae, TEXT, **kwargs)


def test_cli_and_explorer_state_the_hidden_dense_features(
    tiny_model, sae_and_params, hand_density, text_acts, monkeypatch, capsys
):
    sae, _ = sae_and_params
    set_feature_stats(sae, {"density": torch.from_numpy(hand_density)})
    try:
        expected_hidden = sorted(
            {f for _, f, _ in _hand_top(text_acts, 2)} & set(np.flatnonzero(hand_density > 0.1).tolist())
        )
        served = Served(tiny_model, {"s": sae})
        data = token_features(served, "s", sae, TEXT, 2)
        pages = [feature_data(served, "s", sae, f)["dense"] for f in (expected_hidden[0], 0)]
        monkeypatch.setattr(scope, "load_model", lambda name, **kwargs: tiny_model)
        monkeypatch.setattr(scope, "load_sae", lambda *a, **kw: sae)
        command = ["features", TEXT, "--model", "shieldgemma-2b", "--sae", sae.cfg.metadata["test_path"], "--hook", "h"]
        assert main([*command, "--k", "2"]) == 0
        printed = capsys.readouterr().out
        assert main([*command, "--show-dense"]) == 0
        shown = capsys.readouterr().out
    finally:
        sae.cfg.metadata["scope_feature_stats"] = None
    assert expected_hidden and data["dense"]["hidden"] == expected_hidden
    listed = {f["feature"] for t in data["tokens"] for f in t["features"]}
    assert not listed & set(expected_hidden) and not set(data["activations"]) & set(map(str, expected_hidden))
    assert f"{len(expected_hidden)} dense feature(s)" in printed and "--show-dense" in printed
    assert "Dense features are shown" in shown
    assert pages == [  # the feature page says whether the feature is dense
        {"threshold": 0.1, "known": True, "is_dense": True},
        {"threshold": 0.1, "known": True, "is_dense": bool(hand_density[0] > 0.1)},
    ]


@pytest.fixture
def planted_pairs(tmp_path):
    """An SAE whose dense features 3/7 and 10/20 have opposite decoder rows (the first pair
    unequal in length, with noise), and a dense feature 30 with no opposite partner."""
    from tests.sae_util import random_params, write_params

    params = random_params(64, 48, seed=5)
    half = 0.5 * params["W_dec"][7]  # noise of ~30% of its length: cosine about -0.96
    params["W_dec"][3] = -half + np.random.default_rng(0).normal(scale=0.3 / 8, size=64) * np.linalg.norm(half)
    params["W_dec"][10] = -params["W_dec"][20]
    sae = scope.load_sae(write_params(tmp_path / "params.npz", params), hook="blocks.1.hook_resid_post")
    density = np.full(48, 0.01)
    density[[3, 7, 10, 20, 30]] = [0.3, 0.25, 0.4, 0.2, 0.5]
    return sae, params, density


def test_antipodal_pairs_are_the_planted_opposite_decoder_rows(planted_pairs):
    sae, params, density = planted_pairs
    pairs = scope.antipodal_pairs(sae, densities=density)
    w = torch.from_numpy(params["W_dec"]).double()
    cos = {p: float(torch.nn.functional.cosine_similarity(w[p[0]], w[p[1]], dim=0)) for p in [(3, 7), (10, 20)]}
    assert cos[(10, 20)] == pytest.approx(-1.0) and -0.99 < cos[(3, 7)] < -0.9  # the noise is really there
    assert list(zip(pairs["feature"], pairs["partner"])) == [(10, 20), (3, 7)]  # most opposite first
    np.testing.assert_allclose(pairs["cosine"], [cos[(10, 20)], cos[(3, 7)]], atol=1e-9)
    np.testing.assert_allclose(pairs["density"], [0.4, 0.3])
    np.testing.assert_allclose(pairs["partner_density"], [0.2, 0.25])
    # a stricter cosine keeps the exact pair only; named features need no densities
    strict = scope.antipodal_pairs(sae, [3, 7, 10, 20, 30], max_cosine=-0.999)
    assert list(zip(strict["feature"], strict["partner"])) == [(10, 20)] and strict["density"].isna().all()
    # the pair is found only among the features asked about
    assert scope.antipodal_pairs(sae, [3, 10, 30]).empty


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "No densities are known"),
        ({"features": [3, 48]}, r"\[48\] outside this SAE's features 0..47"),
        ({"features": [3, 7], "max_cosine": 0.5}, r"\[-1, 0\)"),
    ],
)
def test_antipodal_pairs_name_what_is_wrong(planted_pairs, kwargs, message):
    sae, _, _ = planted_pairs
    with pytest.raises(ValueError, match=message):
        scope.antipodal_pairs(sae, **kwargs)


@pytest.mark.slow
def test_the_demo_view_hides_the_demo_sae_s_dense_features(bundled_model):
    from safetensors.torch import load_file

    from scope.cli.demo import DEMO_SENTENCE
    from scope.saes import DEMO_SAES

    sae = scope.load_sae("demo")
    shipped = load_file(str(DEMO_SAES["demo"].folder / "feature_stats.safetensors"))["density"]
    dense = set(torch.nonzero(shipped > 0.1).flatten().tolist())
    assert dense == {200, 3959, 5750, 7267}  # the four of issue 26, from the shipped statistics
    shown = scope.top_features(bundled_model, sae, DEMO_SENTENCE, k=2)
    everything = scope.top_features(bundled_model, sae, DEMO_SENTENCE, k=2, dense=True)
    assert not set(shown["feature"]) & dense
    assert shown.attrs["dense_hidden"] == sorted(set(everything["feature"]) & dense) != []
    rank1 = everything[everything["rank"] == 1]
    assert rank1["feature"].isin(dense).mean() > 0.5  # what the default now keeps out of view
