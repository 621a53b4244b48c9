"""Steering along raw directions: ``Direction`` and DiffMean.

AxBench found that a plain difference-in-means direction steers better than SAE features, so
directions sit beside SAE features everywhere: ``scope.Add(direction, value)``,
``scope.Clamp(direction, value)``, ``scope.Ablate(direction)``, ``scope.Scale(direction, value)``
in ``steer``, ``generate`` and ``sweep``.

A :class:`Direction` ``u`` (unit norm) at a hook reads and writes like a one-feature linear SAE:
its "activation" is the projection ``a = h . u`` and its decoder row is ``u``. So every
intervention is the same exact edit as on an SAE feature, ``h <- h + c * u``:

- ``Add(u, v)``:   ``c = v``       (move along ``u``)
- ``Clamp(u, v)``: ``c = v - a``   (projection set to ``v``, orthogonal part kept)
- ``Ablate(u)``:   ``c = -a``      (directional ablation)
- ``Scale(u, v)``: ``c = (v - 1) a``

:func:`diffmean` computes the direction:

1. Tokenise the positive and the negative texts (one BOS each), in right-padded batches.
2. Read the residual at ``hook`` with one forward pass per batch that stops after ``hook``'s block.
3. Average over every real token of each set, BOS and padding excluded.
4. ``u = (mean_positive - mean_negative) / ||...||``.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch

from scope import _checks
from scope.hooks import activation_shape, check_hook_exists, run_to_hooks
from scope.inputs import pad, pad_id, to_tokens


class Direction:
    """A unit direction ``vector`` ``[d]`` in the activation space at ``hook``.

    It carries what scope's one SAE splice reads from an SAE (``W_dec`` ``[1, d]``, ``encode``,
    ``cfg.metadata.hook_name``, ``cfg.d_in``, ``cfg.d_sae = 1``, ``device``), so a direction is
    steered, checked against the model and re-read exactly like feature 0 of a linear SAE.
    """

    def __init__(self, vector: Any, hook: str, label: str = "direction"):
        if not isinstance(hook, str):
            raise TypeError(f"hook must be a hook name string such as 'blocks.6.hook_resid_post', got {hook!r}.")
        vector = torch.as_tensor(vector).detach().float().flatten()
        norm = vector.norm()
        if vector.numel() == 0 or not torch.isfinite(norm) or norm == 0:
            raise ValueError(f"A direction needs a finite, non-zero vector; got norm {float(norm)} at {hook}.")
        self.vector = vector / norm
        self.hook = hook
        self.label = str(label)
        self.cfg = SimpleNamespace(
            d_in=self.vector.numel(),
            d_sae=1,
            reshape_activations="none",
            metadata=SimpleNamespace(hook_name=hook),
        )

    @property
    def W_dec(self) -> torch.Tensor:  # noqa: N802 (the SAE attribute name)
        return self.vector[None, :]

    @property
    def device(self) -> torch.device:
        return self.vector.device

    def encode(self, act: torch.Tensor) -> torch.Tensor:
        """The projection ``[..., 1]`` of activations ``[..., d]`` onto the direction."""
        return act.to(self.vector.dtype) @ self.vector[:, None]

    def to(self, device: Any) -> Direction:
        """This direction on ``device``."""
        return Direction(self.vector.to(device), self.hook, self.label)

    def __repr__(self) -> str:
        return f"Direction({self.label!r}, hook={self.hook!r}, d={self.vector.numel()})"


def diffmean(
    model: Any,
    hook: str,
    positive: Sequence[Any],
    negative: Sequence[Any],
    *,
    batch_size: int = 8,
    label: str = "diffmean",
) -> Direction:
    """The unit difference-in-means direction at ``hook`` between two sets of texts.

    Args:
        model: a loaded subject.
        hook: a residual-width hook, e.g. ``"blocks.6.hook_resid_post"``.
        positive, negative: texts (or chats) with and without the concept.
        batch_size: texts per forward pass.
        label: a name for the direction (tables and figures show it).

    Every real token of each text counts once (BOS and padding excluded); see the module
    docstring for the steps. Returns a :class:`Direction` on the model's device.
    """
    if not isinstance(hook, str):
        raise TypeError(f"hook must be a hook name string such as 'blocks.6.hook_resid_post', got {hook!r}.")
    check_hook_exists(model, hook)
    if activation_shape(model, hook) != (model.cfg.d_model,):
        raise ValueError(f"diffmean needs a residual-width hook (d_model = {model.cfg.d_model}), got {hook!r}.")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    means = [
        _mean_activation(model, hook, texts, name, batch_size)
        for texts, name in ((positive, "positive"), (negative, "negative"))
    ]
    difference = means[0] - means[1]
    if not torch.isfinite(difference).all() or difference.norm() == 0:
        raise ValueError("The positive and negative texts have the same mean activation: there is no direction.")
    return Direction(difference.to(model.cfg.device), hook, label)


def _mean_activation(model: Any, hook: str, texts: Sequence[Any], name: str, batch_size: int) -> torch.Tensor:
    """Mean activation at ``hook`` over every real non-BOS token of ``texts`` (float64)."""
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
        raise ValueError(f"{name} must be a non-empty list of texts, got {texts!r}.")
    tokens = [to_tokens(model, text, name=f"{name} text")[0] for text in texts]  # every text checked first
    if all(len(t) < 2 for t in tokens):
        raise ValueError(f"The {name} texts are empty: they have no token besides BOS.")
    total = torch.zeros(model.cfg.d_model, dtype=torch.float64)
    count = 0
    for start in range(0, len(tokens), batch_size):
        batch, mask = pad(tokens[start : start + batch_size], pad_id(model), side="right")
        acts = run_to_hooks(model, batch, [hook], attention_mask=mask)[hook].to("cpu", torch.float64)
        real = mask.bool()
        real[:, 0] = False  # BOS (every row starts with it)
        total += acts[real].sum(0)
        count += int(real.sum())
    return total / count
