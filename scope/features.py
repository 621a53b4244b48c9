"""Decode text into SAE features: activations, top features per token, the decoder's logit
lens, and traces across layers.

The model runs only as far as the SAE's hook (``stop_at_layer``): an SAE at layer 6 of an
18-layer model never pays for layers 7-17, the final norm or the 262k-token unembedding.
Results are DataFrames with the column names of the public contract.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float

from scope import _checks
from scope.density import DENSE_THRESHOLD, DenseFilter, dense_filter
from scope.feature_stats import feature_stats
from scope.hooks import (
    activation_shape,
    check_compatible,
    check_width,
    hook_layer,
    run_to_hooks,
    sae_hook,
)
from scope.inputs import str_tokens, to_tokens
from scope.labels import as_labels, feature_labels, with_labels

if TYPE_CHECKING:
    from sae_lens import SAE, HookedSAETransformer

NEURONPEDIA = "https://www.neuronpedia.org"
TOP_COLUMNS = ["position", "token", "rank", "feature", "activation"]
RANK_BY = ("activation", "relative")


@dataclass
class FeatureActs:
    """Feature activations of one text: ``values[pos, feature]`` for the token ``tokens[pos]``."""

    tokens: list[str]
    values: Float[torch.Tensor, "pos d_sae"]

    def __len__(self) -> int:
        return len(self.tokens)


# ----------------------------------------------------------------------------- encode


def encode(model: HookedSAETransformer, sae: SAE, text: str) -> FeatureActs:
    """Tokens of ``text`` (with one BOS) and their SAE feature activations ``[pos, d_sae]``.

    Runs the model only up to the SAE's hook. Raises ValueError when the hook does not exist in
    ``model``, its width is not the SAE's d_in, or the text is longer than the model's context.
    """
    check_compatible(model, sae)
    tokens = to_tokens(model, _checks.text(text))
    return FeatureActs(tokens=str_tokens(model, tokens[0]), values=_encode_at_hooks(model, [sae], tokens)[0])


def _encode_at_hooks(model: Any, saes: Sequence[Any], tokens: torch.Tensor) -> list[torch.Tensor]:
    """Each SAE's feature activations ``[pos, d_sae]`` of a 1-row ``tokens``, from one forward pass."""
    hooks = [sae_hook(sae) for sae in saes]
    acts = run_to_hooks(model, tokens, hooks)
    values = []
    with torch.no_grad():
        for hook, sae in zip(hooks, saes):
            if activation_shape(model, hook) is None:  # a hook the config does not describe
                check_width(model, sae, tuple(acts[hook].shape[2:]))
            values.append(sae.encode(acts[hook].to(sae.W_dec.dtype))[0])
    return values


def neuronpedia_url(sae: SAE, feature: int) -> str | None:
    """The feature's Neuronpedia page, when the SAE carries a Neuronpedia id (registry SAEs do)."""
    neuronpedia_id = sae.cfg.metadata.neuronpedia_id
    return f"{NEURONPEDIA}/{neuronpedia_id}/{int(feature)}" if neuronpedia_id else None


def top_features(
    model: HookedSAETransformer,
    sae: SAE,
    text: str,
    *,
    k: int = 5,
    include_bos: bool = False,
    labels: Any = None,
    dense: bool = False,
    dense_threshold: float = DENSE_THRESHOLD,
    densities: Any = None,
    rank_by: str = "activation",
) -> pd.DataFrame:
    """The ``k`` strongest features at each token of ``text``.

    Columns: position, token, rank (1 = strongest), feature, activation; plus relative
    (activation / the feature's recorded max activation) with ``rank_by="relative"``, label when
    labels are passed (``labels=``: a label table or ``{feature: label}``) or attached to the SAE
    (the demo SAE's, :func:`scope.labels.set_labels`), and url when the SAE has a Neuronpedia id.
    Only active features are listed (fewer than k rows for a token where fewer fire). BOS is
    left out by default: Gemma Scope was not trained on it and its activations there are huge
    and meaningless.

    Dense features (density above ``dense_threshold``, see :mod:`scope.density`; ``densities=``
    overrides the SAE's own) are left out unless ``dense=True``: the ``k`` shown are the
    strongest of the others. ``frame.attrs["dense_hidden"]`` lists the dense features that
    would have been shown, ``frame.attrs["dense_note"]`` says so in words (or that no density
    is known, and nothing was hidden).

    ``rank_by="relative"`` ranks by activation / max activation (features without a positive
    recorded max are left out), so a feature at its peak outranks a loud feature at a tenth of
    its range.
    """
    k = _checks.positive_int(k, "k")
    table = as_labels(labels) if labels is not None else None  # checked before the model runs
    view = TopView.of(sae, dense=dense, dense_threshold=dense_threshold, densities=densities, rank_by=rank_by)
    acts = encode(model, sae, text)
    skip = _bos_positions(model, acts.tokens) if not include_bos else set()
    return with_urls(with_labels(view.table(acts, k, skip), sae, table), sae)


@dataclass(frozen=True)
class TopView:
    """How a top-features view ranks and what it hides (checked before any model runs)."""

    dense_filter: DenseFilter
    show_dense: bool
    maxima: torch.Tensor | None  # per-feature max activation, for rank_by="relative"

    @classmethod
    def of(
        cls,
        sae: SAE,
        *,
        dense: bool = False,
        dense_threshold: float = DENSE_THRESHOLD,
        densities: Any = None,
        rank_by: str = "activation",
    ) -> TopView:
        maxima = _relative_to(sae, rank_by)
        return cls(dense_filter(sae, threshold=dense_threshold, densities=densities), bool(dense), maxima)

    @property
    def hidden(self) -> frozenset[int]:
        return frozenset() if self.show_dense else self.dense_filter.dense

    def table(self, acts: FeatureActs, k: int, skip: set[int]) -> pd.DataFrame:
        """The top-``k`` table of ``acts``; ``attrs`` say which dense features it hid."""
        frame = _top_table(acts, k, skip, hidden=self.hidden, maxima=self.maxima)
        hidden = _would_show(acts, k, skip, self.hidden, self.maxima)
        frame.attrs["dense_hidden"] = hidden
        frame.attrs["dense_note"] = (
            "Dense features are shown (dense=True)." if self.show_dense else self.dense_filter.note(hidden)
        )
        return frame


def _relative_to(sae: SAE, rank_by: str) -> torch.Tensor | None:
    """Each feature's max activation ``[d_sae]`` for ``rank_by="relative"`` (None for "activation")."""
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by must be one of {', '.join(map(repr, RANK_BY))}, got {rank_by!r}.")
    if rank_by == "activation":
        return None
    stats = feature_stats(sae)
    if "max_activation" in stats:
        return stats["max_activation"]
    labels = feature_labels(sae)
    if labels is not None and labels["max_activation"].notna().any():
        maxima = torch.full((int(sae.cfg.d_sae),), float("nan"))
        maxima[torch.as_tensor(labels["feature"].to_numpy())] = torch.as_tensor(
            labels["max_activation"].to_numpy(dtype="float32")
        )
        return maxima
    raise ValueError(
        "rank_by='relative' needs each feature's max activation, which this SAE does not carry. Record them "
        "with scope.feature_stats.set_max_activations(sae, values) (e.g. from scope.mine over a corpus), or use "
        "rank_by='activation'."
    )


def _would_show(
    acts: FeatureActs, k: int, skip: set[int], hidden: frozenset[int], maxima: torch.Tensor | None
) -> list[int]:
    """The hidden features that the unfiltered view would have listed."""
    if not hidden:
        return []
    unfiltered = _top_table(acts, k, skip, maxima=maxima)
    return sorted({int(f) for f in unfiltered["feature"]} & hidden)


def _top_table(
    acts: FeatureActs,
    k: int,
    skip: set[int],
    *,
    hidden: frozenset[int] = frozenset(),
    maxima: torch.Tensor | None = None,
) -> pd.DataFrame:
    types = {"position": int, "token": str, "rank": int, "feature": int, "activation": float}
    columns = TOP_COLUMNS if maxima is None else [*TOP_COLUMNS, "relative"]
    rows = _top_rows(acts, k, skip, hidden, maxima)
    return pd.DataFrame(rows, columns=columns).astype(types | ({} if maxima is None else {"relative": float}))


def _top_rows(
    acts: FeatureActs, k: int, skip: set[int], hidden: frozenset[int], maxima: torch.Tensor | None
) -> list[tuple]:
    values = acts.values.float()
    scores = values.clone()
    if maxima is not None:  # a feature without a positive recorded max cannot be ranked relative to it
        scale = maxima.to(values.device).float()
        usable = torch.nan_to_num(scale, nan=0.0) > 0
        scores = torch.where(usable, values / torch.where(usable, scale, torch.ones_like(scale)), 0.0)
    if hidden:
        scores[:, sorted(hidden)] = 0.0
    top_scores, features = torch.topk(scores, min(k, scores.shape[-1]), dim=-1)
    rows = []
    for position, token in enumerate(acts.tokens):
        if position in skip:
            continue
        for rank, (score, feature) in enumerate(zip(top_scores[position].tolist(), features[position].tolist()), 1):
            if score > 0:
                value = float(values[position, feature])
                rows.append((position, token, rank, feature, value) + (() if maxima is None else (score,)))
    return rows


def _bos_positions(model, tokens: list[str]) -> set[int]:
    bos = model.tokenizer.bos_token
    return {i for i, token in enumerate(tokens) if token == bos}


def with_urls(frame: pd.DataFrame, sae: SAE) -> pd.DataFrame:
    """``frame`` with a ``url`` column (each feature's Neuronpedia page) when the SAE has a
    Neuronpedia id."""
    if sae.cfg.metadata.neuronpedia_id:
        frame["url"] = [neuronpedia_url(sae, f) for f in frame["feature"]]
    return frame


def check_feature(sae: SAE, feature: Any, name: str = "feature") -> int:
    """A feature index of ``sae`` (numpy and torch integers accepted)."""
    return _checks.index(feature, int(sae.cfg.d_sae), name)


# ----------------------------------------------------------------------------- logit lens


def decoder_direction(model: HookedSAETransformer, sae: SAE, feature: int) -> Float[torch.Tensor, " d_model"]:
    """The residual-stream direction ``[d_model]`` that ``feature`` writes.

    Residual and MLP-output SAEs write ``W_dec[feature]`` directly; attention (hook_z) SAEs write
    per-head vectors that reach the residual stream through that layer's ``W_O``.
    """
    feature = check_feature(sae, feature)
    check_compatible(model, sae)
    direction = sae.W_dec[feature].detach()
    if direction.shape[-1] == model.cfg.d_model and sae.cfg.reshape_activations != "hook_z":
        return direction
    hook = sae_hook(sae)
    layer = hook_layer(hook)
    if hook.endswith("attn.hook_z") and layer is not None and layer >= 0:
        W_O = model.blocks[layer].attn.W_O  # [n_heads, d_head, d_model]
        return torch.einsum("hd,hdm->m", direction.reshape(W_O.shape[:2]).to(W_O), W_O)
    raise ValueError(
        f"Cannot read feature {feature} through the unembedding: the SAE at {hook} has d_in "
        f"{sae.cfg.d_in}, not the residual width {model.cfg.d_model}."
    )


def feature_logits(model: HookedSAETransformer, sae: SAE, feature: int, *, k: int = 10) -> pd.DataFrame:
    """The tokens a feature's decoder direction promotes and suppresses: ``W_dec[feature] @ W_U``.

    This is the direct effect on the logits of adding the feature to the residual stream
    (Neuronpedia's "logit lens" column), ignoring the final norm and later layers. Columns:
    direction ("promoted" / "suppressed"), rank (1 = strongest), token, logit.
    """
    k = _checks.positive_int(k, "k")
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


def trace(
    model: HookedSAETransformer,
    saes: Mapping[int, SAE] | Sequence[SAE],
    text: str,
    *,
    k: int = 5,
    include_bos: bool = False,
) -> pd.DataFrame:
    """Top-``k`` features per token at every given layer, from ONE forward pass.

    The pass reads every SAE's hook and stops after the deepest one; SAEs only read (nothing is
    spliced in), so every layer sees exactly the activations of the unmodified model. Every SAE
    is checked against the model before anything runs.

    Args:
        saes: ``{layer: SAE}`` (e.g. from :func:`scope.load_saes`) or a list of SAEs (the layer
            is read from each hook name).
    Returns:
        DataFrame(layer, position, token, rank, feature, activation), plus url when an SAE has
        a Neuronpedia id. BOS is left out unless ``include_bos``.
    """
    k = _checks.positive_int(k, "k")
    by_layer = _by_layer(saes)
    hooks = [sae_hook(sae) for sae in by_layer.values()]
    if len(set(hooks)) != len(hooks):
        raise ValueError(f"Several SAEs read the same hook ({hooks}); one pass can hold one SAE per hook.")
    for sae in by_layer.values():
        check_compatible(model, sae)
    tokens = to_tokens(model, _checks.text(text))
    values = _encode_at_hooks(model, list(by_layer.values()), tokens)
    token_strs = str_tokens(model, tokens[0])
    skip = _bos_positions(model, token_strs) if not include_bos else set()
    frames = []
    for (layer, sae), acts in zip(by_layer.items(), values):
        frame = _top_table(FeatureActs(token_strs, acts), k, skip)
        frame.insert(0, "layer", layer)
        frames.append(with_urls(frame, sae))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["layer", *TOP_COLUMNS])


def _by_layer(saes: Mapping[int, Any] | Sequence[Any]) -> dict[int, Any]:
    if isinstance(saes, Mapping):
        keyed = {int(key): saes[key] for key in saes}
        for key, sae in keyed.items():
            if hook_layer(sae_hook(sae)) not in (key, None):
                raise ValueError(
                    f"The SAE under key {key} reads {sae_hook(sae)!r}, another layer; "
                    "key each SAE by the layer of its hook."
                )
        return keyed
    by_layer: dict[int, Any] = {}
    for sae in saes:
        layer = hook_layer(sae_hook(sae))
        if layer is None:
            raise ValueError(f"Cannot tell the layer of an SAE at {sae_hook(sae)!r}; pass a {{layer: sae}} dict.")
        if layer in by_layer:
            raise ValueError(
                f"Two SAEs for layer {layer} ({sae_hook(by_layer[layer])!r} and {sae_hook(sae)!r}); "
                "a trace holds one SAE per layer: trace the other site separately."
            )
        by_layer[layer] = sae
    return by_layer
