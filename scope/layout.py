"""Lay transformer-lens weights out in memory the way its kernels read them.

transformer-lens stores weights as ``[d_in, d_out]`` (and attention weights per
head) but calls ``F.linear(x, W.T.contiguous())`` or rearranges them before
every matmul. With the default layout, each of those makes a full copy of the
weight on every forward pass: for Gemma's 256k-token unembedding that is
hundreds of MB per generated token, the main reason transformer-lens generates
~8x slower than transformers on Gemma.

:func:`relayout_for_speed` keeps every parameter's shape and values and only
changes its strides, so that those transposes and rearranges become views and
``.contiguous()`` a no-op. The memory order then equals that of HF's
``nn.Linear`` weights, so results are bit-identical to the default layout.
"""

from __future__ import annotations

import torch

# How each parameter is read: the permutation whose result must be contiguous.
#   "T":   F.linear(x, W.T.contiguous())                       [d_in, d_out] -> read as [d_out, d_in]
#   "qkv": rearrange(W, "h d_model d_head -> (h d_head) d_model") in simple_attn_linear
#   "o":   rearrange(W_O, "h d_head d_model -> d_model (h d_head)").contiguous()
_READ_ORDER: dict[str, tuple[int, ...]] = {
    "T": (1, 0),
    "qkv": (0, 2, 1),
    "o": (2, 0, 1),
}

_PARAMETER_READS = {
    "W_U": "T",
    "W_gate": "T",
    "W_in": "T",
    "W_out": "T",
    "W_Q": "qkv",
    "W_K": "qkv",
    "W_V": "qkv",
    "_W_K": "qkv",
    "_W_V": "qkv",
    "W_O": "o",
}


def _relaid(tensor: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """Same shape and values, stored so that ``tensor.permute(order)`` is contiguous."""
    inverse = [order.index(i) for i in range(len(order))]
    return tensor.permute(order).contiguous().permute(inverse)


def _read_orders(model: torch.nn.Module):
    """(parameter, the permutation transformer-lens reads it through) for every weight it transposes."""
    for full_name, param in model.named_parameters():
        read = _PARAMETER_READS.get(full_name.rsplit(".", 1)[-1])
        if read is not None and param.dim() == len(_READ_ORDER[read]):
            yield param, _READ_ORDER[read]


def relayout_for_speed(model: torch.nn.Module) -> torch.nn.Module:
    """Re-lay the model's weights in place (see module docstring); returns the model."""
    with torch.no_grad():
        for param, order in _read_orders(model):
            param.data = _relaid(param.data, order)
    return model


def is_relaid(model: torch.nn.Module) -> bool:
    """True when every weight transformer-lens transposes is already laid out for it."""
    return all(param.data.permute(order).is_contiguous() for param, order in _read_orders(model))
