"""Where an SAE's or a transcoder's features act on a model: feature edits, and the transcoder splice.

An SAE reads and writes one hook point. A transcoder reads ``cfg.metadata.hook_name``
(``blocks.L.ln2.hook_normalized``, the MLP's input after its RMSNorm, see :mod:`scope.sae_formats`)
and writes ``cfg.metadata.hook_name_out`` (``blocks.L.hook_mlp_out``, the MLP's output). So:

- :func:`edit_hooks` is how steering edits features: for an SAE, the one
  :func:`scope.hooks.sae_splice` at its hook; for a transcoder, features are encoded from its
  input hook and the MLP output becomes ``mlp_out + decode(edited) - decode(original)``, which is
  ``mlp_out + (edited - original) @ W_dec`` (the bias and an affine transcoder's skip connection
  cancel): the transcoder's error term is kept, and with no edit the output is unchanged bit for bit.
- :func:`splice` replaces each MLP's output by its transcoder's reconstruction ``decode(encode(x))
  (+ x @ W_skip.T for skip-transcoders)``, with the error term (the output keeps its value, but
  gradients flow through the transcoder, the error being a constant: the replacement model of
  attribution graphs) or without it (the model runs on the transcoders alone). It records each
  layer's feature activations and error of the last pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from scope.hooks import (
    HookFn,
    activation_shape,
    check_compatible,
    check_hook_exists,
    check_hook_free,
    check_hook_runs,
    check_steerable,
    feature_delta,
    hook_layer,
    model_lock,
    sae_hook,
    sae_splice,
)
from scope.subjects import describe_model

TRANSCODER_EXAMPLE = "blocks.L.ln2.hook_normalized -> blocks.L.hook_mlp_out"


def is_transcoder(sae: Any) -> bool:
    """Whether ``sae`` writes another hook than it reads (sae-lens transcoders record ``hook_name_out``)."""
    out = getattr(getattr(sae, "cfg", None), "metadata", None)
    return bool(getattr(out, "hook_name_out", None))


def output_hook(sae: Any) -> str:
    """The hook an SAE's or transcoder's features write to."""
    return str(sae.cfg.metadata.hook_name_out) if is_transcoder(sae) else sae_hook(sae)


def describe_site(sae: Any) -> str:
    """``"the SAE at H"`` or ``"the transcoder H_in -> H_out"``, for messages and pages."""
    if is_transcoder(sae):
        return f"the transcoder {sae_hook(sae)} -> {output_hook(sae)}"
    return f"the SAE at {sae_hook(sae)}"


def check_transcoder(model: Any, transcoder: Any) -> None:
    """ValueError unless ``transcoder`` reads and writes ``model`` as a transcoder should: its input
    fits (as :func:`scope.hooks.check_compatible` checks an SAE), its output hook exists with width
    ``d_out`` and belongs to the same block, after the input."""
    check_compatible(model, transcoder)
    hook_in, hook_out = sae_hook(transcoder), output_hook(transcoder)
    check_hook_exists(model, hook_out)
    check_hook_runs(model, hook_out)
    shape = activation_shape(model, hook_out)
    d_out = int(getattr(transcoder.cfg, "d_out", transcoder.W_dec.shape[-1]))
    if shape is not None and shape[-1] != d_out:
        raise ValueError(
            f"The transcoder writes {d_out} dimensions to {hook_out}, but {describe_model(model)} has width "
            f"{shape[-1]} there: it was made for another model."
        )
    if hook_layer(hook_in) != hook_layer(hook_out) or hook_out.split(".")[-1] != "hook_mlp_out":
        raise ValueError(
            f"A transcoder here reads and writes one block's MLP ({TRANSCODER_EXAMPLE}); this one reads "
            f"{hook_in} and writes {hook_out}."
        )


def check_fits(model: Any, sae: Any) -> None:
    """:func:`check_transcoder` for a transcoder, :func:`scope.hooks.check_compatible` otherwise."""
    if is_transcoder(sae):
        check_transcoder(model, sae)
    else:
        check_compatible(model, sae)


def check_editable(model: Any, sae: Any) -> None:
    """Everything steering needs of an SAE or transcoder before a hook is attached: it fits the
    model, its hook can be steered, and no sae-lens SAE is attached at the hooks it reads or writes."""
    check_fits(model, sae)
    check_steerable(model, sae)
    for hook in dict.fromkeys([sae_hook(sae), output_hook(sae)]):
        check_hook_free(model, hook)


def edit_hooks(
    sae: Any,
    features: torch.Tensor | None,
    coefficients: Callable[[torch.Tensor | None], torch.Tensor],
    *,
    needs_acts: bool,
    mask: Callable[[torch.Tensor], torch.Tensor | None] = lambda act: None,
) -> list[tuple[str, HookFn]]:
    """The ``(hook, function)`` pairs that add ``(c * m) @ W_dec[features]`` where the features write
    (arguments as :func:`scope.hooks.sae_splice`). The last pair is the one that writes."""
    if not is_transcoder(sae):
        return [(sae_hook(sae), sae_splice(sae, features, coefficients, needs_acts=needs_acts, mask=mask))]
    delta = feature_delta(sae, features, coefficients, needs_acts=needs_acts, mask=mask)
    hook_in = sae_hook(sae)
    pending: list[torch.Tensor | None] = []  # the delta of this pass's input, until its output runs

    def read(act: torch.Tensor, hook: Any) -> torch.Tensor:
        pending[:] = [delta(act)]
        return act

    def write(act: torch.Tensor, hook: Any) -> torch.Tensor:
        change = _take(pending, hook_in, hook.name)
        return act if change is None else act + change.reshape(act.shape).to(act.dtype)

    return [(hook_in, read), (output_hook(sae), write)]


def _take(pending: list[Any], hook_in: str, hook_out: str) -> Any:
    if not pending:
        raise RuntimeError(
            f"{hook_out} ran without {hook_in} before it in the same pass: the transcoder's input was not seen "
            "(a pass that feeds the MLP output directly cannot be steered by a transcoder)."
        )
    return pending.pop()


# ----------------------------------------------------------------------------- the splice


@dataclass
class Splice:
    """A :func:`splice` in place: the transcoders by layer, whether the error term is kept, and,
    for the last forward pass, each layer's feature activations ``acts[layer]`` ``[batch, pos, d_sae]``
    (in the autograd graph when gradients are on) and error ``errors[layer]`` (MLP output minus
    reconstruction, ``[batch, pos, d_model]``, detached)."""

    transcoders: dict[int, Any]
    error: bool
    acts: dict[int, torch.Tensor] = field(default_factory=dict)
    errors: dict[int, torch.Tensor] = field(default_factory=dict)


def as_layers(transcoders: Any) -> dict[int, Any]:
    """``{layer: transcoder}`` from one transcoder, a list of them or a ``{layer: transcoder}`` mapping
    (:func:`scope.load_transcoders` gives one), each checked to be a transcoder on its key's layer."""
    if isinstance(transcoders, Mapping):
        items = [(key, transcoders[key]) for key in transcoders]
    else:
        items = [(None, t) for t in ([transcoders] if hasattr(transcoders, "cfg") else list(transcoders))]
    layers: dict[int, Any] = {}
    for key, transcoder in items:
        if not is_transcoder(transcoder):
            what = f"an SAE at {sae_hook(transcoder)}" if hasattr(transcoder, "cfg") else repr(transcoder)
            raise ValueError(
                f"splice takes transcoders (reading and writing one MLP, {TRANSCODER_EXAMPLE}), got {what}: "
                "load them with scope.load_transcoders; an SAE's features are steered with scope.steer."
            )
        layer = hook_layer(sae_hook(transcoder))
        if key is not None and key != layer:
            raise ValueError(f"The transcoder under key {key} reads {sae_hook(transcoder)}: key it by layer {layer}.")
        if layer is None or layer in layers:
            raise ValueError(f"Two transcoders for layer {layer}: a splice holds one per layer.")
        layers[layer] = transcoder
    if not layers:
        raise ValueError("splice needs at least one transcoder.")
    return layers


@contextlib.contextmanager
def splice(model: Any, transcoders: Any, *, error: bool = True) -> Iterator[Splice]:
    """Replace MLP outputs by transcoder reconstructions inside a ``with`` block.

    Args:
        model: a loaded subject.
        transcoders: one transcoder, a list, or ``{layer: transcoder}`` (e.g. :func:`scope.load_transcoders`).
        error: True keeps the error term: outputs keep their values exactly, gradients flow through
            the transcoders (the error is a constant). False drops it: the MLPs are replaced by the
            transcoders (what their reconstruction loss measures).

    Every position is spliced, BOS too. Steer transcoder features *inside* the block: a steering
    edit made before the splice runs (an outer ``steer`` block) is overwritten when ``error=False``.
    Everything is checked before a hook is attached; the hooks are removed on exit, on error too.
    """
    if not isinstance(error, bool):
        raise TypeError(f"error must be True (keep the error term) or False (drop it), got {error!r}.")
    layers = as_layers(transcoders)
    for transcoder in layers.values():
        check_editable(model, transcoder)
    record = Splice(transcoders=layers, error=error)
    fwd_hooks = [pair for layer, t in layers.items() for pair in _splice_hooks(layer, t, record)]
    with model_lock(model), model.hooks(fwd_hooks=fwd_hooks):
        yield record


def _splice_hooks(layer: int, transcoder: Any, record: Splice) -> list[tuple[str, HookFn]]:
    pending: list[torch.Tensor] = []
    hook_in = sae_hook(transcoder)
    weight = transcoder.W_dec

    def read(act: torch.Tensor, hook: Any) -> torch.Tensor:
        x = act.to(weight.dtype)
        acts = transcoder.encode(x)
        record.acts[layer] = acts
        pending[:] = [reconstruct(transcoder, x, acts)]
        return act

    def write(act: torch.Tensor, hook: Any) -> torch.Tensor:
        recon = _take(pending, hook_in, hook.name)
        record.errors[layer] = (act.detach().to(recon.dtype) - recon.detach()).to(act.dtype)
        if not record.error:
            return recon.to(act.dtype)
        if not recon.requires_grad:
            return act
        return act.detach() + (recon - recon.detach()).to(act.dtype)  # the value of act, the gradient of recon

    return [(hook_in, read), (output_hook(transcoder), write)]


def reconstruct(transcoder: Any, x: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """The transcoder's output for input ``x`` and its feature activations: ``decode(acts)``, plus
    ``x @ W_skip.T`` for a skip-transcoder (sae-lens adds the skip in ``forward``, not ``decode``)."""
    out = transcoder.decode(acts)
    skip = getattr(transcoder, "W_skip", None)
    return out + x @ skip.T if skip is not None else out
