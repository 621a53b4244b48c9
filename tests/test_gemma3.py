"""Gemma 3 subjects (scope/subjects.py, scope/models.py): the registry, and tiny Gemma 3 checkpoints
built offline (text-only and multimodal) loaded through scope's own path against transformers."""

import pytest
import torch
import transformer_lens.loading_from_pretrained as tl_loading
from transformers import Gemma3TextConfig

import scope
from scope.models import _with_sizes_of
from scope.subjects import SUBJECTS
from tests.tiny import GEMMA3_LAYER_TYPES, GEMMA3_ROPE, save_tiny_gemma3, save_tiny_gemma3_multimodal

GEMMA3_HUB = {
    "gemma-3-270m-it": "google/gemma-3-270m-it",
    "gemma-3-1b": "google/gemma-3-1b-pt",
    "gemma-3-1b-it": "google/gemma-3-1b-it",
    "gemma-3-4b": "google/gemma-3-4b-pt",
    "gemma-3-4b-it": "google/gemma-3-4b-it",
    "gemma-3-12b": "google/gemma-3-12b-pt",
    "gemma-3-12b-it": "google/gemma-3-12b-it",
    "gemma-3-27b": "google/gemma-3-27b-pt",
    "gemma-3-27b-it": "google/gemma-3-27b-it",
}
TEXT = "Paris is the capital of France, and the quick brown fox jumps over the lazy dog. " * 2


def _sae_lens_releases():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


# ----------------------------------------------------------------------------- the registry


def test_list_models_has_every_gemma_3_size_with_its_hub_id_and_chat_flag():
    table = scope.list_models().set_index("name")
    for name, hub_id in GEMMA3_HUB.items():
        row = table.loc[name]
        assert row["hub_id"] == hub_id and row["family"] == "Gemma 3"
        assert row["gated"] == True  # noqa: E712  (Gemma 3 on the hub needs the licence accepted)
        assert row["chat"] == name.endswith("-it")
    assert table.loc["gemma-3-270m", "hub_id"] == "(bundled, offline)"


def test_each_gemma_3_model_lists_exactly_the_gemma_scope_2_releases_trained_on_it():
    table = scope.list_models().set_index("name")
    releases = _sae_lens_releases()
    for name in [*GEMMA3_HUB, "gemma-3-270m"]:
        hub_id = GEMMA3_HUB.get(name, "google/gemma-3-270m")
        expected = sorted(
            r for r, entry in releases.items() if r.startswith("gemma-scope-2-") and entry.model == hub_id
        )
        assert expected, name  # sae-lens has Gemma Scope 2 for every Gemma 3 model
        listed = [r for r in table.loc[name, "gemma_scope_releases"] if r != "demo (bundled)"]
        assert listed == expected


def test_every_gemma_3_template_is_an_official_transformer_lens_model():
    for name in [*GEMMA3_HUB, "gemma-3-270m"]:
        template = SUBJECTS[name].tl_template
        assert template in tl_loading.OFFICIAL_MODEL_NAMES, name
        cfg = tl_loading.get_pretrained_model_config(template)
        multimodal = any(size in name for size in ("-4b", "-12b", "-27b"))
        expected = "Gemma3ForConditionalGeneration" if multimodal else "Gemma3ForCausalLM"
        assert cfg.original_architecture == expected


# The published text configs of the real checkpoints (config.json, or text_config of 4B-27B).
REAL_GEMMA3 = {
    "1b": dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
               num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
               max_position_embeddings=32768, vocab_size=262144, rope_factor=None),
    "4b": dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
               num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
               max_position_embeddings=131072, vocab_size=262208, rope_factor=8.0),
    "12b": dict(hidden_size=3840, intermediate_size=15360, num_hidden_layers=48, num_attention_heads=16,
                num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
                max_position_embeddings=131072, vocab_size=262208, rope_factor=8.0),
    "27b": dict(hidden_size=5376, intermediate_size=21504, num_hidden_layers=62, num_attention_heads=32,
                num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=168, sliding_window=1024,
                max_position_embeddings=131072, vocab_size=262208, rope_factor=8.0),
}  # fmt: skip


def _real_gemma3_config(size: str) -> Gemma3TextConfig:
    settings = dict(REAL_GEMMA3[size])
    factor = settings.pop("rope_factor")
    full = {"rope_type": "linear", "factor": factor} if factor else {"rope_type": "default"}
    n = settings["num_hidden_layers"]
    return Gemma3TextConfig(
        **settings,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)],
        rope_parameters={
            "full_attention": {**full, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        rms_norm_eps=1e-6,
    )


@pytest.mark.parametrize("size", ["1b", "4b", "12b"])
def test_real_gemma_3_configs_give_the_official_transformer_lens_config(size):
    # The published configs change nothing in transformer-lens' own: rope bases, scaling, window,
    # layer kinds and attention scale all agree.
    official = tl_loading.get_pretrained_model_config(f"google/gemma-3-{size}-pt")
    assert _with_sizes_of(official, _real_gemma3_config(size)) is official


def test_gemma_3_27b_takes_its_attention_scale_from_the_checkpoint_not_transformer_lens():
    # transformer-lens' official 27B config scales attention by sqrt(d_head) = sqrt(128); the
    # checkpoint says query_pre_attn_scalar = 168, which transformers uses. Only that changes.
    official = tl_loading.get_pretrained_model_config("google/gemma-3-27b-pt")
    assert official.attn_scale == pytest.approx(128**0.5)
    fixed = _with_sizes_of(official, _real_gemma3_config("27b"))
    before, after = official.to_dict(), fixed.to_dict()
    assert {k for k in before if k != "n_params" and before[k] != after[k]} == {"attn_scale"}
    assert fixed.attn_scale == pytest.approx(168**0.5)


# ----------------------------------------------------------------------------- tiny checkpoints


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    return save_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"))


@pytest.fixture(scope="module")
def tiny_gemma3_mm(tmp_path_factory):
    return save_tiny_gemma3_multimodal(tmp_path_factory.mktemp("tiny-gemma3-mm"))


def _hf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def test_tiny_gemma_3_takes_its_rope_bases_window_and_layer_kinds_from_its_config(tiny_gemma3):
    cfg = scope.load_model("gemma-3-1b", weights=tiny_gemma3, device="cpu").cfg
    assert cfg.rotary_base == GEMMA3_ROPE["full_attention"]["rope_theta"]
    assert cfg.rotary_base_local == GEMMA3_ROPE["sliding_attention"]["rope_theta"]
    assert cfg.rotary_scaling_factor == GEMMA3_ROPE["full_attention"]["factor"]
    assert cfg.window_size == 4 and cfg.use_local_attn and cfg.use_qk_norm
    assert cfg.attn_types == ["local" if t == "sliding_attention" else "global" for t in GEMMA3_LAYER_TYPES]
    assert cfg.attn_scale == pytest.approx(24**0.5)


@pytest.mark.parametrize("name", ["gemma-3-1b", "gemma-3-270m-it"])
def test_tiny_gemma_3_logits_equal_transformers(name, tiny_gemma3):
    hf_model, tokenizer = _hf(tiny_gemma3)
    model = scope.load_model(name, weights=tiny_gemma3, device="cpu")
    tokens = model.to_tokens(TEXT)
    assert tokens.shape[1] > 8 * model.cfg.window_size  # local layers really see a window
    with torch.no_grad():
        expected = hf_model(tokens).logits
        actual = model(tokens)
    assert torch.allclose(actual, expected, atol=1e-4), (actual - expected).abs().max()


def test_tiny_gemma_3_greedy_generation_equals_transformers(tiny_gemma3):
    hf_model, tokenizer = _hf(tiny_gemma3)
    model = scope.load_model("gemma-3-1b", weights=tiny_gemma3, device="cpu")
    prompt = "The quick brown fox"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = hf_model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = tokenizer.decode(out[0, ids.shape[1] :])
    assert out.shape[1] - ids.shape[1] == 24  # long enough that decoding crosses the window
    assert scope.generate(model, prompt, max_new_tokens=24, stop_at_eos=False) == expected


def test_multimodal_gemma_3_hooks_its_language_model_with_equal_text_logits(tiny_gemma3_mm):
    hf_model, tokenizer = _hf(tiny_gemma3_mm)
    assert type(hf_model).__name__ == "Gemma3ForConditionalGeneration"
    model = scope.load_model("gemma-3-4b-it", weights=tiny_gemma3_mm, device="cpu")
    assert model.cfg.original_architecture == "Gemma3ForConditionalGeneration"
    assert model.cfg.rotary_scaling_factor == GEMMA3_ROPE["full_attention"]["factor"]
    assert not any("vision" in name for name, _ in model.named_parameters())
    tokens = model.to_tokens(TEXT)
    with torch.no_grad():
        expected = hf_model(input_ids=tokens).logits
        actual = model(tokens)
    assert torch.allclose(actual, expected, atol=1e-4), (actual - expected).abs().max()


def test_an_unsupported_rope_type_is_refused_by_name(tmp_path):
    hf_config = Gemma3TextConfig(
        num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={
            "full_attention": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
    )
    official = tl_loading.get_pretrained_model_config("google/gemma-3-1b-pt")
    with pytest.raises(ValueError, match=r"'yarn'.*full_attention.*'default' and 'linear'"):
        _with_sizes_of(official, hf_config)
