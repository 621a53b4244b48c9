"""Gemma Scope 2 files (scope/sae_formats.py): folders written here in the exact on-disk format of
``google/gemma-scope-2-*``, loaded through scope.load_sae (local folders, and the registry through a
Hugging Face cache offline), checked against JumpReLU written out by hand and, for the hook mapping,
against transformers' own modules."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import scope
from scope.sae_formats import load_gemma_scope_2
from tests.tiny import save_tiny_gemma3

D_MODEL = 640  # the bundled Gemma 3 270M's
RELEASE, SAE_ID = "gemma-scope-2-270m-pt-res", "layer_9_width_16k_l0_medium"
TEXT = "Paris is the capital of France, and the fox jumps."


def random_tensors(d_in, d_sae, d_out=None, seed=0, skip=False):
    """Gemma Scope 2 params (lower-case keys, w_dec [d_sae, d_out]) with thresholds inside the
    range of the pre-activations, so that JumpReLU and ReLU differ."""
    rng = np.random.default_rng(seed)
    d_out = d_out or d_in
    arrays = {
        "w_enc": rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in),
        "w_dec": rng.normal(size=(d_sae, d_out)) * 0.1,
        "b_enc": rng.normal(size=d_sae) * 0.1,
        "b_dec": rng.normal(size=d_out) * 0.1,
        "threshold": rng.uniform(0.0, 1.0, size=d_sae),
    }
    if skip:
        arrays["affine_skip_connection"] = rng.normal(size=(d_in, d_out)) * 0.05
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in arrays.items()}


def write_folder(folder, tensors, config=None):
    """One SAE folder as Google ships it: params.safetensors and (optionally) config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "params.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def sae_config(hook_in, width, hook_out=None, affine=False, model="google/gemma-3-270m"):
    config = {"hf_hook_point_in": hook_in, "width": width, "model_name": model,
              "architecture": "jump_relu", "l0": 60, "type": "sae"}  # fmt: skip
    if hook_out is not None:
        config.update(hf_hook_point_out=hook_out, affine_connection=affine, type="transcoder")
    return config


def jumprelu(x, t):
    pre = x.double() @ t["w_enc"].double() + t["b_enc"].double()
    return torch.relu(pre) * (pre > t["threshold"].double())


# ----------------------------------------------------------------------------- SAEs


def test_a_residual_sae_folder_loads_at_the_bundled_shapes_and_encodes_as_jumprelu(tmp_path):
    tensors = random_tensors(D_MODEL, 256)
    folder = write_folder(tmp_path / "resid_post" / SAE_ID, tensors, sae_config("model.layers.9.output", 256))
    sae = scope.load_sae(folder)
    assert type(sae).__name__ == "JumpReLUSAE" and sae.cfg.metadata.hook_name == "blocks.9.hook_resid_post"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (D_MODEL, 256)
    x = torch.randn(7, D_MODEL) * 3
    expected = jumprelu(x, tensors)
    acts = sae.encode(x)
    assert 0 < (expected > 0).sum() < (x.double() @ tensors["w_enc"].double() + tensors["b_enc"] > 0).sum()
    assert torch.allclose(acts.double(), expected, atol=1e-5)
    recon = expected @ tensors["w_dec"].double() + tensors["b_dec"].double()
    assert torch.allclose(sae.decode(acts).double(), recon, atol=1e-4)


@pytest.mark.parametrize(
    "site,hook", [("resid_post_all", "blocks.4.hook_resid_post"), ("mlp_out", "blocks.4.hook_mlp_out")]
)
def test_without_config_json_the_hook_comes_from_the_folder_name_as_in_sae_lens(tmp_path, site, hook):
    folder = write_folder(tmp_path / site / "layer_4_width_16k_l0_small", random_tensors(D_MODEL, 64))
    assert scope.load_sae(folder).cfg.metadata.hook_name == hook


def test_a_hook_argument_that_contradicts_the_config_is_refused(tmp_path):
    folder = write_folder(tmp_path / "sae", random_tensors(D_MODEL, 32), sae_config("model.layers.9.output", 32))
    with pytest.raises(ValueError, match=r"blocks.9.hook_resid_post.*not hook='blocks.3.hook_resid_post'"):
        scope.load_sae(folder, hook="blocks.3.hook_resid_post")


@pytest.mark.parametrize(
    "damage,pattern",
    [
        (lambda t: t.pop("threshold"), r"missing threshold.*w_enc, w_dec, b_enc, b_dec, threshold"),
        (lambda t: t.update(b_enc=torch.zeros(5)), r"b_enc has shape \(5,\), expected \(32,\)"),
        (lambda t: t.update(w_dec=torch.zeros(32, 7)), r"b_dec has shape \(640,\), expected \(7,\)"),
    ],
)
def test_malformed_params_are_named_with_the_problem(tmp_path, damage, pattern):
    tensors = random_tensors(D_MODEL, 32)
    damage(tensors)
    folder = write_folder(tmp_path / "bad", tensors, sae_config("model.layers.9.output", 32))
    with pytest.raises(ValueError, match=rf"{folder}/params.safetensors: {pattern}"):
        scope.load_sae(folder)


def test_a_truncated_file_and_an_unknown_hook_point_are_named(tmp_path):
    folder = write_folder(tmp_path / "cut", random_tensors(D_MODEL, 32), sae_config("model.layers.9.output", 32))
    data = (folder / "params.safetensors").read_bytes()
    (folder / "params.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"params.safetensors is not a readable safetensors file"):
        scope.load_sae(folder)
    other = write_folder(tmp_path / "odd", random_tensors(D_MODEL, 32), sae_config("model.embed_tokens.output", 32))
    with pytest.raises(ValueError, match=r"'model.embed_tokens.output' is not one scope maps"):
        scope.load_sae(other)


# ----------------------------------------------------------------------------- against transformers


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    """A tiny Gemma 3 loaded by scope, the same checkpoint in transformers, and its tokens."""
    from transformers import AutoModelForCausalLM

    path = save_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"))
    model = scope.load_model("gemma-3-270m", weights=path, device="cpu")
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, hf_model, model.to_tokens(TEXT)


def _hf_activations(hf_model, tokens, layer):
    """What transformers' modules of ``layer`` take in and give out (the points Gemma Scope 2 names)."""
    seen = {}
    block = hf_model.model.layers[layer]
    hooks = [
        block.pre_feedforward_layernorm.register_forward_hook(lambda m, i, o: seen.update(pre_ff=o)),
        block.post_feedforward_layernorm.register_forward_hook(lambda m, i, o: seen.update(post_ff=o)),
        block.self_attn.o_proj.register_forward_hook(lambda m, i, o: seen.update(o_proj_in=i[0])),
        block.register_forward_hook(lambda m, i, o: seen.update(out=o[0] if isinstance(o, tuple) else o)),
    ]
    with torch.no_grad():
        hf_model(tokens)
    for hook in hooks:
        hook.remove()
    return {k: v[0].float() for k, v in seen.items()}


def test_attention_output_saes_read_hook_z_flattened_like_o_proj_input(tmp_path, tiny3):
    model, hf_model, tokens = tiny3
    d_in = model.cfg.n_heads * model.cfg.d_head
    tensors = random_tensors(d_in, 48, seed=1)
    folder = write_folder(
        tmp_path / "attn_out" / "l2", tensors, sae_config("model.layers.2.self_attn.o_proj.input", 48)
    )
    sae = scope.load_sae(folder)
    assert sae.cfg.metadata.hook_name == "blocks.2.attn.hook_z"
    scope.check_compatible(model, sae)  # d_in = heads x d_head, as hook_z flattened
    expected = jumprelu(_hf_activations(hf_model, tokens, 2)["o_proj_in"], tensors)
    acts = scope.encode(model, sae, TEXT).values
    assert torch.allclose(acts.double(), expected, atol=1e-4)


@pytest.mark.parametrize("affine", [False, True])
def test_transcoders_read_the_mlp_input_after_its_norm_and_write_the_mlp_output(tmp_path, tiny3, affine):
    model, hf_model, tokens = tiny3
    d = model.cfg.d_model
    tensors = random_tensors(d, 40, seed=2, skip=affine)
    config = sae_config(
        "model.layers.3.pre_feedforward_layernorm.output",
        40,
        "model.layers.3.post_feedforward_layernorm.output",
        affine,
    )
    folder = write_folder(tmp_path / "transcoder" / f"layer_3_width_16k_l0_small{'_affine' * affine}", tensors, config)
    with pytest.raises(ValueError, match=r"transcoder.*load_transcoders\(\.\.\., model=model\)"):
        scope.load_sae(folder)
    transcoder = load_gemma_scope_2(folder, model=model)
    assert type(transcoder).__name__ == ("JumpReLUSkipTranscoder" if affine else "JumpReLUTranscoder")
    assert transcoder.cfg.metadata.hook_name == "blocks.3.ln2.hook_normalized"
    assert transcoder.cfg.metadata.hook_name_out == "blocks.3.hook_mlp_out"
    hf = _hf_activations(hf_model, tokens, 3)
    expected = jumprelu(hf["pre_ff"], tensors)
    _, cache = model.run_with_cache(tokens, names_filter=transcoder.cfg.metadata.hook_name)
    x = cache[transcoder.cfg.metadata.hook_name][0]
    acts = transcoder.encode(x)
    assert (expected > 0).any() and torch.allclose(acts.double(), expected, atol=1e-4)
    out = expected @ tensors["w_dec"].double() + tensors["b_dec"].double()
    if affine:
        out = out + hf["pre_ff"].double() @ tensors["affine_skip_connection"].double()
    assert torch.allclose(transcoder(x).double(), out, atol=1e-4)  # forward: decode (+ skip)
    # scope.encode reads the transcoder's input hook
    assert torch.allclose(scope.encode(model, transcoder, TEXT).values.double(), expected, atol=1e-4)


def test_hook_mlp_in_is_not_what_gemma_scope_2_transcoders_read(tiny3):
    # sae-lens 6.54 records blocks.L.hook_mlp_in (the residual before the MLP's norm) for them.
    model, hf_model, tokens = tiny3
    model.set_use_hook_mlp_in(True)
    try:
        _, cache = model.run_with_cache(tokens, names_filter="blocks.3.hook_mlp_in")
    finally:
        model.set_use_hook_mlp_in(False)
    pre_ff = _hf_activations(hf_model, tokens, 3)["pre_ff"]
    assert not torch.allclose(cache["blocks.3.hook_mlp_in"][0], pre_ff, atol=1e-2)


# ----------------------------------------------------------------------------- the registry, offline


def _fake_hf_cache(home, release, sae_id, tensors, config):
    """``release``'s SAE ``sae_id`` placed where huggingface_hub keeps downloads:
    $HF_HOME/hub/models--ORG--NAME/snapshots/COMMIT/<path>/, with refs/main naming COMMIT."""
    from scope.gemma_scope import registry

    entry = registry()[release]
    repo = home / "hub" / f"models--{entry.repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    write_folder(repo / "snapshots" / commit / entry.paths[sae_id], tensors, config)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_a_registry_spec_loads_from_the_hf_cache_with_hf_hub_offline(tmp_path):
    tensors = random_tensors(D_MODEL, 64, seed=3)
    _fake_hf_cache(tmp_path, RELEASE, SAE_ID, tensors, sae_config("model.layers.9.output", 64))
    torch.save(torch.randn(5, D_MODEL), tmp_path / "x.pt")
    code = (
        "import torch, scope; "
        f"sae = scope.load_sae('{RELEASE}/{SAE_ID}'); "
        f"x = torch.load(r'{tmp_path / 'x.pt'}'); "
        f"torch.save(sae.encode(x), r'{tmp_path / 'acts.pt'}'); print(sae.cfg.metadata.hook_name)"
    )
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("blocks.9.hook_resid_post")
    expected = jumprelu(torch.load(tmp_path / "x.pt"), tensors)
    assert torch.allclose(torch.load(tmp_path / "acts.pt").double(), expected, atol=1e-5)


def test_a_registry_spec_not_in_the_cache_offline_says_how_to_get_it(tmp_path):
    code = f"import scope; scope.load_sae('{RELEASE}/{SAE_ID}')"
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("scope.subjects.ModelUnavailableError") or "ModelUnavailableError" in last
    assert "google/gemma-scope-2-270m-pt" in last and "resid_post/layer_9_width_16k_l0_medium" in last


@pytest.mark.slow
def test_a_gemma_scope_2_sae_fits_the_bundled_model(tmp_path, bundled_model):
    tensors = random_tensors(D_MODEL, 128, seed=4)
    folder = write_folder(tmp_path / "resid_post" / SAE_ID, tensors, sae_config("model.layers.9.output", 128))
    sae = scope.load_sae(folder)
    scope.check_compatible(bundled_model, sae)
    tokens = bundled_model.to_tokens(TEXT)
    _, cache = bundled_model.run_with_cache(tokens, names_filter="blocks.9.hook_resid_post")
    expected = jumprelu(cache["blocks.9.hook_resid_post"][0], tensors)
    assert torch.allclose(scope.encode(bundled_model, sae, TEXT).values.double(), expected, atol=1e-3)


def test_a_registry_transcoder_without_a_model_is_refused_before_any_download(monkeypatch):
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    spec = "gemma-scope-2-270m-pt-transcoders/transcoder/layer_9_width_16k_l0_small_affine"
    with pytest.raises(ValueError, match=r"transcoder.*load_transcoders\(\.\.\., model=model\)"):
        scope.load_sae(spec)
