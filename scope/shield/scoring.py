"""ShieldGemma in scoring mode: batched P(Yes), the probability that an input violates a policy.

``P(Yes) = softmax(logits[-1, [Yes, No]])[0]`` after one forward pass over the model card's
prompt (model card). Prompts are batched in order of length with left padding, the preamble
every prompt shares is computed once, the blocks run once, and only the last position is
projected onto the two unembedding columns it needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

from scope import _checks
from scope.hooks import model_lock
from scope.inputs import check_length, pad, pad_id
from scope.logits import final_logits
from scope.shield.policies import Policies
from scope.shield.prompts import build_prompt_tokens
from scope.subjects import subject_of


def answer_token_id(tokenizer, word: str) -> int:
    """The id the verdict is read from: ``vocab[word]`` (the model card's rule) when ``word`` is one
    token, else the first token of ``word`` (small test tokenizers split "Yes" into pieces)."""
    vocab = tokenizer.get_vocab()
    if word in vocab:
        return vocab[word]
    ids = tokenizer.encode(word, add_special_tokens=False)
    if not ids:
        raise ValueError(f"The tokenizer encodes {word!r} to no tokens; cannot read a {word}/No verdict.")
    return ids[0]


def yes_no_ids(model) -> tuple[int, int]:
    """Token ids of "Yes" and "No" for ``model``'s tokenizer."""
    yes, no = answer_token_id(model.tokenizer, "Yes"), answer_token_id(model.tokenizer, "No")
    if yes == no:
        raise ValueError(
            f"'Yes' and 'No' start with the same token ({yes}) in this tokenizer; "
            "P(Yes) cannot be read from one next-token distribution."
        )
    return yes, no


def yes_no_logits(model: Any, final_residual: torch.Tensor, yes: int, no: int) -> torch.Tensor:
    """Logits ``[batch, 2]`` of Yes and No from the residual after the last block ``[batch, d_model]``:
    exactly those two entries of the full logits, at a 1/d_vocab of the unembedding's cost."""
    return final_logits(model, final_residual, [yes, no])


def has_interventions(model) -> bool:
    """True when hooks or SAEs are attached: they must see whole sequences in one forward pass."""
    hooked = any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())
    return hooked or bool(getattr(model, "acts_to_saes", None))


def shared_prefix_length(model, sequences: list[torch.Tensor]) -> int:
    """How many leading tokens all ``sequences`` share and may compute once (0: do not share).

    Every ShieldGemma prompt starts with the same preamble (about a fifth of a short prompt).
    Its keys and values are computed once and reused for each batch; the rest is left padded
    after it. Not shared when hooks or SAEs are attached (they would see the prefix in a
    separate pass), or when the padded sequence could exceed a sliding-attention window
    (the padding gap would then shift which real tokens fall inside the window).
    """
    if len(sequences) < 2 or model.cfg.positional_embedding_type != "rotary" or has_interventions(model):
        return 0
    local = model.cfg.attn_types is not None and "local" in model.cfg.attn_types
    if local and max(len(s) for s in sequences) > model.cfg.window_size:
        return 0
    first, shortest = sequences[0], min(len(s) for s in sequences)
    length = 0
    while length < shortest - 1 and all(s[length] == first[length] for s in sequences):
        length += 1
    return length if length >= 2 else 0


def _prefix_cache(model, prefix: torch.Tensor) -> TransformerLensKeyValueCache:
    """Keys and values of ``prefix`` (batch 1), frozen so that later passes read but never extend it."""
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size=1)
    model(prefix[None].to(model.cfg.device), past_kv_cache=cache, stop_at_layer=model.cfg.n_layers)
    cache.freeze()
    return cache


def _expanded(cache: TransformerLensKeyValueCache, batch: int) -> TransformerLensKeyValueCache:
    """The batch-1 prefix cache viewed as ``batch`` rows (no copy)."""
    entries = [
        TransformerLensKeyValueCacheEntry(
            past_keys=e.past_keys.expand(batch, -1, -1, -1),
            past_values=e.past_values.expand(batch, -1, -1, -1),
            frozen=True,
        )
        for e in cache.entries
    ]
    return TransformerLensKeyValueCache(entries, cache.previous_attention_mask.expand(batch, -1), frozen=True)


def score_tokens(
    model: Any, sequences: list[torch.Tensor], *, batch_size: int = 8, progress: bool = True, share_prefix: bool = True
) -> np.ndarray:
    """P(Yes) for already tokenized prompts (1-D tensors, BOS included), in the given order.

    Prompts are batched in order of length (less padding), left padded, run to the end
    of the last block only, and read at the last position. With ``share_prefix`` the
    tokens every prompt starts with are computed once (see :func:`shared_prefix_length`);
    the result is the same up to float rounding.
    """
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if not sequences:
        return np.empty(0, dtype=np.float64)
    check_length(model, max(len(s) for s in sequences), name="ShieldGemma prompt")
    yes, no = yes_no_ids(model)
    device = model.cfg.device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    result = np.empty(len(sequences), dtype=np.float64)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    with model_lock(model), torch.no_grad():
        shared = shared_prefix_length(model, sequences) if share_prefix else 0
        prefix = _prefix_cache(model, sequences[0][:shared]) if shared else None
        for batch in tqdm(batches, desc="ShieldGemma P(Yes)", unit="batch", disable=not progress):
            tokens, mask = pad([sequences[i][shared:] for i in batch], pad_id(model), side="left")
            cache = _expanded(prefix, len(batch)) if prefix is not None else None
            residual = model(
                tokens.to(device), attention_mask=mask.to(device), past_kv_cache=cache, stop_at_layer=model.cfg.n_layers
            )
            logits = yes_no_logits(model, residual[:, -1, :], yes, no).float()
            result[batch] = logits.softmax(dim=-1)[:, 0].cpu().numpy()
    return result


class NotShieldGemmaWarning(UserWarning):
    """ShieldGemma's prompt scored by a model that is not ShieldGemma: a stand-in number."""


def warn_if_not_shieldgemma(model: Any) -> None:
    """Warn when ``model`` is not a ShieldGemma subject: its P(Yes) is no safety judgement."""
    spec = subject_of(model)
    if spec is None or spec.family != "ShieldGemma":
        name = spec.name if spec is not None else type(model).__name__
        warnings.warn(
            f"shield.score runs on {name}, which is not ShieldGemma: its P(Yes) is a stand-in, not a safety "
            "verdict. Load 'shieldgemma-2b', 'shieldgemma-9b' or 'shieldgemma-27b' for real verdicts.",
            NotShieldGemmaWarning,
            stacklevel=4,
        )


@_checks.renamed(user_prompts="texts")
def score(
    model: Any,
    texts: str | Sequence[str],
    policies: Policies,
    responses: str | Sequence[str] | None = None,
    *,
    batch_size: int = 8,
    progress: bool = True,
    share_prefix: bool = True,
) -> np.ndarray:
    """P(Yes) -- the probability that each input violates ``policies`` -- as a float array.

    Args:
        model: a loaded subject. ShieldGemma (``"shieldgemma-2b"`` ...) for real verdicts;
            on any other model (e.g. the bundled ``"gemma-3-270m"``) the same computation
            runs but the number is only a stand-in, not a safety judgement.
        texts: the user prompts: one string (a 1-element array comes back) or a list
            (``user_prompts=`` is the deprecated name).
        policies: a key of :data:`POLICIES`, a :class:`Policy`, a ``(name, text)`` pair, or a
            list of them (all go into each prompt; the model card advises one per call).
        responses: None for the prompt-only use case, else one chatbot response per prompt
            (prompt-response use case).
        batch_size: prompts per forward pass; memory grows with it.
        progress: show a tqdm progress bar over batches (on stderr).
        share_prefix: compute the tokens all prompts start with once (the preamble); it is
            skipped automatically while hooks or SAEs are attached, so they see whole sequences.

    Any hooks on the model apply, so steering or ablations change the verdicts.
    """
    batch_size = _checks.positive_int(batch_size, "batch_size")
    # Exactly one BOS, as the model card's tokenizer call adds; the inputs tokenized as text.
    sequences = build_prompt_tokens(model.tokenizer, texts, policies, responses)
    warn_if_not_shieldgemma(model)
    return score_tokens(model, sequences, batch_size=batch_size, progress=progress, share_prefix=share_prefix)
