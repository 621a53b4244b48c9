import json
import socket
import time

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
    "gemma-2-2b",
    "gemma-2-2b-it",
    "gemma-2-9b",
    "gemma-2-9b-it",
    "gemma-2-27b",
    "gemma-2-27b-it",
    "shieldgemma-2b",
    "shieldgemma-9b",
    "shieldgemma-27b",
    "gemma-3-270m",
]

# The published HF configs of the real checkpoints (config.json on the hub).
REAL_GEMMA2 = {
    "2b": dict(
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
    ),
    "9b": dict(
        hidden_size=3584,
        intermediate_size=14336,
        num_hidden_layers=42,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=256,
        query_pre_attn_scalar=256,
    ),
    "27b": dict(
        hidden_size=4608,
        intermediate_size=36864,
        num_hidden_layers=46,
        num_attention_heads=32,
        num_key_value_heads=16,
        head_dim=128,
        query_pre_attn_scalar=144,
    ),
}


def test_list_models_covers_the_contract():
    table = scope.list_models()
    assert list(table["name"])[: len(CONTRACT_NAMES)] == CONTRACT_NAMES  # Gemma 3 hub models follow
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
    hf_config = Gemma2Config(
        vocab_size=256000,
        sliding_window=4096,
        max_position_embeddings=8192,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        rms_norm_eps=1e-6,
        **REAL_GEMMA2[size],
    )
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


# ----------------------------------------------------------------------------- checkpoint checks


def save_tiny_gemma3(path):
    """A random tiny ``Gemma3ForCausalLM`` (model_type gemma3_text) with the tiny tokenizer."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from tests.tiny import make_tokenizer

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=8,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    Gemma3ForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_gemma3_dir(tmp_path_factory):
    return save_tiny_gemma3(tmp_path_factory.mktemp("tiny-gemma3"))


@pytest.mark.parametrize("name", ["gemma-2-2b", "gemma-2-9b-it", "shieldgemma-2b"])
def test_a_gemma3_checkpoint_under_a_gemma2_name_is_refused(name, tiny_gemma3_dir):
    with pytest.raises(ValueError) as info:
        scope.load_model(name, weights=tiny_gemma3_dir)
    message = str(info.value)
    assert str(tiny_gemma3_dir) in message
    assert "'gemma3_text'" in message and "'gemma2'" in message  # found, expected
    assert "gemma-3-270m" in message  # the name that fits the checkpoint


def test_a_gemma2_checkpoint_under_the_gemma3_name_is_refused(tiny_dir):
    with pytest.raises(ValueError) as info:
        scope.load_model("gemma-3-270m", weights=tiny_dir)
    message = str(info.value)
    assert str(tiny_dir) in message and "'gemma2'" in message and "'gemma3_text'" in message


def test_sizes_may_differ_from_the_template_architecture_may_not(tiny_gemma3_dir):
    model = scope.load_model("gemma-3-270m", weights=tiny_gemma3_dir, device="cpu")
    assert model.cfg.original_architecture == "Gemma3ForCausalLM"
    assert (model.cfg.n_layers, model.cfg.d_model) == (2, 64)


def test_a_config_without_a_readable_model_type_names_the_folder(tmp_path, tiny_dir):
    import shutil

    folder = shutil.copytree(tiny_dir, tmp_path / "ckpt")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"{folder}.*config.json"):
        scope.load_model("shieldgemma-2b", weights=folder)
    config = json.loads((tiny_dir / "config.json").read_text())
    del config["model_type"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{folder}.*model_type"):
        scope.load_model("shieldgemma-2b", weights=folder)


def test_a_weights_folder_that_does_not_exist_says_so(tmp_path, tiny_dir):
    started = time.perf_counter()
    with pytest.raises(ValueError, match="weights='/nope'.*does not exist") as info:
        scope.load_model("gemma-2-2b", weights="/nope")
    assert "hub" not in str(info.value).lower().split("does not exist")[0]
    with pytest.raises(ValueError, match="not a folder"):
        scope.load_model("shieldgemma-2b", weights=tiny_dir / "config.json")
    with pytest.raises(TypeError, match="weights must be"):
        scope.load_model("shieldgemma-2b", weights=3)
    assert time.perf_counter() - started < 2


def test_cheap_arguments_are_checked_before_anything_loads(monkeypatch, tmp_path, tiny_gemma3_dir):
    def must_not_run(*args, **kwargs):
        raise AssertionError("loaded before the arguments were checked")

    monkeypatch.setattr(scope.models, "ensure_bundled_checkpoint", must_not_run)
    monkeypatch.setattr(scope.models, "_load_hf", must_not_run)
    monkeypatch.setattr(scope.models, "_load_checkpoint", must_not_run)
    monkeypatch.setattr(scope.models, "_hub_snapshot", must_not_run)
    monkeypatch.setattr(scope.models, "_hub_reachable", must_not_run, raising=False)
    bad = [
        (dict(device="tpu:0"), ValueError),
        (dict(dtype="float42"), ValueError),
        (dict(dtype=3), TypeError),
        (dict(weights=3), TypeError),
        (dict(weights=tmp_path / "nope"), ValueError),
        (dict(verify="yes"), TypeError),
    ]
    if not torch.cuda.is_available():
        bad.append((dict(device="cuda"), ValueError))
    for name in ["gemma-3-270m", "gemma-2-2b", "shieldgemma-9b"]:
        for kwargs, error in bad:
            with pytest.raises(error):
                scope.load_model(name, **kwargs)
    with pytest.raises(ValueError, match="'gemma2'"):  # the checkpoint's architecture too
        scope.load_model("gemma-2-2b", weights=tiny_gemma3_dir)
    with pytest.raises(ValueError, match="verify"):  # only the bundled cache has checksums
        scope.load_model("gemma-2-2b", verify=True)
    with pytest.raises(TypeError):
        scope.load_model(3)


# ----------------------------------------------------------------------------- no network


def _hub_answers() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def online_mode(monkeypatch):
    """HF_HUB_OFFLINE off, as on a machine where nobody set it."""
    import transformers  # noqa: F401  imported up front: the timings below are scope's, not an import's

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.mark.skipif(_hub_answers(), reason="needs a machine without network")
def test_without_network_a_hub_model_fails_at_once(online_mode):
    assert huggingface_hub.try_to_load_from_cache("google/gemma-2-2b", "config.json") is None
    started = time.perf_counter()
    with pytest.raises(scope.ModelUnavailableError, match="could not be reached.*google/gemma-2-2b"):
        scope.load_model("gemma-2-2b")
    assert time.perf_counter() - started < 5  # was 46 s of retries


def test_an_unanswering_hub_fails_within_the_probe_timeout(online_mode, monkeypatch):
    # A hub whose connections hang (a firewall dropping packets, a DNS that never answers).
    def hanging_getaddrinfo(*args, **kwargs):
        time.sleep(20)
        raise socket.gaierror("timed out")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    started = time.perf_counter()
    with pytest.raises(scope.ModelUnavailableError, match="could not be reached"):
        scope.load_model("shieldgemma-9b")
    assert time.perf_counter() - started < 5


def test_hf_hub_offline_in_the_environment_is_respected(online_mode, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(scope.ModelUnavailableError, match="HF_HUB_OFFLINE"):
        scope.load_model("gemma-2-2b-it")
    assert time.perf_counter() - started < 2


def test_without_network_a_model_in_the_local_hf_cache_loads(online_mode, monkeypatch, tmp_path, tiny_dir):
    import shutil

    # The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}.
    repo = tmp_path / "hub" / "models--google--shieldgemma-2b"
    commit = "0" * 40
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(scope.models, "_hub_reachable", lambda *args, **kwargs: False, raising=False)
    started = time.perf_counter()
    model = scope.load_model("shieldgemma-2b", device="cpu")
    assert time.perf_counter() - started < 10
    assert model.cfg.d_model == 64
