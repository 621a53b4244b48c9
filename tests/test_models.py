import httpx
import huggingface_hub.constants
import pytest
import torch
import transformer_lens.loading_from_pretrained as tl_loading
from huggingface_hub.errors import GatedRepoError
from transformers import Gemma2Config

import scope
from scope.layout import is_relaid, relayout_for_speed
from scope.models import _unavailable_message, _with_sizes_of
from scope.subjects import SUBJECTS

CONTRACT_NAMES = [
    "gemma-2-2b", "gemma-2-2b-it", "gemma-2-9b", "gemma-2-9b-it", "gemma-2-27b", "gemma-2-27b-it",
    "shieldgemma-2b", "shieldgemma-9b", "shieldgemma-27b", "gemma-3-270m",
]

# The published HF configs of the real checkpoints (config.json on the hub).
REAL_GEMMA2 = {
    "2b": dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
               num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256),
    "9b": dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
               num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256),
    "27b": dict(hidden_size=4608, intermediate_size=36864, num_hidden_layers=46, num_attention_heads=32,
                num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=144),
}


def test_list_models_covers_the_contract():
    table = scope.list_models()
    assert list(table["name"]) == CONTRACT_NAMES
    assert {"name", "family", "parameters", "hub_id", "gated", "gemma_scope_releases"} <= set(table.columns)
    row = table.set_index("name")
    assert "gemma-scope-2b-pt-res-canonical" in row.loc["gemma-2-2b", "gemma_scope_releases"]
    assert "gemma-scope-9b-it-res-canonical" in row.loc["gemma-2-9b-it", "gemma_scope_releases"]
    assert "gemma-scope-9b-it-res-canonical" not in row.loc["gemma-2-9b", "gemma_scope_releases"]
    assert "gemma-scope-27b-pt-res-canonical" in row.loc["shieldgemma-27b", "gemma_scope_releases"]
    assert row.loc["gemma-3-270m", "gated"] == False  # noqa: E712
    assert row.loc["shieldgemma-9b", "hub_id"] == "google/shieldgemma-9b"


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown model 'gemma-2-3b'.*gemma-2-2b.*shieldgemma-9b.*gemma-3-270m"):
        scope.load_model("gemma-2-3b")


def test_offline_hub_model_raises_one_error_with_the_fix(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(scope.ModelUnavailableError) as info:
        scope.load_model("shieldgemma-2b")
    message = str(info.value)
    assert "google/shieldgemma-2b" in message
    assert "weights=" in message and "scope.load_model('gemma-3-270m')" in message


def test_gated_error_names_the_licence_and_login():
    err = OSError("Cannot access the repository.")
    url = "https://huggingface.co/google/gemma-2-9b/resolve/main/config.json"
    response = httpx.Response(403, request=httpx.Request("GET", url))
    err.__cause__ = GatedRepoError("403 Client Error: access restricted", response=response)
    message = _unavailable_message(SUBJECTS["gemma-2-9b"], err)
    assert "gated" in message and "https://huggingface.co/google/gemma-2-9b" in message
    assert "hf auth login" in message and "gemma-3-270m" in message


@pytest.mark.parametrize("size", ["2b", "9b", "27b"])
def test_real_checkpoint_sizes_give_the_official_transformer_lens_config(size):
    official = tl_loading.get_pretrained_model_config(f"google/gemma-2-{size}")
    hf_config = Gemma2Config(vocab_size=256000, sliding_window=4096, max_position_embeddings=8192,
                             attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                             rms_norm_eps=1e-6, **REAL_GEMMA2[size])
    assert _with_sizes_of(official, hf_config) is official


def test_tiny_shieldgemma_path_matches_transformers(tiny_model, tiny_hf):
    hf_model, tokenizer = tiny_hf
    cfg = tiny_model.cfg
    # Gemma 2 features survive with the checkpoint's own values.
    assert cfg.original_architecture == "Gemma2ForCausalLM"
    assert cfg.use_normalization_before_and_after and cfg.use_local_attn and cfg.window_size == 8
    assert cfg.attn_scores_soft_cap == 5.0 and cfg.output_logits_soft_cap == 3.0
    assert (cfg.d_model, cfg.n_layers, cfg.d_vocab) == (64, 4, len(tokenizer))
    assert cfg.dtype == torch.float32 and cfg.device == "cpu"
    text = "Paris is the capital of France, and the quick brown fox jumps over the lazy dog."
    tokens = tiny_model.to_tokens(text)
    assert tokens.shape[1] > 2 * cfg.window_size  # the sliding window is exercised
    with torch.no_grad():
        expected = hf_model(tokens).logits
        actual = tiny_model(tokens)
    assert torch.allclose(actual, expected, atol=1e-4), (actual - expected).abs().max()


def test_dtype_override(tiny_dir):
    model = scope.load_model("shieldgemma-2b", weights=tiny_dir, dtype="bfloat16")
    assert model.cfg.dtype == torch.bfloat16 and model.W_U.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype 'float42'"):
        scope.load_model("shieldgemma-2b", weights=tiny_dir, dtype="float42")


def test_missing_or_broken_local_weights_name_the_folder(tmp_path, tiny_dir):
    with pytest.raises(ValueError, match=f"{tmp_path}.*config.json"):
        scope.load_model("shieldgemma-2b", weights=tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((tiny_dir / "config.json").read_text())
    with pytest.raises(ValueError, match=f"Could not load shieldgemma-2b weights from {broken}"):
        scope.load_model("shieldgemma-2b", weights=broken)


def test_relayout_keeps_values_and_logits_bit_identical(tiny_dir):
    model = scope.load_model("shieldgemma-2b", weights=tiny_dir)
    assert is_relaid(model)
    tokens = model.to_tokens("The quick brown fox jumps over the lazy dog.")
    with torch.no_grad():
        relaid_logits = model(tokens)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for p in model.parameters():  # back to transformer-lens' default (contiguous) layout
            p.data = p.data.contiguous()
        assert not is_relaid(model)
        default_logits = model(tokens)
        relayout_for_speed(model)
    assert torch.equal(relaid_logits, default_logits)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert model.blocks[0].mlp.W_in.T.is_contiguous()
    assert model.blocks[0].attn.W_O.permute(2, 0, 1).is_contiguous()
