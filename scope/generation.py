"""Fast hooked generation with a KV cache, one prompt or a batch of them; sampling.

transformer-lens' own ``generate`` copies every weight matrix on every step (see
:mod:`scope.layout`) and computes full-vocabulary logits for every prompt position; its forward
also spends ~50 small operations per layer per token on framework work. Here each pass runs
through :mod:`scope.decode_step` (the same math from the model's weights against a preallocated
KV cache, each hook point called only when hooked, the model's forward pre-hooks called as for
``model(...)``), or through transformer-lens' own forward when the model carries something that
step does not reproduce (``decode="plain"`` forces it). Either way every hook on the model fires
(steering is such hooks: :mod:`scope.steering` composes them, this module knows hooks, not
steering) and logits are only computed for the last position. Greedy output equals transformers'
greedy output on the same weights. :mod:`scope.assisted` reuses the chunking and row bookkeeping
(:func:`prepare_job`, :func:`run_chunks`) with a draft model.

A batch (:func:`generate_batch`) runs like this:

1. Prompts are sorted by length and cut into chunks of ``batch_size`` (less padding); each
   chunk is padded on the left with the mask of real tokens. transformer-lens takes rotary
   positions from the mask's running sum and masks padded keys, so every row sees the
   positions and context it would see alone (the sliding window compares positions within
   a row, so padding does not move it).
2. One forward pass over the padded chunk fills the KV cache; then one pass per step over
   each active row's newest token.
3. Each row samples with its own generator when it has a seed (a row with seed s samples what
   it would sample alone with seed s), stops at ``<eos>``/``<end_of_turn>``, a stop string, or
   ``max_new_tokens``.
4. Finished rows leave the batch and the cache, so they stop costing compute. ``on_rows``
   announces which prompts the next forward pass holds (per-row hooks index by it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from jaxtyping import Int
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

from scope import _checks
from scope.chat import END_OF_TURN
from scope.decode_step import FastForward, StaticKVCache, unsupported
from scope.hooks import HookFn, model_lock
from scope.inputs import check_length, decode, pad, pad_id
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


def next_token_logits(
    model: Any,
    tokens: torch.Tensor,
    cache: TransformerLensKeyValueCache,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``tokens`` through the model (extending ``cache``); logits ``[batch, d_vocab]`` of the
    last one. ``attention_mask`` ``[batch, pos]`` marks real tokens (default: all of them)."""
    if attention_mask is None:
        attention_mask = torch.ones(tokens.shape, dtype=torch.long, device=tokens.device)
    residual = model(tokens, past_kv_cache=cache, attention_mask=attention_mask, stop_at_layer=model.cfg.n_layers)
    return final_logits(model, residual[:, -1, :])


DECODE_MODES = ("auto", "fast", "plain")


class PlainPasses:
    """Passes through transformer-lens' own forward with its growing KV cache (any model, any hook)."""

    def __init__(self, model: Any, batch: int):
        self.model = model
        self.cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, batch_size=batch)

    @property
    def length(self) -> int:
        return self.cache.previous_attention_mask.shape[1]

    def __call__(self, tokens: torch.Tensor, new_mask: torch.Tensor | None = None) -> torch.Tensor:
        if new_mask is None:
            new_mask = torch.ones(tokens.shape, dtype=torch.long, device=tokens.device)
        return self.model(
            tokens, past_kv_cache=self.cache, attention_mask=new_mask, stop_at_layer=self.model.cfg.n_layers
        )

    def select_rows(self, index: torch.Tensor) -> None:
        _select_rows(self.cache, index)

    def truncate(self, length: int) -> None:
        for entry in self.cache.entries:
            entry.past_keys, entry.past_values = entry.past_keys[:, :length], entry.past_values[:, :length]
        self.cache.previous_attention_mask = self.cache.previous_attention_mask[:, :length]


class FastPasses(FastForward):
    """Passes through :class:`scope.decode_step.FastForward` against a preallocated cache."""

    def __init__(self, model: Any, batch: int, capacity: int):
        super().__init__(model, StaticKVCache(model, batch, capacity))

    @property
    def length(self) -> int:
        return self.cache.length

    def select_rows(self, index: torch.Tensor) -> None:
        self.cache.select_rows(index)

    def truncate(self, length: int) -> None:
        self.cache.truncate(length)


Passes = Union[PlainPasses, FastPasses]


def check_decode(model: Any, decode: Any) -> bool:
    """Whether generation runs :class:`FastPasses` (``decode="auto"``: when the model allows it;
    ``"fast"``: required, else ValueError naming why not; ``"plain"``: transformer-lens' forward)."""
    decode = _checks.choice(decode, DECODE_MODES, "decode")
    if decode == "plain":
        return False
    reason = unsupported(model)
    if reason is not None and decode == "fast":
        raise ValueError(f"decode='fast' cannot run this model: {reason}. Use decode='auto' or 'plain'.")
    return reason is None


def make_passes(model: Any, batch: int, capacity: int, fast: bool) -> Passes:
    """A KV-cached pass runner for ``batch`` rows of at most ``capacity`` tokens."""
    return FastPasses(model, batch, capacity) if fast else PlainPasses(model, batch)


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
    probs = token_probabilities(logits, temperature=temperature, top_k=top_k, top_p=top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def token_probabilities(
    logits: torch.Tensor, *, temperature: float, top_k: int | None = None, top_p: float = 1.0
) -> torch.Tensor:
    """The distribution :func:`sample_token` samples from at ``temperature`` > 0 ``[..., d_vocab]``."""
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
    return logits.softmax(dim=-1)


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
        seed = _checks.seed(seed)
    return max_new_tokens, temperature, top_k, top_p, seed


Seeds = Union[int, None, Sequence[Union[int, None]]]
FinishReason = Literal["stop", "length"]
TokenCallback = Callable[[int, int], Any]  # (row, token); returning False ends that row


@dataclass
class Completion:
    """One prompt's generation: what an OpenAI-style server reports for it.

    ``prompt_length``: prompt tokens (BOS included); ``tokens``: the generated ids (a stop token
    excluded, a stop string's tokens included); ``text``: their decoded text, cut before the
    first stop string; ``finish_reason``: ``"stop"`` (a stop token or string) or ``"length"``;
    ``assisted``: with an assistant, its :class:`scope.assisted.AssistedStats` (acceptance, passes).
    """

    prompt_length: int
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason = "length"
    assisted: Any = None


def check_seeds(seed: Any, n_rows: int) -> list[int | None]:
    """One seed per row from ``None``, one integer (every row seeded alike: each samples what it
    would sample alone with that seed) or a sequence of ``n_rows`` integers/None."""
    if seed is None or not isinstance(seed, Sequence) or isinstance(seed, str):
        one = None if seed is None else _checks.seed(seed)
        return [one] * n_rows
    seeds = [None if s is None else _checks.seed(s) for s in seed]
    if len(seeds) != n_rows:
        raise ValueError(f"seed has {len(seeds)} entries for {n_rows} prompts: give one seed, or one per prompt.")
    return seeds


def check_stop(stop: Any) -> tuple[str, ...]:
    """Stop strings from None, one string or a sequence of non-empty strings."""
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, Sequence):
        raise TypeError(f"stop must be a string or a list of strings, got {stop!r}.")
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"stop must be a string or a list of strings, got {item!r} in it.")
        if not item:
            raise ValueError("stop contains an empty string, which would stop every row at once.")
    return tuple(items)


def generate_batch(
    model: Any,
    prompts: Sequence[Int[torch.Tensor, " pos"]],
    *,
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
    """Generate after each prompt (1-D token tensors, BOS first) in left-padded KV-cached batches;
    one :class:`Completion` per prompt, in order. See the module docstring for the steps.

    ``on_token(row, token)`` is called for every generated token (not stop tokens) as it is
    sampled: a stream; when it returns False, that row ends there (the others go on).
    ``on_rows(rows)`` is called before each forward pass whose rows changed, with the prompt
    indices of its rows. ``fwd_hooks`` (and any hooks on the model) apply.
    ``decode``: ``"auto"`` runs the fast decode step (:mod:`scope.decode_step`) whenever the model
    and its hooks allow, ``"fast"`` requires it, ``"plain"`` runs transformer-lens' forward.
    """
    job = prepare_job(
        model, prompts, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos, stop, on_token, on_rows, decode
    )
    return run_chunks(job, batch_size, fwd_hooks, _generate_chunk)


@dataclass
class Job:
    """One generation call's checked settings and results, shared by its chunks of rows."""

    model: Any
    prompts: list[torch.Tensor]
    seeds: list[int | None]
    completions: list[Completion]
    max_new_tokens: int
    sampling: dict[str, Any]
    stop_ids: set[int]
    stops: tuple[str, ...]
    on_token: TokenCallback | None
    on_rows: Callable[[torch.Tensor], Any] | None
    fast: bool

    def append(self, row: int, token: int) -> bool:
        """Record ``token`` for prompt ``row``; False once that row is finished."""
        return _append(self.model, self.completions[row], token, self.stop_ids, self.stops, self.on_token, row)

    def padded_prompts(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts ``rows`` left-padded on the model's device: (tokens, mask of real tokens)."""
        tokens, mask = pad([self.prompts[i] for i in rows], pad_id(self.model), side="left")
        return tokens.to(self.model.cfg.device), mask.to(self.model.cfg.device)

    def generators(self, rows: list[int]) -> list[torch.Generator | None]:
        sampled = self.sampling["temperature"] > 0.0
        return [_generator(self.seeds[i], self.model.cfg.device) if sampled else None for i in rows]


def prepare_job(
    model: Any,
    prompts: Sequence[torch.Tensor],
    max_new_tokens: Any,
    temperature: Any,
    top_k: Any,
    top_p: Any,
    seed: Seeds,
    stop_at_eos: bool,
    stop: Any,
    on_token: TokenCallback | None,
    on_rows: Callable[[torch.Tensor], Any] | None,
    decode: Any,
    reserve: int = 0,
) -> Job:
    """Every argument checked (before anything heavy); ``reserve``: context kept free beyond
    ``max_new_tokens`` (a draft's lookahead)."""
    max_new_tokens, temperature, top_k, top_p, _ = check_sampling(max_new_tokens, temperature, top_k, top_p)
    checked = [_check_prompt(p) for p in prompts]
    seeds = check_seeds(seed, len(checked))
    stops = check_stop(stop)
    for prompt in checked:
        check_length(model, len(prompt), reserve=max_new_tokens + reserve, name="prompt")
    return Job(
        model=model,
        prompts=checked,
        seeds=seeds,
        completions=[Completion(prompt_length=len(p)) for p in checked],
        max_new_tokens=max_new_tokens,
        sampling=dict(temperature=temperature, top_k=top_k, top_p=top_p),
        stop_ids=stop_token_ids(model) if stop_at_eos else set(),
        stops=stops,
        on_token=on_token,
        on_rows=on_rows,
        fast=check_decode(model, decode),
    )


def run_chunks(
    job: Job, batch_size: Any, fwd_hooks: Sequence[tuple[str, HookFn]], run_chunk: Callable[[Job, list[int]], None]
) -> list[Completion]:
    """``run_chunk(job, rows)`` for chunks of ``batch_size`` prompts of similar length (sorted, so
    less padding), under the model's lock with ``fwd_hooks`` attached; the completions' texts."""
    batch_size = _checks.positive_int(batch_size, "batch_size")
    model = job.model
    order = sorted(range(len(job.prompts)), key=lambda i: len(job.prompts[i]))
    with model_lock(model), torch.no_grad(), model.hooks(fwd_hooks=list(fwd_hooks)):
        if not is_relaid(model):
            relayout_for_speed(model)
        if job.max_new_tokens > 0:
            for start in range(0, len(order), batch_size):
                run_chunk(job, order[start : start + batch_size])
    for completion in job.completions:
        completion.text = _text(model, completion.tokens, job.stops)
    return job.completions


def _check_prompt(prompt: Any) -> torch.Tensor:
    if not isinstance(prompt, torch.Tensor):
        raise TypeError(f"prompts must be 1-D token tensors, got {type(prompt).__name__}.")
    if prompt.dim() == 2 and prompt.shape[0] == 1:
        prompt = prompt[0]
    if prompt.dim() != 1 or prompt.numel() == 0:
        raise ValueError(f"each prompt must be a non-empty 1-D token tensor, got shape {tuple(prompt.shape)}.")
    return prompt


def _generate_chunk(job: Job, rows: list[int]) -> None:
    """Steps 1-4 of the module docstring for one chunk of prompts (indices ``rows``)."""
    model = job.model
    tokens, mask = job.padded_prompts(rows)  # mask: None once every new token is real
    generators = job.generators(rows)
    active = torch.tensor(rows, dtype=torch.long)
    passes = make_passes(model, len(rows), tokens.shape[1] + job.max_new_tokens, job.fast)
    for step in range(job.max_new_tokens):
        if job.on_rows is not None:
            job.on_rows(active)
        logits = final_logits(model, passes(tokens, mask)[:, -1, :])
        new = _sample_rows(logits, generators, job.sampling)
        ids = new.tolist()  # one device-to-host copy per step, not one per row
        keep = [n for n, row in enumerate(active.tolist()) if job.append(row, ids[n])]
        if step == job.max_new_tokens - 1 or not keep:
            return
        if len(keep) < len(active):  # finished rows leave the batch and the cache
            index = torch.tensor(keep, dtype=torch.long)
            active, new = active[index], new[index.to(new.device)]
            generators = [generators[n] for n in keep]
            passes.select_rows(index.to(model.cfg.device))
        tokens, mask = new[:, None], None  # type: ignore[assignment]


def _append(
    model: Any,
    completion: Completion,
    token: int,
    stop_ids: set[int],
    stops: tuple[str, ...],
    on_token: TokenCallback | None,
    row: int,
) -> bool:
    """Record ``token`` for one row; False once the row is finished (stop token or string)."""
    if token in stop_ids:
        completion.finish_reason = "stop"
        return False
    completion.tokens.append(token)
    if on_token is not None and on_token(row, token) is False:
        return False  # the caller ended this row (a server: its client went away)
    if stops and _stop_index(_decode(model, completion.tokens), stops) is not None:
        completion.finish_reason = "stop"
        return False
    return True


def _sample_rows(
    logits: torch.Tensor, generators: list[torch.Generator | None], sampling: dict[str, Any]
) -> torch.Tensor:
    """One token per row ``[batch]``; a row with its own generator samples alone (as it would solo)."""
    if sampling["temperature"] == 0.0 or all(g is None for g in generators):
        return sample_token(logits, **sampling)[:, 0]
    return torch.cat([sample_token(logits[n : n + 1], generator=g, **sampling)[:, 0] for n, g in enumerate(generators)])


def _generator(seed: int | None, device: Any) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def _select_rows(cache: TransformerLensKeyValueCache, index: torch.Tensor) -> None:
    """Keep only rows ``index`` of every layer's keys and values and of the cached mask."""
    for entry in cache.entries:
        entry.past_keys = entry.past_keys[index.to(entry.past_keys.device)]
        entry.past_values = entry.past_values[index.to(entry.past_values.device)]
    cache.previous_attention_mask = cache.previous_attention_mask[index.to(cache.previous_attention_mask.device)]


def _decode(model: Any, tokens: list[int]) -> str:
    return decode(model.tokenizer, tokens)  # control tokens left out of the text


def _stop_index(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _text(model: Any, tokens: list[int], stops: tuple[str, ...]) -> str:
    text = _decode(model, tokens)
    cut = _stop_index(text, stops) if stops else None
    return text if cut is None else text[:cut]


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
    check_sampling(max_new_tokens, temperature, top_k, top_p, seed)
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must have shape [1, pos], got {tuple(tokens.shape)}.")
    (completion,) = generate_batch(
        model,
        [tokens[0]],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop_at_eos=stop_at_eos,
        fwd_hooks=fwd_hooks,
    )
    return torch.tensor(completion.tokens, dtype=torch.long)
