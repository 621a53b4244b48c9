"""An SAE's features on a batch as mining reads them: a dense ``score`` and a per-feature
``threshold``, the activation being ``score`` where it is above the threshold and 0 elsewhere.

Mining needs the activations only where they fire (histograms, maxima, peaks) and on the few
tokens around a top example's peak. For a JumpReLU SAE (Gemma Scope's and Gemma Scope 2's
architecture) the score is the pre-activation itself, so the dense activations are never written:
sae-lens' ``encode`` spends three more passes over the batch's largest tensor on them (ReLU, the
threshold mask as floats, their product), more than the matrix product takes. Any other SAE's
score is its ``encode`` output with threshold 0, and both give exactly ``encode``'s values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from sae_lens import JumpReLUSAE
from torch import nn


@dataclass
class Scores:
    """``score`` [..., features]; the activation is ``score`` where ``score > threshold`` and 0
    elsewhere. ``threshold`` [features] is never negative, so a zeroed score never fires."""

    score: torch.Tensor
    threshold: torch.Tensor | None  # None: 0 for every feature (``score`` is the activation)

    def fires(self) -> torch.Tensor:
        """Where a feature fires: a boolean, or for threshold 0 the scores themselves (whose
        ``nonzero`` lists the same entries once values <= 0 are dropped, with no boolean copy)."""
        return self.score if self.threshold is None else self.score > self.threshold

    def activation(self, value: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """The activations of scores ``value`` read for features ``feature`` (same shape)."""
        if self.threshold is None:
            return value.float().clamp_min(0)
        return torch.where(value > self.threshold[feature], value, 0).float()

    def rows(self, start: int, stop: int) -> Scores:
        return Scores(self.score[start:stop], self.threshold)

    def select(self, features: torch.Tensor) -> Scores:
        """Only the columns of ``features``."""
        threshold = None if self.threshold is None else self.threshold[features]
        return Scores(self.score[..., features], threshold)


def scores_of(sae: Any, x: torch.Tensor) -> Scores:
    """``sae``'s scores of ``x`` [tokens, d_in]: the pre-activation for an sae-lens JumpReLU SAE
    used as shipped (its own ``encode``, ReLU, no hooks on its activations), else ``encode``."""
    with torch.no_grad():
        if not _plain_jumprelu(sae):
            return Scores(sae.encode(x), None)
        score = sae.process_sae_in(x) @ sae.W_enc
        score += sae.b_enc  # in place, the same sum as encode's ``@ W_enc + b_enc``
        # ReLU(s) * (s > t) is s where s > max(t, 0) and 0 elsewhere.
        return Scores(score, sae.threshold.detach().clamp_min(0).to(score.dtype))


def _plain_jumprelu(sae: Any) -> bool:
    if not isinstance(sae, JumpReLUSAE) or type(sae).encode is not JumpReLUSAE.encode:
        return False
    if not isinstance(sae.activation_fn, nn.ReLU):
        return False
    return not any(_hooked(h) for h in (sae.hook_sae_acts_pre, sae.hook_sae_acts_post))


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)
