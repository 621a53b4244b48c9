"""What steering does to one SAE feature (or one raw direction): add, clamp, ablate or scale it.

Every intervention is an exact edit of the activation ``h`` at the SAE's hook, computed from
the *clean* feature activation ``a = f(h)`` (the SAE encoder on ``h``), always as
``h <- h + c * W_dec[feature]`` with a coefficient ``c``:

- ``Add(f, value)``:   ``c = value``  (the Neuronpedia / sae-lens / AxBench convention)
- ``Clamp(f, value)``: ``c = value - a``. The "Golden Gate" method: ``h = SAE(h) + error``
  with feature ``f`` set to ``value`` in the reconstruction, error term kept. ``unit="max"``
  reads ``value`` in multiples of the feature's max activation.
- ``Ablate(f)``:       ``Clamp(f, 0)``.
- ``Scale(f, value)``: ``c = (value - 1) * a`` (the feature multiplied by ``value``).

For a transcoder, ``a`` is read from its input (the MLP input) and the edit lands in its output
(the MLP output): ``W_dec[feature]`` is what the feature writes there.

The feature may also be a :class:`~scope.steering.directions.Direction` ``u`` at a hook: then
``a = h . u`` and ``W_dec[feature] = u`` (see that module); ``unit="max"`` needs an SAE feature.

Every intervention names its strength ``value`` (``coeff=`` and ``factor=`` are deprecated
aliases). Types and finiteness are checked when an intervention is made; whether the feature
exists is checked against the SAE when steering starts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch

from scope import _checks
from scope.steering.directions import Direction

UNITS = ("act", "max")


def _strength(kind: str, value: Any, old_name: str, old_value: Any) -> float:
    if old_value is not None:
        if value is not None:
            raise TypeError(f"{kind}() got both value= and its deprecated name {old_name}=.")
        warnings.warn(f"{kind}({old_name}=...) is deprecated; use value=.", DeprecationWarning, stacklevel=3)
        value = old_value
    if value is None:
        raise TypeError(f"{kind}() needs a strength: {kind}(feature, value).")
    return _checks.finite(value, f"{kind} value")


@dataclass(frozen=True, init=False)
class Intervention:
    """One feature edit; subclasses say how its coefficient follows from the clean activation."""

    feature: int | Direction
    value: float

    needs_acts = False  # does the coefficient depend on the clean activation?

    @property
    def needs_max(self) -> bool:
        return False

    def coefficient(self, acts: torch.Tensor, max_act: float | None) -> torch.Tensor:
        """How much of ``W_dec[feature]`` to add at each position, from the clean activations."""
        raise NotImplementedError

    def _set(self, feature: Any, value: float) -> None:
        if not isinstance(feature, Direction):
            feature = _checks.integer(feature, f"{type(self).__name__} feature")
        object.__setattr__(self, "feature", feature)
        object.__setattr__(self, "value", value)

    def on_feature(self, feature: int) -> Intervention:
        """The same intervention on another feature index (a direction is feature 0 of itself)."""
        copy = object.__new__(type(self))
        copy.__dict__.update(self.__dict__)
        object.__setattr__(copy, "feature", feature)
        return copy


@dataclass(frozen=True, init=False)
class Add(Intervention):
    """``h += value * W_dec[feature]`` at every steered position."""

    def __init__(self, feature: int | Direction, value: float | None = None, *, coeff: float | None = None):
        self._set(feature, _strength("Add", value, "coeff", coeff))

    @property
    def coeff(self) -> float:
        """Deprecated name of :attr:`value`."""
        return self.value

    def coefficient(self, acts: torch.Tensor, max_act: float | None) -> torch.Tensor:
        return torch.full_like(acts, self.value)


@dataclass(frozen=True, init=False)
class Clamp(Intervention):
    """Set ``feature`` to ``value`` (unit ``"act"``, or ``"max"``: multiples of its max activation), error kept."""

    unit: Literal["act", "max"]
    needs_acts = True

    def __init__(self, feature: int | Direction, value: float, unit: Literal["act", "max"] = "act"):
        self._set(feature, _strength("Clamp", value, "value", None))
        object.__setattr__(self, "unit", _checks.choice(unit, UNITS, "Clamp unit"))
        if unit == "max" and isinstance(feature, Direction):
            raise ValueError(
                f"Clamp(..., unit='max') needs an SAE feature's max activation; {feature!r} has none. "
                "Clamp a direction's projection with unit='act'."
            )

    @property
    def needs_max(self) -> bool:
        return self.unit == "max"

    def coefficient(self, acts: torch.Tensor, max_act: float | None) -> torch.Tensor:
        target = self.value * max_act if self.unit == "max" and max_act is not None else self.value
        return target - acts


def Ablate(feature: int | Direction) -> Clamp:  # noqa: N802 (reads like the other intervention classes)
    """Zero ``feature`` (a clamp to 0, error term kept)."""
    return Clamp(feature, 0.0)


@dataclass(frozen=True, init=False)
class Scale(Intervention):
    """Multiply ``feature`` by ``value`` (error term kept)."""

    needs_acts = True

    def __init__(self, feature: int | Direction, value: float | None = None, *, factor: float | None = None):
        self._set(feature, _strength("Scale", value, "factor", factor))

    @property
    def factor(self) -> float:
        """Deprecated name of :attr:`value`."""
        return self.value

    def coefficient(self, acts: torch.Tensor, max_act: float | None) -> torch.Tensor:
        return (self.value - 1.0) * acts


OnSAE = tuple[Any, Intervention]  # (sae, intervention): an intervention on another SAE than the default
Steering = Union[Intervention, OnSAE]


def is_pair(item: Any) -> bool:
    """Whether ``item`` is an ``(sae, intervention)`` pair (not a tuple of two interventions)."""
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[1], Intervention)
        and not isinstance(item[0], Intervention)
    )


def as_list(steering: Any) -> list[Steering]:
    """Accept one intervention, a pair, or a sequence of them."""
    if isinstance(steering, Intervention) or is_pair(steering):
        return [steering]
    try:
        items = list(steering)
    except TypeError:
        raise TypeError(
            f"steering must be interventions (scope.Add, Clamp, Ablate, Scale) or (sae, intervention) "
            f"pairs, got {steering!r}."
        ) from None
    for item in items:
        target = item[1] if is_pair(item) else item
        if not isinstance(target, Intervention):
            raise TypeError(f"Expected scope.Add, scope.Clamp, scope.Ablate or scope.Scale, got {item!r}.")
    return items


def describe(interventions: Any) -> str:
    """A short human label, e.g. ``"Clamp(f=12, 10 x max)"``."""
    parts = []
    for item in as_list(interventions):
        item = item[1] if isinstance(item, tuple) else item
        target = item.feature.label if isinstance(item.feature, Direction) else f"f={item.feature}"
        if isinstance(item, Add):
            parts.append(f"Add({target}, {item.value:g})")
        elif isinstance(item, Clamp):
            unit = " x max" if item.unit == "max" else ""
            parts.append(f"Clamp({target}, {item.value:g}{unit})")
        else:
            parts.append(f"Scale({target}, x{item.value:g})")
    return ", ".join(parts)
