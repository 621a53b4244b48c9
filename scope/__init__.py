"""scope: an interpretability toolkit for the Gemma 2 family.

Hook Gemma 2 (and ShieldGemma, and the bundled offline Gemma 3 270M) through
transformer-lens, decode Gemma Scope SAE features, and steer generation.
"""

from scope import chat
from scope import shield
from scope.dashboard import dashboard
from scope.examples import mine, top_examples
from scope.features import FeatureActs, encode, feature_logits, features_table, top_features, trace
from scope.generation import generate, generate_tokens, tokenize_prompt
from scope.saes import check_compatible, gemma_scope_id, load_sae, load_saes
from scope.steering import Ablate, Add, Clamp, Scale, steer, sweep
from scope.subjects import ModelUnavailableError, list_models, load_model

__all__ = [
    "chat",
    "shield",
    "generate",
    "generate_tokens",
    "list_models",
    "load_model",
    "ModelUnavailableError",
    "tokenize_prompt",
    "load_sae",
    "load_saes",
    "gemma_scope_id",
    "check_compatible",
    "encode",
    "top_features",
    "feature_logits",
    "trace",
    "FeatureActs",
    "features_table",
    "top_examples",
    "mine",
    "dashboard",
    "Add",
    "Clamp",
    "Ablate",
    "Scale",
    "steer",
    "sweep",
]
__version__ = "0.1.0"
