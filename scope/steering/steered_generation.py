"""``scope.generate``: a continuation of a text or a chat, steered or not."""

from __future__ import annotations

from typing import Any

from scope import _checks
from scope.generation import check_sampling, generate_tokens
from scope.inputs import TextOrMessages, to_tokens
from scope.steering.context import Positions, steered


@_checks.renamed(prompt_or_messages="text")
def generate(
    model: Any,
    text: TextOrMessages,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: int | None = None,
    stop_at_eos: bool = True,
    sae: Any = None,
    steering: Any = (),
    positions: Positions = "all",
) -> str:
    """Generate a continuation of a text or a chat; returns only the new text.

    Args:
        model: a loaded subject (see :func:`scope.load_model`); any hooks on it apply.
        text: a string, or a chat as ``[{"role": "user", "content": ...}, ...]`` (rendered with
            :func:`scope.chat.format_chat`, ending with the model's turn). ``prompt_or_messages=``
            is its deprecated name.
        max_new_tokens: the most tokens to generate; the text plus these must fit the context.
        temperature: 0 is greedy (deterministic); above 0 samples.
        top_k, top_p: restrict sampling to the k most likely tokens / the smallest set whose
            probability reaches top_p.
        seed: makes sampling reproducible (without it, torch's global RNG is used).
        stop_at_eos: stop at ``<eos>`` or ``<end_of_turn>`` (not included in the text).
        sae, steering, positions: steer while generating (see :func:`scope.steer`): interventions
            such as ``scope.Clamp(f, 10, unit="max")`` on ``sae``, or ``(sae, intervention)`` pairs;
            ``positions`` is ``"all"`` (prompt and generated tokens, never BOS), ``"prompt"``,
            ``"generated"`` or token indices (BOS = 0; indices count prompt then generated tokens).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p, seed)  # cheap checks first
    tokens = to_tokens(model, text, reserve=max_new_tokens)
    _check_reachable(positions, tokens.shape[1], max_new_tokens)
    with steered(model, sae, steering, positions, prompt_length=tokens.shape[1]):
        new = generate_tokens(
            model,
            tokens,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_at_eos=stop_at_eos,
        )
    return model.tokenizer.decode(new.tolist(), skip_special_tokens=True)


def _check_reachable(positions: Any, prompt_length: int, max_new_tokens: int) -> None:
    """Token indices that no step of this generation reaches would steer nothing, silently.

    The model runs on the prompt, then on each generated token but the last (which is only
    sampled): positions ``0 .. prompt_length + max_new_tokens - 2``. With ``max_new_tokens=0``
    nothing runs and nothing is checked.
    """
    if isinstance(positions, str) or max_new_tokens == 0:
        return
    length = prompt_length + max_new_tokens - 1  # positions that pass through the model
    indices = [positions] if not hasattr(positions, "__iter__") else list(positions)
    beyond = [int(i) for i in indices if _checks.non_negative_int(i, "a position index") >= length]
    if beyond:
        raise ValueError(
            f"positions {beyond} lie beyond this generation: with a {prompt_length}-token prompt "
            f"and max_new_tokens={max_new_tokens} the model runs on positions 0..{length - 1} "
            "(BOS = 0; the last generated token is sampled, never run)."
        )
