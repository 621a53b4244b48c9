import numpy as np
import pytest
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

import scope
from scope.generation import next_token_logits, sample_token, stop_token_ids

PROMPT = "Paris is the capital of France, and the quick brown fox"


def greedy_without_cache(model, tokens, n):
    """Reference: recompute the whole sequence every step, full logits, no cache."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = model(tokens)[0, -1].argmax().item()
            out.append(nxt)
            tokens = torch.cat([tokens, torch.tensor([[nxt]])], dim=1)
    return out


def test_greedy_equals_transformers_generate(tiny_model, tiny_hf):
    hf_model, _ = tiny_hf
    tokens = scope.to_tokens(tiny_model, PROMPT)
    n = 24  # prompt + generation cross the 8-token sliding window many times
    expected = hf_model.generate(tokens, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, tokens.shape[1] :]
    actual = scope.generate_tokens(tiny_model, tokens, max_new_tokens=n, stop_at_eos=False)
    assert actual.tolist() == expected.tolist()


def test_kv_cache_equals_recomputing_everything(tiny_model):
    tokens = scope.to_tokens(tiny_model, PROMPT)
    cached = scope.generate_tokens(tiny_model, tokens, max_new_tokens=16, stop_at_eos=False)
    assert cached.tolist() == greedy_without_cache(tiny_model, tokens, 16)


def test_last_position_logits_equal_full_forward(tiny_model):
    tokens = scope.to_tokens(tiny_model, PROMPT)
    cache = TransformerLensKeyValueCache.init_cache(tiny_model.cfg, "cpu", 1)
    with torch.no_grad():
        last = next_token_logits(tiny_model, tokens, cache)
        full = tiny_model(tokens)[:, -1]
    assert torch.allclose(last, full, atol=1e-6)
    assert cache.entries[0].past_keys.shape[1] == tokens.shape[1]  # the cache was filled


def test_forward_hooks_apply_during_generation(tiny_model):
    seen_lengths = []

    def record(resid, hook):
        seen_lengths.append(resid.shape[1])

    def silence_layer(resid, hook):
        return torch.zeros_like(resid)

    plain = scope.generate(tiny_model, PROMPT, max_new_tokens=6, stop_at_eos=False)
    with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", record)]):
        scope.generate(tiny_model, PROMPT, max_new_tokens=6, stop_at_eos=False)
    n_prompt = scope.to_tokens(tiny_model, PROMPT).shape[1]
    assert seen_lengths == [n_prompt] + [1] * 5  # prefill once, then one new token per step
    with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", silence_layer)]):
        silenced = scope.generate(tiny_model, PROMPT, max_new_tokens=6, stop_at_eos=False)
    assert silenced != plain
    assert not tiny_model.hook_dict["blocks.1.hook_resid_post"].fwd_hooks  # removed afterwards


def test_sampling_is_reproducible_with_a_seed(tiny_model):
    kwargs = dict(max_new_tokens=20, temperature=1.5, stop_at_eos=False)
    first = scope.generate(tiny_model, PROMPT, seed=7, **kwargs)
    assert scope.generate(tiny_model, PROMPT, seed=7, **kwargs) == first
    others = {scope.generate(tiny_model, PROMPT, seed=s, **kwargs) for s in range(1, 6)}
    assert len(others | {first}) > 1


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0]])
    greedy = torch.tensor([[1]])
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample_token(logits), greedy)
    draws = {sample_token(logits, temperature=1.0, top_k=2, generator=gen).item() for _ in range(200)}
    assert draws == {1, 2}
    # top_p below the top token's probability keeps that token only.
    assert all(sample_token(logits, temperature=1.0, top_p=0.3, generator=gen).item() == 1 for _ in range(50))
    # Nucleus keeps the smallest set whose mass reaches top_p: {1, 2} here (p = 0.50 + 0.45).
    draws = {sample_token(logits, temperature=1.0, top_p=0.9, generator=gen).item() for _ in range(300)}
    assert draws == {1, 2}


def test_generate_returns_only_the_continuation(tiny_model):
    text = scope.generate(tiny_model, PROMPT, max_new_tokens=5, stop_at_eos=False)
    tokens = scope.to_tokens(tiny_model, PROMPT)
    new = scope.generate_tokens(tiny_model, tokens, max_new_tokens=5, stop_at_eos=False)
    assert text == tiny_model.tokenizer.decode(new.tolist(), skip_special_tokens=True)
    assert not text.startswith(PROMPT)


def test_chat_messages_have_exactly_one_bos(tiny_model):
    messages = [{"role": "user", "content": "knock knock"}]
    tokens = scope.to_tokens(tiny_model, messages)
    bos = tiny_model.tokenizer.bos_token_id
    assert (tokens == bos).sum().item() == 1 and tokens[0, 0].item() == bos
    start_of_turn = tiny_model.tokenizer.convert_tokens_to_ids("<start_of_turn>")
    assert tokens[0, 1].item() == start_of_turn
    # A prompt that already carries <bos> is not doubled.
    again = scope.to_tokens(tiny_model, "<bos>" + scope.chat.format_chat(messages))
    assert torch.equal(again, tokens)
    assert isinstance(scope.generate(tiny_model, messages, max_new_tokens=3), str)


def test_stops_at_end_of_turn(tiny_model):
    assert stop_token_ids(tiny_model) == {
        tiny_model.tokenizer.eos_token_id,
        tiny_model.tokenizer.convert_tokens_to_ids("<end_of_turn>"),
    }
    end_of_turn = tiny_model.tokenizer.convert_tokens_to_ids("<end_of_turn>")

    def force_end_of_turn(logits, hook):
        logits = logits.clone()
        logits[..., end_of_turn] = 1e4
        return logits

    with tiny_model.hooks(fwd_hooks=[("unembed.hook_out", force_end_of_turn)]):
        tokens = scope.to_tokens(tiny_model, PROMPT)
        assert scope.generate_tokens(tiny_model, tokens, max_new_tokens=5).numel() == 0


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(max_new_tokens=300), "exceeds the model's context of 256 tokens"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("inf")), "temperature must be a finite number"),
        (dict(temperature=float("nan")), "temperature must be a finite number"),
        (dict(temperature=1.0, top_p=0.0), "top_p"),
        (dict(temperature=1.0, top_k=0), "top_k"),
    ],
)
def test_bad_generation_arguments(tiny_model, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        scope.generate(tiny_model, PROMPT, **kwargs)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(max_new_tokens=True), "max_new_tokens must be an integer, got True"),  # a bool is not a count
        (dict(max_new_tokens=2.0), "max_new_tokens must be an integer"),
        (dict(temperature="hot"), "temperature must be a number"),
        (dict(temperature=1.0, top_k=2.5), "top_k must be an integer"),
        (dict(temperature=1.0, seed="7"), "seed must be an integer"),
    ],
)
def test_wrong_types_of_generation_arguments(tiny_model, kwargs, fragment):
    with pytest.raises(TypeError, match=fragment):
        scope.generate(tiny_model, PROMPT, **kwargs)
    tokens = scope.to_tokens(tiny_model, PROMPT)
    with pytest.raises(TypeError, match=fragment):
        scope.generate_tokens(tiny_model, tokens, **kwargs)


def test_numpy_scalars_count_as_numbers(tiny_model):
    kwargs = dict(max_new_tokens=5, temperature=1.3, top_k=20, seed=3, stop_at_eos=False)
    as_numpy = dict(
        max_new_tokens=np.int64(5), temperature=np.float64(1.3), top_k=np.int32(20), seed=np.int64(3), stop_at_eos=False
    )
    assert scope.generate(tiny_model, PROMPT, **as_numpy) == scope.generate(tiny_model, PROMPT, **kwargs)


def test_tokenize_prompt_is_a_deprecated_alias_of_to_tokens(tiny_model):
    messages = [{"role": "user", "content": "knock knock"}]
    for text in (PROMPT, messages):
        with pytest.warns(DeprecationWarning, match="scope.tokenize_prompt is deprecated; use scope.to_tokens"):
            old = scope.tokenize_prompt(tiny_model, text)
        assert torch.equal(old, scope.to_tokens(tiny_model, text))


def test_bad_prompt_type(tiny_model):
    with pytest.raises(TypeError, match="string or a list"):
        scope.generate(tiny_model, 42)
