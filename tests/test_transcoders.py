"""Transcoders as objects (scope/transcoders.py): per-layer sets from Gemma Scope / Gemma Scope 2 ids
and from local folders, lazily loaded, each reading the MLP input and writing its output."""

import pytest
import torch

import scope
from tests.test_sae_formats import _hf_activations, jumprelu, random_tensors, sae_config, write_folder
from tests.tiny import save_tiny_gemma3

TEXT = "Paris is the capital of France, and the fox jumps."


@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = save_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"))
    model = scope.load_model("gemma-3-270m", weights=path, device="cpu")
    return model, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _transcoder_folder(root, layer, d, label="small", affine=False, seed=0):
    config = sae_config(
        f"model.layers.{layer}.pre_feedforward_layernorm.output",
        32,
        f"model.layers.{layer}.post_feedforward_layernorm.output",
        affine,
    )
    tensors = random_tensors(d, 32, seed=seed, skip=affine)
    name = f"layer_{layer}_width_16k_l0_{label}{'_affine' * affine}"
    return write_folder(root / name, tensors, config), tensors


def test_a_folder_of_transcoders_is_keyed_by_layer_loaded_lazily_and_reads_the_mlp_input(tmp_path, tiny3):
    model, hf_model = tiny3
    d = model.cfg.d_model
    written = {layer: _transcoder_folder(tmp_path / "transcoder_all", layer, d, seed=layer)[1] for layer in (1, 4)}
    _transcoder_folder(tmp_path / "transcoder_all", 4, d, affine=True, seed=9)  # filtered out: affine=False
    transcoders = scope.load_transcoders(tmp_path / "transcoder_all", model=model)
    assert list(transcoders) == [1, 4] and transcoders.loaded == []
    tokens = model.to_tokens(TEXT)
    for layer, tensors in written.items():
        transcoder = transcoders[layer]
        assert transcoder.cfg.metadata.hook_name == f"blocks.{layer}.ln2.hook_normalized"
        assert transcoder.cfg.metadata.hook_name_out == f"blocks.{layer}.hook_mlp_out"
        expected = jumprelu(_hf_activations(hf_model, tokens, layer)["pre_ff"], tensors)
        assert torch.allclose(scope.encode(model, transcoder, TEXT).values.double(), expected, atol=1e-4)
    assert transcoders.loaded == [1, 4]
    assert scope.load_transcoders(tmp_path / "transcoder_all", model=model, affine=True).sources.keys() == {4}
    assert list(scope.load_transcoders(tmp_path / "transcoder_all", [4], model=model)) == [4]


def test_a_loaded_model_gets_its_gemma_scope_2_transcoder_ids_without_downloading(tiny3):
    model, _ = tiny3  # loaded as gemma-3-270m
    transcoders = scope.load_transcoders(model, layers=[9, 3], l0="small", affine=True)
    assert transcoders.sources == {
        9: str(scope.gemma_scope_id("gemma-3-270m", 9, site="transcoder", l0="small", affine=True)),
        3: "gemma-scope-2-270m-pt-transcoders-all/layer_3_width_16k_l0_small_affine",
    }
    assert transcoders.loaded == []
    assert len(scope.load_transcoders(model, l0="big")) == 18


def test_gemma_2_2b_transcoders_need_no_model():
    transcoders = scope.load_transcoders("gemma-2-2b", layers=[0, 25])
    assert transcoders.sources == {
        layer: str(scope.gemma_scope_id("gemma-2-2b", layer, site="transcoder")) for layer in (0, 25)
    }


def test_bad_requests_fail_before_loading_with_what_would_be_valid(tmp_path, tiny3):
    model, _ = tiny3
    with pytest.raises(ValueError, match=r"Gemma Scope 2 transcoders for gemma-3-1b load for a model.*model="):
        scope.load_transcoders("gemma-3-1b")
    with pytest.raises(ValueError, match=r"neither a model name .*gemma-2-2b.* nor a folder"):
        scope.load_transcoders(tmp_path / "nowhere", model=model)
    root = tmp_path / "two"
    _transcoder_folder(root, 2, model.cfg.d_model)
    _transcoder_folder(root, 2, model.cfg.d_model, label="big")
    with pytest.raises(ValueError, match=r"layer\(s\) \[5\]; it has 2"):
        scope.load_transcoders(root, [5], model=model)
    with pytest.raises(ValueError, match=r"several transcoders for a layer .*l0_big.*l0_small.*width=, l0="):
        scope.load_transcoders(root, model=model)
    with pytest.raises(ValueError, match=r"no Gemma Scope 2 transcoder folder .*_l0_medium"):
        scope.load_transcoders(root, model=model, l0="medium")
    assert list(scope.load_transcoders(root, model=model, l0="big")) == [2]
    with pytest.raises(ValueError, match=r"No Gemma Scope 2 transcoder SAE for gemma-3-270m at layer 30; layers: 0-17"):
        scope.load_transcoders(model, layers=[30])


# ----------------------------------------------------------------------------- transcoder features downstream

TEXTS = [TEXT, "The quick brown fox jumps over the lazy dog.", "Golden Gate Bridge spans the strait."]


def test_transcoder_features_are_ranked_mined_labelled_paged_and_served_like_sae_features(tmp_path, tiny3):
    import httpx

    from scope.serve import create_app, serving

    model, hf_model = tiny3
    _, tensors = _transcoder_folder(tmp_path / "tc", 2, model.cfg.d_model, affine=True, seed=5)
    transcoder = scope.load_transcoders(tmp_path / "tc", model=model, affine=True)[2]
    hand = [jumprelu(_hf_activations(hf_model, model.to_tokens(t), 2)["pre_ff"], tensors) for t in TEXTS]

    top = scope.top_features(model, transcoder, TEXTS[0], k=1)  # rank 1 at each token but BOS
    fired = hand[0][1:].max(-1)
    assert top.feature.tolist() == (hand[0][1:].argmax(-1)[fired.values > 0]).tolist()
    assert torch.allclose(torch.tensor(top.activation.tolist()).double(), fired.values[fired.values > 0], atol=1e-4)

    mined = scope.mine(model, transcoder, TEXTS, k=3)
    best = torch.stack([h[1:].max(0).values for h in hand]).max(0).values  # per feature, BOS left out
    firing = [f for f in range(len(best)) if best[f] > 0]
    first = mined.examples[mined.examples["rank"] == 1].set_index("feature").activation
    assert sorted(first.index) == firing
    assert torch.allclose(torch.tensor(first[firing].tolist()).double(), best[firing], atol=1e-4)
    labels = scope.label_features(mined).set_index("feature")
    assert torch.allclose(torch.tensor(labels.max_activation[firing].tolist()).double(), best[firing], atol=1e-4)

    feature = firing[0]
    page = scope.dashboard(model, transcoder, feature, TEXTS, tmp_path / "pages" / "f.html", mined=mined).read_text()
    assert "Transcoder <code>blocks.2.ln2.hook_normalized</code> &rarr; <code>blocks.2.hook_mlp_out</code>" in page

    steering = {"positions": "all", "interventions": [{"sae": "tc", "feature": feature, "mode": "add", "value": 9.0}]}
    with serving(create_app(model, {"tc": transcoder}, mined={"tc": mined})) as url:
        data = httpx.get(f"{url}/api/feature/tc/{feature}", timeout=60).json()
        body = {"model": "gemma-3-270m", "prompt": TEXT, "max_tokens": 6, "temperature": 0, "steering": steering}
        reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()
    lens = tensors["w_dec"][feature] @ model.W_U.detach()  # the feature writes the MLP output, i.e. the stream
    assert data["logit_lens"]["promoted"][0]["token"] == model.tokenizer.decode([int(lens.argmax())])
    assert data["examples"][0]["activation"] == pytest.approx(float(best[feature]), abs=1e-4)
    options = dict(max_new_tokens=6, stop_at_eos=False)
    expected = scope.generate(model, TEXT, sae=transcoder, steering=scope.Add(feature, 9.0), **options)
    assert reply["choices"][0]["text"] == expected  # that this steers at all: tests/test_splicing.py
