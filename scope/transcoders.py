"""Transcoders as objects: one per layer, each reading the MLP's input and writing its output.

A transcoder is a sae-lens ``JumpReLUTranscoder`` (or ``JumpReLUSkipTranscoder``, with an affine
skip connection ``x @ W_skip.T``): ``cfg.metadata.hook_name`` is what it reads,
``blocks.L.ln2.hook_normalized`` (the MLP input after its RMSNorm; see :mod:`scope.sae_formats`
for why not ``hook_mlp_in``), and ``cfg.metadata.hook_name_out`` what it reconstructs,
``blocks.L.hook_mlp_out``. :func:`scope.encode` on one gives its feature activations.

Sources: Gemma Scope's ``gemma-scope-2b-pt-transcoders`` (Gemma 2 2B; the RMSNorm gain was folded
in at training), Gemma Scope 2's ``gemma-scope-2-*-transcoders[-all]`` (every Gemma 3 model; the
gain of the model they are used with is folded in at load, so they load *for* a model), and local
folders of Gemma Scope 2 transcoder folders as downloaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scope import _checks
from scope.gemma_scope import covered_layers, describe_layers, gemma_scope_id, registry, split_spec
from scope.lazy_layers import LazyLayers
from scope.sae_formats import (
    is_gemma_scope_2_folder,
    load_gemma_scope_2,
    load_gemma_scope_2_from_hub,
    read_config,
    tl_hook,
)
from scope.saes import DATA_DIR, load_sae
from scope.subjects import SUBJECTS, model_name, subject_of

if TYPE_CHECKING:
    from sae_lens import SAE

# "demo": the bundled set for gemma-3-270m (scripts/train_demo_transcoders.py), folders named
# layer_{L}_width_512_l0_medium_affine
DEMO_FOLDER, DEMO_WIDTH, DEMO_AFFINE = DATA_DIR / "demo_transcoders", "512", True


class Transcoders(LazyLayers):
    """layer -> transcoder, each loaded on first access (then kept); iterating keys loads nothing.

    ``sources`` says where each layer's transcoder comes from (a registry spec or a folder);
    ``loaded`` which layers are in memory; ``unload(layer)`` frees one.
    """

    _what = "transcoder"

    def _load(self, layer: int) -> SAE:
        return _load_one(self._sources[layer], self._model, self._device, self._dtype)

    @property
    def sources(self) -> dict[int, str]:
        return dict(self._sources)


def load_transcoders(
    spec_or_name: Any,
    layers: list[int] | range | None = None,
    *,
    model: Any = None,
    width: str | int = "16k",
    l0: str | float = "canonical",
    affine: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> Transcoders:
    """Transcoders for many layers, as a lazy ``{layer: transcoder}`` mapping.

    Args:
        spec_or_name: one of
            - a model from :func:`scope.load_model` (its own Gemma Scope / Gemma Scope 2 transcoders),
            - a model name (``"gemma-2-2b"``, ``"gemma-3-1b-it"`` ...): the same ids; Gemma 3 ones
              need ``model=`` (the loaded model they are for),
            - ``"demo"``: the bundled skip-transcoders for gemma-3-270m (``data/demo_transcoders``,
              512 features per layer, all 18 layers; needs ``model=``),
            - a local folder holding Gemma Scope 2 transcoder folders (e.g. a downloaded
              ``transcoder_all/``), or one such folder.
        layers: the layers to keep (default: every layer there is).
        model: the loaded model the transcoders are for; required for Gemma Scope 2 (its RMSNorm
            gains are folded into the encoders), optional otherwise.
        width, l0, affine: which transcoder per layer, as in :func:`scope.gemma_scope_id`; for a
            folder they filter its subfolders by name (``l0`` a label there, ``"canonical"`` = any).
        device, dtype: default the model's, else cpu and float32.

    Every argument is checked, and every id resolved, before anything loads.
    """
    if not isinstance(spec_or_name, (str, os.PathLike)):  # a loaded model
        model = spec_or_name if model is None else model
        spec_or_name = model_name(spec_or_name)
    text = os.fspath(spec_or_name)
    if text == "demo":
        text, width, affine = str(DEMO_FOLDER), DEMO_WIDTH, DEMO_AFFINE
    if text in SUBJECTS:
        sources = _registry_sources(text, layers, width, l0, affine, model)
    else:
        sources = _folder_sources(Path(text).expanduser(), layers, width, l0, affine, model)
    if model is not None:
        device = device if device is not None else str(model.cfg.device)
        dtype = dtype if dtype is not None else model.cfg.dtype
    return Transcoders(sources, model, _checks.device(device), _checks.dtype(dtype) if dtype is not None else "float32")


def _registry_sources(name: str, layers: Any, width: Any, l0: Any, affine: bool, model: Any) -> dict[int, str]:
    if SUBJECTS[name].family == "Gemma 3" and model is None:
        raise ValueError(
            f"Gemma Scope 2 transcoders for {name} load for a model (its MLP RMSNorm gains are folded in): "
            f"pass model=scope.load_model({name!r}), or the loaded model itself."
        )
    _check_model_fits(name, model)
    chosen = covered_layers(name, "transcoder") if layers is None else _layers(layers)
    return {layer: str(gemma_scope_id(name, layer, "transcoder", width, l0, affine)) for layer in chosen}


def _check_model_fits(name: str, model: Any) -> None:
    spec = subject_of(model) if model is not None else None
    if model is not None and spec is not None and spec.name != name:
        raise ValueError(f"The transcoders of {name} were asked for with model= a {spec.name}: pass one model.")


def _folder_sources(folder: Path, layers: Any, width: Any, l0: Any, affine: bool, model: Any) -> dict[int, str]:
    if not folder.is_dir():
        raise ValueError(
            f"{os.fspath(folder)!r} is neither a model name ({', '.join(SUBJECTS)}) nor a folder of "
            "Gemma Scope 2 transcoders."
        )
    inside = sorted(p for p in folder.iterdir() if is_gemma_scope_2_folder(p))
    candidates = [folder] if is_gemma_scope_2_folder(folder) else inside
    pattern = _name_filter(width, l0, affine) if len(candidates) > 1 else None
    found: dict[int, list[Path]] = {}
    for path in candidates:
        config = read_config(path)
        if "hf_hook_point_out" not in config or (pattern and not pattern.search(path.name)):
            continue
        found.setdefault(tl_hook(config["hf_hook_point_in"])[0], []).append(path)
    if not found:
        raise ValueError(f"{folder} holds no Gemma Scope 2 transcoder folder (params.safetensors + config.json)"
                         + (f" named like {pattern.pattern}" if pattern else "") + ".")  # fmt: skip
    if model is None:
        raise ValueError(f"Gemma Scope 2 transcoders in {folder} load for a model: pass model= (the loaded model).")
    _check_layers_exist(folder, sorted(found), model)
    chosen = sorted(found) if layers is None else _layers(layers)
    missing = [layer for layer in chosen if layer not in found]
    if missing:
        raise ValueError(f"{folder} has no transcoder for layer(s) {missing}; it has {describe_layers(sorted(found))}.")
    doubles = {layer: [p.name for p in found[layer]] for layer in chosen if len(found[layer]) > 1}
    if doubles:
        raise ValueError(
            f"{folder} has several transcoders for a layer ({doubles}); pick one with width=, l0=, affine=."
        )
    return {layer: str(found[layer][0]) for layer in chosen}


def _check_layers_exist(folder: Path, layers: list[int], model: Any) -> None:
    """ValueError, before anything loads, for transcoders of layers the model does not have."""
    n_layers = int(model.cfg.n_layers)
    beyond = [layer for layer in layers if layer >= n_layers]
    if beyond:
        raise ValueError(
            f"{folder} holds transcoders for layer(s) {beyond}, but the model has layers 0-{n_layers - 1}: "
            "they were made for a deeper model."
        )


def _name_filter(width: Any, l0: Any, affine: bool) -> re.Pattern[str]:
    label = r"(small|medium|big)" if l0 == "canonical" else re.escape(str(l0))
    return re.compile(rf"width_{re.escape(str(width).lower())}_l0_{label}{'_affine' if affine else ''}$")


def _layers(layers: Any) -> list[int]:
    if isinstance(layers, (str, int)):
        raise TypeError(f"layers must be a list of integers (or None for all), got {layers!r}.")
    return [_checks.integer(layer, "layer") for layer in layers]


def _load_one(source: str, model: Any, device: str, dtype: torch.dtype | str) -> SAE:
    dtype_name = _checks.dtype_name(dtype)
    path = Path(source)
    if path.is_dir():
        return load_gemma_scope_2(path, model=model, device=device, dtype=dtype_name)
    release, sae_id = split_spec(source) or (source, "")
    if registry()[release].conversion_func == "gemma_3":
        return load_gemma_scope_2_from_hub(release, sae_id, model=model, device=device, dtype=dtype_name)
    return load_sae(source, device=device, dtype=dtype_name)  # Gemma Scope (Gemma 2) through sae-lens
