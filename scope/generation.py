"""Fast hooked generation with a KV cache; sampling.

transformer-lens' own ``generate`` copies every weight matrix on every step (see
:mod:`scope.layout`) and computes full-vocabulary logits for every prompt position. Here each
step is one ordinary ``model(...)`` call over the new token, so every forward hook on the model
fires (steering is such hooks: :mod:`scope.steering` composes them, this module knows hooks,
not steering), the weights are laid out for transformer-lens' kernels, and logits are only
computed for the last position. Greedy output equals transformers' greedy output on the same
weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from scope import _checks
from scope.chat import END_OF_TURN
from scope.hooks import HookFn, model_lock
from scope.inputs import check_length
from scope.layout import is_relaid, relayout_for_speed
from scope.logits import final_logits


def stop_token_ids(model: Any) -> set[int]:
    """End of sequence and Gemma's end of turn."""
    tokenizer = model.tokenizer
    ids = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return {i for i in ids if i is not None}


def next_token_logits(model: Any, tokens: torch.Tensor, cache: TransformerLensKeyValueCache) -> torch.Tensor:
    """Run ``tokens`` through the model (extending ``cache``); logits ``[batch, d_vocab]`` of the last one."""
    residual = model(tokens, past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
    return final_logits(model, residual[:, -1, :])


def sample_token(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ``[batch, 1]``: greedy at temperature 0, else sampled (top-k, then nucleus top-p)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already cover top_p (the first always stays).
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def check_sampling(
    max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, seed: Any = None
) -> tuple[int, float, int | None, float, int | None]:
    """The sampling options, checked (cheap: callers run this before anything heavy)."""
    max_new_tokens = _checks.non_negative_int(max_new_tokens, "max_new_tokens")
    temperature = _checks.finite(temperature, "temperature")
    if temperature < 0.0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature!r}.")
    if top_k is not None:
        top_k = _checks.positive_int(top_k, "top_k")
    top_p = _checks.finite(top_p, "top_p")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}.")
    if seed is not None:
        seed = _checks.integer(seed, "seed")
    return max_new_tokens, temperature, top_k, top_p, seed


def generate_tokens(
    model: Any,
    tokens: Int[torch.Tensor, "1 pos"],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_at_eos: bool = True,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
) -> Int[torch.Tensor, " n_new"]:
    """Generated token ids ``[n_new]`` after the prompt ``tokens`` ``[1, pos]`` (stop token
    excluded), with ``fwd_hooks`` attached for the duration (and any hooks already on the model)."""
    max_new_tokens, temperature, top_k, top_p, seed = check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must have shape [1, pos], got {tuple(tokens.shape)}.")
    check_length(model, tokens.shape[1], reserve=max_new_tokens, name="prompt")
    device = model.cfg.device
    generator = None
    if temperature > 0.0 and seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    stops = stop_token_ids(model) if stop_at_eos else set()
    new_tokens: list[int] = []
    with model_lock(model), torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        if not is_relaid(model):
            relayout_for_speed(model)
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, batch_size=1)
        step_input = tokens.to(device)
        for _ in range(max_new_tokens):
            logits = next_token_logits(model, step_input, cache)
            step_input = sample_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            token = int(step_input.item())
            if token in stops:
                break
            new_tokens.append(token)
    return torch.tensor(new_tokens, dtype=torch.long)
