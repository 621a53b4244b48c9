import numpy as np
import pytest
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

import scope
from scope.generation import generate_batch, next_token_logits, sample_token, stop_token_ids

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


# ---- batches: left padding, KV cache, per-row stops and seeds ----------------------------------

TEXTS = [
    PROMPT,
    "knock knock",
    [{"role": "user", "content": "Tell me a joke about foxes."}],
    "def add(a, b):",
    "a",
]


def solo(model, text, **kwargs):
    return scope.generate(model, text, **kwargs)


@pytest.mark.parametrize("batch_size", [16, 2])
def test_every_row_of_a_batch_equals_its_solo_generation(tiny_model, batch_size):
    kwargs = dict(max_new_tokens=20, stop_at_eos=False)  # crosses the 8-token sliding window
    batched = scope.generate(tiny_model, TEXTS, batch_size=batch_size, **kwargs)
    assert isinstance(batched, list) and len(batched) == len(TEXTS)
    assert batched == [solo(tiny_model, text, **kwargs) for text in TEXTS]
    assert isinstance(scope.generate(tiny_model, PROMPT, **kwargs), str)  # one text in, one string out


def test_batch_equals_transformers_batched_generate(tiny_model, tiny_hf):
    """An independent reference: transformers' own left-padded batched greedy generate."""
    hf_model, _ = tiny_hf
    prompts = [scope.to_tokens(tiny_model, t)[0] for t in TEXTS]
    tokens, mask = scope.inputs.pad(prompts, scope.inputs.pad_id(tiny_model), side="left")
    n, eos = 16, tiny_model.tokenizer.eos_token_id
    # Both sides never pick <eos> (min_new_tokens would mask it on the HF side only).
    expected = hf_model.generate(
        tokens, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0, suppress_tokens=[eos]
    )[:, tokens.shape[1] :]

    def suppress_eos(logits, hook):
        logits = logits.clone()
        logits[..., eos] = -1e4
        return logits

    with tiny_model.hooks(fwd_hooks=[("unembed.hook_out", suppress_eos)]):
        completions = generate_batch(tiny_model, prompts, max_new_tokens=n, stop_at_eos=False)
    assert [c.tokens for c in completions] == expected.tolist()


def test_finished_rows_leave_the_batch_and_the_others_are_unchanged(tiny_model):
    """A stop string ends one row early; the batch shrinks (rows and KV cache) and every other row
    still equals its solo generation."""
    kwargs = dict(max_new_tokens=12, stop_at_eos=False)
    first = scope.generate_completions(tiny_model, [TEXTS[0]], **kwargs)[0]
    decode = tiny_model.tokenizer.decode
    # A token whose text first appears at step j (so the stop string ends the row right there).
    j, stop = next(
        (j, decode([t]))
        for j, t in enumerate(first.tokens)
        if j > 0 and decode([t]).strip() and decode([t]) not in decode(first.tokens[:j])
    )
    batch_sizes, streamed = [], {}
    completions = generate_batch(
        tiny_model,
        [scope.to_tokens(tiny_model, t)[0] for t in TEXTS],
        stop=stop,
        on_rows=lambda rows: batch_sizes.append(len(rows)),
        on_token=lambda row, token: streamed.setdefault(row, []).append(token),
        **kwargs,
    )
    assert completions[0].finish_reason == "stop" and completions[0].tokens == first.tokens[: j + 1]
    assert completions[0].text == first.text[: first.text.index(stop)]
    assert batch_sizes[0] == len(TEXTS) and batch_sizes[-1] < len(TEXTS)  # rows left the batch
    for text, completion in zip(TEXTS[1:], completions[1:]):
        alone = scope.generate_completions(tiny_model, [text], stop=stop, **kwargs)[0]
        assert completion.tokens == alone.tokens and completion.finish_reason == alone.finish_reason
    assert [streamed[row] for row in range(len(TEXTS))] == [c.tokens for c in completions]  # the stream


def test_completion_counts_and_finish_reasons(tiny_model):
    end_of_turn = tiny_model.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    calls = []

    def end_longer_row_at_step_three(logits, hook):
        calls.append(logits.shape[0])
        if len(calls) == 3:  # the third forward pass: both rows still in it, sorted by length
            logits = logits.clone()
            logits[1, end_of_turn] = 1e4  # [batch, d_vocab]: only the last position is unembedded
        return logits

    with tiny_model.hooks(fwd_hooks=[("unembed.hook_out", end_longer_row_at_step_three)]):
        longer, shorter = scope.generate_completions(tiny_model, TEXTS[:2], max_new_tokens=6, stop_at_eos=True)
    assert longer.prompt_length == scope.to_tokens(tiny_model, TEXTS[0]).shape[1]
    assert shorter.prompt_length == scope.to_tokens(tiny_model, TEXTS[1]).shape[1] < longer.prompt_length
    assert len(longer.tokens) == 2 and longer.finish_reason == "stop"  # end_of_turn is not a token of it
    assert calls == [2, 2, 2, 1, 1, 1]  # the finished row left the batch
    assert len(shorter.tokens) == 6 and shorter.finish_reason == "length"


def test_per_row_seeds_sample_what_each_row_samples_alone(tiny_model):
    kwargs = dict(max_new_tokens=12, temperature=1.3, stop_at_eos=False)
    seeds = [5, 6, 7]
    batched = scope.generate(tiny_model, TEXTS[:3], seed=seeds, **kwargs)
    assert batched == [solo(tiny_model, t, seed=s, **kwargs) for t, s in zip(TEXTS[:3], seeds)]
    same_seed = scope.generate(tiny_model, [PROMPT, PROMPT], seed=9, **kwargs)
    assert same_seed[0] == same_seed[1] == solo(tiny_model, PROMPT, seed=9, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(seed=[1, 2]), ValueError, "seed has 2 entries for 3 prompts"),
        (dict(seed=[1, "x", 3]), TypeError, "seed must be an integer"),
        (dict(stop=""), ValueError, "empty string"),
        (dict(stop=[3]), TypeError, "stop must be a string"),
        (dict(batch_size=0), ValueError, "batch_size must be a positive integer"),
    ],
)
def test_bad_batch_arguments(tiny_model, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        scope.generate(tiny_model, TEXTS[:3], max_new_tokens=2, **kwargs)


def test_bad_batch_inputs(tiny_model):
    with pytest.raises(ValueError, match="empty list"):
        scope.generate(tiny_model, [])
    with pytest.raises(TypeError, match="string or a list"):
        scope.generate(tiny_model, [PROMPT, 42])
    with pytest.raises(ValueError, match="exceeds the model's context"):
        scope.generate(tiny_model, [PROMPT, "word " * 300], max_new_tokens=2)


@pytest.mark.slow
def test_bundled_batch_rows_equal_solo_generation(bundled_model):
    texts = [
        "The history of the Roman Empire began when",
        "Once upon a time",
        [{"role": "user", "content": "Name three colours."}],
        "Water boils at",
    ]
    kwargs = dict(max_new_tokens=12, stop_at_eos=False)
    assert scope.generate(bundled_model, texts, **kwargs) == [scope.generate(bundled_model, t, **kwargs) for t in texts]
