"""Feature decoding checked against independent computations on the tiny Gemma 2."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

import scope
from scope import features as features_module
from scope.cli import main
from scope.cli.common import table as _table
from tests.sae_util import count_calls, jumprelu, random_params, write_params

TEXT = "Paris is the capital of France, and Rome is the capital of Italy."


def _str_tokens(model, text=TEXT):
    tokenizer = model.tokenizer
    ids = model.to_tokens(text)[0].tolist()
    return [tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(ids)]


def _resid(model, hook, text=TEXT):
    """The activation at ``hook`` from a full, ordinary forward pass."""
    _, cache = model.run_with_cache(model.to_tokens(text), names_filter=hook)
    return cache[hook][0]


# ----------------------------------------------------------------------------- encode


def test_encode_equals_a_jumprelu_written_out_on_captured_activations(tiny_model, make_sae):
    sae, params = make_sae()
    acts = scope.encode(tiny_model, sae, TEXT)
    expected, pre = jumprelu(_resid(tiny_model, "blocks.1.hook_resid_post"), params)
    threshold = torch.from_numpy(params["threshold"]).double()
    # the data exercise the jump: positive pre-activations below threshold must be zeroed
    assert ((pre > 0) & (pre <= threshold)).sum() > 10
    assert (expected > 0).sum() > 10
    assert acts.values.shape == (len(acts.tokens), 48)
    torch.testing.assert_close(acts.values.double(), expected, atol=1e-5, rtol=1e-5)
    assert acts.tokens == _str_tokens(tiny_model)
    assert acts.tokens[0] == "<bos>" and acts.tokens.count("<bos>") == 1


def test_encode_stops_at_the_sae_s_layer(tiny_model, make_sae):
    sae, _ = make_sae(hook="blocks.1.hook_resid_post")
    with (
        count_calls(tiny_model.blocks[1]) as ran,
        count_calls(tiny_model.blocks[2]) as later,
        count_calls(tiny_model.blocks[3]) as last,
        count_calls(tiny_model.unembed) as unembed,
    ):
        scope.encode(tiny_model, sae, TEXT)
    assert ran == [1] and later == [] and last == [] and unembed == []


def test_encode_reads_mlp_and_attention_sites(tiny_model, make_sae):
    mlp, mlp_params = make_sae(hook="blocks.2.hook_mlp_out")
    torch.testing.assert_close(
        scope.encode(tiny_model, mlp, TEXT).values.double(),
        jumprelu(_resid(tiny_model, "blocks.2.hook_mlp_out"), mlp_params)[0],
        atol=1e-5,
        rtol=1e-5,
    )
    att, att_params = make_sae(hook="blocks.2.attn.hook_z")
    z = _resid(tiny_model, "blocks.2.attn.hook_z")  # [pos, heads, d_head]
    torch.testing.assert_close(
        scope.encode(tiny_model, att, TEXT).values.double(),
        jumprelu(z.reshape(z.shape[0], -1), att_params)[0],
        atol=1e-5,
        rtol=1e-5,
    )


def test_encode_errors(tiny_model, make_sae):
    wide, _ = make_sae(d_in=2304)
    with pytest.raises(ValueError, match=r"SAE d_in is 2304 but .*width 64"):
        scope.encode(tiny_model, wide, TEXT)
    nowhere, _ = make_sae(hook="blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match=r"no hook 'blocks\.9\.hook_resid_post'"):
        scope.encode(tiny_model, nowhere, TEXT)


# ----------------------------------------------------------------------------- top_features


def _expected_top(values: torch.Tensor, k: int, skip_first: bool) -> list[tuple[int, int, int]]:
    rows = []
    for position in range(1 if skip_first else 0, values.shape[0]):
        order = np.argsort(-values[position].numpy(), kind="stable")
        active = [int(f) for f in order if values[position, f] > 0][:k]
        rows += [(position, rank, feature) for rank, feature in enumerate(active, 1)]
    return rows


def test_top_features_are_the_k_largest_active_features_per_token(tiny_model, make_sae):
    sae, params = make_sae()
    expected_values, _ = jumprelu(_resid(tiny_model, "blocks.1.hook_resid_post"), params)
    table = scope.top_features(tiny_model, sae, TEXT, k=3)
    assert list(table.columns) == ["position", "token", "rank", "feature", "activation"]
    assert list(zip(table.position, table["rank"], table.feature)) == _expected_top(expected_values, 3, skip_first=True)
    np.testing.assert_allclose(
        table.activation, [expected_values[p, f] for p, f in zip(table.position, table.feature)], rtol=1e-5, atol=1e-5
    )
    tokens = _str_tokens(tiny_model)
    assert list(table.token) == [tokens[p] for p in table.position]
    assert (table.activation > 0).all()
    # some token has fewer than 3 active features, or all have 3: either way never a zero row
    assert table.groupby("position").size().max() <= 3


def test_top_features_bos_only_on_request(tiny_model, make_sae):
    sae, _ = make_sae()
    assert 0 not in set(scope.top_features(tiny_model, sae, TEXT).position)
    with_bos = scope.top_features(tiny_model, sae, TEXT, include_bos=True)
    assert set(with_bos[with_bos.position == 0].token) == {"<bos>"}


@pytest.mark.parametrize("k", [0, -1])
def test_top_features_rejects_a_k_below_one(tiny_model, make_sae, k):
    sae, _ = make_sae()
    with pytest.raises(ValueError, match=rf"k must be a positive integer, got {k}"):
        scope.top_features(tiny_model, sae, TEXT, k=k)


@pytest.mark.parametrize("k", [2.5, "3", True, None])
def test_top_features_rejects_a_k_that_is_not_an_integer(tiny_model, make_sae, k):
    # a wrong type is a TypeError now (it was a ValueError before the redesign)
    sae, _ = make_sae()
    with pytest.raises(TypeError, match="k must be an integer"):
        scope.top_features(tiny_model, sae, TEXT, k=k)


def test_top_features_takes_k_as_a_keyword_and_numpy_integers(tiny_model, make_sae):
    sae, _ = make_sae()
    with pytest.raises(TypeError, match="positional"):
        scope.top_features(tiny_model, sae, TEXT, 3)
    pd.testing.assert_frame_equal(
        scope.top_features(tiny_model, sae, TEXT, k=np.int64(3)), scope.top_features(tiny_model, sae, TEXT, k=3)
    )


def test_neuronpedia_links_when_the_sae_has_an_id(tiny_model, make_sae):
    sae, _ = make_sae()
    assert "url" not in scope.top_features(tiny_model, sae, TEXT).columns
    sae.cfg.metadata.neuronpedia_id = "gemma-2-2b/1-gemmascope-res-16k"
    table = scope.top_features(tiny_model, sae, TEXT)
    assert list(table.url) == [
        f"https://www.neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/{f}" for f in table.feature
    ]
    assert features_module.neuronpedia_url(sae, 7) == "https://www.neuronpedia.org/gemma-2-2b/1-gemmascope-res-16k/7"


# ----------------------------------------------------------------------------- feature_logits


def test_feature_logits_read_the_decoder_row_through_the_unembedding(tiny_model, make_sae):
    sae, params = make_sae()
    feature, k = 5, 4
    logits = torch.from_numpy(params["W_dec"][feature]).double() @ tiny_model.W_U.detach().double()
    table = scope.feature_logits(tiny_model, sae, feature, k=k)
    assert list(table.columns) == ["direction", "rank", "token", "logit"]
    promoted, suppressed = table[table.direction == "promoted"], table[table.direction == "suppressed"]
    top, bottom = torch.topk(logits, k).indices.tolist(), torch.topk(-logits, k).indices.tolist()
    assert list(promoted.token) == [tiny_model.tokenizer.decode([t]) for t in top]
    assert list(suppressed.token) == [tiny_model.tokenizer.decode([t]) for t in bottom]
    np.testing.assert_allclose(promoted.logit, logits[top].numpy(), rtol=1e-5)
    np.testing.assert_allclose(suppressed.logit, logits[bottom].numpy(), rtol=1e-5)
    assert list(promoted["rank"]) == list(range(1, k + 1))


def test_feature_logits_of_an_attention_sae_go_through_w_o(tiny_model, make_sae):
    sae, params = make_sae(hook="blocks.2.attn.hook_z")
    W_O = tiny_model.blocks[2].attn.W_O.detach().double()  # [heads, d_head, d_model]
    direction = torch.from_numpy(params["W_dec"][3]).double().reshape(W_O.shape[0], W_O.shape[1])
    logits = torch.einsum("hd,hdm->m", direction, W_O) @ tiny_model.W_U.detach().double()
    table = scope.feature_logits(tiny_model, sae, 3, k=2)
    np.testing.assert_allclose(
        table[table.direction == "promoted"].logit, torch.topk(logits, 2).values.numpy(), rtol=1e-4
    )


@pytest.mark.parametrize("feature", [48, 10_000, -1, np.int64(48), torch.tensor(48)])
def test_feature_index_out_of_range_names_index_and_width(tiny_model, make_sae, feature):
    sae, _ = make_sae()
    with pytest.raises(
        ValueError,
        match=rf"feature {int(feature)} is out of range: there are 48 features "
        r"\(valid indices 0\.\.47\)",
    ):
        scope.feature_logits(tiny_model, sae, feature)


@pytest.mark.parametrize("feature", [1.5, "3", None, True, torch.tensor([3])])
def test_feature_index_must_be_an_integer(tiny_model, make_sae, feature):
    # a wrong type is a TypeError now (it was a ValueError before the redesign)
    sae, _ = make_sae()
    with pytest.raises(TypeError, match="feature must be an integer"):
        scope.feature_logits(tiny_model, sae, feature)
    assert len(scope.feature_logits(tiny_model, sae, np.int64(3), k=2)) == 4


# ----------------------------------------------------------------------------- trace


def test_trace_equals_separate_encodes_and_leaves_the_model_as_it_was(tiny_model, make_sae):
    first, _ = make_sae(hook="blocks.0.hook_resid_post", seed=1)
    mid, _ = make_sae(hook="blocks.1.hook_mlp_out", seed=2)
    last, _ = make_sae(hook="blocks.3.hook_resid_post", seed=3)
    tokens = tiny_model.to_tokens(TEXT)
    before = tiny_model(tokens)
    table = scope.trace(tiny_model, {0: first, 1: mid, 3: last}, TEXT, k=4)
    assert list(table.columns[:6]) == ["layer", "position", "token", "rank", "feature", "activation"]
    for layer, sae in [(0, first), (1, mid), (3, last)]:
        alone = scope.top_features(tiny_model, sae, TEXT, k=4)
        got = table[table.layer == layer].drop(columns="layer").reset_index(drop=True)
        pd.testing.assert_frame_equal(
            got[["position", "token", "rank", "feature"]], alone[["position", "token", "rank", "feature"]]
        )
        np.testing.assert_allclose(got.activation, alone.activation, rtol=1e-4, atol=1e-4)
    assert tiny_model.acts_to_saes == {}
    assert torch.equal(tiny_model(tokens), before)


def test_trace_is_one_pass_that_stops_after_the_deepest_sae(tiny_model, make_sae):
    a, _ = make_sae(hook="blocks.0.hook_resid_post", seed=1)
    b, _ = make_sae(hook="blocks.1.hook_resid_post", seed=2)
    with (
        count_calls(tiny_model.blocks[0]) as first,
        count_calls(tiny_model.blocks[2]) as later,
        count_calls(tiny_model.unembed) as unembed,
    ):
        table = scope.trace(tiny_model, [a, b], TEXT)  # a list: layers read from the hooks
    assert sorted(table.layer.unique()) == [0, 1]
    # only the traced pass: check_compatible reads widths from the config and runs no probe any more
    # (this was 2 calls before the redesign: a 1-token probe plus the traced pass)
    assert len(first) == 1 and later == [] and unembed == []


def test_trace_refuses_misfits_before_running_anything(tiny_model, make_sae, monkeypatch):
    good, _ = make_sae(hook="blocks.0.hook_resid_post")
    bad, _ = make_sae(hook="blocks.2.hook_resid_post", d_in=32)
    attached = []  # trace attaches no SAEs (it reads hooks with run_to_hooks) and must not run either
    monkeypatch.setattr(tiny_model, "add_sae", lambda sae, **kw: attached.append(sae))
    monkeypatch.setattr(tiny_model, "run_with_hooks", lambda *args, **kw: attached.append("ran"))
    with pytest.raises(ValueError, match=r"SAE d_in is 32 but .* has width 64 at blocks\.2\.hook_resid_post"):
        scope.trace(tiny_model, {0: good, 2: bad}, TEXT)
    same_hook, _ = make_sae(hook="blocks.0.hook_resid_post", seed=5)
    with pytest.raises(ValueError, match="key 1 reads 'blocks.0.hook_resid_post', another layer"):
        scope.trace(tiny_model, {0: good, 1: same_hook}, TEXT)
    with pytest.raises(ValueError, match="Two SAEs for layer 0"):
        scope.trace(tiny_model, [good, same_hook], TEXT)
    assert attached == []


def test_trace_leaves_no_hooks_or_saes_after_an_error(tiny_model, make_sae, monkeypatch):
    # trace no longer attaches SAEs (add_sae): it reads the hooks with run_to_hooks, so the
    # promise is now that its capture hooks are gone after an error in the middle of the pass
    a, _ = make_sae(hook="blocks.0.hook_resid_post", seed=1)
    b, _ = make_sae(hook="blocks.2.hook_resid_post", seed=2)
    seen = []

    def broken(*args, **kwargs):  # block 2 runs out of memory, with trace's hooks in place
        seen.extend(
            name
            for name in ("blocks.0.hook_resid_post", "blocks.2.hook_resid_post")
            if tiny_model.hook_dict[name].fwd_hooks
        )
        raise RuntimeError("out of memory")

    monkeypatch.setattr(tiny_model.blocks[2], "forward", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        scope.trace(tiny_model, {0: a, 2: b}, TEXT)
    assert seen == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert tiny_model.acts_to_saes == {}
    assert all(not hp.fwd_hooks for hp in tiny_model.hook_dict.values())
    monkeypatch.undo()
    pd.testing.assert_frame_equal(scope.trace(tiny_model, {0: a}, TEXT), scope.trace(tiny_model, [a], TEXT))


def test_trace_leaves_a_user_s_other_saes_alone(tiny_model, make_sae):
    users, _ = make_sae(hook="blocks.3.hook_resid_post", seed=9)
    a, _ = make_sae(hook="blocks.0.hook_resid_post", seed=1)
    tiny_model.add_sae(users)
    try:
        scope.trace(tiny_model, {0: a}, TEXT)
        assert tiny_model.acts_to_saes == {"blocks.3.hook_resid_post": users}
        with pytest.raises(ValueError, match=r"An SAE is attached at blocks\.3\.hook_resid_post \(model\.add_sae\)"):
            scope.trace(tiny_model, {0: a, 3: make_sae(hook="blocks.3.hook_resid_post")[0]}, TEXT)
        with pytest.raises(ValueError, match=r"key 3 reads 'blocks\.0\.hook_resid_post', another layer"):
            scope.trace(tiny_model, {3: a}, TEXT)
        assert tiny_model.acts_to_saes == {"blocks.3.hook_resid_post": users}
    finally:
        tiny_model.reset_saes()


def test_trace_heatmap_shows_the_top_activation_per_layer_and_position(tiny_model, make_sae):
    from scope.plots import trace_heatmap

    a, _ = make_sae(hook="blocks.0.hook_resid_post", seed=1)
    b, _ = make_sae(hook="blocks.2.hook_resid_post", seed=2)
    b.cfg.metadata.neuronpedia_id = "gemma-2-2b/2-gemmascope-res-16k"
    table = scope.trace(tiny_model, {0: a, 2: b}, TEXT, k=3)
    figure = trace_heatmap(table)
    z = np.array(figure.data[0].z, dtype=float)
    positions = sorted(table.position.unique())
    assert z.shape == (2, len(positions))
    top = table[table["rank"] == 1].set_index(["layer", "position"]).activation
    for i, layer in enumerate([0, 2]):
        for j, position in enumerate(positions):
            assert z[i, j] == pytest.approx(top.get((layer, position), np.nan), nan_ok=True)
    feature = int(table.feature.iloc[0])
    one = np.array(trace_heatmap(table, feature=feature).data[0].z, dtype=float)
    hits = table[table.feature == feature]
    assert np.count_nonzero(~np.isnan(one)) == len(hits.drop_duplicates(["layer", "position"]))
    with pytest.raises(ValueError, match="missing column"):
        trace_heatmap(table.drop(columns="feature"))


# ----------------------------------------------------------------------------- CLI entry
# ``scope.features_table`` is gone: ``scope features`` does it inline (scope/cli.py), so these
# tests drive the command.


def test_features_command_loads_model_and_sae_and_lists_top_features(
    tiny_model, make_sae, tmp_path, monkeypatch, capsys
):
    _, params = make_sae()
    path = write_params(tmp_path / "cli" / "params.npz", params)
    monkeypatch.setattr(scope, "load_model", lambda name, **kwargs: tiny_model)
    assert main(["features", TEXT, "--model", "shieldgemma-2b", "--sae", str(path), "--k", "2"]) == 2
    assert "pass --hook" in capsys.readouterr().err
    folder = tmp_path / "cli_folder"
    scope.load_sae(path, hook="blocks.1.hook_resid_post", device="cpu").save_model(folder)
    assert main(["features", TEXT, "--model", "shieldgemma-2b", "--sae", str(folder), "--k", "2"]) == 0
    sae = scope.load_sae(folder, device="cpu")
    expected = scope.top_features(tiny_model, sae, TEXT, k=2)
    printed = _table(expected) + "\n" + expected.attrs["dense_note"] + "\n"  # no densities known: nothing hidden
    assert capsys.readouterr().out == printed
    # --hook with the params.npz gives the same table
    assert (
        main(
            [
                "features",
                TEXT,
                "--model",
                "shieldgemma-2b",
                "--sae",
                str(path),
                "--hook",
                "blocks.1.hook_resid_post",
                "--k",
                "2",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == printed


def test_features_command_defaults_to_the_demo_sae(tiny_model, tmp_path, monkeypatch, capsys):
    import scope.saes

    monkeypatch.setattr(scope, "load_model", lambda name, **kwargs: tiny_model)
    absent = dataclasses.replace(scope.saes.DEMO_SAES["demo"], folder=tmp_path / "data" / "demo_sae")
    monkeypatch.setitem(scope.saes.DEMO_SAES, "demo", absent)
    assert main(["features", TEXT]) == 1  # FileNotFoundError: a runtime error
    assert "train_demo_sae.py" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the real bundled model


@pytest.mark.slow
def test_bundled_model_encode_trace_and_logit_lens(bundled_model, tmp_path):
    model = bundled_model
    text = "The Golden Gate Bridge spans the strait in San Francisco."
    saes, params = {}, {}
    for layer in (3, 6):
        hook = f"blocks.{layer}.hook_resid_post"
        p = random_params(model.cfg.d_model, 4096, seed=layer)
        _, pre = jumprelu(_resid(model, hook, text), p)
        # thresholds in the range the real activations reach, so the jump matters
        p["threshold"] = np.quantile(
            pre[1:].numpy(), np.random.default_rng(layer).uniform(0.5, 0.99, 4096), axis=None
        ).astype(np.float32)
        params[layer] = p
        saes[layer] = scope.load_sae(write_params(tmp_path / str(layer) / "params.npz", p), hook=hook, device="cpu")
        expected, pre = jumprelu(_resid(model, hook, text), p)
        assert ((pre > 0) & (pre <= torch.from_numpy(p["threshold"]).double())).sum() > 100
        acts = scope.encode(model, saes[layer], text)
        torch.testing.assert_close(acts.values.double(), expected, atol=1e-3, rtol=1e-4)
    table = scope.trace(model, saes, text, k=5)
    for layer, sae in saes.items():
        alone = scope.top_features(model, sae, text, k=5)
        got = table[table.layer == layer].reset_index(drop=True)
        assert list(got.feature) == list(alone.feature)
        np.testing.assert_allclose(got.activation, alone.activation, rtol=1e-3)
    assert model.acts_to_saes == {}
    logits = torch.from_numpy(params[6]["W_dec"][11]).double() @ model.W_U.detach().double()
    lens = scope.feature_logits(model, saes[6], 11, k=5)
    top = torch.topk(logits, 5).indices.tolist()
    assert list(lens[lens.direction == "promoted"].token) == [model.tokenizer.decode([t]) for t in top]
