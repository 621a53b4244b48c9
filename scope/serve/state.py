"""What one server serves: the model, its named SAEs, their labels and mined examples, the limits;
and turning a request into checked generation arguments.

Every check that needs the model or an SAE happens here, in the request's thread, before the
request is queued: an unknown SAE name, a feature past an SAE's width, ``unit="max"`` on an SAE
without max activations, positions, a prompt over the limits. A request that passes cannot fail
on its arguments once the worker runs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from scope import _checks
from scope.hooks import check_compatible
from scope.inputs import check_length, to_tokens
from scope.labels import as_labels, feature_labels, label_features
from scope.shipped import ShippedExamples, shipped_examples
from scope.steering.context import check_positions, group_by_sae
from scope.steering.interventions import Ablate, Add, Clamp, Intervention, Scale
from scope.subjects import subject_of


class LimitError(ValueError):
    """A request over one of the server's limits (HTTP 413)."""


class ModelNotFoundError(LookupError):
    """A request names a model this server does not serve (HTTP 404, OpenAI's ``model_not_found``)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may wait."""

    max_prompt_tokens: int = 4096
    max_tokens: int = 512  # the most tokens one request may generate
    default_max_tokens: int = 16  # when a request names none (OpenAI's default for completions)
    max_body_bytes: int = 1_000_000
    max_queue: int = 64  # requests waiting or running at once; more get 429
    max_batch: int = 8  # requests one batched generation may group
    request_timeout_s: float = 600.0  # one request, waiting plus generating; past it: 504, its work stops

    def __post_init__(self) -> None:
        for name in ("max_prompt_tokens", "max_tokens", "max_body_bytes", "max_queue", "max_batch"):
            _checks.positive_int(getattr(self, name), f"Limits.{name}")
        _checks.non_negative_int(self.default_max_tokens, "Limits.default_max_tokens")
        if _checks.finite(self.request_timeout_s, "Limits.request_timeout_s") <= 0:
            raise ValueError(f"Limits.request_timeout_s must be > 0 seconds, got {self.request_timeout_s!r}.")


@dataclass
class GenerationArgs:
    """A request's generation, checked: what the worker runs."""

    text: Any  # the prompt string, or the chat
    tokens: torch.Tensor  # [1, pos], with one BOS
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stops: list[str]
    steering: list[tuple[Any, Intervention]] = field(default_factory=list)
    positions: str | tuple[int, ...] = "all"

    @property
    def prompt_tokens(self) -> int:
        return int(self.tokens.shape[1])


@dataclass
class Served:
    """The model and the SAEs (by name) one app serves, with optional labels and mined examples per SAE.

    ``labels``: per SAE name, labels as :func:`scope.labels.as_labels` takes them (a DataFrame
    with ``feature`` and ``label``, optionally ``explanation``; or ``{feature: label}``).
    ``mined``: per SAE name, the examples table of :func:`scope.top_examples`, a
    :class:`scope.examples.Mined` or :class:`scope.shipped.ShippedExamples`. A bundled SAE
    (recognised by its weights, whatever its name here) given none gets the examples shipped with
    it (:func:`scope.shipped.shipped_examples`): top and interval examples, densities, histograms.
    A feature's label is the one passed, else the one attached to the SAE
    (:func:`scope.labels.feature_labels`; the bundled SAEs ship labels), else one read off the
    mined examples (:func:`scope.label_features`).
    """

    model: Any
    saes: dict[str, Any]
    labels: dict[str, Any] = field(default_factory=dict)
    mined: dict[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    any_model_name: bool = False  # accept any ``model`` in requests (llama-server's behaviour)

    def __post_init__(self) -> None:
        if not isinstance(self.saes, Mapping):
            raise TypeError(f"saes must be a dict of name -> SAE, got {type(self.saes).__name__}.")
        for name, sae in self.saes.items():
            _checks.text(name, "SAE name")
            check_compatible(self.model, sae)
        for what, table in (("labels", self.labels), ("mined", self.mined)):
            unknown = sorted(set(table) - set(self.saes))
            if unknown:
                raise ValueError(f"{what} names SAEs {unknown} that are not served; served: {sorted(self.saes)}.")
        self.intervals: dict[str, pd.DataFrame] = {}  # per SAE, examples sampled below the top ones
        self.sources: dict[str, str] = {}  # per SAE, where its examples come from when known
        for name, sae in self.saes.items():
            found = self.mined[name] if name in self.mined else shipped_examples(sae, self.model)
            if isinstance(found, ShippedExamples):
                self.mined[name], self.intervals[name], self.sources[name] = found.mined, found.intervals, found.source
        self.label_tables = {name: self._label_table(name, sae) for name, sae in self.saes.items()}
        self._notes = {name: _lookup(table) for name, table in self.label_tables.items()}

    def _label_table(self, name: str, sae: Any) -> pd.DataFrame | None:
        """The SAE's label table from the first source that has one (None: no labels)."""
        if name in self.labels:
            return as_labels(self.labels[name])
        attached = feature_labels(sae)
        if attached is not None:
            return attached
        mined = self.mined.get(name)
        examples = mined if isinstance(mined, pd.DataFrame) else getattr(mined, "examples", None)
        if examples is not None and len(examples):
            return label_features(mined)
        return None

    @property
    def model_name(self) -> str:
        spec = subject_of(self.model)
        return spec.name if spec is not None else "model"

    @property
    def can_chat(self) -> bool | None:
        """Whether the model is instruction-tuned (speaks the turn format); None when unknown."""
        spec = subject_of(self.model)
        return spec.chat if spec is not None else None

    def chat_warning(self) -> str | None:
        """What a chat request to a base model is told (None for a chat model)."""
        if self.can_chat is not False:
            return None
        return (
            f"{self.model_name} is a base model, not instruction-tuned: it continues the chat "
            "transcript rather than answering it; /v1/completions is its natural endpoint."
        )

    def check_model(self, name: str | None) -> None:
        """ModelNotFoundError unless ``name`` is the served model (or absent, or any name is accepted)."""
        if name is None or self.any_model_name or name == self.model_name:
            return
        raise ModelNotFoundError(
            f"The model {name!r} does not exist on this server: it serves {self.model_name!r} "
            "(GET /v1/models; start it with --any-model-name to accept any name)."
        )

    def sae(self, name: str | None) -> tuple[str, Any]:
        """The SAE called ``name`` (None: the first served), or ValueError listing the served ones."""
        if not self.saes:
            raise ValueError("This server serves no SAE (start it with --sae SPEC).")
        if name is None:
            name = next(iter(self.saes))
        if name not in self.saes:
            raise ValueError(f"Unknown SAE {name!r}; served SAEs: {', '.join(map(repr, self.saes))}.")
        return name, self.saes[name]

    def label(self, sae_name: str, feature: int) -> dict[str, str]:
        """``{"label": ..., "explanation": ...}`` where known (empty otherwise)."""
        return dict(self._notes.get(sae_name, {}).get(int(feature), {}))

    # ------------------------------------------------------------------------- requests

    def generation_args(self, text: Any, request: Any, *, chat: bool) -> GenerationArgs:
        """Check a chat or completion request against the model, the SAEs and the limits.

        Without ``max_tokens`` a completion gets ``limits.default_max_tokens`` (OpenAI's 16) and a
        chat ``limits.max_tokens``, both cut to what the context leaves."""
        limits = self.limits
        requested = request.requested_tokens()
        default = limits.max_tokens if chat else limits.default_max_tokens
        max_new = default if requested is None else requested
        if max_new > limits.max_tokens:
            raise LimitError(f"max_tokens={max_new} is over this server's limit of {limits.max_tokens}.")
        tokens = to_tokens(self.model, text, name="prompt")
        if tokens.shape[1] > limits.max_prompt_tokens:
            raise LimitError(
                f"The prompt has {tokens.shape[1]} tokens, over this server's limit of {limits.max_prompt_tokens}."
            )
        if requested is None:  # a default never overruns the context; an explicit value must fit it
            max_new = max(0, min(max_new, self.model.cfg.n_ctx - tokens.shape[1]))
        check_length(self.model, tokens.shape[1], reserve=max_new, name="prompt")
        steering, positions = self.steering(request.steering, tokens.shape[1], max_new)
        return GenerationArgs(
            text=text,
            tokens=tokens,
            max_new_tokens=max_new,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            stops=request.stops(),
            steering=steering,
            positions=positions,
        )

    def steering(self, spec: Any, prompt_length: int, max_new_tokens: int) -> tuple[list, str | tuple[int, ...]]:
        """``[(sae, intervention)]`` and positions from a request's ``steering`` field, checked."""
        if spec is None:
            return [], "all"
        positions = check_positions(spec.positions)
        pairs = [(self.sae(item.sae)[1], _intervention(item)) for item in spec.interventions]
        group_by_sae(None, pairs)  # features within each SAE's width; max activations for unit="max"
        if not isinstance(positions, str):
            ran = prompt_length + max_new_tokens - 1  # positions that pass through the model
            beyond = [p for p in positions if p >= ran]
            if beyond:
                raise ValueError(
                    f"steering positions {beyond} lie beyond this generation: the model runs on "
                    f"positions 0..{ran - 1} (BOS = 0; the last generated token is never run)."
                )
        return pairs, positions


def _lookup(table: pd.DataFrame | None) -> dict[int, dict[str, str]]:
    """feature -> ``{"label", "explanation"}`` (those present)."""
    lookup: dict[int, dict[str, str]] = {}
    for row in table.itertuples(index=False) if table is not None else ():
        note = {key: str(getattr(row, key)) for key in ("label", "explanation") if _present(getattr(row, key, None))}
        lookup[int(row.feature)] = note
    return lookup


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value) != ""


def _intervention(item: Any) -> Intervention:
    if item.mode == "add":
        return Add(item.feature, item.value)
    if item.mode == "clamp":
        return Clamp(item.feature, item.value, unit=item.unit)
    if item.mode == "scale":
        return Scale(item.feature, item.value)
    return Ablate(item.feature)
