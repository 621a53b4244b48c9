"""Feature steering: add, clamp, ablate or scale SAE features at the SAE's hook point.

Every intervention is an exact edit of the residual stream ``h`` at the SAE's hook,
computed from the *clean* feature activations ``f(h)`` (the SAE encoder on ``h``):

- ``Add(f, c)``:           ``h <- h + c * W_dec[f]``  (Neuronpedia / sae-lens / AxBench convention)
- ``Clamp(f, v)``:         ``h <- h + (v - f_f(h)) * W_dec[f]``. This is the "Golden Gate" method:
  ``h = SAE(h) + error``, feature ``f`` set to ``v`` in the reconstruction, error term kept.
  ``unit="max"`` reads ``v`` in multiples of the feature's max activation.
- ``Ablate(f)``:           ``Clamp(f, 0)``.
- ``Scale(f, k)``:         ``h <- h + (k - 1) * f_f(h) * W_dec[f]`` (the feature multiplied by ``k``).

:func:`steer` installs these as transformer-lens hooks for the duration of a ``with``
block and always removes them, exceptions included; blocks nest. BOS is never steered
(Gemma Scope SAEs never saw it), nor is padding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch

Positions = Union[Literal["all", "prompt", "generated"], Sequence[int]]
POSITION_MODES = ("all", "prompt", "generated")


@dataclass(frozen=True)
class Add:
    """``h += coeff * W_dec[feature]`` at every steered position."""

    feature: int
    coeff: float

    def coefficient(self, feature_acts: torch.Tensor, max_act: float | None) -> torch.Tensor:
        """How much of ``W_dec[feature]`` to add at each position, given the feature's clean activations."""
        return torch.full_like(feature_acts, self.coeff)

    needs_acts = False
    needs_max = False


@dataclass(frozen=True)
class Clamp:
    """Set ``feature`` to ``value`` (unit ``"act"``, or ``"max"``: multiples of its max activation), error kept."""

    feature: int
    value: float
    unit: Literal["act", "max"] = "act"

    def coefficient(self, feature_acts: torch.Tensor, max_act: float | None) -> torch.Tensor:
        value = self.value * max_act if self.unit == "max" else self.value
        return value - feature_acts

    needs_acts = True

    @property
    def needs_max(self) -> bool:
        return self.unit == "max"


def Ablate(feature: int) -> Clamp:  # noqa: N802 (reads like the other intervention classes)
    """Zero ``feature`` (a clamp to 0, error term kept)."""
    return Clamp(feature, 0.0)


@dataclass(frozen=True)
class Scale:
    """Multiply ``feature`` by ``factor`` (error term kept)."""

    feature: int
    factor: float

    def coefficient(self, feature_acts: torch.Tensor, max_act: float | None) -> torch.Tensor:
        return (self.factor - 1.0) * feature_acts

    needs_acts = True
    needs_max = False


Intervention = Union[Add, Clamp, Scale]


# ----------------------------------------------------------------------------- max activations

def set_max_activations(sae, values: torch.Tensor | Sequence[float]) -> None:
    """Record each feature's max activation on ``sae`` (used by ``Clamp(..., unit="max")``)."""
    values = torch.as_tensor(values, dtype=torch.float32).flatten()
    if values.numel() != sae.cfg.d_sae:
        raise ValueError(f"max activations must have one value per feature ({sae.cfg.d_sae}), got {values.numel()}.")
    sae.scope_max_activations = values


def max_activation(sae, feature: int) -> float:
    values = getattr(sae, "scope_max_activations", None)
    if values is None:
        raise ValueError(
            f"Clamp(..., unit='max') on feature {feature} needs the SAE's per-feature max activations, "
            "which this SAE does not carry. Record them with scope.steering.set_max_activations(sae, values) "
            "(e.g. from scope.top_examples over a corpus), or clamp with unit='act'."
        )
    return float(values[feature])


# ----------------------------------------------------------------------------- validation

def _check_intervention(sae, item: Any) -> Intervention:
    if not isinstance(item, (Add, Clamp, Scale)):
        raise TypeError(f"Expected scope.Add, scope.Clamp, scope.Ablate or scope.Scale, got {item!r}.")
    d_sae = sae.cfg.d_sae
    if isinstance(item.feature, bool) or not isinstance(item.feature, int) or not 0 <= item.feature < d_sae:
        raise ValueError(f"Feature index {item.feature!r} is out of range: this SAE has {d_sae} features "
                         f"(valid indices 0..{d_sae - 1}).")
    strength = {Add: "coeff", Clamp: "value", Scale: "factor"}[type(item)]
    value = getattr(item, strength)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{type(item).__name__}.{strength} must be a finite number, got {value!r}.")
    if isinstance(item, Clamp) and item.unit not in ("act", "max"):
        raise ValueError(f"Clamp unit must be 'act' or 'max', got {item.unit!r}.")
    if item.needs_max:
        max_activation(sae, item.feature)
    return item


def _check_positions(positions: Any) -> Positions:
    if isinstance(positions, str):
        if positions not in POSITION_MODES:
            raise ValueError(f"positions must be one of {POSITION_MODES} or a list of token indices, "
                             f"got {positions!r}.")
        return positions
    if isinstance(positions, int) and not isinstance(positions, bool):
        positions = [positions]
    try:
        indices = list(positions)
    except TypeError:
        raise ValueError(f"positions must be one of {POSITION_MODES} or a list of token indices, "
                         f"got {positions!r}.") from None
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"Position indices must be non-negative integers, got {index!r}.")
    return tuple(indices)


def _group_by_sae(sae, interventions: Sequence[Any]) -> list[tuple[Any, list[Intervention]]]:
    """``[(sae, [interventions...])]`` from bare interventions (on ``sae``) and ``(sae, intervention)`` pairs."""
    groups: dict[int, tuple[Any, list[Intervention]]] = {}
    for item in interventions:
        target_sae, intervention = item if isinstance(item, tuple) else (sae, item)
        if target_sae is None:
            raise ValueError(f"{intervention!r} has no SAE: pass sae=..., or (sae, intervention) pairs.")
        groups.setdefault(id(target_sae), (target_sae, []))[1].append(intervention)
    return list(groups.values())


# ----------------------------------------------------------------------------- the hook

@dataclass
class SteeringState:
    """What the steering hooks know about the forward pass in flight.

    ``prompt_length`` is set by :func:`scope.generate`; outside it, every position of an
    input counts as prompt (so ``positions="generated"`` steers nothing).
    """

    positions: Positions
    prompt_length: int | None = None
    # Per forward pass: absolute positions [pos] and a mask [batch, pos] of tokens that may be steered.
    absolute: torch.Tensor | None = None
    steerable: torch.Tensor | None = None
    special_ids: tuple[int, ...] = field(default=())

    def record_input(self, model, args: tuple, kwargs: dict) -> None:
        tokens = args[0] if args else kwargs.get("input")
        if isinstance(tokens, (str, list)):
            tokens = model.to_tokens(tokens)
        cache = kwargs.get("past_kv_cache")
        offset = cache.entries[0].past_keys.shape[1] if cache is not None else 0
        self.absolute = torch.arange(offset, offset + tokens.shape[1], device=tokens.device)
        steerable = torch.ones(tokens.shape, dtype=torch.bool, device=tokens.device)
        for special in self.special_ids:  # BOS and padding are never steered
            steerable &= tokens != special
        self.steerable = steerable & self._position_mask()[None, :]

    def _position_mask(self) -> torch.Tensor:
        absolute = self.absolute
        if self.positions == "all":
            return torch.ones_like(absolute, dtype=torch.bool)
        prompt_length = self.prompt_length if self.prompt_length is not None else int(absolute[-1]) + 1
        if self.positions == "prompt":
            return absolute < prompt_length
        if self.positions == "generated":
            return absolute >= prompt_length
        wanted = torch.tensor(self.positions, device=absolute.device, dtype=absolute.dtype)
        return torch.isin(absolute, wanted)


def _steering_hook(sae, interventions: list[Intervention], state: SteeringState):
    needs_acts = any(i.needs_acts for i in interventions)
    max_acts = {i.feature: max_activation(sae, i.feature) for i in interventions if i.needs_max}
    features = torch.tensor([i.feature for i in interventions])

    def hook(resid: torch.Tensor, hook) -> torch.Tensor:
        mask = state.steerable
        if mask is None or mask.shape != resid.shape[:2] or not mask.any():
            return resid
        with torch.no_grad():
            directions = sae.W_dec[features.to(sae.W_dec.device)]  # [n, d_in]
            if needs_acts:
                acts = sae.encode(resid.to(directions.dtype))[..., features.to(resid.device)]  # [batch, pos, n]
            else:
                acts = directions.new_zeros(*resid.shape[:2], len(interventions))
            coefficients = torch.stack(
                [i.coefficient(acts[..., n], max_acts.get(i.feature)) for n, i in enumerate(interventions)],
                dim=-1)  # [batch, pos, n]
            delta = (coefficients.to(directions.dtype) @ directions) * mask[..., None]  # [batch, pos, d_in]
        return resid + delta.reshape(resid.shape).to(resid.dtype)  # hook_z SAEs: d_in = heads x d_head

    return hook


@contextlib.contextmanager
def steer(model, sae, *interventions: Any, positions: Positions = "all") -> Iterator[SteeringState]:
    """Steer ``model`` with SAE feature interventions inside a ``with`` block.

    Args:
        model: a loaded subject.
        sae: the SAE that bare interventions refer to (its hook point is where they act).
            Interventions on other SAEs (other layers) are given as ``(sae, intervention)`` pairs.
        interventions: :class:`Add`, :class:`Clamp`, :func:`Ablate`, :class:`Scale`.
        positions: ``"all"`` (every position but BOS), ``"prompt"``, ``"generated"`` (meaningful in
            :func:`scope.generate`), or explicit token indices.

    Everything is validated before any hook is attached (feature indices within the SAE's width,
    finite strengths, the SAE's hook present in the model with a matching width). The hooks are
    removed on exit, also when the block raises; nested ``steer`` blocks add up.
    """
    from scope.saes import check_compatible, sae_hook

    positions = _check_positions(positions)
    groups = _group_by_sae(sae, interventions)
    for group_sae, items in groups:
        check_compatible(model, group_sae)
        for item in items:
            _check_intervention(group_sae, item)
    state = SteeringState(positions=positions, special_ids=_special_ids(model))
    fwd_hooks = [(sae_hook(s), _steering_hook(s, items, state)) for s, items in groups]
    recorder = model.register_forward_pre_hook(
        lambda module, args, kwargs: state.record_input(model, args, kwargs), with_kwargs=True)
    try:
        with model.hooks(fwd_hooks=fwd_hooks):
            yield state
    finally:
        recorder.remove()


def _special_ids(model) -> tuple[int, ...]:
    tokenizer = model.tokenizer
    if tokenizer is None:
        return ()
    ids = {tokenizer.bos_token_id, tokenizer.pad_token_id}
    return tuple(sorted(i for i in ids if i is not None))


def describe(interventions: Sequence[Any]) -> str:
    """A short human label, e.g. ``"Clamp(f=12, 10.0 x max)"``."""
    parts = []
    for item in interventions:
        item = item[1] if isinstance(item, tuple) else item
        if isinstance(item, Add):
            parts.append(f"Add(f={item.feature}, {item.coeff:g})")
        elif isinstance(item, Clamp):
            unit = " x max" if item.unit == "max" else ""
            parts.append(f"Clamp(f={item.feature}, {item.value:g}{unit})")
        else:
            parts.append(f"Scale(f={item.feature}, x{item.factor:g})")
    return ", ".join(parts)


def as_list(steering: Any) -> list[Any]:
    """Accept one intervention, a pair, or a sequence of them."""
    if isinstance(steering, (Add, Clamp, Scale)) or (isinstance(steering, tuple) and len(steering) == 2
                                                     and isinstance(steering[1], (Add, Clamp, Scale))):
        return [steering]
    return list(steering)



# ----------------------------------------------------------------------------- sweeps

def sweep(
    model,
    sae,
    intervention_factory,
    values: Sequence[float],
    prompts: Sequence[Any],
    *,
    positions: Positions = "all",
    progress: bool = True,
    **generate_kwargs: Any,
):
    """Generate under each steering strength for each prompt, and judge each text.

    ``intervention_factory(value)`` returns the intervention(s) for one strength, e.g.
    ``lambda v: scope.Clamp(1234, v, unit="max")``. Returns a DataFrame with columns
    prompt, value, text, concept, fluency:

    - ``concept``: the steered feature's mean activation over the generated tokens when the
      text is re-read *without* steering: did the concept make it into the text?
    - ``fluency``: mean log-probability of the generated tokens under the unsteered model.

    Together they give the trade-off steering benchmarks (AxBench) judge strengths by; see
    :func:`scope.plots.steering_tradeoff_figure`.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from scope.generation import generate_tokens, steered, tokenize_prompt

    values, prompts = list(values), list(prompts)
    runs = [(value, prompt) for value in values for prompt in prompts]
    rows = []
    for value, prompt in tqdm(runs, desc="Steering sweep", disable=not progress):
        interventions = as_list(intervention_factory(value))
        concept_sae, feature = _concept_feature(sae, interventions)
        tokens = tokenize_prompt(model, prompt)
        with steered(model, sae, interventions, positions, prompt_length=tokens.shape[1]):
            new = generate_tokens(model, tokens, **generate_kwargs)
        concept, fluency = reread(model, concept_sae, feature, tokens, new)
        rows.append({"prompt": prompt if isinstance(prompt, str) else str(prompt), "value": value,
                     "text": model.tokenizer.decode(new.tolist(), skip_special_tokens=True),
                     "concept": concept, "fluency": fluency})
    return pd.DataFrame(rows, columns=["prompt", "value", "text", "concept", "fluency"])


def _concept_feature(sae, interventions: Sequence[Any]) -> tuple[Any, int]:
    if not interventions:
        raise ValueError("intervention_factory returned no intervention.")
    first = interventions[0]
    return (first[0], first[1].feature) if isinstance(first, tuple) else (sae, first.feature)


def reread(model, sae, feature: int, prompt_tokens: torch.Tensor, new_tokens: torch.Tensor) -> tuple[float, float]:
    """(mean activation of ``feature``, mean log-prob) over ``new_tokens``, read by the unsteered model."""
    from scope.generation import final_logits
    from scope.saes import sae_hook

    if new_tokens.numel() == 0:
        return float("nan"), float("nan")
    n_prompt = prompt_tokens.shape[1]
    tokens = torch.cat([prompt_tokens.to(new_tokens.device), new_tokens[None]], dim=1).to(model.cfg.device)
    hook = sae_hook(sae)
    with torch.no_grad():
        # Logits only where they score a generated token, not over the whole prompt.
        residual, cache = model.run_with_cache(tokens, names_filter=hook, stop_at_layer=model.cfg.n_layers)
        generated = cache[hook][0, n_prompt:]
        concept = sae.encode(generated.to(sae.W_dec.dtype))[:, feature].float().mean().item()
        log_probs = final_logits(model, residual[0, n_prompt - 1:-1]).float().log_softmax(dim=-1)
        fluency = log_probs.gather(-1, tokens[0, n_prompt:, None]).mean().item()
    return concept, fluency
