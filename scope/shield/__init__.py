"""ShieldGemma as a subject: policies, prompts, fast batched P(Yes), moderation metrics, and the
SAE features behind a verdict.

ShieldGemma is run in *scoring mode* (model card): one forward pass over a fixed prompt
pattern, then ``P(Yes) = softmax(logits[-1, [Yes, No]])[0]``.

- :mod:`~scope.shield.policies`: :data:`POLICIES`, the four trained harm types in both
  wordings, plus the release note's example principles (user-defined, not trained);
- :mod:`~scope.shield.prompts`: :func:`build_prompt`, the model card's pattern (prompt-only
  when ``response is None``, prompt-response otherwise);
- :mod:`~scope.shield.scoring`: :func:`score`, batched, left padded, shared preamble;
- :mod:`~scope.shield.metrics`: :func:`evaluate`, optimal F1 and AU-PRC;
- :mod:`~scope.shield.attribution`: :func:`attribute`, attribution patching against the verdict.

The scores mean something only on ShieldGemma (``scope.load_model("shieldgemma-2b")``). On any
other subject, such as the bundled Gemma 3 270M used offline in tests and notebooks, the same
computation runs, but the number is a *stand-in*.
"""

from scope.shield import policies as _policies
from scope.shield.attribution import attribute, p_yes
from scope.shield.metrics import evaluate
from scope.shield.policies import (
    POLICIES,
    PROMPT_ONLY_LEAD,
    PROMPT_RESPONSE_LEAD,
    TRAINED_HARM_TYPES,
    Policies,
    Policy,
    PolicySpec,
    resolve_policies,
    resolve_policy,
)
from scope.shield.prompts import build_prompt, build_prompts
from scope.shield.scoring import answer_token_id, score, score_tokens, yes_no_ids, yes_no_logits

__all__ = [
    "POLICIES",
    "PROMPT_ONLY_LEAD",
    "PROMPT_RESPONSE_LEAD",
    "TRAINED_HARM_TYPES",
    "Policies",
    "Policy",
    "PolicySpec",
    "answer_token_id",
    "attribute",
    "build_prompt",
    "build_prompts",
    "evaluate",
    "p_yes",
    "resolve_policies",
    "resolve_policy",
    "score",
    "score_tokens",
    "yes_no_ids",
    "yes_no_logits",
]


def __getattr__(name: str):
    if name == "POLICY_OBJECTS":  # 0.1's second registry: now the same dict
        return _policies.__getattr__(name)
    raise AttributeError(f"module 'scope.shield' has no attribute {name!r}")
