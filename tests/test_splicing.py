"""Transcoder feature edits and the transcoder splice (scope/splicing.py), on tiny Gemma 2 and Gemma 3
models with random transcoders written in the Gemma Scope 2 format, against the JumpReLU, the
reconstruction and the edit written out by hand and patched into the clean model's MLP output."""

import pytest
import torch

import scope
from scope.generation import generate_batch
from scope.sae_formats import load_gemma_scope_2
from scope.steering import Scale, steered
from tests.test_attribution import no_hooks_left
from tests.test_sae_formats import random_tensors, sae_config, write_folder
from tests.tiny import save_tiny_gemma3

LAYER = 2
PROMPT = "Paris is the capital of France, and the quick brown fox"
MODEL_NAMES = {"gemma2": "google/gemma-2-2b", "gemma3": "google/gemma-3-270m"}


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    return scope.load_model("gemma-3-270m", weights=save_tiny_gemma3(tmp_path_factory.mktemp("g3")), device="cpu")


@pytest.fixture(scope="module")
def models(tiny_model, tiny3):
    return {"gemma2": tiny_model, "gemma3": tiny3}


def write_transcoder(root, model, family, layer=LAYER, affine=False, d_sae=32, d_in=None, d_out=None, seed=0):
    """A Gemma Scope 2 transcoder folder for ``model``'s ``layer``, loaded, and its raw tensors."""
    d = model.cfg.d_model
    tensors = random_tensors(d_in or d, d_sae, d_out=d_out or d, seed=seed, skip=affine)
    tensors["threshold"] *= 0.3  # many features fire
    config = sae_config(
        f"model.layers.{layer}.pre_feedforward_layernorm.output",
        d_sae,
        f"model.layers.{layer}.post_feedforward_layernorm.output",
        affine,
        model=MODEL_NAMES[family],
    )
    name = f"layer_{layer}_width_16k_l0_small{'_affine' * affine}"
    folder = write_folder(root / f"{family}-{seed}" / name, tensors, config)
    return load_gemma_scope_2(folder, model=model, device="cpu"), tensors


def clean_pass(model, tokens, layer=LAYER):
    """Logits, the MLP input after its norm gain (what the transcoder reads) and the MLP output."""
    names = [f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"]
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=names)
    x = cache[names[0]].double() * model.blocks[layer].ln2.w.double()
    return logits, x, cache[names[1]].double()


def hand_acts(x, t):
    pre = x @ t["w_enc"].double() + t["b_enc"].double()
    return torch.relu(pre) * (pre > t["threshold"].double())


def hand_recon(x, t):
    out = hand_acts(x, t) @ t["w_dec"].double() + t["b_dec"].double()
    return out + x @ t["affine_skip_connection"].double() if "affine_skip_connection" in t else out


def patched_logits(model, tokens, mlp_out, layer=LAYER):
    """The clean model with its MLP output at ``layer`` replaced by ``mlp_out``."""
    hook = f"blocks.{layer}.hook_mlp_out"
    with torch.no_grad():
        return model.run_with_hooks(tokens, fwd_hooks=[(hook, lambda act, hook: mlp_out.to(act.dtype))])


def active_features(acts, n=3):
    """``n`` features that fire at some non-BOS position, most often first."""
    counts = (acts[0, 1:] > 0).sum(0)
    return [int(f) for f in counts.argsort(descending=True)[:n]]


# ----------------------------------------------------------------------------- steering


@pytest.mark.parametrize("family", ["gemma2", "gemma3"])
@pytest.mark.parametrize("affine", [False, True])
def test_steering_a_transcoder_feature_edits_the_mlp_output_with_the_error_kept(tmp_path, models, family, affine):
    model = models[family]
    transcoder, t = write_transcoder(tmp_path, model, family, affine=affine)
    tokens = model.to_tokens(PROMPT)
    clean, x, mlp_out = clean_pass(model, tokens)
    acts = hand_acts(x, t)
    f, g, h = active_features(acts)
    w_dec = t["w_dec"].double()
    positions = [2, 5]
    delta = torch.zeros_like(mlp_out)
    for p in positions:  # Clamp: value - a; Add: value; Scale: (value - 1) a
        delta[0, p] = (2.5 - acts[0, p, f]) * w_dec[f] + 3.0 * w_dec[g] + (0.5 - 1) * acts[0, p, h] * w_dec[h]
    expected = patched_logits(model, tokens, mlp_out + delta)
    steering = [scope.Clamp(f, 2.5), scope.Add(g, 3.0), Scale(h, 0.5)]
    with torch.no_grad(), scope.steer(model, transcoder, *steering, positions=positions):
        steered_logits = model(tokens)
    assert not torch.allclose(steered_logits, clean, atol=1e-2)
    assert torch.allclose(steered_logits, expected, atol=1e-4)
    with torch.no_grad(), scope.steer(model, transcoder, scope.Add(f, 0.0), Scale(g, 1.0)):
        assert torch.equal(model(tokens), clean)  # no edit: bit for bit
    assert no_hooks_left(model)


def test_per_row_transcoder_steering_in_batches_fast_and_plain_decode_agree(tmp_path, tiny3):
    model = tiny3
    transcoder, t = write_transcoder(tmp_path, model, "gemma3", affine=True)
    prompts = [scope.to_tokens(model, text)[0] for text in (PROMPT, "knock knock")]
    _, x, _ = clean_pass(model, prompts[0][None])
    f, g, _ = active_features(hand_acts(x, t))
    steering = [[scope.Add(f, 8.0)], [scope.Clamp(g, 6.0)]]

    def run(rows, texts, decode):
        with steered(model, transcoder, rows, "all", prompt_length=[len(p) for p in texts]) as generation:
            out = generate_batch(
                model, texts, max_new_tokens=5, stop_at_eos=False, decode=decode, on_rows=generation.set_rows
            )
        return [c.tokens for c in out]

    fast, plain = run(steering, prompts, "fast"), run(steering, prompts, "plain")
    assert fast == plain
    assert [run([row], [p], "plain")[0] for row, p in zip(steering, prompts)] == plain  # each row alone
    unsteered = [c.tokens for c in generate_batch(model, prompts, max_new_tokens=5, stop_at_eos=False)]
    assert unsteered != plain
    assert no_hooks_left(model)


# ----------------------------------------------------------------------------- the splice


@pytest.mark.parametrize("affine", [False, True])
def test_the_splice_without_error_runs_the_mlp_as_the_transcoder(tmp_path, tiny3, affine):
    transcoder, t = write_transcoder(tmp_path, tiny3, "gemma3", affine=affine)
    tokens = tiny3.to_tokens(["the quick brown fox jumps", PROMPT])  # a batch, padded
    clean, x, mlp_out = clean_pass(tiny3, tokens)
    recon = hand_recon(x, t)
    expected = patched_logits(tiny3, tokens, recon)
    with torch.no_grad(), scope.splice(tiny3, transcoder, error=False) as spliced:
        logits = tiny3(tokens)
    assert not torch.allclose(logits, clean, atol=1e-2)
    assert torch.allclose(logits, expected, atol=1e-4)
    assert torch.allclose(spliced.acts[LAYER].double(), hand_acts(x, t), atol=1e-5)
    assert torch.allclose(spliced.errors[LAYER].double(), mlp_out - recon, atol=1e-4)
    assert no_hooks_left(tiny3)


def test_the_splice_with_error_keeps_outputs_exactly_and_takes_gradients_through_the_transcoder(tmp_path, tiny3):
    transcoder, t = write_transcoder(tmp_path, tiny3, "gemma3", affine=True)
    tokens = tiny3.to_tokens(PROMPT)
    clean, _, mlp_out = clean_pass(tiny3, tokens)
    with scope.splice(tiny3, {LAYER: transcoder}) as spliced:
        logits = tiny3(tokens)
        target = logits[0, -1, 7]
        (grad_acts,) = torch.autograd.grad(target, spliced.acts[LAYER])
    assert torch.equal(logits, clean)
    # by hand: d target / d mlp_out on the clean model, through W_dec to the features
    leaf = mlp_out.float().clone().requires_grad_(True)
    out = tiny3.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{LAYER}.hook_mlp_out", lambda act, hook: leaf)])
    (grad_out,) = torch.autograd.grad(out[0, -1, 7], leaf)
    assert torch.allclose(grad_acts.double(), grad_out.double() @ t["w_dec"].double().T, atol=1e-5)
    assert no_hooks_left(tiny3)


def test_a_spliced_generation_runs_the_transcoder_on_the_fast_decode_path(tmp_path, tiny3):
    transcoders = {layer: write_transcoder(tmp_path, tiny3, "gemma3", layer=layer, seed=layer)[0] for layer in (1, 3)}
    prompt = [scope.to_tokens(tiny3, PROMPT)[0]]
    with scope.splice(tiny3, transcoders, error=False) as spliced:
        fast = generate_batch(tiny3, prompt, max_new_tokens=5, stop_at_eos=False, decode="fast")[0].tokens
        assert spliced.acts[3].shape[:2] == (1, 1)  # the last pass: one new token
        plain = generate_batch(tiny3, prompt, max_new_tokens=5, stop_at_eos=False, decode="plain")[0].tokens
    assert fast == plain
    assert generate_batch(tiny3, prompt, max_new_tokens=5, stop_at_eos=False)[0].tokens != plain
    assert no_hooks_left(tiny3)


# ----------------------------------------------------------------------------- bad input


def test_bad_transcoders_and_features_fail_before_any_hook_with_what_would_be_valid(tmp_path, models, make_sae):
    model = models["gemma3"]
    transcoder, _ = write_transcoder(tmp_path, model, "gemma3")
    narrow, _ = write_transcoder(tmp_path, model, "gemma3", d_out=32, seed=1)
    sae, _ = make_sae("blocks.1.hook_resid_post")
    cases = [
        (lambda: scope.steer(model, transcoder, scope.Add(32, 1.0)), ValueError, r"Add feature.*32.*0\.\.31|32.*range"),
        (
            lambda: scope.steer(model, narrow, scope.Add(1, 1.0)),
            ValueError,
            r"writes 32 dimensions to blocks.2.hook_mlp_out.*64",
        ),
        (lambda: scope.splice(model, sae), ValueError, r"splice takes transcoders.*an SAE at blocks.1.hook_resid_post"),
        (
            lambda: scope.splice(model, {3: transcoder}),
            ValueError,
            r"key 3 reads blocks.2.ln2.hook_normalized.*layer 2",
        ),
        (lambda: scope.splice(model, [transcoder, transcoder]), ValueError, r"Two transcoders for layer 2"),
        (lambda: scope.splice(model, transcoder, error="no"), TypeError, r"error must be True .* or False"),
        (lambda: scope.steer(model, {2: transcoder}, scope.Add(1, 1.0)), TypeError, r"one SAE or transcoder.*dict"),
    ]
    for make, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            with make():
                pass
        assert no_hooks_left(model)
    with pytest.raises(ValueError, match=r"reads 32 dimensions; the model's layer 2 has 64"):
        write_transcoder(tmp_path, model, "gemma3", d_in=32, seed=2)
    with pytest.raises(ValueError, match=r"transcoder for layer 9; the model given has no such layer"):
        write_transcoder(tmp_path, model, "gemma3", layer=9)
    tokens = model.to_tokens(PROMPT)
    with pytest.raises(ValueError, match=r"blocks.2.hook_mlp_out non-finite"):
        with torch.no_grad(), scope.steer(model, transcoder, scope.Add(1, 1e30)):
            model(tokens)
    with pytest.raises(RuntimeError, match="boom"):
        with scope.splice(model, transcoder, error=False):
            raise RuntimeError("boom")
    assert no_hooks_left(model)
