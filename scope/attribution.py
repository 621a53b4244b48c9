"""Attribution patching through an SAE: which features, at which positions, drive a metric.

The metric is any scalar function of the residual stream after the last block (a logit
difference, a log-probability, ShieldGemma's ``logit Yes - logit No``). The algorithm:

1. Check the SAE against the model (hook, width, device; no SAE attached there) and the text
   against the context, before anything runs.
2. Forward pass with one :func:`scope.hooks.sae_splice` at the SAE's hook whose coefficients are
   ``a' - a``, where ``a' = a`` is a leaf tensor: the forward pass is exactly unchanged
   (``h + 0``), and autograd gives ``dm/da`` for every feature at every position. A leaf placed
   on ``h`` itself just before gives ``dm/dh``.
3. One backward pass. The attribution of feature ``f`` at position ``p`` is
   ``a[p, f] * dm/da[p, f]``: the first-order estimate of how much the metric drops when that
   activation is zero-ablated (positive: the feature raises the metric). The SAE error term's
   share is ``dm/dh . (h - SAE(h))`` and the decoder bias's ``dm/dh . b_dec``, so that, per
   position, features + error + bias = ``dm/dh . h`` for a linear decoder.
4. Rank features by |attribution| (summed over positions, or per position) among those that
   fire, and return an :class:`Attribution`.

It is *exact* as a derivative: ``sum_p a[p, f] dm/da[p, f]`` equals ``d/ds m`` when feature
``f`` is scaled by ``s`` at ``s = 1`` (``scope.Scale(f, s)``). It is *not* the effect of an
ablation: the rest of the network is non-linear (compare with ``scope.steer(..., scope.Ablate(f))``).
One forward and one backward pass cover every feature at every position, where ablating each
feature would cost a forward pass per feature. BOS positions are left out (Gemma Scope never
trained on BOS) and are not edited. Hooks already on the model (a ``steer`` block) apply.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from scope import _checks
from scope.features import with_urls
from scope.hooks import check_compatible, check_hook_free, model_lock, sae_hook, sae_splice
from scope.inputs import str_tokens, to_tokens
from scope.splicing import is_transcoder

BY = ("feature", "position")
Metric = Callable[[torch.Tensor], torch.Tensor]  # residual after the last block [1, pos, d_model] -> scalar


@dataclass
class Attribution:
    """The result of :func:`attribute`.

    ``table``: rank, feature, attribution, direction, position, token, activation (for
    ``by="feature"``: the position where the feature contributes most, its activation there, and
    ``positions``, how many positions it fires at); ``url`` when the SAE has a Neuronpedia id.
    """

    table: pd.DataFrame
    metric: float  # the clean metric
    error: float  # the SAE error term's share, sum_p dm/dh . error
    bias: float  # b_dec's share
    features_total: float  # every feature's attribution summed (not only the top k)
    hook: str
    by: str
    metric_name: str = "metric"

    def __getattr__(self, name: str) -> Any:
        # Until 0.1 attribute() returned the table itself: forward DataFrame use, for one release.
        if name.startswith("_") or name in ("table",):
            raise AttributeError(name)
        warnings.warn(
            "Using an Attribution as a DataFrame is deprecated; use its .table.", DeprecationWarning, stacklevel=2
        )
        return getattr(self.table, name)

    def __getitem__(self, key: Any) -> Any:
        warnings.warn(
            "Using an Attribution as a DataFrame is deprecated; use its .table.", DeprecationWarning, stacklevel=2
        )
        return self.table[key]

    def __len__(self) -> int:
        return len(self.table)


@dataclass
class _Pass:
    """What one gradient pass through the SAE yields, per non-BOS position ``p`` and feature ``f``."""

    tokens: list[str]
    positions: torch.Tensor  # [n] indices of the positions attributed (BOS left out)
    acts: torch.Tensor  # [n, d_sae] feature activations
    attribution: torch.Tensor  # [n, d_sae] act * dm/d act
    error: float
    bias: float
    metric: float


def attribute(
    model: Any,
    sae: Any,
    text: str,
    metric: Metric,
    *,
    k: int = 10,
    by: str = "feature",
    metric_name: str = "metric",
    labels: tuple[str, str] = ("raises", "lowers"),
) -> Attribution:
    """The SAE features that most raise or lower ``metric`` on ``text`` (see the module docstring).

    Args:
        metric: a function of the residual stream after the last block ``[1, pos, d_model]`` to a
            scalar tensor, e.g. ``lambda r: scope.logits.final_logits(model, r[0, -1], [a, b]) @ [1, -1]``.
        k: how many features (or feature-position pairs) to return, by largest |attribution|;
            only features that fire are listed, so fewer rows can come back.
        by: ``"feature"`` (summed over positions) or ``"position"``.
        labels: the ``direction`` column's words for positive and negative attributions.
    """
    k = _checks.positive_int(k, "k")
    by = _checks.choice(by, BY, "by")
    if is_transcoder(sae):  # its features write another hook than they read: not this method's splice
        raise ValueError(
            f"attribute() takes an SAE; this is a transcoder ({sae_hook(sae)} -> {sae.cfg.metadata.hook_name_out}). "
            "Attribute transcoder features with scope.splice (gradients through the transcoder)."
        )
    check_compatible(model, sae)
    check_hook_free(model, sae_hook(sae))
    tokens = to_tokens(model, _checks.text(text))
    result = _gradient_pass(model, sae, tokens, metric)
    rows = _feature_rows(result, k) if by == "feature" else _position_rows(result, k)
    types = {"rank": int, "feature": int, "attribution": float, "position": int, "token": str, "activation": float} | (
        {"positions": int} if by == "feature" else {}
    )
    table = pd.DataFrame(rows, columns=list(types)).astype(types)  # typed even when nothing fires
    table.insert(3, "direction", np.where(table["attribution"] >= 0, labels[0], labels[1]))
    return Attribution(
        table=with_urls(table, sae),
        metric=result.metric,
        error=result.error,
        bias=result.bias,
        features_total=float(result.attribution.sum()),
        hook=sae_hook(sae),
        by=by,
        metric_name=metric_name,
    )


def _gradient_pass(model: Any, sae: Any, tokens: torch.Tensor, metric: Metric) -> _Pass:
    hook = sae_hook(sae)
    leaves: dict[str, torch.Tensor] = {}

    def leaf_h(act: torch.Tensor, hook: Any) -> torch.Tensor:
        leaves["h"] = act.detach().requires_grad_(True)
        return leaves["h"]

    def zero_with_gradient(acts: torch.Tensor | None) -> torch.Tensor:
        assert acts is not None
        leaves["acts"] = acts.detach().clone().requires_grad_(True)
        return leaves["acts"] - acts  # zero, with d/d acts the identity

    splice = sae_splice(sae, None, zero_with_gradient, needs_acts=True)
    with model_lock(model), torch.enable_grad(), model.hooks(fwd_hooks=[(hook, leaf_h), (hook, splice)]):
        residual = model(tokens.to(model.cfg.device), stop_at_layer=model.cfg.n_layers)
        if "acts" not in leaves:
            raise ValueError(
                f"The SAE's hook {hook} is not inside the model's blocks; attribution needs "
                "an SAE on a block hook (e.g. blocks.L.hook_resid_post)."
            )
        value = _scalar_metric(metric(residual))
        grad_acts, grad_h = torch.autograd.grad(value, [leaves["acts"], leaves["h"]])
    keep = (tokens[0] != model.tokenizer.bos_token_id).nonzero().flatten().to(grad_acts.device)
    dtype = torch.promote_types(grad_acts.dtype, torch.float32)  # bf16 models: sum in fp32
    acts = leaves["acts"].detach()[0, keep].to(dtype)
    h = leaves["h"].detach()[0, keep]
    with torch.no_grad():
        x = h.to(sae.W_dec.dtype)
        error = (x - sae.decode(sae.encode(x)).reshape(x.shape)).flatten(1).to(dtype)
    grad_h = grad_h[0, keep].flatten(1).to(dtype)  # hook_z: heads x d_head, as the SAE reads it
    return _Pass(
        tokens=str_tokens(model, tokens[0]),
        positions=keep.cpu(),
        acts=acts.cpu(),
        attribution=(acts * grad_acts[0, keep].to(dtype)).cpu(),
        error=float((grad_h * error).sum()),
        bias=float((grad_h @ sae.b_dec.detach().to(dtype)).sum()),
        metric=float(value.detach()),
    )


def _scalar_metric(value: Any) -> torch.Tensor:
    """The metric's value if it is a one-element float tensor computed from the residual; else
    an error saying what a metric must return (autograd's own errors name neither)."""
    example = "e.g. lambda resid: final_logits(model, resid[0, -1], [yes])[0]"
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"metric must return a scalar tensor computed from the residual stream ({example}), "
            f"got {type(value).__name__} {value!r}."
        )
    if value.numel() != 1 or not value.is_floating_point():
        raise ValueError(
            f"metric must return a scalar float tensor ({example}), got a {value.dtype} tensor of shape "
            f"{list(value.shape)}: reduce it to one number (index one logit, .sum(), .mean())."
        )
    if not value.requires_grad:
        raise ValueError(
            "metric's value does not depend on the residual stream it is given (no gradient flows to it): "
            f"compute it from that argument ({example})."
        )
    return value.reshape(())


def _feature_rows(result: _Pass, k: int) -> list[tuple]:
    total = result.attribution.sum(0)  # [d_sae]
    fired = (result.acts > 0).sum(0)
    order = [f for f in total.abs().argsort(descending=True).tolist() if fired[f] > 0][:k]
    rows = []
    for rank, feature in enumerate(order, 1):
        best = int(result.attribution[:, feature].abs().argmax())
        position = int(result.positions[best])
        rows.append(
            (
                rank,
                feature,
                float(total[feature]),
                position,
                result.tokens[position],
                float(result.acts[best, feature]),
                int(fired[feature]),
            )
        )
    return rows


def _position_rows(result: _Pass, k: int) -> list[tuple]:
    flat = result.attribution.flatten()
    active = result.acts.flatten() > 0
    order = [i for i in flat.abs().argsort(descending=True).tolist() if active[i]][:k]
    d_sae = result.attribution.shape[1]
    rows = []
    for rank, index in enumerate(order, 1):
        row, feature = divmod(index, d_sae)
        position = int(result.positions[row])
        rows.append(
            (rank, feature, float(flat[index]), position, result.tokens[position], float(result.acts[row, feature]))
        )
    return rows
