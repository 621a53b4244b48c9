"""Assisted (speculative) generation: a small draft model proposes tokens, the target verifies them
all in one forward pass.

Each round, for a chunk of rows:

1. the draft (unsteered: hooks and steering on the target never touch it) proposes ``k`` tokens
   after the row's pending token, one cheap pass each;
2. the target runs once over the pending token and the ``k`` proposals, with every hook and
   steering intervention on it as in a plain generation (``on_rows`` announces its rows);
3. greedy: a proposal is accepted while it equals the target's own argmax; the target's token
   at the first mismatch (or after the last proposal) comes free. Sampling: transformers'
   speculative-sampling rule (accept ``d`` with probability ``min(1, p(d) / q(d))``, else sample
   from ``max(0, p - q)`` renormalised; all accepted: sample the bonus from ``p``), on the
   temperature/top-k/top-p distributions both models sample from;
4. every row keeps the same number of new tokens, ``n`` = the fewest that any row gets, so the
   caches stay aligned without holes (a row's kept tokens are a prefix of what it got: still the
   target's greedy tokens, and under sampling a prefix cut at a stopping time, so still exact
   samples); both caches drop what was not kept;
5. ``k`` grows by 2 after a round where every proposal was accepted, else shrinks by 1
   (transformers' heuristic), between 1 and ``draft_tokens * 4``.

Greedy output equals the target's own greedy output. Each :class:`~scope.generation.Completion`
carries an :class:`AssistedStats` (proposed, accepted, target passes, seconds); :func:`summary`
gives the acceptance rate and speed of a call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from scope import _checks
from scope.generation import (
    Completion,
    Job,
    Passes,
    Seeds,
    TokenCallback,
    check_decode,
    make_passes,
    prepare_job,
    run_chunks,
    token_probabilities,
)
from scope.hooks import HookFn, model_lock
from scope.layout import is_relaid, relayout_for_speed
from scope.logits import final_logits
from scope.subjects import describe_model


@dataclass
class AssistedStats:
    """One row's assisted generation: draft tokens ``proposed`` and ``accepted`` by the target, the
    target passes it took part in, and the wall-clock ``seconds`` of its ``chunk`` of rows."""

    chunk: int = 0
    proposed: int = 0
    accepted: int = 0
    target_passes: int = 0
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


def summary(completions: Sequence[Completion]) -> dict[str, float]:
    """Acceptance rate (accepted / proposed draft tokens), generated tokens per target pass, and
    tokens per second of an assisted call's completions."""
    stats = [c.assisted for c in completions if c.assisted is not None]
    if not stats:
        raise ValueError("these completions were not generated with an assistant (assistant=...).")
    proposed, accepted = sum(s.proposed for s in stats), sum(s.accepted for s in stats)
    tokens = sum(len(c.tokens) for c in completions)
    seconds = sum({s.chunk: s.seconds for s in stats}.values()) or float("nan")  # rows of a chunk share it
    passes = max(1, sum(s.target_passes for s in stats))
    return {
        "acceptance_rate": accepted / proposed if proposed else 0.0,
        "tokens_per_target_pass": tokens / passes,
        "tokens_per_second": tokens / seconds,
    }


def check_assistant(target: Any, assistant: Any) -> None:
    """ValueError unless ``assistant`` can draft for ``target``: a transformer-lens model with the same
    vocabulary (tokenizer and unembedding width) on the same device."""
    from transformer_lens import HookedTransformer

    if not isinstance(assistant, HookedTransformer):
        raise TypeError(f"assistant must be a loaded model (scope.load_model), got {type(assistant).__name__}.")
    names = f"target {describe_model(target)}, assistant {describe_model(assistant)}"
    if assistant.cfg.d_vocab_out != target.cfg.d_vocab_out or _vocab(assistant) != _vocab(target):
        raise ValueError(
            f"The assistant must share the target's tokenizer and vocabulary ({names}: "
            f"{assistant.cfg.d_vocab_out} vs {target.cfg.d_vocab_out} output tokens, or different "
            "tokenizers). Draft with a model of the same family (e.g. Gemma 2 2B for Gemma 2 27B)."
        )
    draft_device, target_device = assistant.W_E.device, target.W_E.device  # "cuda" and "cuda:0" alike
    if draft_device != target_device:
        raise ValueError(
            f"The assistant is on {draft_device} and the target on {target_device} ({names}); "
            "load both on the same device."
        )


def _vocab(model: Any) -> dict[str, int] | None:
    return None if model.tokenizer is None else model.tokenizer.get_vocab()


def generate_assisted(
    model: Any,
    prompts: Sequence[torch.Tensor],
    *,
    assistant: Any,
    draft_tokens: int = 5,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float = 1.0,
    seed: Seeds = None,
    stop_at_eos: bool = True,
    stop: str | Sequence[str] | None = None,
    batch_size: int = 16,
    fwd_hooks: Sequence[tuple[str, HookFn]] = (),
    on_token: TokenCallback | None = None,
    on_rows: Callable[[torch.Tensor], Any] | None = None,
    decode: str = "auto",
) -> list[Completion]:
    """:func:`scope.generation.generate_batch` with ``assistant`` drafting ``draft_tokens`` tokens
    per round for ``model`` to verify (see the module docstring). ``fwd_hooks`` and every hook on
    ``model`` apply to the target only; to steer the draft too, wrap the call in
    ``scope.steer(assistant, ...)``."""
    draft_tokens = _checks.positive_int(draft_tokens, "draft_tokens")
    check_assistant(model, assistant)
    lookahead = 4 * draft_tokens + 1
    job = prepare_job(
        model,
        prompts,
        max_new_tokens,
        temperature,
        top_k,
        top_p,
        seed,
        stop_at_eos,
        stop,
        on_token,
        on_rows,
        decode,
        reserve=lookahead,
    )
    for prompt in job.prompts:
        _checks_draft_length(assistant, len(prompt) + job.max_new_tokens + lookahead)
    draft_fast = check_decode(assistant, decode)
    with model_lock(assistant):
        if not is_relaid(assistant):
            relayout_for_speed(assistant)
        chunk = partial(_assisted_chunk, assistant=assistant, draft_fast=draft_fast, draft_tokens=draft_tokens)
        return run_chunks(job, batch_size, fwd_hooks, chunk)


def _checks_draft_length(assistant: Any, length: int) -> None:
    if length > assistant.cfg.n_ctx:
        raise ValueError(
            f"The assistant's context is {assistant.cfg.n_ctx} tokens; this generation needs {length} "
            "(prompt, max_new_tokens and the draft's lookahead)."
        )


@dataclass
class _Round:
    """The rows of a chunk still generating, and both models' passes over them."""

    active: torch.Tensor  # prompt indices
    pending: torch.Tensor  # [rows, m] tokens sampled but not yet run through either model (m = 1 or 2)
    target: Passes
    draft: Passes
    generators: list[torch.Generator | None]
    draft_behind: torch.Tensor | None = None  # [rows, 1] a kept proposal the draft never ran


def _assisted_chunk(job: Job, rows: list[int], *, assistant: Any, draft_fast: bool, draft_tokens: int) -> None:
    started = time.perf_counter()
    stats = [AssistedStats(chunk=min(rows)) for _ in rows]
    for row, stat in zip(rows, stats):
        job.completions[row].assisted = stat
    tokens, mask = job.padded_prompts(rows)
    capacity = tokens.shape[1] + job.max_new_tokens + 4 * draft_tokens + 2
    state = _Round(
        active=torch.tensor(rows, dtype=torch.long),
        pending=tokens[:, :0],
        target=make_passes(job.model, len(rows), capacity, job.fast),
        draft=make_passes(assistant, len(rows), capacity, draft_fast),
        generators=job.generators(rows),
    )
    by_row = dict(zip(rows, stats))
    if job.on_rows is not None:
        job.on_rows(state.active)
    first = _choose(job, final_logits(job.model, state.target(tokens, mask)[:, -1]), state.generators)
    state.draft(tokens, mask)
    k, made = draft_tokens, 0
    if not _keep(job, state, first[:, None], by_row):
        return _finish(stats, started)
    made = 1
    while made < job.max_new_tokens:
        k = min(k, job.max_new_tokens - made)
        got, all_accepted = _round(job, state, k, by_row)
        made += got
        if not len(state.active):
            break
        k = min(k + 2, 4 * draft_tokens) if all_accepted else max(1, k - 1)
    _finish(stats, started)


def _finish(stats: list[AssistedStats], started: float) -> None:
    seconds = time.perf_counter() - started
    for stat in stats:
        stat.seconds = seconds


def _round(job: Job, state: _Round, k: int, by_row: dict[int, AssistedStats]) -> tuple[int, bool]:
    """One draft-and-verify round; (tokens each row gained, whether every proposal was accepted)."""
    base = state.target.length
    draft_in = state.pending if state.draft_behind is None else torch.cat([state.draft_behind, state.pending], 1)
    proposals, draft_probs = _propose(job, state, draft_in, k)
    if job.on_rows is not None:
        job.on_rows(state.active)
    verify = torch.cat([state.pending, proposals], dim=1)  # [rows, k + 1]
    logits = final_logits(job.model, state.target(verify))  # [rows, k + 1, d_vocab]
    accepted, next_tokens = _verify(job, proposals, draft_probs, logits, state.generators)
    n = int(accepted.min()) + 1  # tokens every row keeps this round
    for row, a in zip(state.active.tolist(), accepted.tolist()):
        stat = by_row[row]
        stat.proposed, stat.accepted, stat.target_passes = stat.proposed + k, stat.accepted + a, stat.target_passes + 1
    kept = torch.cat([proposals[:, : n - 1], _at(proposals, next_tokens, accepted, n)[:, None]], dim=1)
    state.target.truncate(base + n)
    draft_length = base + min(n, k)  # the draft ran pending + proposals[:k - 1]
    state.draft.truncate(draft_length)
    state.draft_behind = proposals[:, k - 1 : k] if n == k + 1 else None
    _keep(job, state, kept, by_row)
    return n, bool((accepted == k).all())


def _propose(job: Job, state: _Round, draft_in: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``k`` draft tokens per row ``[rows, k]`` and, when sampling, their draft distributions ``[rows, k, d_vocab]``."""
    model = state.draft.model
    proposals, probs = [], []
    step_in = draft_in
    for _ in range(k):
        logits = final_logits(model, state.draft(step_in)[:, -1])
        if job.sampling["temperature"] == 0.0:
            token = logits.argmax(dim=-1)
        else:
            p = token_probabilities(logits, **job.sampling)
            probs.append(p)
            token = _multinomial(p, state.generators)
        proposals.append(token)
        step_in = token[:, None]
    return torch.stack(proposals, dim=1), torch.stack(probs, dim=1) if probs else None


def _verify(
    job: Job,
    proposals: torch.Tensor,
    draft_probs: torch.Tensor | None,
    logits: torch.Tensor,
    generators: list[torch.Generator | None],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted proposals per row ``[rows]``, the target's token after them ``[rows]``)."""
    k = proposals.shape[1]
    if draft_probs is None:  # greedy: accepted while equal to the target's argmax
        target_tokens = logits.argmax(dim=-1)  # [rows, k + 1]
        matches = (target_tokens[:, :k] == proposals).long().cumprod(dim=1)
        accepted = matches.sum(dim=1)
        return accepted, target_tokens.gather(1, accepted[:, None])[:, 0]
    p = token_probabilities(logits, **job.sampling)  # [rows, k + 1, d_vocab]
    p_draft = p[:, :k].gather(2, proposals[..., None])[..., 0]
    q_draft = draft_probs.gather(2, proposals[..., None])[..., 0]
    uniform = torch.stack([_uniform(k, g, p.device) for g in generators])
    ok = (uniform * q_draft <= p_draft).long().cumprod(dim=1)  # r < p/q, without dividing by q
    accepted = ok.sum(dim=1)
    rows = torch.arange(len(accepted), device=p.device)
    target_p = p[rows, accepted]  # [rows, d_vocab]: where each row stopped
    residual = target_p.clone()
    rejected = accepted < k
    if rejected.any():
        q_at = draft_probs[rows[rejected], accepted[rejected]]
        leftover = (target_p[rejected] - q_at).clamp(min=0)
        total = leftover.sum(dim=-1, keepdim=True)
        # p == q exactly leaves nothing: then p itself is the right distribution.
        residual[rejected] = torch.where(total > 0, leftover / total.clamp(min=1e-30), target_p[rejected])
    return accepted, _multinomial(residual, generators)


def _uniform(k: int, generator: torch.Generator | None, device: Any) -> torch.Tensor:
    return torch.rand(k, generator=generator, device=device)


def _multinomial(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row ``[rows]``, each row from its own generator when it has one."""
    if all(g is None for g in generators):
        return torch.multinomial(probs, 1)[:, 0]
    return torch.cat([torch.multinomial(probs[i : i + 1], 1, generator=g)[:, 0] for i, g in enumerate(generators)])


def _at(proposals: torch.Tensor, next_tokens: torch.Tensor, accepted: torch.Tensor, n: int) -> torch.Tensor:
    """Each row's ``n``-th new token: its proposal ``n`` where accepted that far, else its target token."""
    if n > proposals.shape[1]:
        return next_tokens
    return torch.where(accepted >= n, proposals[:, n - 1], next_tokens)


def _choose(job: Job, logits: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    if job.sampling["temperature"] == 0.0:
        return logits.argmax(dim=-1)
    return _multinomial(token_probabilities(logits, **job.sampling), generators)


def _keep(job: Job, state: _Round, kept: torch.Tensor, by_row: dict[int, AssistedStats]) -> bool:
    """Record each row's kept tokens ``[rows, n]``; drop finished rows from both caches. The last
    kept token becomes the pending one. False when no row is left."""
    ids = kept.tolist()
    keep = []
    for n, row in enumerate(state.active.tolist()):
        alive, made = True, len(job.completions[row].tokens)
        for token in ids[n]:
            if made >= job.max_new_tokens or not job.append(row, token):
                alive = False
                break
            made += 1
        if alive and made < job.max_new_tokens:
            keep.append(n)
    state.pending = kept[:, -1:]
    if len(keep) < len(state.active):
        index = torch.tensor(keep, dtype=torch.long)
        device_index = index.to(kept.device)
        state.active, state.pending = state.active[index], state.pending[device_index]
        state.generators = [state.generators[n] for n in keep]
        if state.draft_behind is not None:
            state.draft_behind = state.draft_behind[device_index]
        if keep:
            state.target.select_rows(device_index)
            state.draft.select_rows(device_index)
    return bool(keep)
