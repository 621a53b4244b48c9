"""Decode text into SAE features: activations, top features per token, the decoder's logit
lens, and traces across layers.

The model runs only as far as the SAE's hook (``stop_at_layer``): an SAE at layer 6 of an
18-layer model never pays for layers 7-17, the final norm or the 262k-token unembedding.
Results are DataFrames with the column names of the public contract.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from scope.generation import tokenize_prompt
from scope.saes import check_compatible, check_hook_exists, check_width, hook_layer, sae_hook

NEURONPEDIA = "https://www.neuronpedia.org"


@dataclass
class FeatureActs:
    """Feature activations of one text: ``values[pos, feature]`` for the token ``tokens[pos]``."""

    tokens: list[str]
    values: torch.Tensor  # [pos, d_sae]

    def __len__(self) -> int:
        return len(self.tokens)


# ----------------------------------------------------------------------------- running the model


def stop_layer(hooks: Sequence[str]) -> int | None:
    """The ``stop_at_layer`` that still runs every hook in ``hooks`` (None: run the whole model)."""
    layers = [hook_layer(hook) for hook in hooks]
    if any(layer is None for layer in layers):
        return None
    return max(layers) + 1


def run_to_hooks(model, tokens: torch.Tensor, hooks: Sequence[str]) -> dict[str, torch.Tensor]:
    """The model's activations at ``hooks`` for ``tokens`` [batch, pos], from one forward pass
    that stops after the last block any hook needs."""
    for hook in hooks:
        check_hook_exists(model, hook)
        if hook in getattr(model, "acts_to_saes", {}):
            raise ValueError(f"An SAE is attached at {hook}, so the model's own activation there is not "
                             "observable; call model.reset_saes() first.")
    captured: dict[str, torch.Tensor] = {}

    def capture(act: torch.Tensor, hook) -> None:
        captured[hook.name] = act

    with torch.no_grad():
        model.run_with_hooks(tokens.to(model.cfg.device), stop_at_layer=stop_layer(hooks),
                             fwd_hooks=[(hook, capture) for hook in hooks])
    return captured


def str_tokens(model, tokens: torch.Tensor) -> list[str]:
    """Each token id of a 1-D tensor decoded on its own (``" the"``, not ``"▁the"``)."""
    return model.tokenizer.batch_decode([[token] for token in tokens.tolist()])  # one call, not one per token


# ----------------------------------------------------------------------------- encode


def encode(model, sae, text: str) -> FeatureActs:
    """Tokens of ``text`` (with one BOS) and their SAE feature activations ``[pos, d_sae]``.

    Runs the model only up to the SAE's hook. Raises ValueError when the hook does not exist in
    ``model`` or its width is not the SAE's d_in.
    """
    hook = sae_hook(sae)
    tokens = tokenize_prompt(model, text)
    act = run_to_hooks(model, tokens, [hook])[hook]
    check_width(model, sae, tuple(act.shape[2:]))
    with torch.no_grad():
        values = sae.encode(act)[0]
    return FeatureActs(tokens=str_tokens(model, tokens[0]), values=values)


def neuronpedia_url(sae, feature: int) -> str | None:
    """The feature's Neuronpedia page, when the SAE carries a Neuronpedia id (registry SAEs do)."""
    neuronpedia_id = sae.cfg.metadata.neuronpedia_id
    return f"{NEURONPEDIA}/{neuronpedia_id}/{int(feature)}" if neuronpedia_id else None


def top_features(model, sae, text: str, k: int = 5, include_bos: bool = False) -> pd.DataFrame:
    """The ``k`` strongest features at each token of ``text``.

    Columns: position, token, rank (1 = strongest), feature, activation; plus url when the SAE
    has a Neuronpedia id. Only active features are listed (fewer than k rows for a token where
    fewer fire). BOS is left out by default: Gemma Scope was not trained on it and its
    activations there are huge and meaningless.
    """
    _check_k(k)
    acts = encode(model, sae, text)
    skip = _bos_positions(model, acts.tokens) if not include_bos else set()
    rows = _top_rows(acts, k, skip)
    return _with_urls(pd.DataFrame(rows, columns=["position", "token", "rank", "feature", "activation"]), sae)


def _top_rows(acts: FeatureActs, k: int, skip: set[int]) -> list[tuple]:
    values, features = torch.topk(acts.values.float(), min(k, acts.values.shape[-1]), dim=-1)
    rows = []
    for position, token in enumerate(acts.tokens):
        if position in skip:
            continue
        for rank, (value, feature) in enumerate(zip(values[position].tolist(), features[position].tolist()), 1):
            if value > 0:
                rows.append((position, token, rank, feature, value))
    return rows


def _bos_positions(model, tokens: list[str]) -> set[int]:
    bos = model.tokenizer.bos_token
    return {i for i, token in enumerate(tokens) if token == bos}


def _with_urls(frame: pd.DataFrame, sae) -> pd.DataFrame:
    if sae.cfg.metadata.neuronpedia_id:
        frame["url"] = [neuronpedia_url(sae, f) for f in frame["feature"]]
    return frame


def _check_k(k: Any) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")


def _check_feature(sae, feature: Any) -> int:
    if isinstance(feature, torch.Tensor) and feature.numel() == 1 and not feature.is_floating_point():
        feature = feature.item()
    if isinstance(feature, bool) or not isinstance(feature, numbers.Integral):
        raise ValueError(f"feature must be an integer index, got {feature!r}.")
    feature = int(feature)
    if not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(f"Feature {feature} is out of range: this SAE has {sae.cfg.d_sae} features "
                         f"(valid indices 0..{sae.cfg.d_sae - 1}).")
    return feature


# ----------------------------------------------------------------------------- logit lens


def decoder_direction(model, sae, feature: int) -> torch.Tensor:
    """The residual-stream direction ``[d_model]`` that ``feature`` writes.

    Residual and MLP-output SAEs write ``W_dec[feature]`` directly; attention (hook_z) SAEs write
    per-head vectors that reach the residual stream through that layer's ``W_O``.
    """
    feature = _check_feature(sae, feature)
    direction = sae.W_dec[feature].detach()
    if direction.shape[-1] == model.cfg.d_model and sae.cfg.reshape_activations != "hook_z":
        return direction
    hook = sae_hook(sae)
    layer = hook_layer(hook)
    if hook.endswith("attn.hook_z") and layer is not None and layer >= 0:
        W_O = model.blocks[layer].attn.W_O  # [n_heads, d_head, d_model]
        return torch.einsum("hd,hdm->m", direction.reshape(W_O.shape[:2]).to(W_O), W_O)
    raise ValueError(f"Cannot read feature {feature} through the unembedding: the SAE at {hook} has d_in "
                     f"{sae.cfg.d_in}, not the residual width {model.cfg.d_model}.")


def feature_logits(model, sae, feature: int, k: int = 10) -> pd.DataFrame:
    """The tokens a feature's decoder direction promotes and suppresses: ``W_dec[feature] @ W_U``.

    This is the direct effect on the logits of adding the feature to the residual stream
    (Neuronpedia's "logit lens" column), ignoring the final norm and later layers. Columns:
    direction ("promoted" / "suppressed"), rank (1 = strongest), token, logit.
    """
    _check_k(k)
    direction = decoder_direction(model, sae, feature)
    with torch.no_grad():
        logits = direction.float() @ model.W_U.float()
    k = min(k, logits.shape[-1])
    rows = []
    for name, values in (("promoted", logits), ("suppressed", -logits)):
        top = torch.topk(values, k)
        for rank, token in enumerate(top.indices.tolist(), 1):
            rows.append((name, rank, model.tokenizer.decode([token]), float(logits[token])))
    return pd.DataFrame(rows, columns=["direction", "rank", "token", "logit"])


# ----------------------------------------------------------------------------- trace


def trace(model, saes: Mapping[int, Any] | Sequence[Any], text: str, k: int = 5,
          include_bos: bool = False) -> pd.DataFrame:
    """Top-``k`` features per token at every given layer, from ONE forward pass.

    All SAEs are attached with their error terms (``add_sae(sae, use_error_term=True)``), so
    every layer sees exactly the activations of the unmodified model, and the pass stops after
    the deepest SAE. They are always detached afterwards, also after an error; nothing is
    attached if any SAE does not fit the model.

    Args:
        saes: ``{layer: SAE}`` (e.g. from :func:`scope.load_saes`) or a list of SAEs (the layer
            is read from each hook name).
    Returns:
        DataFrame(layer, position, token, rank, feature, activation), plus url when an SAE has
        a Neuronpedia id. BOS is left out unless ``include_bos``.
    """
    _check_k(k)
    by_layer = _by_layer(saes)
    hooks = _check_trace_saes(model, by_layer)
    tokens = tokenize_prompt(model, text)
    acts = _run_with_saes(model, by_layer, hooks, tokens)
    token_strs = str_tokens(model, tokens[0])
    skip = _bos_positions(model, token_strs) if not include_bos else set()
    frames = []
    for layer, sae in by_layer.items():
        rows = _top_rows(FeatureActs(token_strs, acts[sae_hook(sae)]), k, skip)
        frame = pd.DataFrame(rows, columns=["position", "token", "rank", "feature", "activation"])
        frame.insert(0, "layer", layer)
        frames.append(_with_urls(frame, sae))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["layer", "position", "token", "rank", "feature", "activation"])


def _by_layer(saes: Mapping[int, Any] | Sequence[Any]) -> dict[int, Any]:
    if isinstance(saes, Mapping):
        by_layer = {int(layer): saes[layer] for layer in saes}
        for layer, sae in by_layer.items():
            if hook_layer(sae_hook(sae)) not in (layer, None):
                raise ValueError(f"The SAE under key {layer} reads {sae_hook(sae)!r}, another layer; "
                                 "key each SAE by the layer of its hook.")
        return by_layer
    by_layer: dict[int, Any] = {}
    for sae in saes:
        layer = hook_layer(sae_hook(sae))
        if layer is None:
            raise ValueError(f"Cannot tell the layer of an SAE at {sae_hook(sae)!r}; pass a {{layer: sae}} dict.")
        if layer in by_layer:
            raise ValueError(f"Two SAEs for layer {layer} ({sae_hook(by_layer[layer])!r} and {sae_hook(sae)!r}); "
                             "a trace holds one SAE per layer: trace the other site separately.")
        by_layer[layer] = sae
    return by_layer


def _check_trace_saes(model, by_layer: dict[int, Any]) -> list[str]:
    """Every check before anything is attached: hooks exist, are distinct and free, widths fit."""
    hooks = [sae_hook(sae) for sae in by_layer.values()]
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"Several SAEs read the same hook ({hooks}); one pass can hold one SAE per hook.")
    for hook in hooks:
        check_hook_exists(model, hook)
        if hook in getattr(model, "acts_to_saes", {}):
            raise ValueError(f"An SAE is already attached at {hook}; call model.reset_saes() first.")
    from scope.saes import activation_widths

    shapes = activation_widths(model, hooks)
    for sae in by_layer.values():
        check_compatible(model, sae, _shapes=shapes)
    return hooks


def _run_with_saes(model, by_layer: dict[int, Any], hooks: list[str], tokens: torch.Tensor):
    names = [f"{hook}.hook_sae_acts_post" for hook in hooks]
    attached: list[str] = []
    try:
        for sae in by_layer.values():
            model.add_sae(sae, use_error_term=True)
            attached.append(sae_hook(sae))
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=names,
                                            stop_at_layer=stop_layer(hooks), return_cache_object=False)
    finally:
        if attached:
            model.reset_saes(act_names=attached)
    return {hook: cache[name][0] for hook, name in zip(hooks, names)}


# ----------------------------------------------------------------------------- for the CLI


def features_table(model_name: str | None, sae_spec: str | None, text: str, k: int = 5) -> pd.DataFrame:
    """What ``scope features TEXT`` prints: :func:`top_features` of ``text``.

    ``model_name`` None means the bundled ``gemma-3-270m``; ``sae_spec`` None means ``"demo"``
    (any :func:`scope.load_sae` spec works). The SAE loads in the model's dtype, on its device,
    and is checked against the model before anything runs.
    """
    from scope.saes import load_sae
    from scope.subjects import BUNDLED, load_model

    model = load_model(model_name or BUNDLED)
    sae = load_sae(sae_spec or "demo", device=model.cfg.device, dtype=model.cfg.dtype)
    check_compatible(model, sae)
    return top_features(model, sae, text, k=k)
