"""Hook points: names and layers, running a model to a set of hooks, the one SAE splice, and
whether an SAE fits a model (from the configs' shapes, without a forward pass).

Everything in scope that reads or edits a model's activations goes through here:

- :func:`run_to_hooks` runs a forward pass only as far as the deepest hook asked for;
- :func:`sae_splice` is the one way an SAE edits a hook point, used by steering and
  attribution: ``h -> h + (c * mask) @ W_dec[features]``, where the coefficients ``c`` may
  depend on the clean feature activations ``SAE.encode(h)``. Because it adds a delta to ``h``
  instead of replacing ``h`` by the reconstruction, the SAE's error term is always kept;
- :func:`model_lock` is the per-model lock every scope entry point that runs a model holds.
  transformer-lens hooks are attached to the whole model, so two threads that run the same
  model at once would see each other's hooks: with the lock, they take turns.
"""

from __future__ import annotations

import difflib
import math
import re
import threading
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from scope.subjects import describe_model, subject_of

_BLOCK_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_RESIDUAL_WIDE = {
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_attn_out",
    "hook_mlp_out",
    "ln1.hook_normalized",
    "ln2.hook_normalized",
    "ln1_post.hook_normalized",
    "ln2_post.hook_normalized",
}
_MLP_WIDE = {"mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear"}
_HEADS_WIDE = {"attn.hook_z", "attn.hook_q", "attn.hook_rot_q"}
_KV_HEADS_WIDE = {"attn.hook_k", "attn.hook_v", "attn.hook_rot_k"}  # grouped-query attention: fewer heads
_SCALES = {"ln1.hook_scale", "ln2.hook_scale", "ln1_post.hook_scale", "ln2_post.hook_scale", "ln_final.hook_scale"}
# Hooks that run only when a model config flag is on (transformer-lens skips them otherwise).
_FLAGGED = {
    "attn.hook_result": "use_attn_result",
    "hook_attn_in": "use_attn_in",
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
    "hook_mlp_in": "use_hook_mlp_in",
}
_PER_HEAD_PAIR = {"attn.hook_attn_scores", "attn.hook_pattern"}  # [batch, head, query, key]

HookFn = Callable[[torch.Tensor, Any], torch.Tensor]


# ----------------------------------------------------------------------------- names and layers


def sae_hook(sae: Any) -> str:
    """The hook name an SAE reads (sae-lens 6 keeps it in ``cfg.metadata``)."""
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise ValueError(
            "This SAE records no hook name; load it with scope.load_sae(..., hook='blocks.L.hook_resid_post')."
        )
    return hook


def hook_layer(hook: str) -> int | None:
    """The block a hook belongs to (``blocks.6.hook_resid_post`` -> 6); -1 for the embedding
    hooks (before block 0); None for hooks after the last block (``ln_final``...)."""
    match = _BLOCK_HOOK_RE.match(hook)
    if match:
        return int(match[1])
    if hook in ("hook_embed", "hook_pos_embed"):
        return -1
    return None


def stop_layer(hooks: Sequence[str]) -> int | None:
    """The ``stop_at_layer`` that still runs every hook in ``hooks`` (None: run the whole model)."""
    layers = [hook_layer(hook) for hook in hooks]
    if not layers or any(layer is None for layer in layers):
        return None
    return max(layer for layer in layers if layer is not None) + 1


def activation_shape(model: Any, hook: str) -> tuple[int, ...] | None:
    """The shape of the activation at ``hook`` without batch and position, read from the
    model's config (no forward pass); None for a hook whose shape the config does not tell
    (attention scores and patterns), or that never runs on this model (a flagged hook whose
    config flag is off, e.g. ``attn.hook_result`` without ``cfg.use_attn_result``)."""
    cfg = model.cfg
    match = _BLOCK_HOOK_RE.match(hook)
    site = match[2] if match else hook
    if site in _FLAGGED and not getattr(cfg, _FLAGGED[site], False):
        return None
    if site in _RESIDUAL_WIDE or site in ("mlp.hook_in", "hook_mlp_in", "unembed.hook_in"):
        return (cfg.d_model,)
    if hook in ("hook_embed", "hook_pos_embed", "ln_final.hook_normalized"):
        return (cfg.d_model,)
    if site in _MLP_WIDE and cfg.d_mlp:
        return (cfg.d_mlp,)
    if site in _HEADS_WIDE:
        return (cfg.n_heads, cfg.d_head)
    if site in _KV_HEADS_WIDE:
        return (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads, cfg.d_head)
    if site in ("attn.hook_result", "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input"):
        return (cfg.n_heads, cfg.d_model)
    if site in _SCALES:
        return (1,)
    return None


# ----------------------------------------------------------------------------- checks


def check_hook_exists(model: Any, hook: str) -> None:
    """ValueError naming the hook and examples of valid ones when ``model`` has no such hook."""
    if hook in model.hook_dict or hook in getattr(model, "acts_to_saes", {}):
        return
    close = difflib.get_close_matches(hook, list(model.hook_dict), n=3)
    last = model.cfg.n_layers - 1
    raise ValueError(
        f"{describe_model(model)} has no hook {hook!r}"
        + (f"; closest: {', '.join(close)}" if close else "")
        + f". Blocks are 0..{last}, e.g. blocks.{last}.hook_resid_post, "
        f"blocks.{last}.hook_mlp_out, blocks.{last}.attn.hook_z."
    )


def check_hook_runs(model: Any, hook: str) -> None:
    """ValueError for a hook transformer-lens skips on this model (``attn.hook_result`` runs only
    with ``cfg.use_attn_result``...): reading or steering it would silently see nothing."""
    match = _BLOCK_HOOK_RE.match(hook)
    flag = _FLAGGED.get(match[2] if match else hook)
    if flag is not None and not getattr(model.cfg, flag, False):
        raise ValueError(
            f"{hook} never runs on {describe_model(model)}: transformer-lens computes it only with "
            f"cfg.{flag} on (model.set_{flag}(True)). Turn it on, or read another hook."
        )


def check_hook_free(model: Any, hook: str) -> None:
    """ValueError when an SAE is attached at ``hook`` (``model.add_sae``): the model's own
    activation there is then not observable, and scope would splice a second SAE on top."""
    if hook in getattr(model, "acts_to_saes", {}):
        raise ValueError(
            f"An SAE is attached at {hook} (model.add_sae); scope reads and edits hook points "
            "itself. Call model.reset_saes() first."
        )


def check_width(model: Any, sae: Any, shape: tuple[int, ...]) -> None:
    """ValueError unless an activation of ``shape`` (no batch/position dims) fits ``sae``'s d_in."""
    hook = sae_hook(sae)
    width = math.prod(shape) if sae.cfg.reshape_activations == "hook_z" else shape[-1]
    if width != sae.cfg.d_in:
        raise ValueError(
            f"SAE d_in is {sae.cfg.d_in} but {describe_model(model)} has width {width} at {hook} "
            f"(activation shape {list(shape)}): this SAE was made for another model or hook."
        )


def check_compatible(model: Any, sae: Any) -> None:
    """Raise ValueError unless ``sae`` can read ``model``: its hook exists there, its d_in equals
    the activation width at that hook, and it sits on the model's device type. Attaches nothing
    and runs nothing: the width comes from the model's config (for the few hooks whose width the
    config does not tell, the first forward pass that reads the hook checks it).

    An SAE for another model usually fails here (Gemma 2 2B's d_model is 2304, 9B's 3584),
    rather than deep inside a matmul or, worse, silently on a same-width model's wrong layer.
    """
    hook = sae_hook(sae)
    check_hook_exists(model, hook)
    check_hook_runs(model, hook)
    shape = activation_shape(model, hook)
    if shape is not None:
        check_width(model, sae, shape)
    if torch.device(sae.device).type != torch.device(model.cfg.device).type:
        raise ValueError(
            f"SAE is on {sae.device} but the model is on {model.cfg.device}; "
            f"load it with device={str(model.cfg.device)!r} or call sae.to(...)."
        )
    warn_if_made_for_another_model(model, sae)


class OtherModelWarning(UserWarning):
    """An SAE used with another model than the one its config names (shapes fit, meaning may not)."""


def warn_if_made_for_another_model(model: Any, sae: Any) -> None:
    """Warn when ``sae.cfg.metadata.model_name`` names a model whose SAEs the subject does not
    take (Gemma Scope's base-model SAEs fit the -it model and ShieldGemma: no warning there)."""
    recorded = getattr(sae.cfg.metadata, "model_name", None)
    spec = subject_of(model)
    if not recorded or spec is None:
        return
    fitting = {_bare(name) for name in (spec.name, *spec.sae_models)}
    if _bare(recorded) not in fitting:
        warnings.warn(
            f"The SAE at {sae_hook(sae)} was made for {recorded!r}, but it is used with {spec.name!r} "
            f"(whose SAEs are made for {', '.join(spec.sae_models) or spec.name}): its shapes fit, "
            "its features may mean nothing here.",
            OtherModelWarning,
            stacklevel=3,
        )


def _bare(name: str) -> str:
    return name.lower().removeprefix("google/")


def check_steerable(model: Any, sae: Any) -> None:
    """ValueError unless steering ``sae``'s hook edits what :func:`scope.generate` and
    ``shield.score`` compute (call after :func:`check_compatible`). Refused, with the reason:

    - hooks after the last block (``ln_final.*``, ``unembed.*``): generation and scoring compute
      the logits from the last block's residual (:mod:`scope.logits`), one vector per row, so
      a per-token edit there would be skipped;
    - attention scores and patterns (``[batch, head, query, key]``, not one activation per token);
    - per-head hooks (``attn.hook_z``, ``hook_q``...) read by an SAE that does not cover every
      head (``d_in`` must be heads x d_head): its edit would not fit the activation.
    """
    hook = sae_hook(sae)
    match = _BLOCK_HOOK_RE.match(hook)
    site = match[2] if match else hook
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    if hook_layer(hook) is None:
        raise ValueError(
            f"Cannot steer at {hook}: it runs after the last block, and scope.generate and shield.score "
            f"compute the logits from the last block's residual stream without it. Steer {last} instead."
        )
    if site in _PER_HEAD_PAIR:
        raise ValueError(
            f"Cannot steer at {hook}: it holds attention [batch, head, query, key], not one activation "
            "per token. Steer a per-token hook such as blocks.L.attn.hook_z or blocks.L.hook_attn_out."
        )
    shape = activation_shape(model, hook)
    if shape is None:
        raise ValueError(f"Cannot steer at {hook}: scope does not know the activation shape there. Steer e.g. {last}.")
    if len(shape) > 1 and sae.cfg.d_in != math.prod(shape):
        raise ValueError(
            f"Cannot steer at {hook} with this SAE: the hook holds {list(shape)} per token, and a steering "
            f"edit must cover all of it (d_in = {math.prod(shape)}, reshape_activations='hook_z'), "
            f"but the SAE has d_in {sae.cfg.d_in}."
        )


# ----------------------------------------------------------------------------- the model lock

_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The re-entrant lock that serialises scope's use of ``model`` across threads.

    Held by every scope entry point that runs the model (generate, encode, trace, mine, score,
    attribute...) and for the whole of a ``scope.steer`` block, so a steered call in one thread
    never leaks into another thread's call. Re-entrant: a ``steer`` block may call ``generate``.
    A forward pass started outside scope (``model(tokens)`` in another thread) is not covered.
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


# ----------------------------------------------------------------------------- running


def run_to_hooks(
    model: Any, tokens: torch.Tensor, hooks: Sequence[str], *, attention_mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The model's activations at ``hooks`` for ``tokens`` [batch, pos], from one forward pass
    that stops after the last block any hook needs."""
    for hook in hooks:
        check_hook_exists(model, hook)
        check_hook_runs(model, hook)
        check_hook_free(model, hook)
    captured: dict[str, torch.Tensor] = {}

    def capture(act: torch.Tensor, hook: Any) -> None:
        captured[hook.name] = act

    device = model.cfg.device
    mask = attention_mask.to(device) if attention_mask is not None else None
    with model_lock(model), torch.no_grad():
        model.run_with_hooks(
            tokens.to(device),
            stop_at_layer=stop_layer(hooks),
            attention_mask=mask,
            fwd_hooks=[(hook, capture) for hook in hooks],
        )
    return captured


def sae_splice(
    sae: Any,
    features: torch.Tensor | None,
    coefficients: Callable[[torch.Tensor | None], torch.Tensor],
    *,
    needs_acts: bool,
    mask: Callable[[torch.Tensor], torch.Tensor | None] = lambda act: None,
) -> HookFn:
    """A hook that edits the activation ``h`` at the SAE's hook point along decoder directions:

    ``h -> h + (c * m) @ W_dec[features]`` with ``c = coefficients(a)`` ``[batch, pos, n]``,
    ``a = SAE.encode(h)[..., features]`` (computed only when ``needs_acts``; None otherwise),
    ``m = mask(h)`` ``[batch, pos]`` (None: every position). ``features`` None means all.

    Clamping feature f to v is ``c = v - a``: the reconstruction with f set to v plus the SAE's
    error term, exactly. The SAE encodes in its own dtype (keep it float32 under a bf16 model:
    a JumpReLU threshold of 1.1 is 1.1016 in bf16); the delta returns in the activation's dtype.
    ``coefficients`` runs outside ``no_grad``, so it can hand gradients to its caller.
    """
    delta = feature_delta(sae, features, coefficients, needs_acts=needs_acts, mask=mask)

    def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
        change = delta(act)
        if change is None:
            return act
        return act + change.reshape(act.shape).to(act.dtype)  # hook_z SAEs: d_in = heads x d_head

    return hook


def feature_delta(
    sae: Any,
    features: torch.Tensor | None,
    coefficients: Callable[[torch.Tensor | None], torch.Tensor],
    *,
    needs_acts: bool,
    mask: Callable[[torch.Tensor], torch.Tensor | None] = lambda act: None,
) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """What :func:`sae_splice` adds, as a function of the activation the SAE reads: ``(c * m) @
    W_dec[features]`` ``[batch, pos, d_out]`` in the SAE's dtype (None when the mask is empty).
    A transcoder reads one hook and writes another: its delta goes to its output hook."""
    W_dec = sae.W_dec.detach()
    index = features.to(W_dec.device) if features is not None else None
    directions = W_dec[index] if index is not None else W_dec  # [n, d_out]

    def delta(act: torch.Tensor) -> torch.Tensor | None:
        m = mask(act)
        if m is not None and not m.any():
            return None
        acts = None
        if needs_acts:
            with torch.no_grad():
                acts = sae.encode(act.detach().to(W_dec.dtype))  # [batch, pos, d_sae]
                acts = acts[..., index.to(acts.device)] if index is not None else acts
        c = coefficients(acts).to(directions.device, W_dec.dtype)  # [batch, pos, n], or [n] for all positions
        c = c.expand(*act.shape[:2], -1) if c.dim() == 1 else c
        if m is not None:
            c = c * m[..., None].to(c.device, c.dtype)
        return c @ directions

    return delta
