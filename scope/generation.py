"""Fast hooked generation with a KV cache.

transformer-lens' own ``generate`` copies every weight matrix on every step
(see :mod:`scope.layout`) and computes full-vocabulary logits for every prompt
position. Here each step is one ordinary ``model(...)`` call over the new
token, so every forward hook on the model still fires, but the weights are
laid out for transformer-lens' kernels and logits are only computed for the
last position. Greedy output equals transformers' greedy output on the same
weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
import torch
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.utilities.activation_functions import apply_softcap

from scope.chat import END_OF_TURN, Message, format_chat, is_messages
from scope.layout import is_relaid, relayout_for_speed

PromptOrMessages = str | Sequence[Message]


def tokenize_prompt(model, prompt_or_messages: PromptOrMessages) -> torch.Tensor:
    """Tokens ``[1, pos]`` of a prompt string or a chat message list, with exactly one BOS."""
    if is_messages(prompt_or_messages):
        text = format_chat(prompt_or_messages, add_generation_prompt=True)
    elif isinstance(prompt_or_messages, str):
        text = prompt_or_messages
    else:
        raise TypeError(
            "prompt_or_messages must be a string or a list of {'role', 'content'} messages, "
            f"got {type(prompt_or_messages).__name__}."
        )
    bos = model.tokenizer.bos_token
    if bos and text.startswith(bos):  # tokenization adds the one BOS
        text = text[len(bos):]
    return model.to_tokens(text, prepend_bos=True)


def stop_token_ids(model) -> set[int]:
    """End of sequence and Gemma's end of turn."""
    tokenizer = model.tokenizer
    ids = {tokenizer.eos_token_id}
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        ids.add(end_of_turn)
    return {i for i in ids if i is not None}


def final_logits(model, residual: torch.Tensor) -> torch.Tensor:
    """The model's logits for residual-stream vectors after the last block (ln_final, unembed, softcap)."""
    if model.cfg.normalization_type is not None:
        residual = model.ln_final(residual)
    return apply_softcap(model.unembed(residual), model.cfg.output_logits_soft_cap)


def next_token_logits(model, tokens: torch.Tensor, cache: TransformerLensKeyValueCache) -> torch.Tensor:
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


def _check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}.")
    if not temperature >= 0.0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature!r}.")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}.")


def generate_tokens(
    model,
    tokens: torch.Tensor,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_at_eos: bool = True,
) -> torch.Tensor:
    """Generated token ids ``[n_new]`` after the prompt ``tokens`` ``[1, pos]`` (stop token excluded)."""
    _check_sampling(max_new_tokens, temperature, top_k, top_p)
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must have shape [1, pos], got {tuple(tokens.shape)}.")
    n_ctx = model.cfg.n_ctx
    if tokens.shape[1] + max_new_tokens > n_ctx:
        raise ValueError(
            f"The prompt has {tokens.shape[1]} tokens; with max_new_tokens={max_new_tokens} that exceeds "
            f"the model's context of {n_ctx} tokens. Shorten the prompt or lower max_new_tokens "
            f"(at most {max(n_ctx - tokens.shape[1], 0)} here)."
        )
    if not is_relaid(model):
        relayout_for_speed(model)
    device = model.cfg.device
    tokens = tokens.to(device)
    generator = None
    if temperature > 0.0 and seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    stops = stop_token_ids(model) if stop_at_eos else set()

    new_tokens: list[int] = []
    with torch.no_grad():
        cache = TransformerLensKeyValueCache.init_cache(model.cfg, device, batch_size=1)
        step_input = tokens
        for _ in range(max_new_tokens):
            logits = next_token_logits(model, step_input, cache)
            step_input = sample_token(logits, temperature=temperature, top_k=top_k, top_p=top_p,
                                      generator=generator)
            token = int(step_input.item())
            if token in stops:
                break
            new_tokens.append(token)
    return torch.tensor(new_tokens, dtype=torch.long)


def generate(
    model,
    prompt_or_messages: PromptOrMessages,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_at_eos: bool = True,
    sae=None,
    steering=(),
    positions="all",
) -> str:
    """Generate a continuation of a prompt or a chat; returns only the new text.

    Args:
        model: a loaded subject (see :func:`scope.load_model`); any hooks on it apply.
        prompt_or_messages: a string, or a chat as ``[{"role": "user", "content": ...}, ...]``
            (rendered with :func:`scope.chat.format_chat`, ending with the model's turn).
        max_new_tokens: the most tokens to generate.
        temperature: 0 is greedy (deterministic); above 0 samples.
        top_k, top_p: restrict sampling to the k most likely tokens / the smallest set whose
            probability reaches top_p.
        seed: makes sampling reproducible (without it, torch's global RNG is used).
        stop_at_eos: stop at ``<eos>`` or ``<end_of_turn>`` (not included in the text).
        sae, steering, positions: steer while generating (see :func:`scope.steer`): interventions
            such as ``scope.Clamp(f, 10, unit="max")`` on ``sae``, or ``(sae, intervention)`` pairs;
            ``positions`` is ``"all"`` (prompt and generated tokens, never BOS), ``"prompt"``,
            ``"generated"`` or token indices.
    """
    tokens = tokenize_prompt(model, prompt_or_messages)
    with steered(model, sae, steering, positions, prompt_length=tokens.shape[1]):
        new = generate_tokens(model, tokens, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_k=top_k, top_p=top_p, seed=seed, stop_at_eos=stop_at_eos)
    return model.tokenizer.decode(new.tolist(), skip_special_tokens=True)


@contextlib.contextmanager
def steered(model, sae, steering, positions, *, prompt_length: int):
    """``scope.steer`` for a generation whose prompt has ``prompt_length`` tokens (no-op without steering)."""
    from scope.steering import as_list, steer

    interventions = as_list(steering)
    if not interventions:
        if sae is not None:  # an SAE alone still has to fit the model
            from scope.saes import check_compatible

            check_compatible(model, sae)
        yield None
        return
    with steer(model, sae, *interventions, positions=positions) as state:
        state.prompt_length = prompt_length
        yield state
