"""The local replacement model: the model with every MLP replaced by its transcoder plus an error
term, attention patterns and normalisation scales frozen (Ameisen et al. 2025; circuit-tracer's
``ReplacementModel``).

Under those freezes the residual stream is a linear function of the token embeddings, the
transcoder feature activations and the errors, so the direct effect of one node on another is exact
and comes out of a backward pass. For Gemma 2 and 3 that means stop-gradients on every RMSNorm scale
(``ln1``, ``ln1_post``, ``ln2``, ``ln2_post``, ``ln_final``) and on the attention pattern; the
final soft-cap is left out (targets are pre-cap logits, as in circuit-tracer).

A transcoder reads ``blocks.L.ln2.hook_normalized`` and writes ``blocks.L.hook_mlp_out``; its error
node there is ``mlp_out - acts @ W_dec - skip(x)`` (``b_dec`` included: with it every node's
incoming edges sum to its input exactly). A layer without a transcoder has no feature nodes and an
error node carrying its whole MLP output. Everything runs inside ``model.hooks`` blocks: nothing
stays on the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from scope import _checks

FROZEN = ("hook_pattern", "hook_scale")  # the nonlinear parts the replacement model holds fixed


# ----------------------------------------------------------------------------- transcoder math


def check_transcoders(model: Any, transcoders: Mapping[int, Any]) -> dict[int, Any]:
    """``{layer: transcoder}`` after checking each one reads this model's MLP input and writes its
    MLP output (raises ValueError naming the first bad layer)."""
    if not isinstance(transcoders, Mapping) or not transcoders:
        raise TypeError(
            f"transcoders must be a non-empty mapping layer -> transcoder (scope.load_transcoders), "
            f"got {type(transcoders).__name__}."
        )
    n_layers = model.cfg.n_layers
    bad = [layer for layer in transcoders if not isinstance(layer, int) or not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"transcoder layer(s) {bad} are not layers of this model (0-{n_layers - 1}).")
    checked = {}
    for layer in sorted(transcoders):
        transcoder = transcoders[layer]
        meta = transcoder.cfg.metadata
        wanted = (f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out")
        found = (meta.hook_name, getattr(meta, "hook_name_out", None))
        if found != wanted:
            raise ValueError(
                f"The transcoder for layer {layer} reads {found[0]} and writes {found[1]}; "
                f"an attribution graph needs {wanted[0]} -> {wanted[1]} (scope.load_transcoders)."
            )
        if transcoder.W_enc.shape[0] != model.cfg.d_model or transcoder.W_dec.shape[1] != model.cfg.d_model:
            raise ValueError(
                f"The transcoder for layer {layer} has d_in x d_out {transcoder.W_enc.shape[0]} x "
                f"{transcoder.W_dec.shape[1]}; this model's d_model is {model.cfg.d_model}."
            )
        if getattr(transcoder.cfg, "normalize_activations", "none") != "none":
            raise ValueError(
                f"The transcoder for layer {layer} normalises its input "
                f"({transcoder.cfg.normalize_activations!r}); only 'none' is linear."
            )
        checked[layer] = transcoder
    return checked


def pre_activations(transcoder: Any, x: torch.Tensor) -> torch.Tensor:
    """``x @ W_enc + b_enc``, in the transcoder's dtype."""
    return x.to(transcoder.W_enc.dtype) @ transcoder.W_enc + transcoder.b_enc


def activate(transcoder: Any, pre: torch.Tensor) -> torch.Tensor:
    """JumpReLU (ReLU when the transcoder has no threshold)."""
    threshold = getattr(transcoder, "threshold", None)
    acts = pre.relu()
    return acts if threshold is None else acts * (pre > threshold)


def skip(transcoder: Any, x: torch.Tensor) -> torch.Tensor | None:
    """The skip-transcoder's affine path ``x @ W_skip.T``, or None."""
    W_skip = getattr(transcoder, "W_skip", None)
    return None if W_skip is None else (x.to(W_skip.dtype) @ W_skip.T).to(x.dtype)


def decode(transcoder: Any, acts: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``acts @ W_dec`` (no ``b_dec``: the error node carries it), in the model's dtype."""
    return (acts @ transcoder.W_dec).to(dtype)


# ----------------------------------------------------------------------------- the clean pass


@dataclass
class Snapshot:
    """What one clean forward pass of a prompt records (batch dimension dropped)."""

    tokens: torch.Tensor  # [pos]
    embed: torch.Tensor  # [pos, d_model] hook_embed
    mlp_in: dict[int, torch.Tensor]  # layer -> [pos, d_model] (ln2.hook_normalized)
    pre: dict[int, torch.Tensor]  # layer -> [pos, d_sae]
    acts: dict[int, torch.Tensor]  # layer -> [pos, d_sae]
    errors: torch.Tensor  # [layer, pos, d_model]
    logits: torch.Tensor  # [d_vocab] at the last position, after any soft-cap
    raw_logits: torch.Tensor  # [d_vocab] at the last position, before it
    frozen: dict[str, torch.Tensor] = field(default_factory=dict)  # patterns and scales, when kept


def record(model: Any, transcoders: Mapping[int, Any], tokens: torch.Tensor, *, keep_frozen: bool = False) -> Snapshot:
    """One forward pass over ``tokens`` [1, pos]: the transcoders' inputs, pre-activations,
    activations and errors, and the last position's logits."""
    seen: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        seen[hook.name] = act[0]

    names = ["hook_embed", "unembed.hook_out"]
    names += [
        f"blocks.{layer}.{site}"
        for layer in range(model.cfg.n_layers)
        for site in ("ln2.hook_normalized", "hook_mlp_out")
    ]
    hooks: list[tuple[Any, Callable]] = [(name, keep) for name in names]
    if keep_frozen:
        hooks.append((lambda name: name.endswith(FROZEN), keep))
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)[0, -1]
    n_layers, dtype = model.cfg.n_layers, model.cfg.dtype
    mlp_in = {layer: seen[f"blocks.{layer}.ln2.hook_normalized"] for layer in range(n_layers)}
    pre, acts, errors = {}, {}, []
    for layer in range(n_layers):
        error = seen[f"blocks.{layer}.hook_mlp_out"].clone()
        transcoder = transcoders.get(layer)
        if transcoder is not None:
            with torch.no_grad():
                pre[layer] = pre_activations(transcoder, mlp_in[layer])
                acts[layer] = activate(transcoder, pre[layer])
                error -= decode(transcoder, acts[layer], dtype)
                skipped = skip(transcoder, mlp_in[layer])
                if skipped is not None:
                    error -= skipped
        errors.append(error)
    frozen = {name: value for name, value in seen.items() if name.endswith(FROZEN)}
    return Snapshot(
        tokens[0],
        seen["hook_embed"],
        mlp_in,
        pre,
        acts,
        torch.stack(errors),
        logits,
        seen["unembed.hook_out"][-1],
        frozen,
    )


def without_bos(
    snapshot: Snapshot, transcoders: Mapping[int, Any], dtype: torch.dtype
) -> tuple[Snapshot, torch.Tensor]:
    """circuit-tracer's BOS handling: the snapshot with the BOS position's feature activations and
    error vectors zeroed (no BOS feature nodes; BOS error nodes carry nothing), and what that takes
    out, the BOS MLP outputs less any skip path ``[n_layers, d_model]`` (the skip path stays live)."""
    acts = {layer: values.clone() for layer, values in snapshot.acts.items()}
    errors = snapshot.errors.clone()
    taken = errors[:, 0].clone()
    with torch.no_grad():
        for layer, values in acts.items():
            taken[layer] += decode(transcoders[layer], values[0], dtype)
            values[0] = 0
    errors[:, 0] = 0
    return replace(snapshot, acts=acts, errors=errors), taken


# ----------------------------------------------------------------------------- the linear pass


@dataclass
class LinearPass:
    """The tensors of one batched forward pass of the replacement model, still holding its autograd
    graph: sources are read at ``embed`` and ``mlp_out``, targets injected at ``mlp_in`` (features)
    and ``final`` (logits, the ``ln_final`` output)."""

    embed: torch.Tensor
    mlp_in: dict[int, torch.Tensor]
    mlp_out: dict[int, torch.Tensor]
    final: torch.Tensor


def linear_pass(model: Any, transcoders: Mapping[int, Any], tokens: torch.Tensor, batch: int) -> LinearPass:
    """Run ``tokens`` [1, pos] ``batch`` times through the replacement model with gradients on."""
    found: dict[str, Any] = {"mlp_in": {}, "mlp_out": {}}

    def freeze(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return act.detach()

    def embed(act: torch.Tensor, hook: Any) -> torch.Tensor:
        found["embed"] = act.detach().requires_grad_(True)
        return found["embed"]

    def mlp_in(act: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        found["mlp_in"][layer] = act
        return act

    def mlp_out(act: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        # features and error are constants here; only the skip path (linear) carries gradients
        transcoder = transcoders.get(layer)
        skipped = None if transcoder is None else skip(transcoder, found["mlp_in"][layer])
        out = act.detach().requires_grad_(True) if skipped is None else skipped + (act - skipped).detach()
        found["mlp_out"][layer] = out
        return out

    hooks: list[tuple[Any, Callable]] = [(lambda name: name.endswith(FROZEN), freeze), ("hook_embed", embed)]
    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.ln2.hook_normalized", _bound(mlp_in, layer)))
        hooks.append((f"blocks.{layer}.hook_mlp_out", _bound(mlp_out, layer)))
    with torch.inference_mode(False), torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        resid = model(tokens.expand(batch, -1), stop_at_layer=model.cfg.n_layers)
        final = model.ln_final(resid)
    return LinearPass(found["embed"], found["mlp_in"], found["mlp_out"], final)


def _bound(fn: Callable, layer: int) -> Callable:
    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return fn(act, hook, layer)

    return hook


def gradients(
    run: LinearPass, layers: torch.Tensor, positions: torch.Tensor, vectors: torch.Tensor, n_layers: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """d(target_b)/d(embed) and d(target_b)/d(mlp_out[l]) for every layer, one target per batch row b:
    target b is ``<x[b, positions[b]], vectors[b]>`` with x the point of ``layers[b]``
    (``n_layers`` = the final residual, the logits' point)."""
    total = vectors.new_zeros(())
    for layer in layers.unique().tolist():
        rows = (layers == layer).nonzero().squeeze(1)
        point = run.final if layer == n_layers else run.mlp_in[layer]
        total = total + (point[rows, positions[rows]] * vectors[rows].to(point.dtype)).sum()
    last = int(layers.max())
    inputs = [run.embed] + [run.mlp_out[layer] for layer in range(min(last, n_layers))]
    found = torch.autograd.grad(total, inputs, retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g.detach() for g, x in zip(found, inputs)]
    grads += [torch.zeros_like(run.embed)] * (n_layers - len(grads) + 1)  # layers past every target
    return grads[0], grads[1:]


# ----------------------------------------------------------------------------- interventions


def steered_run(
    model: Any,
    transcoders: Mapping[int, Any],
    snapshot: Snapshot,
    changes: dict[int, list[tuple[int, int, float]]],
    *,
    direct: bool,
    frozen: bool,
) -> torch.Tensor:
    """Pre-cap logits at the last position with feature activations set: ``changes`` is layer ->
    [(position, feature, value)]. ``frozen``: attention patterns and norm scales as in the clean
    pass (the replacement model), else live (the model itself, its MLPs live downstream).
    ``direct`` (frozen only): every other feature activation held at its clean value too, so only
    the linear paths carry the change, as the graph's edges do."""
    dtype = model.cfg.dtype
    live_in: dict[int, torch.Tensor] = {}

    def restore(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return snapshot.frozen[hook.name].unsqueeze(0).to(act.dtype)

    def mlp_in(act: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        live_in[layer] = act[0]
        return act

    def mlp_out(act: torch.Tensor, hook: Any, layer: int) -> torch.Tensor:
        transcoder = transcoders.get(layer)
        if transcoder is None:  # no transcoder: the MLP output is all error, frozen in the replacement
            return snapshot.errors[layer].unsqueeze(0).to(act.dtype) if frozen else act
        if not frozen:  # the model's own MLP output, plus the decoder delta of the changed features
            clean = snapshot.acts[layer]
            new = _set(clean, changes.get(layer, []))
            return act + decode(transcoder, new - clean, dtype)
        x = live_in[layer]
        acts = snapshot.acts[layer] if direct else activate(transcoder, pre_activations(transcoder, x))
        out = decode(transcoder, _set(acts, changes.get(layer, [])), dtype) + snapshot.errors[layer]
        skipped = skip(transcoder, x)
        return (out if skipped is None else out + skipped).unsqueeze(0)

    hooks: list[tuple[Any, Callable]] = [(lambda name: name.endswith(FROZEN), restore)] if frozen else []
    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.ln2.hook_normalized", _bound(mlp_in, layer)))
        hooks.append((f"blocks.{layer}.hook_mlp_out", _bound(mlp_out, layer)))
    raw: dict[str, torch.Tensor] = {}

    def keep(act: torch.Tensor, hook: Any) -> None:
        raw["logits"] = act[0, -1]

    with torch.no_grad():
        model.run_with_hooks(snapshot.tokens.unsqueeze(0), fwd_hooks=[*hooks, ("unembed.hook_out", keep)])
    return raw["logits"]


def _set(acts: torch.Tensor, changes: list[tuple[int, int, float]]) -> torch.Tensor:
    acts = acts.clone()
    for position, feature, value in changes:
        acts[position, feature] = _checks.finite(value, "value")
    return acts
