"""Gemma Scope 2 files: one SAE or transcoder folder, as sae-lens classes, from disk or the hub cache.

Google's ``google/gemma-scope-2-*`` repositories (one per Gemma 3 model) hold one folder per SAE,
``{site}/layer_{L}_width_{W}_l0_{small|medium|big}[_affine]``, with two files:

- ``params.safetensors``: ``w_enc`` [d_in, d_sae], ``w_dec`` [d_sae, d_out], ``b_enc`` [d_sae],
  ``b_dec`` [d_out], ``threshold`` [d_sae], and for skip-transcoders ``affine_skip_connection``
  [d_in, d_out]. JumpReLU: ``pre = x @ w_enc + b_enc``; ``acts = relu(pre) * (pre > threshold)``;
  ``out = acts @ w_dec + b_dec (+ x @ affine_skip_connection)``.
- ``config.json`` (optional; sae-lens infers it from the folder name when absent):
  ``hf_hook_point_in`` / ``hf_hook_point_out`` (transformers module names), ``width``,
  ``model_name``, ``architecture: "jump_relu"``, ``l0``, ``affine_connection``, ``type``.

The transformers hook points map to transformer-lens hooks:

==========================================  =====================================
``model.layers.L.output``                   ``blocks.L.hook_resid_post``
``model.layers.L.self_attn.o_proj.input``   ``blocks.L.attn.hook_z`` (heads flattened)
``model.layers.L.post_feedforward_layernorm.output``  ``blocks.L.hook_mlp_out``
``model.layers.L.pre_feedforward_layernorm.output``   ``blocks.L.ln2.hook_normalized`` x ``ln2.w``
==========================================  =====================================

The last row is the transcoders' input: the MLP's input *after* its RMSNorm, gain included.
transformer-lens has no hook on that exact value (``ln2.hook_normalized`` is before the gain,
``hook_mlp_in`` before the norm), so a transcoder is loaded for a model: the model's ``ln2.w`` is
folded into ``w_enc`` (and the skip connection), and it reads ``ln2.hook_normalized``, the
convention sae-lens uses for Gemma Scope's Gemma 2 transcoders. (sae-lens 6.54 itself puts Gemma
Scope 2 transcoders at ``hook_mlp_in``, the residual stream before the norm: not what they read.)

sae-lens' own Gemma Scope 2 loader asks the hub for every file's header, so it cannot load from
the local Hugging Face cache offline; :func:`gemma_scope_2_folder_from_hub` fetches the same two
files through ``huggingface_hub`` (which reads the cache, and honours ``HF_HUB_OFFLINE=1``).

Offline use: either load a downloaded folder by path
(``hf download google/gemma-scope-2-270m-pt --include 'resid_post/layer_9_width_16k_l0_medium/*'
--local-dir DIR``, then ``scope.load_sae("DIR/resid_post/layer_9_width_16k_l0_medium")``), or keep
the registry spec working by placing the files where ``huggingface_hub`` caches them::

    $HF_HOME/hub/models--google--gemma-scope-2-270m-pt/
        refs/main                                   # the commit hash, one line
        snapshots/<commit>/resid_post/layer_9_width_16k_l0_medium/params.safetensors
        snapshots/<commit>/resid_post/layer_9_width_16k_l0_medium/config.json

(what ``hf download`` without ``--local-dir`` writes; copy that ``hub/`` folder to the offline
machine). Then ``HF_HUB_OFFLINE=1`` and
``scope.load_sae("gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_medium")`` load from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scope import _checks
from scope.gemma_scope import registry
from scope.subjects import ModelUnavailableError

if TYPE_CHECKING:
    from sae_lens import SAE

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
KEYS = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")
SKIP_KEY = "affine_skip_connection"

# transformers module output/input -> transformer-lens hook, for one layer
_HF_HOOKS = [
    (re.compile(r"^model\.layers\.(\d+)\.output$"), "blocks.{}.hook_resid_post"),
    (re.compile(r"^model\.layers\.(\d+)\.self_attn\.o_proj\.input$"), "blocks.{}.attn.hook_z"),
    (re.compile(r"^model\.layers\.(\d+)\.post_feedforward_layernorm\.output$"), "blocks.{}.hook_mlp_out"),
    (re.compile(r"^model\.layers\.(\d+)\.pre_feedforward_layernorm\.output$"), "blocks.{}.ln2.hook_normalized"),
]
# folder name part -> transformers hook point (what sae-lens infers when config.json is absent);
# "transcoder" (and "transcoder_all") folders read the MLP input and write its output
_SITE_FOLDERS = {
    "resid_post": "model.layers.{}.output",
    "attn_out": "model.layers.{}.self_attn.o_proj.input",
    "mlp_out": "model.layers.{}.post_feedforward_layernorm.output",
}


def is_gemma_scope_2_folder(path: Path) -> bool:
    """Whether ``path`` is a folder holding a Gemma Scope 2 ``params.safetensors``."""
    return path.is_dir() and (path / PARAMS_FILE).is_file()


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json``, or the one sae-lens infers from the folder name without it."""
    file = folder / CONFIG_FILE
    if file.is_file():
        try:
            config = json.loads(file.read_text())
        except ValueError as err:
            raise ValueError(f"{file} is not readable JSON ({err}).") from None
        if not isinstance(config, dict) or not isinstance(config.get("hf_hook_point_in"), str):
            raise ValueError(f"{file}: a Gemma Scope 2 config.json names its input as hf_hook_point_in.")
        return config
    return _inferred_config(folder)


def _inferred_config(folder: Path) -> dict[str, Any]:
    layer = re.search(r"layer_(\d+)", folder.name)
    site = next((s for s in [*_SITE_FOLDERS, "transcoder"] if s in str(folder)), None)
    if layer is None or site is None:
        raise ValueError(
            f"{folder} has no {CONFIG_FILE}, and its path does not say the layer and site as Gemma Scope 2's "
            f"do (e.g. resid_post/layer_9_width_16k_l0_medium); folders: {', '.join(_SITE_FOLDERS)}, transcoder."
        )
    n = layer[1]
    if site == "transcoder":
        return {
            "hf_hook_point_in": f"model.layers.{n}.pre_feedforward_layernorm.output",
            "hf_hook_point_out": f"model.layers.{n}.post_feedforward_layernorm.output",
            "affine_connection": "affine" in folder.name,
            "type": "transcoder",
        }
    return {"hf_hook_point_in": _SITE_FOLDERS[site].format(n), "type": "sae"}


def tl_hook(hf_hook_point: str) -> tuple[int, str]:
    """``(layer, transformer-lens hook)`` for a Gemma Scope 2 ``hf_hook_point_*``."""
    for pattern, hook in _HF_HOOKS:
        match = pattern.match(hf_hook_point)
        if match:
            return int(match[1]), hook.format(match[1])
    raise ValueError(
        f"Gemma Scope 2 hook point {hf_hook_point!r} is not one scope maps to transformer-lens: "
        "model.layers.L.output, .self_attn.o_proj.input, .post_feedforward_layernorm.output, "
        ".pre_feedforward_layernorm.output."
    )


def read_params(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``params.safetensors``, checked for keys, shapes and dtype (errors name the file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = folder / PARAMS_FILE
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    missing = [key for key in KEYS if key not in tensors]
    if missing:
        raise ValueError(
            f"{file}: missing {', '.join(missing)}; a Gemma Scope 2 {PARAMS_FILE} holds {', '.join(KEYS)} "
            f"(and {SKIP_KEY} for skip-transcoders); found {', '.join(sorted(tensors)) or 'nothing'}."
        )
    _check_shapes(file, tensors)
    return tensors


def _check_shapes(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    for key, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise ValueError(f"{file}: {key} has dtype {tensor.dtype}, expected floating point.")
    if tensors["w_enc"].ndim != 2 or tensors["w_dec"].ndim != 2:
        raise ValueError(f"{file}: w_enc and w_dec must be 2-D, got {tuple(tensors['w_enc'].shape)}, "
                         f"{tuple(tensors['w_dec'].shape)}.")  # fmt: skip
    d_in, d_sae = tensors["w_enc"].shape
    d_out = tensors["w_dec"].shape[1]
    expected = {"w_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,), "threshold": (d_sae,)}
    if SKIP_KEY in tensors:
        expected[SKIP_KEY] = (d_in, d_out)
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"{file}: {key} has shape {tuple(tensors[key].shape)}, expected {shape} "
                f"(w_enc is [d_in, d_sae] = {(d_in, d_sae)}, w_dec [d_sae, d_out] = {(d_sae, d_out)})."
            )


def load_gemma_scope_2(
    folder: str | os.PathLike,
    *,
    model: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> SAE:
    """A Gemma Scope 2 SAE or transcoder folder as a sae-lens ``JumpReLUSAE``,
    ``JumpReLUTranscoder`` or ``JumpReLUSkipTranscoder`` at the matching transformer-lens hook.

    Args:
        folder: holds ``params.safetensors`` (and usually ``config.json``), as downloaded from a
            ``google/gemma-scope-2-*`` repository.
        model: required for transcoders only: the model whose MLP RMSNorm gain (``ln2.w``) is
            folded into the encoder, so that the transcoder reads ``blocks.L.ln2.hook_normalized``
            (see the module docstring).
        device: default cuda if available, else cpu.
        dtype: default float32.

    Raises:
        ValueError: a missing or malformed file (naming it and the problem), a transcoder without
            ``model``, or a model without that layer.
    """
    from sae_lens import SAE

    folder = Path(folder).expanduser()
    if not is_gemma_scope_2_folder(folder):
        raise ValueError(f"{folder} is not a Gemma Scope 2 folder: it holds no {PARAMS_FILE}.")
    config = read_config(folder)
    if "hf_hook_point_out" in config and model is None:
        raise ValueError(_needs_model(str(folder)))

    def convert(path: Any, device: str, cfg_overrides: dict[str, Any] | None = None):
        return _converted(folder, config, model, device, cfg_overrides)

    return SAE.load_from_disk(folder, device=_checks.device(device), dtype=_checks.dtype_name(dtype), converter=convert)


def _needs_model(what: str) -> str:
    return (
        f"{what} is a Gemma Scope 2 transcoder: it reads the MLP input after the RMSNorm gain, which "
        "transformer-lens has no hook for, so it loads for a model (the gain is folded in): "
        "scope.load_transcoders(..., model=model)."
    )


def load_gemma_scope_2_from_hub(
    release: str, sae_id: str, *, model: Any = None, device: str | None = None, dtype: str | None = None
) -> SAE:
    """A registry Gemma Scope 2 SAE (``conversion_func: gemma_3``) through the Hugging Face cache;
    a transcoder without ``model`` is refused before anything downloads."""
    if release.endswith(("-transcoders", "-transcoders-all")) and model is None:
        raise ValueError(_needs_model(f"{release}/{sae_id}"))
    return load_gemma_scope_2(gemma_scope_2_folder_from_hub(release, sae_id), model=model, device=device, dtype=dtype)


def _converted(folder: Path, config: dict[str, Any], model: Any, device: str, overrides: dict[str, Any] | None):
    tensors = read_params(folder)
    layer, hook = tl_hook(config["hf_hook_point_in"])
    d_in, d_sae = tensors["w_enc"].shape
    cfg: dict[str, Any] = {
        "architecture": "jumprelu",
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": device,
        "model_name": config.get("model_name"),
        "hook_name": hook,
        "hook_head_index": None,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "prepend_bos": True,
        "reshape_activations": "hook_z" if hook.endswith("hook_z") else "none",
        "hf_hook_name": config["hf_hook_point_in"],
    }
    state = {"W_enc": tensors["w_enc"], "W_dec": tensors["w_dec"], "b_enc": tensors["b_enc"],
             "b_dec": tensors["b_dec"], "threshold": tensors["threshold"]}  # fmt: skip
    if "hf_hook_point_out" in config:
        _, hook_out = tl_hook(config["hf_hook_point_out"])
        affine = SKIP_KEY in tensors
        cfg.update(
            architecture="jumprelu_skip_transcoder" if affine else "jumprelu_transcoder",
            d_out=int(tensors["w_dec"].shape[1]),
            hook_name_out=hook_out,
            hf_hook_name_out=config["hf_hook_point_out"],
        )
        gain = _mlp_norm_gain(model, layer, int(d_in), folder)
        state["W_enc"] = state["W_enc"] * gain[:, None]
        if affine:  # stored [d_in, d_out]; sae-lens keeps W_skip as [d_out, d_in]
            state["W_skip"] = (tensors[SKIP_KEY] * gain[:, None]).T.contiguous()
    cfg.update(overrides or {})
    dtype = _checks.dtype(cfg["dtype"])
    return cfg, {key: value.to(device=device, dtype=dtype).contiguous() for key, value in state.items()}


def _mlp_norm_gain(model: Any, layer: int, d_in: int, folder: Path) -> torch.Tensor:
    """The model's pre-MLP RMSNorm gain at ``layer`` (transformer-lens stores Gemma's 1 + w)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not 0 <= layer < len(blocks):
        raise ValueError(f"{folder} is a transcoder for layer {layer}; the model given has no such layer.")
    gain = blocks[layer].ln2.w.detach().to("cpu", torch.float32)
    if gain.shape != (d_in,):
        raise ValueError(f"{folder} reads {d_in} dimensions; the model's layer {layer} has {gain.shape[0]}.")
    return gain


def gemma_scope_2_folder_from_hub(release: str, sae_id: str) -> Path:
    """Fetch one registry SAE's two files into the Hugging Face cache (or find them there offline)
    and return the folder holding them."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    entry = registry()[release]
    path = entry.paths.get(sae_id, sae_id)
    try:
        params = hf_hub_download(entry.repo_id, f"{path}/{PARAMS_FILE}")
    except Exception as err:  # offline and not cached, gated, missing, network: one message
        raise ModelUnavailableError(
            f"Cannot get {release}/{sae_id} ({entry.repo_id}, {path}/{PARAMS_FILE}) from the Hugging Face Hub "
            f"or its local cache ({type(err).__name__}: {err}). Connect once (it is cached afterwards), or "
            f"download the folder and load it by path: `hf download {entry.repo_id} --include '{path}/*' "
            "--local-dir <dir>`."
        ) from err
    # config.json lands beside params in the snapshot; without one in the repo (or in the cache,
    # offline) it is inferred from the folder name, as sae-lens does
    with contextlib.suppress(EntryNotFoundError, OSError):
        hf_hub_download(entry.repo_id, f"{path}/{CONFIG_FILE}")
    return Path(params).parent
