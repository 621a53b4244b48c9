"""The ``steer`` context: interventions installed as hooks for a ``with`` block, always removed.

1. Everything is validated before any hook is attached: feature indices within each SAE's
   width, finite strengths, max activations for ``unit="max"``, each SAE's hook present in the
   model with a matching width, positions.
2. The model's lock (:func:`scope.hooks.model_lock`) is held for the whole block, so another
   thread's scope call on the same model waits instead of running steered.
3. A pre-forward hook records which tokens each forward pass sees (and the KV cache offset), so
   the mask of steerable positions is known: never BOS, never padding, and only the positions
   asked for.
4. One :func:`scope.hooks.sae_splice` per SAE edits its hook point; a result that is no longer
   finite, or too large for the next norm to square (a strength of 1e30), raises instead of
   generating ``<pad>``.
5. The hooks are removed on exit, also when the block raises; nested ``steer`` blocks add up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch

from scope import _checks
from scope.features import check_feature
from scope.hooks import HookFn, check_compatible, check_hook_free, model_lock, sae_hook, sae_splice
from scope.saes import max_activation
from scope.steering.interventions import Intervention, as_list

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
    each checked against its SAE."""
    groups: dict[int, tuple[Any, list[Intervention]]] = {}
    for item in as_list(interventions):
        target_sae, intervention = item if isinstance(item, tuple) else (sae, item)
        if target_sae is None:
            raise ValueError(f"{intervention!r} has no SAE: pass sae=..., or (sae, intervention) pairs.")
        check_feature(target_sae, intervention.feature, f"{type(intervention).__name__} feature")
        if intervention.needs_max:
            max_activation(target_sae, intervention.feature)
        groups.setdefault(id(target_sae), (target_sae, []))[1].append(intervention)
    return list(groups.values())


@dataclass
class SteeringState:
    """What the steering hooks know about the forward pass in flight.

    ``prompt_length`` is set by :func:`scope.generate`; outside it, every position of an
    input counts as prompt (so ``positions="generated"`` steers nothing).
    """

    positions: str | tuple[int, ...]
    prompt_length: int | None = None
    steerable: torch.Tensor | None = None  # [batch, pos] tokens of the pass in flight that may be steered
    special_ids: tuple[int, ...] = field(default=())

    def record_input(self, model: Any, args: tuple, kwargs: dict) -> None:
        tokens = args[0] if args else kwargs.get("input")
        if isinstance(tokens, (str, list)):
            tokens = model.to_tokens(tokens)
        if not isinstance(tokens, torch.Tensor):  # embeddings passed in: nothing to mask by
            self.steerable = None
            return
        cache = kwargs.get("past_kv_cache")
        offset = cache.entries[0].past_keys.shape[1] if cache is not None else 0
        absolute = torch.arange(offset, offset + tokens.shape[1], device=tokens.device)
        steerable = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        for special in self.special_ids:  # BOS and padding are never steered
            steerable &= tokens != special
        self.steerable = steerable & self._position_mask(absolute)[None, :]

    def mask(self, act: torch.Tensor) -> torch.Tensor:
        if self.steerable is None or self.steerable.shape != act.shape[:2]:
            return torch.zeros(act.shape[:2], dtype=torch.bool, device=act.device)
        return self.steerable

    def _position_mask(self, absolute: torch.Tensor) -> torch.Tensor:
        if self.positions == "all":
            return torch.ones_like(absolute, dtype=torch.bool)
        prompt_length = self.prompt_length if self.prompt_length is not None else int(absolute[-1]) + 1
        if self.positions == "prompt":
            return absolute < prompt_length
        if self.positions == "generated":
            return absolute >= prompt_length
        wanted = torch.tensor(self.positions, device=absolute.device, dtype=absolute.dtype)
        return torch.isin(absolute, wanted)


def steering_hook(sae: Any, interventions: list[Intervention], state: SteeringState) -> HookFn:
    """The hook for one SAE's interventions: their coefficients through the one SAE splice."""
    max_acts = {i.feature: max_activation(sae, i.feature) for i in interventions if i.needs_max}
    features = torch.tensor([i.feature for i in interventions])

    def coefficients(acts: torch.Tensor | None) -> torch.Tensor:
        assert acts is not None  # needs_acts is set whenever a coefficient reads them
        return torch.stack(
            [i.coefficient(acts[..., n], max_acts.get(i.feature)) for n, i in enumerate(interventions)], dim=-1
        )

    needs_acts = any(i.needs_acts for i in interventions)
    splice = sae_splice(
        sae, features, coefficients if needs_acts else _constant(interventions), needs_acts=needs_acts, mask=state.mask
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

    return hook


def _finite_downstream(out: torch.Tensor) -> bool:
    """Whether ``out`` and the mean of its squares are finite. The second is what the next RMSNorm
    computes (in float32 at least): an activation of 1e30 is a finite float32, but its square is
    not, and the norm would then silently scale the whole stream to zero (generating ``<pad>``)."""
    if not torch.isfinite(out).all():
        return False
    wide = out.detach().to(torch.promote_types(out.dtype, torch.float32))
    return bool(torch.isfinite(wide.pow(2).mean(-1)).all())


def _constant(interventions: list[Intervention]):
    """Coefficients that do not depend on the activations (Add only): no SAE encode needed."""
    values = torch.tensor([i.value for i in interventions])

    def coefficients(acts: torch.Tensor | None) -> torch.Tensor:
        return values

    return coefficients


@contextlib.contextmanager
def steer(model: Any, sae: Any, *interventions: Any, positions: Positions = "all") -> Iterator[SteeringState]:
    """Steer ``model`` with SAE feature interventions inside a ``with`` block.

    Args:
        model: a loaded subject.
        sae: the SAE that bare interventions refer to (its hook point is where they act).
            Interventions on other SAEs (other layers) are given as ``(sae, intervention)`` pairs.
        interventions: :class:`Add`, :class:`Clamp`, :func:`Ablate`, :class:`Scale`.
        positions: ``"all"`` (every position but BOS), ``"prompt"``, ``"generated"`` (meaningful in
            :func:`scope.generate`), or explicit token indices counted in the whole sequence
            (prompt and generated tokens; BOS = 0 is never steered).

    See the module docstring for what is checked and guaranteed.
    """
    checked = check_positions(positions)
    groups = group_by_sae(sae, interventions)
    for group_sae, _ in groups:
        check_compatible(model, group_sae)
        check_hook_free(model, sae_hook(group_sae))
    with model_lock(model):
        state = SteeringState(positions=checked, special_ids=_special_ids(model))
        fwd_hooks = [(sae_hook(s), steering_hook(s, items, state)) for s, items in groups]
        recorder = model.register_forward_pre_hook(
            lambda module, args, kwargs: state.record_input(model, args, kwargs), with_kwargs=True
        )
        try:
            with model.hooks(fwd_hooks=fwd_hooks):
                yield state
        finally:
            recorder.remove()


@contextlib.contextmanager
def steered(
    model: Any, sae: Any, steering: Any, positions: Positions, *, prompt_length: int
) -> Iterator[SteeringState | None]:
    """``steer`` for a generation whose prompt has ``prompt_length`` tokens (no-op without steering;
    an SAE alone is still checked against the model)."""
    interventions = as_list(steering)
    if not interventions:
        if sae is not None:
            check_compatible(model, sae)
        check_positions(positions)
        yield None
        return
    with steer(model, sae, *interventions, positions=positions) as state:
        state.prompt_length = prompt_length
        yield state


def _special_ids(model: Any) -> tuple[int, ...]:
    tokenizer = model.tokenizer
    if tokenizer is None:
        return ()
    ids = {tokenizer.bos_token_id, tokenizer.pad_token_id}
    return tuple(sorted(i for i in ids if i is not None))
