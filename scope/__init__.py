"""scope: an interpretability toolkit for the Gemma 2 family.

Hook Gemma 2 (and ShieldGemma, and the bundled offline Gemma 3 270M) through
transformer-lens, decode Gemma Scope SAE features, and steer generation.
"""

from scope import chat
from scope import shield
from scope.generation import generate, generate_tokens, tokenize_prompt
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
]
__version__ = "0.1.0"
