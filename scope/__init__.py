"""scope: an interpretability toolkit for the Gemma 2 family.

Hook Gemma 2 (and ShieldGemma, and the bundled offline Gemma 3 270M) through
transformer-lens, decode Gemma Scope SAE features, and steer generation.

``import scope`` is cheap: each public name is imported from its module on first use
(torch, transformer-lens and sae-lens load only when something needs them).
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "list_models": "scope.models",
    "load_model": "scope.models",
    "ModelUnavailableError": "scope.subjects",
    "CacheError": "scope.bundled",
    "GemmaScopeId": "scope.gemma_scope",
    "gemma_scope_id": "scope.gemma_scope",
    "load_sae": "scope.saes",
    "load_saes": "scope.saes",
    "LazySAEs": "scope.saes",
    "check_compatible": "scope.hooks",
    "to_tokens": "scope.inputs",
    "generate_tokens": "scope.generation",
    "FeatureActs": "scope.features",
    "encode": "scope.features",
    "top_features": "scope.features",
    "feature_logits": "scope.features",
    "trace": "scope.features",
    "Mined": "scope.examples",
    "mine": "scope.examples",
    "top_examples": "scope.examples",
    "dashboard": "scope.pages",
    "Add": "scope.steering",
    "Clamp": "scope.steering",
    "Ablate": "scope.steering",
    "Scale": "scope.steering",
    "steer": "scope.steering",
    "generate": "scope.steering",
    "sweep": "scope.steering",
    "Attribution": "scope.attribution",
    "attribute": "scope.attribution",
}
# Submodules listed in __all__ (any other scope.<module> is importable as an attribute too).
_SUBMODULES = (
    "attribution",
    "chat",
    "examples",
    "features",
    "generation",
    "hooks",
    "inputs",
    "logits",
    "pages",
    "plots",
    "residuals",
    "saes",
    "shield",
    "steering",
)
# Old public names, kept for one release: name -> (module, new name).
_DEPRECATED = {
    "tokenize_prompt": ("scope.inputs", "to_tokens"),
}

__all__ = [
    "Ablate",
    "Add",
    "Attribution",
    "CacheError",
    "Clamp",
    "FeatureActs",
    "GemmaScopeId",
    "LazySAEs",
    "Mined",
    "ModelUnavailableError",
    "Scale",
    "attribute",
    "attribution",
    "chat",
    "check_compatible",
    "dashboard",
    "encode",
    "examples",
    "feature_logits",
    "features",
    "gemma_scope_id",
    "generate",
    "generate_tokens",
    "generation",
    "hooks",
    "inputs",
    "list_models",
    "load_model",
    "load_sae",
    "load_saes",
    "logits",
    "mine",
    "pages",
    "plots",
    "residuals",
    "saes",
    "shield",
    "steer",
    "steering",
    "sweep",
    "to_tokens",
    "top_examples",
    "top_features",
    "trace",
]
assert sorted(__all__) == sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES or importlib.util.find_spec(f"scope.{name}") is not None:
        value = importlib.import_module(f"scope.{name}")
    elif name in _DEPRECATED:
        module, new = _DEPRECATED[name]
        warnings.warn(f"scope.{name} is deprecated; use scope.{new}.", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), new)
    else:
        raise AttributeError(f"module 'scope' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # what type checkers and IDEs see
    from scope import (
        attribution,
        chat,
        examples,
        features,
        generation,
        hooks,
        inputs,
        logits,
        pages,
        plots,
        residuals,
        saes,
        shield,
        steering,
    )
    from scope.attribution import Attribution, attribute
    from scope.bundled import CacheError
    from scope.examples import Mined, mine, top_examples
    from scope.features import FeatureActs, encode, feature_logits, top_features, trace
    from scope.gemma_scope import GemmaScopeId, gemma_scope_id
    from scope.generation import generate_tokens
    from scope.hooks import check_compatible
    from scope.inputs import to_tokens
    from scope.models import list_models, load_model
    from scope.pages import dashboard
    from scope.saes import LazySAEs, load_sae, load_saes
    from scope.steering import Ablate, Add, Clamp, Scale, generate, steer, sweep
    from scope.subjects import ModelUnavailableError
