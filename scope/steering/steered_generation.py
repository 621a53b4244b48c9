"""``scope.generate``: continuations of a text, a chat, or a batch of them, steered or not.

:func:`generate` returns text (a string for one input, a list for a list);
:func:`generate_completions` returns :class:`~scope.generation.Completion` records (token
counts, finish reasons) and streams tokens through ``on_token``, for servers.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from scope import _checks
from scope.assisted import check_assistant, generate_assisted
from scope.generation import Completion, Seeds, TokenCallback, check_sampling, check_seeds, check_stop, generate_batch
from scope.inputs import TextOrMessages, to_tokens
from scope.steering.context import Positions, steered


@_checks.renamed(prompt_or_messages="text")
def generate(
    model: Any,
    text: TextOrMessages | Sequence[TextOrMessages],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: Seeds = None,
    stop_at_eos: bool = True,
    stop: str | Sequence[str] | None = None,
    sae: Any = None,
    steering: Any = (),
    positions: Positions = "all",
    batch_size: int = 16,
    assistant: Any = None,
) -> str | list[str]:
    """Generate a continuation of a text or a chat, or of each of a list of them; only the new text.

    Args:
        model: a loaded subject (see :func:`scope.load_model`); any hooks on it apply.
        text: a string, a chat as ``[{"role": "user", "content": ...}, ...]`` (rendered with
            :func:`scope.chat.format_chat`, ending with the model's turn), or a list of those
            (then a list of strings comes back, in order). ``prompt_or_messages=`` is its
            deprecated name.
        max_new_tokens: the most tokens to generate; each text plus these must fit the context.
        temperature: 0 is greedy (deterministic); above 0 samples.
        top_k, top_p: restrict sampling to the k most likely tokens / the smallest set whose
            probability reaches top_p.
        seed: makes sampling reproducible (without it, torch's global RNG is used): one integer
            (every text samples what it would sample alone with it) or one per text.
        stop_at_eos: stop at ``<eos>`` or ``<end_of_turn>`` (not included in the text).
        stop: a string or strings that end a continuation (cut before it).
        sae, steering, positions: steer while generating (see :func:`scope.steer`): interventions
            such as ``scope.Clamp(f, 10, unit="max")`` on ``sae``, ``(sae, intervention)`` pairs,
            or interventions on a :class:`scope.Direction`. For a list of texts, ``steering`` is
            one list for all of them or one list per text (``[[...], [...], []]``: rows may differ
            in features, strengths and SAEs, or have none). ``positions`` is ``"all"`` (prompt and
            generated tokens, never BOS or padding), ``"prompt"``, ``"generated"`` or token
            indices (BOS = 0; indices count each text's prompt then generated tokens).
        batch_size: texts per batch (left-padded, KV-cached; finished rows leave the batch).
        assistant: a small model with the same tokenizer that drafts tokens for ``model`` to verify
            (:mod:`scope.assisted`); greedy output is unchanged, steering applies to ``model`` only.

    Greedy output of each text equals generating it alone.
    """
    texts = _as_texts(text)
    completions = generate_completions(
        model,
        texts if texts is not None else [text],  # type: ignore[list-item]  # one text or chat
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_at_eos=stop_at_eos,
        stop=stop,
        sae=sae,
        steering=steering,
        positions=positions,
        batch_size=batch_size,
        assistant=assistant,
    )
    outputs = [completion.text for completion in completions]
    return outputs if texts is not None else outputs[0]


def generate_completions(
    model: Any,
    texts: Sequence[TextOrMessages],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: Seeds = None,
    stop_at_eos: bool = True,
    stop: str | Sequence[str] | None = None,
    sae: Any = None,
    steering: Any = (),
    positions: Positions = "all",
    batch_size: int = 16,
    on_token: TokenCallback | None = None,
    assistant: Any = None,
) -> list[Completion]:
    """Like :func:`generate` for a list of texts, returning one :class:`Completion` per text
    (``prompt_length``, ``tokens``, ``text``, ``finish_reason`` ``"stop"``/``"length"``, and with an
    ``assistant`` its acceptance stats: :func:`scope.assisted.summary`);
    ``on_token(row, token_id)`` is called for each generated token as it is sampled (a stream)."""
    check_sampling(max_new_tokens, temperature, top_k, top_p)  # cheap checks first
    if isinstance(texts, str) or not isinstance(texts, Sequence) or not texts:
        raise TypeError(f"texts must be a non-empty list of strings or chats, got {texts!r}.")
    check_seeds(seed, len(texts))
    check_stop(stop)
    batch_size = _checks.positive_int(batch_size, "batch_size")
    prompts = [to_tokens(model, t, reserve=max_new_tokens)[0] for t in texts]  # every text checked first
    lengths = [len(p) for p in prompts]
    for length in lengths:
        _check_reachable(positions, length, max_new_tokens)
    if assistant is not None:
        check_assistant(model, assistant)
    run = generate_batch if assistant is None else partial(generate_assisted, assistant=assistant)
    with steered(model, sae, steering, positions, prompt_length=lengths) as generation:
        return run(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop_at_eos=stop_at_eos,
            stop=stop,
            batch_size=batch_size,
            on_token=on_token,
            on_rows=generation.set_rows,
        )


def _as_texts(text: Any) -> list[Any] | None:
    """The list of inputs when ``text`` is a list of texts or chats; None for one text or chat."""
    if isinstance(text, str) or not isinstance(text, Sequence):
        return None
    if not text:
        raise ValueError("text is an empty list: give a text, a chat, or a non-empty list of them.")
    first = text[0]
    if isinstance(first, str) or (isinstance(first, Sequence) and not isinstance(first, str)):
        return list(text)
    return None  # a chat: a list of {"role", "content"} messages


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
