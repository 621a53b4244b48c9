"""One forward pass of a transformer-lens Gemma 2 / Gemma 3 over new tokens, against a preallocated
KV cache, without transformer-lens' per-module framework overhead.

transformer-lens' forward costs ~50 small operations and ~25 module calls per layer per token
(masks rebuilt from scratch, keys re-rotated, grouped keys repeated, hook points called whether
hooked or not). On a GPU, or on any model narrow enough that the matrices are cheap, that
overhead *is* the generation time. :class:`FastForward` runs the same math directly from the
model's own parameters (no copy of any weight) in fewer operations:

- embedding through ``model.embed`` (the module, so hooks on it fire; Gemma's sqrt(d_model) scale is
  already in ``W_E``), RMSNorms with transformer-lens' eps and ``1 + w`` weights as one fused
  ``rms_norm`` (computed in float32 as transformer-lens does), grouped-query attention against the
  cache without repeating keys, rotary with the layer's own tables (Gemma 3's local/global bases),
  each layer's sliding window as ``cfg.attn_types`` says, attention and final softcaps, Gemma 3's
  q/k norms, the gated MLP;
- every HookPoint is called only when it has hooks, with the activation transformer-lens would
  give it (same shape, same values to float rounding). A hooked point switches that piece of
  the layer to transformer-lens' own formulation (``hook_rot_k`` sees all keys, re-rotated, as
  in transformer-lens: its edit lasts one pass, like there);
- the model's forward pre-hooks are called with the arguments of the transformer-lens call this
  pass replaces, ``(tokens, past_kv_cache=cache, attention_mask=new_mask, stop_at_layer=n)``;
  :class:`StaticKVCache` exposes ``previous_attention_mask`` and ``entries[i].past_keys`` the way
  transformer-lens' cache does, which is all :mod:`scope.steering` reads there.

:func:`unsupported` names anything this pass does not reproduce (another architecture, a flag it
does not know, a hook on a module other than a HookPoint, backward or global hooks, an SAE
attached with ``add_sae``); generation then runs transformer-lens' own forward instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional
from transformer_lens.components import GroupedQueryAttention, RMSNorm
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.hook_points import HookPoint

ARCHITECTURES = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")

# Config values the pass assumes (anything else changes the math).
_REQUIRED = {
    "normalization_type": "RMS",
    "use_normalization_before_and_after": True,
    "positional_embedding_type": "rotary",
    "gated_mlp": True,
    "final_rms": True,
    "rotary_adjacent_pairs": False,
    "attention_dir": "causal",
    "ungroup_grouped_query_attention": False,
    "use_attn_result": False,
    "use_split_qkv_input": False,
    "use_attn_in": False,
    "use_hook_mlp_in": False,
    "use_hook_tokens": False,
    "attn_only": False,
    "parallel_attn_mlp": False,
    "load_in_4bit": False,
    "post_embedding_ln": False,
    "clip_qkv": None,
    "use_logn_attn": False,
    "use_dynamic_ntk_rope": False,
    "use_attention_sinks": False,
    "scale_attn_by_inverse_layer_idx": False,
    "n_devices": 1,
}

# Modules this pass calls as modules (their hooks fire as usual); hooks anywhere else but on
# HookPoints mean transformer-lens' forward must run instead.
_CALLED_AS_MODULES = ("embed", "ln_final", "unembed")


# ----------------------------------------------------------------------------- the cache


class _CacheEntry:
    """One layer's keys as transformer-lens' cache entry shows them: ``past_keys`` ``[batch, pos, n_kv, d_head]``."""

    def __init__(self, cache: StaticKVCache, layer: int):
        self._cache, self._layer = cache, layer

    @property
    def past_keys(self) -> torch.Tensor:
        return self._cache.keys[self._layer][:, :, : self._cache.length].transpose(1, 2)

    @property
    def past_values(self) -> torch.Tensor:
        return self._cache.values[self._layer][:, :, : self._cache.length].transpose(1, 2)


class StaticKVCache:
    """Keys (rotated) and values of every layer in buffers allocated once, ``[batch, n_kv, capacity,
    d_head]``, and the mask of real tokens ``[batch, capacity]``; ``length`` columns are filled.

    Rows are left-padded as in transformer-lens' cache (the same columns for every row); a row's
    token positions count its real tokens only.
    """

    def __init__(self, model: Any, batch: int, capacity: int):
        cfg = model.cfg
        shape = (batch, cfg.n_key_value_heads, capacity, cfg.d_head)
        self.keys = [torch.zeros(shape, dtype=cfg.dtype, device=cfg.device) for _ in range(cfg.n_layers)]
        self.values = [torch.zeros(shape, dtype=cfg.dtype, device=cfg.device) for _ in range(cfg.n_layers)]
        self.mask = torch.zeros(batch, capacity, dtype=torch.long, device=cfg.device)
        self.real = torch.zeros(batch, dtype=torch.long, device=cfg.device)  # real tokens per row so far
        self.length = 0
        self.capacity = capacity

    # transformer-lens' cache interface, as read by forward pre-hooks (scope.steering)
    @property
    def previous_attention_mask(self) -> torch.Tensor:
        return self.mask[:, : self.length]

    @property
    def entries(self) -> list[_CacheEntry]:
        return [_CacheEntry(self, layer) for layer in range(len(self.keys))]

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only rows ``index`` (finished rows leave the batch)."""
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]
        self.mask, self.real = self.mask[index], self.real[index]

    def truncate(self, length: int) -> None:
        """Forget every column from ``length`` on (rejected draft tokens)."""
        if length < self.length:
            self.real -= self.mask[:, length : self.length].sum(dim=1)
            self.mask[:, length : self.length] = 0
            self.length = length


# ----------------------------------------------------------------------------- what the pass needs


def _has_hooks(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def unsupported(model: Any) -> str | None:
    """Why :class:`FastForward` cannot reproduce ``model``'s forward right now; None when it can."""
    from transformer_lens import HookedTransformer

    if not isinstance(model, HookedTransformer):
        return f"{type(model).__name__} is not a transformer-lens HookedTransformer"
    cfg = model.cfg
    if cfg.original_architecture not in ARCHITECTURES:
        return f"architecture {cfg.original_architecture!r} (the fast step knows {', '.join(ARCHITECTURES)})"
    for name, value in _REQUIRED.items():
        if getattr(cfg, name, value) != value:
            return f"cfg.{name} = {getattr(cfg, name)!r} (the fast step assumes {value!r})"
    if cfg.rotary_dim != cfg.d_head or cfg.n_key_value_heads is None:
        return "partial rotary or no grouped-query attention"
    if model.training:
        return "the model is in training mode"
    if getattr(model, "acts_to_saes", None):
        return "an SAE is attached with add_sae (its hook point is replaced by the SAE module)"
    g = torch.nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks:
        return "global module hooks are registered"
    if model._forward_hooks:
        return "a forward hook on the model itself (it would see transformer-lens' output)"
    return _unsupported_modules(model)


def _unsupported_modules(model: Any) -> str | None:
    called = {id(getattr(model, name)) for name in _CALLED_AS_MODULES}
    for name, module in model.named_modules():
        if isinstance(module, HookPoint):
            if module.bwd_hooks or module._backward_hooks:
                return f"a backward hook at {name}"
        elif module is not model and id(module) not in called and _has_hooks(module):
            return f"a hook on the module {name} (not a HookPoint)"
        if "forward" in vars(module) and not _is_mlp_with_hook_in(module):
            return f"the module {name} has its own forward (patched on the instance)"
    for i, block in enumerate(model.blocks):
        kinds = (type(block.attn), type(block.mlp), type(block.ln1), type(block.ln2))
        if kinds != (GroupedQueryAttention, GatedMLP, RMSNorm, RMSNorm):
            return f"block {i} has modules {[k.__name__ for k in kinds]}"
        for site in _block_hook_names(model.cfg):
            if not isinstance(_lookup(block, site), HookPoint):
                return f"blocks.{i}.{site} is not a HookPoint (an SAE or another module replaced it)"
    if not isinstance(model.hook_embed, HookPoint):
        return "hook_embed is not a HookPoint"
    return None


def _is_mlp_with_hook_in(module: Any) -> bool:
    """sae-lens' HookedSAETransformer patches each MLP's forward to call a new ``mlp.hook_in`` first
    (transcoders read there); the fast step calls that hook point itself."""
    return isinstance(module, GatedMLP) and isinstance(getattr(module, "hook_in", None), HookPoint)


def _block_hook_names(cfg: Any) -> list[str]:
    names = [
        "hook_resid_pre",
        "hook_attn_out",
        "hook_resid_mid",
        "hook_mlp_out",
        "hook_resid_post",
        "attn.hook_q",
        "attn.hook_k",
        "attn.hook_v",
        "attn.hook_rot_q",
        "attn.hook_rot_k",
        "attn.hook_attn_scores",
        "attn.hook_pattern",
        "attn.hook_z",
        "mlp.hook_pre",
        "mlp.hook_pre_linear",
        "mlp.hook_post",
    ]
    norms = ["ln1", "ln1_post", "ln2", "ln2_post"] + (["attn.q_norm", "attn.k_norm"] if cfg.use_qk_norm else [])
    return names + [f"{n}.{h}" for n in norms for h in ("hook_scale", "hook_normalized")]


def _lookup(module: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


# ----------------------------------------------------------------------------- the pass


@dataclass
class _Layer:
    """One block's modules and weight views (no copies), read once per generation."""

    block: Any
    w_q: torch.Tensor  # [n_heads * d_head, d_model] views in functional.linear's layout
    w_k: torch.Tensor
    w_v: torch.Tensor
    b_q: torch.Tensor
    b_k: torch.Tensor
    b_v: torch.Tensor
    w_o: torch.Tensor  # [d_model, n_heads * d_head]
    w_gate: torch.Tensor  # [d_mlp, d_model]
    w_in: torch.Tensor
    w_out: torch.Tensor  # [d_model, d_mlp]
    local: bool
    cos: torch.Tensor  # the layer's rotary tables [n_ctx, d_head]
    sin_signed: torch.Tensor  # sin with the first half negated: rotate_half(x) * sin == roll(x) * this
    b_in_zero: bool
    mlp_hook_in: HookPoint | None  # sae-lens' mlp.hook_in, where the MLP's forward calls it


def _layer(block: Any) -> _Layer:
    attn, mlp = block.attn, block.mlp
    d_model = attn.W_Q.shape[1]
    half = attn.rotary_sin.shape[-1] // 2
    sin = attn.rotary_sin
    return _Layer(
        block=block,
        w_q=attn.W_Q.permute(0, 2, 1).reshape(-1, d_model),
        w_k=attn._W_K.permute(0, 2, 1).reshape(-1, d_model),
        w_v=attn._W_V.permute(0, 2, 1).reshape(-1, d_model),
        b_q=attn.b_Q.reshape(-1),
        b_k=attn._b_K.reshape(-1),
        b_v=attn._b_V.reshape(-1),
        w_o=attn.W_O.permute(2, 0, 1).reshape(d_model, -1),
        w_gate=mlp.W_gate.T,
        w_in=mlp.W_in.T,
        w_out=mlp.W_out.T,
        local=attn.attn_type == "local",
        cos=attn.rotary_cos,
        sin_signed=torch.cat([-sin[:, :half], sin[:, half:]], dim=-1),
        b_in_zero=not bool(mlp.b_in.any()),
        mlp_hook_in=mlp.hook_in if _is_mlp_with_hook_in(mlp) and "forward" in vars(mlp) else None,
    )


def _rms(x: torch.Tensor, norm: Any) -> torch.Tensor:
    """transformer-lens' RMSNorm (x / sqrt(mean(x^2) + eps), in float32, then * w) as one fused op."""
    if x.dtype in (torch.float32, torch.float64):
        return functional.rms_norm(x, (x.shape[-1],), norm.w, norm.eps)
    return functional.rms_norm(x.float(), (x.shape[-1],), None, norm.eps).to(x.dtype) * norm.w


def _norm(x: torch.Tensor, norm: Any) -> torch.Tensor:
    """A block's RMSNorm: transformer-lens' own module when one of its hook points is hooked."""
    if _has_hooks(norm.hook_scale) or _has_hooks(norm.hook_normalized):
        return norm(x)
    return _rms(x, norm)


def _attention_inputs(resid: torch.Tensor, ln1: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Query, key and value inputs: transformer-lens normalises the residual once for each (its
    hooks fire three times per pass), one fused norm serves all three when nothing is hooked."""
    if _has_hooks(ln1.hook_scale) or _has_hooks(ln1.hook_normalized):
        return ln1(resid), ln1(resid), ln1(resid)
    x = _rms(resid, ln1)
    return x, x, x


def _head_norm(x: torch.Tensor, norm: Any) -> torch.Tensor:
    """Gemma 3's q/k norm over d_head; hooked, through the module on ``[-1, d_head]`` as transformer-lens does."""
    if _has_hooks(norm.hook_scale) or _has_hooks(norm.hook_normalized):
        return norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)
    return _rms(x, norm)


def _hook(point: HookPoint, x: torch.Tensor) -> torch.Tensor:
    return point(x) if (point._forward_hooks or point._forward_pre_hooks) else x


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary: ``x * cos + rotate_half(x) * sin`` (transformer-lens' GPT-NeoX halves); ``cos``/``sin``
    broadcast ``[batch, pos, 1, d_head]``."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


class FastForward:
    """Passes of one model against one :class:`StaticKVCache` (one generation chunk).

    Build it after checking :func:`unsupported`; ``__call__`` runs a pass over ``tokens``
    ``[batch, pos]`` and returns the residual stream after the last block ``[batch, pos, d_model]``,
    as ``model(tokens, past_kv_cache=..., attention_mask=..., stop_at_layer=n_layers)`` would.
    """

    def __init__(self, model: Any, cache: StaticKVCache):
        self.model, self.cache, self.cfg = model, cache, model.cfg
        self.layers = [_layer(block) for block in model.blocks]
        self.groups = self.cfg.n_heads // self.cfg.n_key_value_heads
        self.softcap = self.cfg.attn_scores_soft_cap if (self.cfg.attn_scores_soft_cap or 0) > 0 else None
        self._extend_rotary(cache.capacity)

    def _extend_rotary(self, length: int) -> None:
        """transformer-lens grows its rotary tables lazily (to n_ctx); grow them to what this cache holds."""
        if length <= self.layers[0].cos.shape[0]:
            return
        for block in self.model.blocks:
            block.attn._extend_rotary_embeddings(min(self.cfg.n_ctx, max(length, 2 * block.attn.rotary_cos.shape[0])))
        self.layers = [_layer(block) for block in self.model.blocks]

    def __call__(self, tokens: torch.Tensor, new_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One pass over ``tokens`` ``[batch, pos]``; ``new_mask`` ``[batch, pos]`` marks real tokens
        (None: all real). Extends the cache by ``pos`` columns."""
        cache, batch, n_new = self.cache, tokens.shape[0], tokens.shape[1]
        if cache.length + n_new > cache.capacity:
            raise ValueError(
                f"the KV cache holds {cache.capacity} tokens; this pass would need {cache.length + n_new}."
            )
        padded = new_mask is not None and not bool(new_mask.all())
        if new_mask is None:
            new_mask = torch.ones(batch, n_new, dtype=torch.long, device=tokens.device)
        self._pre_hooks(tokens, new_mask)
        start, end = cache.length, cache.length + n_new
        cache.mask[:, start:end] = new_mask
        positions = (cache.real[:, None] + new_mask.long().cumsum(dim=1) - 1).clamp(min=0)  # [batch, pos]
        hidden = self._hidden(start, end)
        rotary: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer in self.layers:  # one gather per distinct table (Gemma 3: local and global), not per layer
            if id(layer.cos) not in rotary:
                rotary[id(layer.cos)] = (layer.cos[positions][:, :, None], layer.sin_signed[positions][:, :, None])
        residual = _hook(self.model.hook_embed, self.model.embed(tokens))
        for index, layer in enumerate(self.layers):
            span = (start, end, padded)
            residual = self._block(index, layer, residual, rotary[id(layer.cos)], hidden[layer.local], span)
        cache.length = end
        cache.real += new_mask.long().sum(dim=1)
        return residual

    def _pre_hooks(self, tokens: torch.Tensor, new_mask: torch.Tensor) -> None:
        """The model's forward pre-hooks, called as transformer-lens' ``model(...)`` call would call them."""
        model = self.model
        args = (tokens,)
        kwargs = {"past_kv_cache": self.cache, "attention_mask": new_mask, "stop_at_layer": self.cfg.n_layers}
        for hook_id, hook in list(model._forward_pre_hooks.items()):
            if hook_id in model._forward_pre_hooks_with_kwargs:
                result = hook(model, args, kwargs)
            else:
                result = hook(model, args)
            if result is not None:
                raise RuntimeError(
                    f"A forward pre-hook on the model ({hook!r}) returned new inputs, which the fast decode "
                    "step cannot honour: generate with decode='plain'."
                )

    def _hidden(self, start: int, end: int) -> dict[bool, torch.Tensor]:
        """Which keys each new query does not see ``[batch, 1, groups * pos, end]`` (rows in the
        grouped order the attention uses), for global (False) and local (True) layers."""
        device = self.cache.mask.device
        query = torch.arange(start, end, device=device)[:, None]
        key = torch.arange(end, device=device)[None, :]
        causal = key <= query
        real = self.cache.mask[:, None, None, :end].bool()
        masks = {False: causal[None, None] & real}
        if any(layer.local for layer in self.layers):
            masks[True] = (causal & (key > query - self.cfg.window_size))[None, None] & real
        return {local: ~(m.repeat(1, 1, self.groups, 1) if self.groups > 1 else m) for local, m in masks.items()}

    def _block(
        self,
        index: int,
        layer: _Layer,
        resid_pre: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        hidden: torch.Tensor,
        span: tuple[int, int, bool],
    ) -> torch.Tensor:
        """One block; ``rotary``: (cos, signed sin) at the new tokens' positions; ``span``: the
        cache columns the new tokens fill and whether any of them is padding."""
        block = layer.block
        resid_pre = _hook(block.hook_resid_pre, resid_pre)
        attn_in = _attention_inputs(resid_pre, block.ln1)
        attn_out = self._attention(index, layer, attn_in, rotary, hidden, span)
        attn_out = _hook(block.hook_attn_out, _norm(attn_out, block.ln1_post))
        resid_mid = _hook(block.hook_resid_mid, resid_pre + attn_out)
        mlp_out = _hook(block.hook_mlp_out, _norm(self._mlp(layer, _norm(resid_mid, block.ln2)), block.ln2_post))
        return _hook(block.hook_resid_post, resid_mid + mlp_out)

    def _mlp(self, layer: _Layer, x: torch.Tensor) -> torch.Tensor:
        mlp = layer.block.mlp
        if layer.mlp_hook_in is not None:
            x = _hook(layer.mlp_hook_in, x)
        pre = _hook(mlp.hook_pre, functional.linear(x, layer.w_gate))
        pre_linear = _hook(mlp.hook_pre_linear, functional.linear(x, layer.w_in))
        post = mlp.act_fn(pre) * pre_linear
        if not layer.b_in_zero:
            post = post + mlp.b_in
        return functional.linear(_hook(mlp.hook_post, post), layer.w_out, mlp.b_out)

    def _attention(
        self,
        index: int,
        layer: _Layer,
        inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        rotary: tuple[torch.Tensor, torch.Tensor],
        hidden: torch.Tensor,
        span: tuple[int, int, bool],
    ) -> torch.Tensor:
        attn, cfg = layer.block.attn, self.cfg
        q_in, k_in, v_in = inputs
        batch, n_new = q_in.shape[0], q_in.shape[1]
        q = _hook(
            attn.hook_q, functional.linear(q_in, layer.w_q, layer.b_q).view(batch, n_new, cfg.n_heads, cfg.d_head)
        )
        k = _hook(attn.hook_k, functional.linear(k_in, layer.w_k, layer.b_k).view(batch, n_new, -1, cfg.d_head))
        v = _hook(attn.hook_v, functional.linear(v_in, layer.w_v, layer.b_v).view(batch, n_new, -1, cfg.d_head))
        if cfg.use_qk_norm:
            q, k = _head_norm(q, attn.q_norm), _head_norm(k, attn.k_norm)
        (cos, sin), (start, end, padded) = rotary, span
        q = _hook(attn.hook_rot_q, _rotate(q, cos, sin))
        keys, values = self.cache.keys[index], self.cache.values[index]
        keys[:, :, start:end] = _rotate(k, cos, sin).transpose(1, 2)
        values[:, :, start:end] = v.transpose(1, 2)
        k_all, v_all = keys[:, :, :end], values[:, :, :end]  # [batch, n_kv, end, d_head]
        if _has_hooks(attn.hook_rot_k):  # transformer-lens hands it every key, [batch, pos, n_kv, d_head]
            k_all = attn.hook_rot_k(k_all.transpose(1, 2).clone()).transpose(1, 2)
        n_kv, groups = k_all.shape[1], self.groups
        # Query rows grouped by the key head they read: [batch, n_kv, groups * n_new, d_head].
        q_grouped = (
            q.view(batch, n_new, n_kv, groups, cfg.d_head).permute(0, 2, 3, 1, 4).reshape(batch, n_kv, -1, cfg.d_head)
        )
        scores = q_grouped @ k_all.transpose(-1, -2)
        if self.softcap is not None:  # cap * tanh(s / scale / cap), the two divisions as one
            scores = self.softcap * torch.tanh(scores * (1.0 / (attn.attn_scale * self.softcap)))
        else:
            scores = scores / attn.attn_scale
        scores = scores.masked_fill(hidden, float("-inf"))
        scores = self._as_heads(attn.hook_attn_scores, scores, batch, n_new)
        pattern = scores.softmax(dim=-1)
        if padded:  # a padding query sees no key: transformer-lens turns its NaN pattern into zeros
            pattern = torch.nan_to_num(pattern, nan=0.0)
        pattern = self._as_heads(attn.hook_pattern, pattern, batch, n_new).to(v_all.dtype)
        z = (pattern @ v_all).view(batch, n_kv, groups, n_new, cfg.d_head).permute(0, 3, 1, 2, 4)
        z = _hook(attn.hook_z, z.reshape(batch, n_new, cfg.n_heads, cfg.d_head))
        return functional.linear(z.reshape(batch, n_new, -1), layer.w_o, attn.b_O)

    def _as_heads(self, point: HookPoint, grouped: torch.Tensor, batch: int, n_new: int) -> torch.Tensor:
        """Call ``point`` (if hooked) with the grouped scores/pattern as transformer-lens' ``[batch,
        head, query, key]``; back in the grouped layout."""
        if not (point._forward_hooks or point._forward_pre_hooks):
            return grouped
        keys = grouped.shape[-1]
        heads = grouped.reshape(batch, self.cfg.n_heads, n_new, keys)
        return point(heads).reshape(grouped.shape)
