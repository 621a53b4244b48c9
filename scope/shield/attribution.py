"""The features behind a ShieldGemma verdict: attribution patching against ``logit Yes - logit No``."""

from __future__ import annotations

from typing import Any

from scope import attribution
from scope.attribution import Attribution
from scope.logits import final_logits
from scope.shield.policies import Policies
from scope.shield.prompts import build_prompt
from scope.shield.scoring import yes_no_ids

METRIC_NAME = "logit Yes - logit No"


def attribute(
    model: Any,
    sae: Any,
    user_prompt: str,
    policies: Policies,
    response: str | None = None,
    *,
    k: int = 10,
    by: str = "feature",
) -> Attribution:
    """The SAE features that most raise or lower the verdict, as an :class:`~scope.Attribution`.

    The verdict is the logit difference ``d = logit_Yes - logit_No`` at the last position of the
    model card's prompt (``P(Yes) = sigmoid(d)``, :func:`p_yes`), attributed by
    :func:`scope.attribution.attribute` (attribution patching through the SAE, error term kept;
    its docstring says what it is exact about). ``direction`` reads "raises Yes" / "lowers Yes".

    Args:
        model: a loaded subject (ShieldGemma for real verdicts; other models are stand-ins).
        sae: an SAE that reads a hook of ``model`` (``scope.check_compatible``).
        user_prompt, policies, response: as in :func:`scope.shield.build_prompt` (one input).
        k, by: as in :func:`scope.attribution.attribute`.
    """
    yes, no = yes_no_ids(model)

    def verdict(residual):
        logits = final_logits(model, residual[0, -1], [yes, no])
        return logits[0] - logits[1]

    return attribution.attribute(
        model,
        sae,
        build_prompt(user_prompt, policies, response),
        verdict,
        k=k,
        by=by,
        metric_name=METRIC_NAME,
        labels=("raises Yes", "lowers Yes"),
    )


def p_yes(result: Attribution) -> float:
    """The clean P(Yes) of an attributed verdict: ``sigmoid(logit Yes - logit No)``."""
    import math

    return 1.0 / (1.0 + math.exp(-result.metric))
