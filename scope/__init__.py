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
    "load_saes": "scope.lazy_layers",
    "LazySAEs": "scope.lazy_layers",
    "load_transcoders": "scope.transcoders",
    "Transcoders": "scope.transcoders",
    "splice": "scope.splicing",
    "Splice": "scope.splicing",
    "set_densities": "scope.density",
    "antipodal_pairs": "scope.density",
    "score_labels": "scope.label_scores",
    "check_compatible": "scope.hooks",
    "to_tokens": "scope.inputs",
    "generate_tokens": "scope.generation",
    "Completion": "scope.generation",
    "FeatureActs": "scope.features",
    "encode": "scope.features",
    "top_features": "scope.features",
    "feature_logits": "scope.features",
    "trace": "scope.features",
    "Mined": "scope.mining",
    "mine": "scope.mining",
    "top_examples": "scope.mining",
    "label_features": "scope.labels",
    "neuronpedia_explanations": "scope.neuronpedia",
    "NeuronpediaUnavailableError": "scope.neuronpedia",
    "search_features": "scope.search",
    "dashboard": "scope.pages",
    "Add": "scope.steering",
    "Clamp": "scope.steering",
    "Ablate": "scope.steering",
    "Scale": "scope.steering",
    "steer": "scope.steering",
    "generate": "scope.steering",
    "generate_completions": "scope.steering",
    "sweep": "scope.steering",
    "Direction": "scope.steering",
    "diffmean": "scope.steering",
    "evaluate_steering": "scope.steering.evaluation",
    "compare_steering": "scope.steering.evaluation",
    "recommend_strength": "scope.steering.evaluation",
    "Attribution": "scope.attribution",
    "attribute": "scope.attribution",
    "attribution_graph": "scope.graphs",
    "Graph": "scope.graphs",
    "LLM": "scope.llm",
    "Endpoint": "scope.llm",
    "LocalLLM": "scope.llm",
    "as_llm": "scope.llm",
    "explain": "scope.autointerp",
    "score_explanations": "scope.autointerp",
}
# Submodules listed in __all__ (any other scope.<module> is importable as an attribute too).
_SUBMODULES = (
    "attribution",
    "autointerp",
    "chat",
    "distributed",
    "examples",
    "features",
    "generation",
    "hooks",
    "inputs",
    "labels",
    "llm",
    "logits",
    "mining",
    "neuronpedia",
    "pages",
    "plots",
    "residuals",
    "saes",
    "search",
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
    "Completion",
    "Direction",
    "Endpoint",
    "FeatureActs",
    "GemmaScopeId",
    "Graph",
    "LLM",
    "LazySAEs",
    "LocalLLM",
    "Mined",
    "ModelUnavailableError",
    "NeuronpediaUnavailableError",
    "Scale",
    "Splice",
    "Transcoders",
    "as_llm",
    "attribute",
    "attribution",
    "attribution_graph",
    "autointerp",
    "chat",
    "check_compatible",
    "compare_steering",
    "dashboard",
    "distributed",
    "diffmean",
    "encode",
    "evaluate_steering",
    "examples",
    "explain",
    "feature_logits",
    "features",
    "gemma_scope_id",
    "generate",
    "generate_completions",
    "generate_tokens",
    "generation",
    "hooks",
    "inputs",
    "label_features",
    "labels",
    "list_models",
    "llm",
    "load_model",
    "load_sae",
    "load_saes",
    "load_transcoders",
    "logits",
    "mine",
    "mining",
    "neuronpedia",
    "neuronpedia_explanations",
    "pages",
    "plots",
    "recommend_strength",
    "residuals",
    "saes",
    "score_explanations",
    "search",
    "search_features",
    "shield",
    "splice",
    "set_densities",
    "antipodal_pairs",
    "score_labels",
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
        autointerp,
        chat,
        distributed,
        examples,
        features,
        generation,
        hooks,
        inputs,
        labels,
        llm,
        logits,
        mining,
        neuronpedia,
        pages,
        plots,
        residuals,
        saes,
        search,
        shield,
        steering,
    )
    from scope.attribution import Attribution, attribute
    from scope.autointerp import explain, score_explanations
    from scope.bundled import CacheError
    from scope.density import antipodal_pairs, set_densities
    from scope.features import FeatureActs, encode, feature_logits, top_features, trace
    from scope.gemma_scope import GemmaScopeId, gemma_scope_id
    from scope.generation import Completion, generate_tokens
    from scope.hooks import check_compatible
    from scope.inputs import to_tokens
    from scope.label_scores import score_labels
    from scope.labels import label_features
    from scope.lazy_layers import LazySAEs, load_saes
    from scope.llm import LLM, Endpoint, LocalLLM, as_llm
    from scope.mining import Mined, mine, top_examples
    from scope.models import list_models, load_model
    from scope.neuronpedia import NeuronpediaUnavailableError, neuronpedia_explanations
    from scope.pages import dashboard
    from scope.saes import load_sae
    from scope.search import search_features
    from scope.splicing import Splice, splice
    from scope.steering import (
        Ablate,
        Add,
        Clamp,
        Direction,
        Scale,
        diffmean,
        generate,
        generate_completions,
        steer,
        sweep,
    )
    from scope.steering.evaluation import compare_steering, evaluate_steering, recommend_strength
    from scope.subjects import ModelUnavailableError
