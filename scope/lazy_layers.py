"""Every layer's SAE (or transcoder), each loaded only when first used.

:func:`load_saes` resolves the Gemma Scope ids of many layers at once (so bad layers fail
immediately) and returns a :class:`LazySAEs` mapping ``{layer: SAE}`` that loads, and checks
against the model, one layer at a time; :class:`LazyLayers` is the mapping itself, which
:class:`scope.transcoders.Transcoders` shares.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from scope import _checks
from scope.gemma_scope import covered_layers, describe_layers, gemma_scope_id
from scope.hooks import check_compatible
from scope.saes import load_sae
from scope.subjects import model_name

if TYPE_CHECKING:
    from sae_lens import SAE


class LazyLayers(Mapping):
    """layer -> a model part (SAE or transcoder) loaded on first access, then kept.

    Iterating keys costs nothing; touching values loads them. ``loaded`` says which layers are
    in memory; ``unload(layer)`` frees one. Subclasses say how one layer loads (:meth:`_load`).
    """

    _what = "SAE"

    def __init__(self, sources: dict[int, str], model: Any, device: str, dtype: torch.dtype | str):
        self._sources = sources
        self._model = model
        self._device = device
        self._dtype = dtype
        self._cache: dict[int, Any] = {}

    def _load(self, layer: int) -> SAE:
        raise NotImplementedError

    def __getitem__(self, layer: int) -> SAE:
        if layer not in self._sources:
            raise KeyError(f"No {self._what} for layer {layer}; layers here: {describe_layers(sorted(self._sources))}.")
        if layer not in self._cache:
            self._cache[layer] = self._load(layer)
        return self._cache[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    @property
    def loaded(self) -> list[int]:
        return sorted(self._cache)

    def unload(self, layer: int) -> None:
        self._cache.pop(layer, None)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={describe_layers(sorted(self._sources))}, loaded={self.loaded})"


class LazySAEs(LazyLayers):
    """layer -> SAE, each loaded (and checked against the model) on first access, then kept."""

    def __init__(self, model, specs: dict[int, str], device: str, dtype: torch.dtype | str):
        super().__init__(specs, model, device, dtype)

    def _load(self, layer: int) -> SAE:
        sae = load_sae(self._sources[layer], device=self._device, dtype=self._dtype)
        if not isinstance(self._model, str):
            check_compatible(self._model, sae)
        return sae

    @property
    def specs(self) -> dict[int, str]:
        """layer -> the ``"RELEASE/SAE_ID"`` spec it loads."""
        return dict(self._sources)


def load_saes(
    model,
    layers: str | list[int] | range = "all",
    site: str = "res",
    width: str | int = "16k",
    l0: str | float = "canonical",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> LazySAEs:
    """Gemma Scope SAEs for many layers of ``model``, as a lazy ``{layer: SAE}`` mapping.

    Nothing downloads or loads until a layer is accessed, so ``layers="all"`` is cheap to ask
    for; ids are resolved (and bad layers rejected) immediately. SAEs load in the model's dtype
    and on its device: every 16k residual SAE of Gemma 2 2B (26 layers x 2 x 2304 x 16384
    weights) is ~4 GB in bfloat16 (~8 GB in float32), so touch only the layers you need, or
    ``unload`` them.

    Args:
        model: a model from :func:`scope.load_model` (a name is accepted too; then pass device/dtype).
        layers: ``"all"`` (every layer Gemma Scope covers for this model and site) or a list.
        site, width, l0: as in :func:`gemma_scope_id`.
    """
    name = model_name(model)
    if layers == "all":
        layers = covered_layers(name, site)
    elif isinstance(layers, (str, int)):
        raise TypeError(f"layers must be 'all' or a list of integers, got {layers!r}.")
    specs = {_checks.integer(layer, "layer"): str(gemma_scope_id(name, layer, site, width, l0)) for layer in layers}
    if not isinstance(model, str):
        device = device if device is not None else str(model.cfg.device)
        dtype = dtype if dtype is not None else model.cfg.dtype
    return LazySAEs(model, specs, _checks.device(device), _checks.dtype(dtype) if dtype is not None else "float32")
