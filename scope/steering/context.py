"""The ``steer`` context: interventions installed as hooks for a ``with`` block, always removed.

1. Everything is validated before any hook is attached: feature indices within each SAE's
   width, finite strengths, max activations for ``unit="max"``, each SAE's hook present in the
   model with a matching width, positions.
2. The model's lock (:func:`scope.hooks.model_lock`) is held for the whole block, so another
   thread's scope call on the same model waits instead of running steered.
3. A pre-forward hook records which tokens each forward pass sees (and the KV cache offset), so
   the mask of steerable positions is known: never BOS, never padding, and only the positions
   asked for.
4. One :func:`scope.hooks.sae_splice` per SAE edits its hook point; a transcoder's features are
   read at its input hook and edit its output hook, error term kept (:func:`scope.splicing.edit_hooks`).
   A result that is no longer finite, or too large for the next norm to square (a strength of
   1e30), raises instead of generating ``<pad>``.
5. The hooks are removed on exit, also when the block raises; nested ``steer`` blocks add up.
6. Every intervention given is applied, duplicates too: two ``Add(f, 40)`` are ``Add(f, 80)``.
   At most one Clamp or Scale (Ablate is a Clamp) per feature and row: a second one would have
   no single meaning (which value wins?), so it is a ValueError naming both. Adds on a feature
   add on top of its Clamp or Scale.
7. :func:`scope.generate` inside a ``steer`` block honours the block's ``positions`` exactly as
   ``generate(steering=..., positions=...)`` does: each generation announces its prompt lengths
   (and which rows each pass holds) to every steering state on the model, through a per-model
   stack of :class:`Generation` records (nested generations restore the outer one).
"""

from __future__ import annotations

import contextlib
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch

from scope import _checks
from scope.feature_stats import max_activation
from scope.features import check_feature
from scope.hooks import HookFn, model_lock
from scope.splicing import check_editable, check_fits, describe_site, edit_hooks
from scope.steering.directions import Direction
from scope.steering.interventions import Intervention, as_list, is_pair

Positions = Union[Literal["all", "prompt", "generated"], Sequence[int]]
POSITION_MODES = ("all", "prompt", "generated")


def check_positions(positions: Any) -> str | tuple[int, ...]:
    """``"all"``, ``"prompt"``, ``"generated"`` or token indices (BOS = 0, never steered)."""
    if isinstance(positions, str):
        return _checks.choice(positions, POSITION_MODES, "positions")
    if not isinstance(positions, (list, tuple, range)) and not hasattr(positions, "__iter__"):
        positions = [positions]
    indices = tuple(_checks.non_negative_int(index, "a position index") for index in positions)
    if not indices:
        raise ValueError("positions is empty: give token indices, or 'all', 'prompt' or 'generated'.")
    if 0 in indices:
        raise ValueError(
            "positions includes 0, the BOS token, which is never steered (Gemma Scope SAEs "
            "never saw it); the text's first token is position 1."
        )
    return indices


def group_by_sae(sae: Any, interventions: Sequence[Any]) -> list[tuple[Any, list[Intervention]]]:
    """``[(sae, [interventions...])]`` from bare interventions (on ``sae``) and ``(sae, intervention)`` pairs,
    each checked against its SAE. An intervention on a :class:`Direction` is grouped under the
    direction itself, as its feature 0."""
    return [(target, items) for target, items, _ in plan(sae, [as_list(interventions)])]


def plan(sae: Any, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, list[Intervention], list[Counter[int]]]]:
    """Per SAE (or direction): its distinct interventions, and for each how many times each row
    applies it (``{row: count}``; an intervention given twice is applied twice).

    ``rows`` holds one list of interventions per batch row; everything is checked here, before
    any hook is attached.
    """
    groups: dict[int, tuple[Any, list[Intervention], list[Counter[int]]]] = {}
    for row, interventions in enumerate(rows):
        setters: dict[tuple[int, int], Intervention] = {}  # (target, feature) -> its Clamp or Scale
        for item in interventions:
            target, intervention = _target(sae, item)
            _check_one_setter(setters, target, intervention, item)
            _, items, owners = groups.setdefault(id(target), (target, [], []))
            if intervention not in items:
                items.append(intervention)
                owners.append(Counter())
            owners[items.index(intervention)][row] += 1
    return list(groups.values())


def _check_one_setter(
    setters: dict[tuple[int, int], Intervention], target: Any, intervention: Intervention, item: Any
) -> None:
    """ValueError when a row sets one feature twice (two Clamps, a Clamp and a Scale...)."""
    if not intervention.needs_acts:  # Adds add up
        return
    key = (id(target), _feature_index(intervention))
    earlier = setters.get(key)
    setters[key] = intervention
    if earlier is not None:
        where = f"the direction {target.label!r}" if isinstance(target, Direction) else describe_site(target)
        shown = item[1] if isinstance(item, tuple) else item
        raise ValueError(
            f"{earlier!r} and {shown!r} both set feature {key[1]} of {where}: give at most one Clamp, "
            "Ablate or Scale per feature (they would not compose to one value); Adds on a feature add up."
        )


def _target(sae: Any, item: Any) -> tuple[Any, Intervention]:
    target_sae, intervention = item if isinstance(item, tuple) else (sae, item)
    if isinstance(intervention.feature, Direction):
        return intervention.feature, intervention.on_feature(0)
    if target_sae is None:
        raise ValueError(f"{intervention!r} has no SAE: pass sae=..., or (sae, intervention) pairs.")
    if not hasattr(target_sae, "cfg"):  # e.g. a {layer: SAE} mapping
        raise TypeError(
            f"{intervention!r} needs one SAE or transcoder to act on, got a {type(target_sae).__name__}: "
            "pick one (saes[layer]), or give (saes[layer], intervention) pairs."
        )
    check_feature(target_sae, intervention.feature, f"{type(intervention).__name__} feature")
    if intervention.needs_max:
        max_activation(target_sae, intervention.feature)
    return target_sae, intervention


@dataclass
class Generation:
    """What a generation tells the steering states on its model: each prompt's length (one per
    batch row) and which rows the pass in flight holds (finished rows leave the batch; None: all
    of them, in order). Pushed by :func:`steered` for the generation's duration."""

    prompt_lengths: torch.Tensor
    rows: torch.Tensor | None = None

    @property
    def prompt_length(self) -> int:
        """The prompt length of a one-prompt generation (the first row's otherwise)."""
        return int(self.prompt_lengths[0])

    def set_rows(self, rows: torch.Tensor) -> None:
        self.rows = rows.to("cpu", torch.long)


# Per model: the generations in progress, innermost last (the registry the steering states read).
_GENERATIONS: weakref.WeakKeyDictionary[Any, list[Generation]] = weakref.WeakKeyDictionary()


def current_generation(model: Any) -> Generation | None:
    """The innermost generation running on ``model`` (None outside :func:`scope.generate`)."""
    stack = _GENERATIONS.get(model)
    return stack[-1] if stack else None


@contextlib.contextmanager
def _generating(model: Any, generation: Generation) -> Iterator[Generation]:
    """``generation`` is the model's current one for the block (then the outer one again)."""
    stack = _GENERATIONS.setdefault(model, [])
    stack.append(generation)
    try:
        yield generation
    finally:
        stack.remove(generation)


@dataclass
class SteeringState:
    """What the steering hooks know about the forward pass in flight.

    Inside :func:`scope.generate` the model's :class:`Generation` gives each row's prompt length
    and the rows the pass holds; outside it, every position of an input counts as prompt (so
    ``positions="generated"`` steers nothing).
    """

    positions: str | tuple[int, ...]
    generation: Generation | None = None  # the model's generation when the pass in flight started
    steerable: torch.Tensor | None = None  # [batch, pos] tokens of the pass in flight that may be steered
    special_ids: tuple[int, ...] = field(default=())

    def record_input(self, model: Any, args: tuple, kwargs: dict) -> None:
        self.generation = current_generation(model)
        tokens = args[0] if args else kwargs.get("input")
        if isinstance(tokens, (str, list)):
            tokens = model.to_tokens(tokens)
        if not isinstance(tokens, torch.Tensor):  # embeddings passed in: nothing to mask by
            self.steerable = None
            return
        if tokens.dim() == 1:
            tokens = tokens[None]
        real, position = self._real_positions(tokens, kwargs.get("attention_mask"), kwargs.get("past_kv_cache"))
        steerable = real
        for special in self.special_ids:  # BOS and padding are never steered
            steerable = steerable & (tokens != special)
        self.steerable = steerable & self._position_mask(position)

    def _real_positions(self, tokens: torch.Tensor, mask: Any, cache: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(which tokens are real, each token's position in its own row) for the pass in flight:
        a left-padded row counts positions from its first real token, as it would alone."""
        new = (
            torch.ones(tokens.shape, dtype=torch.long, device=tokens.device) if mask is None else mask.to(tokens.device)
        )
        past = cache.previous_attention_mask.to(tokens.device) if cache is not None else new[:, :0]
        if past.shape[0] != tokens.shape[0]:  # a cache this state cannot read: count from its length
            past = torch.ones(
                tokens.shape[0], cache.entries[0].past_keys.shape[1], dtype=torch.long, device=tokens.device
            )
        full = torch.cat([past.long(), new.long()], dim=1)
        position = (full.cumsum(dim=1) - 1)[:, past.shape[1] :]
        return new.bool(), position

    def mask(self, act: torch.Tensor) -> torch.Tensor:
        if self.steerable is None or self.steerable.shape != act.shape[:2]:
            return torch.zeros(act.shape[:2], dtype=torch.bool, device=act.device)
        return self.steerable

    def row_index(self, batch: int) -> torch.Tensor:
        """The batch rows of the pass in flight, as indices into the generation's prompts."""
        rows = self.generation.rows if self.generation is not None else None
        return rows if rows is not None and len(rows) == batch else torch.arange(batch)

    def _prompt_lengths(self, position: torch.Tensor) -> torch.Tensor:
        generation = self.generation
        if generation is None or len(generation.prompt_lengths) < position.shape[0]:
            return position[:, -1:] + 1  # not a generation's pass: everything is prompt
        return generation.prompt_lengths[self.row_index(position.shape[0])].to(position.device)[:, None]

    def _position_mask(self, position: torch.Tensor) -> torch.Tensor:
        if self.positions == "all":
            return torch.ones_like(position, dtype=torch.bool)
        if self.positions == "prompt":
            return position < self._prompt_lengths(position)
        if self.positions == "generated":
            return position >= self._prompt_lengths(position)
        wanted = torch.tensor(self.positions, device=position.device, dtype=position.dtype)
        return torch.isin(position, wanted)


def steering_hook(
    sae: Any,
    interventions: list[Intervention],
    state: SteeringState,
    owners: list[Counter[int]],
    n_rows: int = 1,
    *,
    per_row: bool = False,
) -> list[tuple[str, HookFn]]:
    """The hooks for one SAE's (or transcoder's) interventions: their coefficients through
    :func:`scope.splicing.edit_hooks` (for a transcoder, read at its input, written at its output).

    ``owners``: for each intervention, how many times each of the ``n_rows`` batch rows applies
    it. Without ``per_row`` every row of a pass applies row 0's interventions.
    """
    indices = [_feature_index(i) for i in interventions]
    max_acts = {f: max_activation(sae, f) for f, i in zip(indices, interventions) if i.needs_max}
    features = torch.tensor(indices)
    counts = _ownership(owners, n_rows)
    owns = counts if per_row else None

    def coefficients(acts: torch.Tensor | None) -> torch.Tensor:
        assert acts is not None  # needs_acts is set whenever a coefficient reads them
        return torch.stack(
            [i.coefficient(acts[..., n], max_acts.get(indices[n])) for n, i in enumerate(interventions)], dim=-1
        )

    needs_acts = any(i.needs_acts for i in interventions)
    base = coefficients if needs_acts else _constant(interventions)
    if not per_row and bool((counts[0] != 1).any()):  # an intervention given more than once
        base = _repeated(base, counts[0])

    def by_row(acts: torch.Tensor | None) -> torch.Tensor:
        c = base(acts)
        assert owns is not None and state.steerable is not None
        rows = owns[state.row_index(state.steerable.shape[0])].to(c.device, c.dtype)  # [batch, n]
        return c * rows[:, None, :]

    *reads, (written, splice) = edit_hooks(
        sae, features, base if owns is None else by_row, needs_acts=needs_acts, mask=state.mask
    )

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        out = splice(act, hook)
        if not _finite_downstream(out):
            raise ValueError(
                f"Steering made the activations at {hook.name} non-finite (inf or NaN, or so "
                f"large that the next normalisation overflows): {interventions} is too strong "
                "for this model's dtype. Use a smaller value."
            )
        return out

    return [*reads, (written, hook)]


def _feature_index(intervention: Intervention) -> int:
    """The feature index (interventions on a direction arrive here as its feature 0, see :func:`plan`)."""
    if not isinstance(intervention.feature, int):
        raise TypeError(f"{intervention!r} reached a steering hook without a feature index.")
    return intervention.feature


def _ownership(owners: list[Counter[int]], n_rows: int) -> torch.Tensor:
    """``[n_rows, n_interventions]``: how many times each row applies each intervention."""
    owns = torch.zeros(n_rows, len(owners))
    for n, rows in enumerate(owners):
        for row, count in rows.items():
            owns[row, n] = float(count)
    return owns


def _finite_downstream(out: torch.Tensor) -> bool:
    """Whether ``out`` and the mean of its squares are finite. The second is what the next RMSNorm
    computes (in float32 at least): an activation of 1e30 is a finite float32, but its square is
    not, and the norm would then silently scale the whole stream to zero (generating ``<pad>``)."""
    if not torch.isfinite(out).all():
        return False
    wide = out.detach().to(torch.promote_types(out.dtype, torch.float32))
    return bool(torch.isfinite(wide.pow(2).mean(-1)).all())


def _repeated(once: Callable[[torch.Tensor | None], torch.Tensor], times: torch.Tensor):
    """Coefficients of interventions applied ``times`` times each (only Adds repeat, see :func:`plan`)."""

    def coefficients(acts: torch.Tensor | None) -> torch.Tensor:
        c = once(acts)
        return c * times.to(c.device, c.dtype)

    return coefficients


def _constant(interventions: list[Intervention]):
    """Coefficients that do not depend on the activations (Add only): no SAE encode needed."""
    values = torch.tensor([i.value for i in interventions])

    def coefficients(acts: torch.Tensor | None) -> torch.Tensor:
        return values

    return coefficients


@contextlib.contextmanager
def steer(model: Any, sae: Any, *interventions: Any, positions: Positions = "all") -> Iterator[SteeringState]:
    """Steer ``model`` with SAE feature (or direction) interventions inside a ``with`` block.

    Args:
        model: a loaded subject.
        sae: the SAE that bare interventions refer to (its hook point is where they act), or a
            transcoder (its features are read from the MLP input, the edit lands in the MLP output).
            Interventions on other SAEs (other layers) are given as ``(sae, intervention)`` pairs;
            interventions on a :class:`~scope.steering.directions.Direction` act at its hook.
        interventions: :class:`Add`, :class:`Clamp`, :func:`Ablate`, :class:`Scale`.
        positions: ``"all"`` (every position but BOS), ``"prompt"``, ``"generated"`` (meaningful in
            :func:`scope.generate`), or explicit token indices counted in the whole sequence
            (prompt and generated tokens; BOS = 0 is never steered).

    See the module docstring for what is checked and guaranteed.
    """
    with _installed(model, sae, [as_list(interventions)], positions, per_row=False) as state:
        yield state


@contextlib.contextmanager
def _installed(
    model: Any, sae: Any, rows: list[list[Any]], positions: Positions, *, per_row: bool
) -> Iterator[SteeringState]:
    """Check everything, then attach one hook per SAE/direction and the input recorder; always remove them."""
    checked = check_positions(positions)
    groups = plan(sae, rows)
    for group_sae, _, _ in groups:
        check_editable(model, group_sae)
    with model_lock(model):
        state = SteeringState(positions=checked, special_ids=_special_ids(model))
        fwd_hooks = [
            pair
            for s, items, owners in groups
            for pair in steering_hook(s, items, state, owners, len(rows), per_row=per_row)
        ]
        # A model(...) call records its input (tokens, attention mask, KV cache) in a pre-hook on
        # the model. transformer-lens' run_with_hooks calls forward() directly and skips that hook
        # (scope.encode runs that way): the embedding's pre-hook records those passes from their
        # tokens, so no pass is steered with a stale mask or not at all.
        called = [False]
        recorders = [
            model.register_forward_pre_hook(
                lambda module, args, kwargs: _record_call(state, model, args, kwargs, called), with_kwargs=True
            ),
            model.embed.register_forward_pre_hook(lambda module, args: _record_embedded(state, model, args, called)),
        ]
        try:
            with model.hooks(fwd_hooks=fwd_hooks):
                yield state
        finally:
            for recorder in recorders:
                recorder.remove()


def _record_call(state: SteeringState, model: Any, args: tuple, kwargs: dict, called: list[bool]) -> None:
    state.record_input(model, args, kwargs)
    called[0] = True


def _record_embedded(state: SteeringState, model: Any, args: tuple, called: list[bool]) -> None:
    if not called[0]:  # a pass that skipped model(...): its tokens, no mask, no cache
        state.record_input(model, args, {})
    called[0] = False


def steering_rows(steering: Any, n_rows: int) -> tuple[list[list[Any]], bool]:
    """(one list of interventions per row, whether rows differ) from one list for every row or one
    list per row (``[[...], [...], []]``; None or ``[]`` for a row steers it not at all)."""
    if not _is_per_row(steering):
        return [as_list(steering)], False
    rows = [as_list(row) if row is not None else [] for row in steering]
    if len(rows) != n_rows:
        raise ValueError(
            f"steering has {len(rows)} per-row lists for {n_rows} texts: give one list per text, "
            "or one flat list of interventions for all of them."
        )
    return rows, True


def _is_per_row(steering: Any) -> bool:
    if steering is None or isinstance(steering, (Intervention, str)) or is_pair(steering):
        return False
    try:
        items = list(steering)
    except TypeError:
        return False
    return bool(items) and all(
        item is None or (isinstance(item, (list, tuple)) and not is_pair(item)) for item in items
    )


@contextlib.contextmanager
def steered(
    model: Any, sae: Any, steering: Any, positions: Positions, *, prompt_length: int | Sequence[int]
) -> Iterator[Generation]:
    """A generation of prompts with ``prompt_length`` tokens (one int, or one per row), steered by
    ``steering`` (one list for every row or one list per row, see :func:`steering_rows`).

    Every steering state on the model (this generation's, and those of enclosing ``steer``
    blocks) reads the prompt lengths, and the rows each pass holds, from the :class:`Generation`
    yielded: call its ``set_rows`` as rows leave the batch. Without steering an SAE alone is
    still checked against the model."""
    lengths = [prompt_length] if isinstance(prompt_length, int) else list(prompt_length)
    rows, per_row = steering_rows(steering, len(lengths))
    generation = Generation(torch.tensor(lengths, dtype=torch.long))
    with model_lock(model):
        if not any(rows):
            if sae is not None:
                check_fits(model, sae)
            check_positions(positions)
            with _generating(model, generation):
                yield generation
            return
        with _installed(model, sae, rows, positions, per_row=per_row), _generating(model, generation):
            yield generation


def _special_ids(model: Any) -> tuple[int, ...]:
    tokenizer = model.tokenizer
    if tokenizer is None:
        return ()
    ids = {tokenizer.bos_token_id, tokenizer.pad_token_id}
    return tuple(sorted(i for i in ids if i is not None))
