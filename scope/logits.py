"""From the residual stream after the last block to the model's logits.

``ln_final`` -> unembed -> the final-logit softcap (Gemma 2 caps logits at 30). Written once
here for generation, steering evaluation and ShieldGemma's Yes/No verdict. With ``columns``,
only those unembedding columns are computed: exactly those entries of the full logits, at a
fraction of the cost (the vocabulary is 256k).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformer_lens.utilities.activation_functions import apply_softcap


def final_logits(model: Any, residual: torch.Tensor, columns: Sequence[int] | None = None) -> torch.Tensor:
    """Logits ``[..., d_vocab]`` (or ``[..., len(columns)]``) for residual-stream vectors after
    the last block ``[..., d_model]``."""
    if model.cfg.normalization_type is not None:
        residual = model.ln_final(residual)
    if columns is None:
        logits = model.unembed(residual)
    else:
        index = list(columns)
        logits = residual @ model.unembed.W_U[:, index] + model.unembed.b_U[index]
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)
