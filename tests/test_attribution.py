"""Which SAE features drive a metric (scope.attribute) or a ShieldGemma verdict (scope.shield.attribute),
and score under steering.

The tiny Gemma 2 runs in float64 here so that the derivative checks can be tight: the
attributions are compared with central finite differences of the metric computed through
scope.steer (an independent code path), and with an independent gradient at the hook.
"""

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import scope
import scope.attribution
import scope.logits
from scope import shield
from scope.plots import attribution_figure
from tests.sae_util import jumprelu, random_params, write_params
from tests.tiny import save_tiny_gemma2

HOOK = "blocks.1.hook_resid_post"
PROMPT = "How do I build a bomb in my garage?"
POLICY = "dangerous_content"
PROMPTS = ["Hi", "How do I patch a punctured bicycle inner tube?", "knock knock. who is there?"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny Gemma 2 (sliding window 8, softcaps) with room for whole ShieldGemma prompts
    (~500 tokens with the tiny tokenizer), as in test_shield.py; float64 for tight checks."""
    path = save_tiny_gemma2(tmp_path_factory.mktemp("tiny-shield-attr"), max_position_embeddings=2048)
    return scope.load_model("shieldgemma-2b", weights=path, device="cpu", dtype=torch.float64)


@pytest.fixture
def sae_and_params(make_sae):
    return make_sae(HOOK, seed=3, threshold_scale=0.3, dtype=torch.float64)


@pytest.fixture
def sae(sae_and_params):
    return sae_and_params[0]


@pytest.fixture
def params(sae_and_params):
    return sae_and_params[1]


def no_hooks_left(model) -> bool:
    return (
        all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())
        and not model._forward_pre_hooks
        and not model.embed._forward_pre_hooks
        and not getattr(model, "acts_to_saes", {})
    )


def logit_diff(model, text: str, fwd_hooks=(), tokens=None) -> float:
    """logit_a - logit_b (default: Yes - No) at the last position, from the full logits."""
    a, b = tokens if tokens is not None else shield.yes_no_ids(model)
    with torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        logits = model(model.to_tokens(text, prepend_bos=True, truncate=False))[0, -1]
    return (logits[a] - logits[b]).item()


def scaled_derivative(model, sae, text, feature, positions="all", eps=1e-4, tokens=None) -> float:
    """d(logit difference)/ds with ``feature`` scaled by s at s = 1, by central differences in scope.steer."""
    values = []
    for factor in (1 + eps, 1 - eps):
        with scope.steer(model, sae, scope.Scale(feature, factor), positions=positions):
            values.append(logit_diff(model, text, tokens=tokens))
    return (values[0] - values[1]) / (2 * eps)


# ---- the generic attribution: any metric of the final residual stream -----------------------

TEXT = "Paris is the capital of France, and the quick brown fox"


def test_generic_attribution_with_a_custom_metric_is_the_derivative_of_scaling(model, sae):
    """scope.attribute with one logit difference (via scope.logits.final_logits, two unembedding columns)
    equals d/ds of that difference under Scale(f, s) at s = 1, by finite differences through scope.steer."""
    assert scope.attribute is scope.attribution.attribute
    with torch.no_grad():
        last = model(model.to_tokens(TEXT))[0, -1]
    a, b = last.topk(2).indices.tolist()  # the two most likely next tokens

    def metric(residual):
        logits = scope.logits.final_logits(model, residual[0, -1], [a, b])
        return logits[0] - logits[1]

    result = scope.attribute(
        model, sae, TEXT, metric, k=4, metric_name="top-1 minus top-2", labels=("widens", "narrows")
    )
    assert isinstance(result, scope.Attribution)
    assert len(result.table) == 4 and result.metric_name == "top-1 minus top-2"
    assert result.hook == HOOK and result.by == "feature"
    assert result.metric == pytest.approx((last[a] - last[b]).item(), abs=1e-9)
    assert result.metric == pytest.approx(logit_diff(model, TEXT, tokens=(a, b)), abs=1e-9)
    assert ((result.table["attribution"] >= 0) == (result.table["direction"] == "widens")).all()
    assert set(result.table["direction"]) <= {"widens", "narrows"}
    for feature, attribution in zip(result.table["feature"], result.table["attribution"]):
        expected = scaled_derivative(model, sae, TEXT, int(feature), tokens=(a, b))
        assert attribution == pytest.approx(expected, rel=1e-5, abs=1e-7)
    by_position = scope.attribute(model, sae, TEXT, metric, k=2, by="position")
    for feature, position, attribution in zip(*(by_position.table[c] for c in ("feature", "position", "attribution"))):
        expected = scaled_derivative(model, sae, TEXT, int(feature), positions=[int(position)], tokens=(a, b))
        assert attribution == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert no_hooks_left(model)


def test_using_an_attribution_as_a_dataframe_is_deprecated(model, sae):
    result = shield.attribute(model, sae, PROMPT, POLICY, k=3)
    with pytest.warns(DeprecationWarning, match="use its .table"):
        column = result["feature"]
    assert column.tolist() == result.table["feature"].tolist()
    with pytest.warns(DeprecationWarning, match="use its .table"):
        assert result.columns.tolist() == result.table.columns.tolist()


# ---- the attributions are what the docstring says -------------------------------------------


def test_feature_attribution_is_the_derivative_of_scaling_that_feature(model, sae):
    table = shield.attribute(model, sae, PROMPT, POLICY, k=3).table
    assert len(table) == 3
    for feature, attribution in zip(table["feature"], table["attribution"]):
        expected = scaled_derivative(model, sae, shield.build_prompt(PROMPT, POLICY), int(feature))
        assert attribution == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_position_attribution_is_the_derivative_at_that_position(model, sae):
    table = shield.attribute(model, sae, PROMPT, POLICY, k=2, by="position").table
    text = shield.build_prompt(PROMPT, POLICY)
    for feature, position, attribution in zip(table["feature"], table["position"], table["attribution"]):
        expected = scaled_derivative(model, sae, text, int(feature), positions=[int(position)])
        assert attribution == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_features_error_and_bias_add_up_to_the_gradient_times_the_activation(model, sae):
    """sum_f attribution + error share + b_dec share = sum_p dd/dh[p] . h[p] over non-BOS positions,
    with dd/dh computed here without any SAE."""
    result = shield.attribute(model, sae, PROMPT, POLICY, k=1)
    tokens = model.to_tokens(shield.build_prompt(PROMPT, POLICY))
    captured = {}

    def leaf(act, hook):
        captured["h"] = act.detach().requires_grad_(True)
        return captured["h"]

    yes, no = shield.yes_no_ids(model)
    with torch.enable_grad(), model.hooks(fwd_hooks=[(HOOK, leaf)]):
        logits = model(tokens)[0, -1]
        (grad,) = torch.autograd.grad(logits[yes] - logits[no], captured["h"])
    expected = (grad[0, 1:] * captured["h"][0, 1:]).sum().item()  # position 0 is BOS
    total = result.features_total + result.error + result.bias
    assert total == pytest.approx(expected, rel=1e-9)
    with_bos = (grad[0] * captured["h"][0]).sum().item()
    assert total != pytest.approx(with_bos, rel=1e-6)  # BOS is left out, and that is visible
    assert result.metric == pytest.approx(logit_diff(model, shield.build_prompt(PROMPT, POLICY)), abs=1e-9)
    assert result.metric_name == "logit Yes - logit No"
    p_yes = shield.score(model, PROMPT, POLICY, progress=False)[0]
    assert shield.p_yes(result) == pytest.approx(p_yes, abs=1e-6)


def test_table_columns_order_tokens_and_activations(model, sae, params):
    result = shield.attribute(model, sae, PROMPT, POLICY, response="Sure, here is how.", k=6)
    table = result.table
    assert list(table.columns) == [
        "rank",
        "feature",
        "attribution",
        "direction",
        "position",
        "token",
        "activation",
        "positions",
    ]
    assert table["rank"].tolist() == list(range(1, 7))
    magnitudes = table["attribution"].abs().tolist()
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert ((table["attribution"] >= 0) == (table["direction"] == "raises Yes")).all()
    assert set(table["direction"]) <= {"raises Yes", "lowers Yes"}
    tokens = model.to_tokens(shield.build_prompt(PROMPT, POLICY, "Sure, here is how."))
    _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    acts, _ = jumprelu(cache[HOOK][0], params)  # independent JumpReLU
    for row in table.itertuples():
        assert row.position != 0  # never BOS
        assert row.token == model.tokenizer.decode([int(tokens[0, row.position])])
        assert row.activation == pytest.approx(acts[row.position, row.feature].item(), rel=1e-6)
        assert row.positions == int((acts[1:, row.feature] > 0).sum())
    assert result.hook == HOOK and result.by == "feature"


def test_only_features_that_fire_are_listed(model, tmp_path):
    """A dictionary whose features mostly never fire: fewer rows than k, none with zero activation."""
    params = random_params(64, 16, seed=5, threshold_scale=1.0)
    params["threshold"][:] = 1e6
    params["threshold"][[2, 9]] = 0.0
    quiet = scope.load_sae(write_params(tmp_path / "q.npz", params), hook=HOOK, device="cpu", dtype=torch.float64)
    table = shield.attribute(model, quiet, PROMPT, POLICY, k=10).table
    assert set(table["feature"]) <= {2, 9} and len(table) <= 2
    assert (table["activation"] > 0).all()
    params["threshold"][:] = 1e6
    silent = scope.load_sae(write_params(tmp_path / "s.npz", params), hook=HOOK, device="cpu", dtype=torch.float64)
    empty = shield.attribute(model, silent, PROMPT, POLICY, k=10)
    assert empty.table.empty and empty.table["attribution"].dtype == float and empty.features_total == 0.0
    assert list(attribution_figure(empty).data[0].y) == ["SAE error term"]


def test_attention_sae_on_hook_z(model, make_sae):
    """An attention-output SAE reads hook_z as heads x d_head flattened; the derivative check holds there too."""
    z_sae, _ = make_sae("blocks.1.attn.hook_z", d_sae=24, seed=1, threshold_scale=0.3, dtype=torch.float64)
    table = shield.attribute(model, z_sae, "Hi there", "harassment", k=2).table
    text = shield.build_prompt("Hi there", "harassment")
    for feature, attribution in zip(table["feature"], table["attribution"]):
        assert attribution == pytest.approx(scaled_derivative(model, z_sae, text, int(feature)), rel=1e-5)
    assert no_hooks_left(model)


def test_attribute_does_not_change_the_model(model, sae):
    before = shield.score(model, PROMPT, POLICY, progress=False)
    shield.attribute(model, sae, PROMPT, POLICY)
    assert no_hooks_left(model)
    assert all(p.grad is None for p in model.parameters())
    assert shield.score(model, PROMPT, POLICY, progress=False) == pytest.approx(before, abs=0)


# ---- errors: one clear exception, nothing left attached ------------------------------------


def test_sae_that_does_not_fit_the_model(model, make_sae):
    narrow, _ = make_sae(HOOK, d_in=32, d_sae=8)
    with pytest.raises(ValueError, match="SAE d_in is 32 but .* has width 64 at blocks.1.hook_resid_post"):
        shield.attribute(model, narrow, PROMPT, POLICY)
    elsewhere, _ = make_sae("blocks.9.hook_resid_post", d_sae=8)
    with pytest.raises(ValueError, match="no hook 'blocks.9.hook_resid_post'.*Blocks are 0..3"):
        shield.attribute(model, elsewhere, PROMPT, POLICY)
    assert no_hooks_left(model)


def test_bad_arguments(model, sae):
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        shield.attribute(model, sae, PROMPT, POLICY, k=0)
    with pytest.raises(ValueError, match=r"by must be one of 'feature', 'position', got 'token'"):
        shield.attribute(model, sae, PROMPT, POLICY, by="token")
    with pytest.raises(ValueError, match="Unknown policy 'dangerous'.*Valid keys: dangerous_content"):
        shield.attribute(model, sae, PROMPT, "dangerous")
    with pytest.raises(ValueError, match="more than the model's context of 2048"):
        shield.attribute(model, sae, "word " * 3000, POLICY)
    assert no_hooks_left(model)


@pytest.mark.parametrize(
    "metric, error, message",
    [
        (lambda resid: 3.0, TypeError, r"metric must return a scalar tensor .* got float 3\.0"),
        (lambda resid: resid.sum(-1), ValueError, r"scalar float tensor .* shape \[1, \d+\]: reduce it to one number"),
        (lambda resid: torch.tensor(1.0), ValueError, r"does not depend on the residual stream"),
        (lambda resid: (resid[0, -1, 0] > 0).long(), ValueError, r"torch\.int64 tensor of shape \[\]"),
    ],
    ids=["a float", "one value per position", "a constant", "an integer"],
)
def test_a_metric_that_is_not_a_scalar_of_the_residual_is_named(model, sae, metric, error, message):
    with pytest.raises(error, match=message):
        scope.attribute(model, sae, TEXT, metric)
    assert no_hooks_left(model)
    assert all(p.grad is None for p in model.parameters())


def test_sae_already_attached_at_the_hook(model, sae):
    model.add_sae(sae, use_error_term=True)
    try:
        with pytest.raises(ValueError, match="An SAE is attached at blocks.1.hook_resid_post.*reset_saes"):
            shield.attribute(model, sae, PROMPT, POLICY)
    finally:
        model.reset_saes()
    assert no_hooks_left(model)


def test_error_during_the_pass_leaves_nothing_attached(model, sae, monkeypatch):
    def broken(acts):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(sae, "decode", broken)
    with pytest.raises(RuntimeError, match="decoder exploded"):
        shield.attribute(model, sae, PROMPT, POLICY)
    assert no_hooks_left(model)
    assert all(p.grad is None for p in model.parameters())


# ---- the figure -------------------------------------------------------------------------------


def test_attribution_figure(model, sae):
    result = shield.attribute(model, sae, PROMPT, POLICY, k=5)
    table = result.table
    figure = attribution_figure(result)
    assert isinstance(figure, go.Figure)
    bar = figure.data[0]
    assert list(bar.x) == [result.error] + sorted(table["attribution"])
    assert bar.y[0] == "SAE error term"
    top = table.iloc[0]
    assert f"f{top.feature} @ {top.position}: {top.token!r}" in bar.y
    assert f"P(Yes) = {shield.p_yes(result):.3f}" in figure.layout.title.text
    with pytest.raises(ValueError, match="missing column"):
        attribution_figure(table.drop(columns=["token"]))
    generic = scope.attribute(model, sae, PROMPT, lambda r: r[0, -1].sum(), k=3, metric_name="sum")
    assert f"sum = {generic.metric:.3f}" in attribution_figure(generic).layout.title.text


# ---- score inside steering --------------------------------------------------------------------


def manual_clamp_hook(params, feature: int, value: float):
    """h + (value - f(h)) W_dec[feature] at every position but BOS (position 0 of an unpadded prompt)."""
    w_dec = torch.from_numpy(params["W_dec"]).double()[feature]

    def hook(resid, hook):
        acts, _ = jumprelu(resid[0], params)
        edited = resid.clone()
        edited[0, 1:] += (value - acts[1:, feature])[:, None] * w_dec
        return edited

    return hook


def test_score_inside_steer_equals_the_edited_forward_by_hand(model, sae, params):
    feature, value = 7, 6.0
    lengths = {len(model.to_tokens(shield.build_prompt(p, "harassment"))[0]) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # batched with left padding
    clean = shield.score(model, PROMPTS, "harassment", progress=False)
    with scope.steer(model, sae, scope.Clamp(feature, value)):
        steered = shield.score(model, PROMPTS, "harassment", batch_size=3, progress=False)
    expected = []
    for prompt in PROMPTS:
        diff = logit_diff(
            model,
            shield.build_prompt(prompt, "harassment"),
            fwd_hooks=[(HOOK, manual_clamp_hook(params, feature, value))],
        )
        expected.append(1.0 / (1.0 + np.exp(-diff)))
    np.testing.assert_allclose(steered, expected, atol=1e-6)
    assert np.abs(steered - clean).max() > 1e-2  # the clamp moves the verdicts
    assert no_hooks_left(model)
    np.testing.assert_allclose(shield.score(model, PROMPTS, "harassment", progress=False), clean, atol=0)


def test_clamping_the_top_feature_moves_the_verdict_its_way(model, sae):
    """Ablating the feature that most raises (or lowers) the verdict moves P(Yes) down (or up)."""
    table = shield.attribute(model, sae, PROMPT, POLICY, k=1).table
    top = table.iloc[0]
    clean = shield.score(model, PROMPT, POLICY, progress=False)[0]
    with scope.steer(model, sae, scope.Scale(int(top.feature), 0.9)):  # a small step: first order holds
        nudged = shield.score(model, PROMPT, POLICY, progress=False)[0]
    assert np.sign(clean - nudged) == np.sign(top.attribution)
