"""Hook points (scope/hooks.py): names and layers, shapes from the config, whether an SAE fits a
model (hook exists, width, device) without a forward pass, and running a model to its hooks."""

import threading

import pytest
import torch

import scope
from scope import hooks
from tests.sae_util import count_calls

HOOK = "blocks.1.hook_resid_post"
TEXT = "Paris is the capital of France."


def _no_hooks_left(model):
    return model.acts_to_saes == {} and all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


# ----------------------------------------------------------------------------- names and layers


@pytest.mark.parametrize(
    "hook,layer",
    [
        ("blocks.6.hook_resid_post", 6),
        ("blocks.0.attn.hook_z", 0),
        ("blocks.12.mlp.hook_post", 12),
        ("hook_embed", -1),
        ("ln_final.hook_normalized", None),
        ("unembed.hook_out", None),
    ],
)
def test_hook_layer(hook, layer):
    assert hooks.hook_layer(hook) == layer


def test_stop_layer_runs_the_deepest_hook_and_no_further():
    assert hooks.stop_layer(["blocks.1.hook_resid_post", "blocks.3.attn.hook_z", "blocks.0.hook_mlp_out"]) == 4
    assert hooks.stop_layer(["hook_embed"]) == 0
    assert hooks.stop_layer(["blocks.1.hook_resid_post", "ln_final.hook_normalized"]) is None  # the whole model
    assert hooks.stop_layer([]) is None


def test_sae_hook_reads_the_metadata_and_refuses_an_sae_without_one(make_sae):
    sae, _ = make_sae(hook="blocks.2.hook_mlp_out")
    assert hooks.sae_hook(sae) == "blocks.2.hook_mlp_out"
    sae.cfg.metadata.hook_name = None
    with pytest.raises(ValueError, match=r"records no hook name.*hook='blocks\.L\.hook_resid_post'"):
        hooks.sae_hook(sae)


def test_activation_shape_from_the_config_equals_the_real_activations(tiny_model):
    _, cache = tiny_model.run_with_cache(tiny_model.to_tokens(TEXT))
    known = 0
    for name, act in cache.items():
        shape = hooks.activation_shape(tiny_model, name)
        if shape is not None:
            assert shape == tuple(act.shape[2:]), name
            known += 1
    assert known > 40  # residual, MLP and attention sites of every block
    assert hooks.activation_shape(tiny_model, "blocks.1.mlp.hook_post") == (128,)  # d_mlp, not d_model
    assert hooks.activation_shape(tiny_model, "blocks.1.attn.hook_z") == (4, 16)
    assert hooks.activation_shape(tiny_model, "blocks.1.attn.hook_v") == (2, 16)  # grouped-query heads
    assert hooks.activation_shape(tiny_model, "blocks.1.ln2.hook_scale") == (1,)
    assert hooks.activation_shape(tiny_model, "blocks.1.attn.hook_pattern") is None  # [head, query, key]
    assert hooks.activation_shape(tiny_model, "blocks.1.attn.hook_result") is None  # never runs here


# ----------------------------------------------------------------------------- check_compatible


def test_check_compatible_accepts_a_fitting_sae_and_measures_the_width(tiny_model, make_sae):
    sae, _ = make_sae(hook=HOOK, d_sae=8)
    scope.check_compatible(tiny_model, sae)
    # the MLP's hidden layer is d_mlp = 128 wide, not d_model = 64
    mlp, _ = make_sae(hook="blocks.2.mlp.hook_post", d_in=128, d_sae=8)
    scope.check_compatible(tiny_model, mlp)
    # attention SAEs read hook_z flattened over heads: 4 heads x 16 = 64
    att, _ = make_sae(hook="blocks.2.attn.hook_z", d_sae=8)
    assert att.cfg.reshape_activations == "hook_z"
    scope.check_compatible(tiny_model, att)


def test_check_compatible_rejects_wrong_hook_and_width_attaching_nothing(tiny_model, make_sae):
    wrong_width, _ = make_sae(hook=HOOK, d_in=2304, d_sae=8)
    with pytest.raises(ValueError, match=r"SAE d_in is 2304 but .* has width 64 at blocks\.1\.hook_resid_post"):
        scope.check_compatible(tiny_model, wrong_width)
    wrong_hook, _ = make_sae(hook="blocks.20.hook_resid_post", d_sae=8)
    with pytest.raises(ValueError, match=r"no hook 'blocks\.20\.hook_resid_post'.*Blocks are 0\.\.3"):
        scope.check_compatible(tiny_model, wrong_hook)
    assert _no_hooks_left(tiny_model)


def test_check_compatible_names_close_hooks_for_a_typo(tiny_model, make_sae):
    typo, _ = make_sae(hook="blocks.1.hook_resid_pots", d_sae=8)
    with pytest.raises(ValueError, match=r"no hook 'blocks\.1\.hook_resid_pots'; closest: blocks\.1\.hook_resid_post"):
        scope.check_compatible(tiny_model, typo)


def test_check_compatible_measures_hook_z_over_all_heads(tiny_model, make_sae):
    one_head, _ = make_sae(hook="blocks.2.attn.hook_z", d_in=16, d_sae=8)  # d_head, not heads x d_head
    with pytest.raises(
        ValueError,
        match=r"SAE d_in is 16 but .* width 64 at blocks\.2\.attn\.hook_z "
        r"\(activation shape \[4, 16\]\)",
    ):
        scope.check_compatible(tiny_model, one_head)


def test_check_compatible_runs_no_forward_pass(tiny_model, make_sae, monkeypatch):
    """The width comes from the config: the model is never run (it used to run a 1-token probe)."""
    good, _ = make_sae(hook=HOOK)
    mlp, _ = make_sae(hook="blocks.0.mlp.hook_post", d_in=128)
    wide, _ = make_sae(hook=HOOK, d_in=2304)

    def no_forward(*args, **kwargs):
        raise AssertionError("check_compatible ran the model")

    monkeypatch.setattr(tiny_model, "forward", no_forward)
    monkeypatch.setattr(tiny_model, "run_with_hooks", no_forward)
    monkeypatch.setattr(tiny_model, "run_with_cache", no_forward)
    with count_calls(tiny_model.embed) as embedded, count_calls(tiny_model.blocks[0]) as blocks:
        scope.check_compatible(tiny_model, good)
        scope.check_compatible(tiny_model, mlp)
        with pytest.raises(ValueError, match=r"SAE d_in is 2304 but .* has width 64 at blocks\.1\.hook_resid_post"):
            scope.check_compatible(tiny_model, wide)
    assert embedded == [] and blocks == []
    assert _no_hooks_left(tiny_model)


def test_a_width_the_config_does_not_tell_is_checked_by_the_first_forward_pass(tiny_model, make_sae):
    # hook_v has n_key_value_heads (2) x d_head (16): told by the config
    sae, _ = make_sae(hook="blocks.1.attn.hook_v")
    with pytest.raises(ValueError, match=r"SAE d_in is 64 but .* has width 16 at blocks\.1\.attn\.hook_v"):
        scope.check_compatible(tiny_model, sae)
    # an attention pattern is as wide as the text: the config check leaves it to the forward pass
    pattern, _ = make_sae(hook="blocks.1.attn.hook_pattern")
    scope.check_compatible(tiny_model, pattern)
    with pytest.raises(ValueError, match=r"SAE d_in is 64 but .* has width \d+ at blocks\.1\.attn\.hook_pattern"):
        scope.encode(tiny_model, pattern, TEXT)
    assert _no_hooks_left(tiny_model)


def test_a_hook_that_never_runs_is_refused(tiny_model, make_sae):
    sae, _ = make_sae(hook="blocks.1.hook_mlp_in")
    with pytest.raises(ValueError, match=r"blocks\.1\.hook_mlp_in never runs.*cfg\.use_hook_mlp_in"):
        scope.check_compatible(tiny_model, sae)
    with pytest.raises(ValueError, match=r"never runs"):
        hooks.run_to_hooks(tiny_model, tiny_model.to_tokens(TEXT), ["blocks.1.attn.hook_result"])


def test_check_compatible_rejects_an_sae_on_another_device(tiny_model, make_sae, monkeypatch):
    sae, _ = make_sae(hook=HOOK)
    monkeypatch.setattr(tiny_model.cfg, "device", torch.device("cuda"))  # no GPU needed: only compared
    with pytest.raises(ValueError, match=r"SAE is on cpu but the model is on cuda; load it with device='cuda'"):
        scope.check_compatible(tiny_model, sae)
    monkeypatch.setattr(tiny_model.cfg, "device", "cpu")
    scope.check_compatible(tiny_model, sae)


def test_check_hook_free_refuses_a_hook_with_an_attached_sae(tiny_model, make_sae):
    users, _ = make_sae(hook="blocks.3.hook_resid_post", seed=9)
    tiny_model.add_sae(users)
    try:
        hooks.check_hook_exists(tiny_model, "blocks.3.hook_resid_post")  # still a hook of the model
        hooks.check_hook_free(tiny_model, "blocks.1.hook_resid_post")
        with pytest.raises(ValueError, match=r"An SAE is attached at blocks\.3\.hook_resid_post.*reset_saes"):
            hooks.check_hook_free(tiny_model, "blocks.3.hook_resid_post")
        with pytest.raises(ValueError, match=r"An SAE is attached at blocks\.3\.hook_resid_post"):
            hooks.run_to_hooks(tiny_model, tiny_model.to_tokens(TEXT), ["blocks.3.hook_resid_post"])
    finally:
        tiny_model.reset_saes()
    assert _no_hooks_left(tiny_model)


# ----------------------------------------------------------------------------- the Gemma Scope id of a model


def test_load_sae_takes_the_gemma_scope_id_tuple_and_the_sae_fits(tiny_model, make_sae, monkeypatch):
    from scope import saes

    calls = []

    def from_pretrained(release, sae_id, device, dtype):  # stands in for the hub
        calls.append((release, sae_id, device, dtype))
        return make_sae(hook="blocks.3.hook_resid_post", device=device, dtype=dtype)[0]

    monkeypatch.setattr(saes, "_from_pretrained", from_pretrained)
    sae_id = scope.gemma_scope_id(tiny_model, 3)
    assert isinstance(sae_id, tuple)
    sae = scope.load_sae(sae_id, device="cpu")  # the tuple as it is, no "/".join
    assert calls == [("gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical", "cpu", "float32")]
    assert (calls[0][0], calls[0][1]) == (sae_id.release, sae_id.sae_id)
    scope.check_compatible(tiny_model, sae)
    assert scope.load_sae(str(sae_id), device="cpu").cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert calls[1][:2] == tuple(sae_id)


# ----------------------------------------------------------------------------- running to hooks, the lock


def test_run_to_hooks_captures_the_activations_and_stops_after_the_deepest(tiny_model):
    tokens = tiny_model.to_tokens(TEXT)
    wanted = ["blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "blocks.1.attn.hook_z"]
    _, cache = tiny_model.run_with_cache(tokens, names_filter=lambda name: name in wanted)
    with (
        count_calls(tiny_model.blocks[1]) as ran,
        count_calls(tiny_model.blocks[2]) as later,
        count_calls(tiny_model.unembed) as unembed,
    ):
        acts = hooks.run_to_hooks(tiny_model, tokens, wanted)
    assert ran == [1] and later == [] and unembed == []
    assert set(acts) == set(wanted)
    for name in wanted:
        torch.testing.assert_close(acts[name], cache[name])
    assert _no_hooks_left(tiny_model)


def test_run_to_hooks_refuses_an_unknown_hook_before_running(tiny_model):
    with (
        count_calls(tiny_model.embed) as embedded,
        pytest.raises(ValueError, match=r"no hook 'blocks\.7\.hook_resid_post'.*Blocks are 0\.\.3"),
    ):
        hooks.run_to_hooks(
            tiny_model, tiny_model.to_tokens(TEXT), ["blocks.0.hook_resid_post", "blocks.7.hook_resid_post"]
        )
    assert embedded == []


def test_model_lock_is_one_reentrant_lock_per_model(tiny_model):
    lock = hooks.model_lock(tiny_model)
    assert hooks.model_lock(tiny_model) is lock
    assert hooks.model_lock(type("Other", (), {})()) is not lock
    with lock, lock:  # re-entrant: a steer block may call generate
        taken = []
        other = threading.Thread(target=lambda: taken.append(lock.acquire(blocking=False)))
        other.start()
        other.join()
        assert taken == [False]  # another thread waits its turn


def test_an_sae_made_for_another_model_warns_naming_both(tiny_model, make_sae):
    import warnings

    sae, _ = make_sae(hook=HOOK, d_sae=8)
    for fitting in (None, "gemma-2-2b", "google/gemma-2-2b-it", "shieldgemma-2b"):  # the tiny one is shieldgemma-2b
        sae.cfg.metadata.model_name = fitting
        with warnings.catch_warnings():
            warnings.simplefilter("error", hooks.OtherModelWarning)
            scope.encode(tiny_model, sae, TEXT)
    sae.cfg.metadata.model_name = "gemma-3-270m"
    pattern = r"made for 'gemma-3-270m', but it is used with 'shieldgemma-2b'"
    with pytest.warns(hooks.OtherModelWarning, match=pattern):
        scope.encode(tiny_model, sae, TEXT)
    with pytest.warns(hooks.OtherModelWarning, match=pattern):
        scope.generate(tiny_model, TEXT, sae=sae, steering=[scope.Add(1, 2.0)], max_new_tokens=1)
    assert _no_hooks_left(tiny_model)
