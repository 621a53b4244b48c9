"""Reading a Gemma checkpoint's safetensors straight into transformer-lens, on the device, in the dtype.

transformers' ``from_pretrained`` followed by transformer-lens' conversion builds the HF model,
a converted state dict and the hooked model, on the CPU, and moves the result afterwards. Here
the hooked model is built with its parameters on the meta device (no memory) and each checkpoint
tensor is copied, in slices, into a tensor of the final dtype on the final device, which becomes
the parameter. Nothing else holds the weights at any time: the load needs the model's own memory
plus one slice.

The mapping is transformer-lens' ``convert_gemma_weights`` (Gemma 2 and Gemma 3, text and
multimodal checkpoints), with the same arithmetic in the same dtype so that the parameters are
bit-identical to that path's: embeddings scaled by sqrt(d_model), RMSNorm weights stored as
``1 + w`` (Gemma's convention, computed in float32), q/k/v/o split into heads, the unembedding
tied to the embedding unless the checkpoint has its own. Every weight matrix is a view of the
HF ``[out, in]`` tensor, which is exactly the layout :func:`scope.layout.relayout_for_speed`
produces: the model comes out re-laid with no further copy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

INDEX_NAME = "model.safetensors.index.json"
# Source elements copied per step: bounds the temporary of a dtype conversion on the device.
SLICE_ELEMENTS = 1 << 25
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


class CheckpointError(ValueError):
    """A checkpoint folder whose tensors do not make the model its config.json describes."""


def has_safetensors(folder: Path) -> bool:
    """Whether ``folder`` holds its weights as safetensors (else transformers reads them)."""
    return (folder / INDEX_NAME).is_file() or any(folder.glob("*.safetensors"))


@dataclass(frozen=True)
class _Target:
    """One parameter filled from a checkpoint tensor: its name and how the HF tensor becomes it."""

    param: str
    convert: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Entry:
    """One checkpoint tensor: its name, the shape the config implies, what it means, what it fills."""

    name: str
    shape: tuple[int, ...]
    meaning: str
    targets: tuple[_Target, ...]


def load_hooked(cfg: HookedTransformerConfig, hf_config: Any, folder: Path, tokenizer: Any) -> HookedSAETransformer:
    """A ``HookedSAETransformer`` of ``cfg`` (dtype and device from it) with the weights of ``folder``.

    ``hf_config`` is the checkpoint's own (transformers) config. Every tensor is checked
    (present, shape, floating dtype) before any memory is taken.

    Raises:
        CheckpointError: a tensor is missing, has another shape than the config implies, is not
            floating point, or a file the index names is missing; the message names both.
    """
    files = _tensor_files(folder)
    entries = _entries(cfg, hf_config, files)
    _check(entries, files, folder)
    model = _empty_model(cfg, tokenizer)
    assert cfg.device is not None  # set by load_model (transformer-lens' config leaves it optional)
    device = torch.device(cfg.device)
    loaded: set[str] = set()
    for entry in entries:
        tensor = _read(files[entry.name], entry.name, cfg.dtype, device)
        for target in entry.targets:
            _assign(model, target.param, target.convert(tensor))
            loaded.add(target.param)
        del tensor
    _fill_zero_biases(model, loaded, cfg.dtype, device)
    model.move_model_modules_to_device()  # the buffers (rotary tables); the parameters are there already
    return model.eval()


# ----------------------------------------------------------------------------- the checkpoint's files


def _tensor_files(folder: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (the index's files when there is an index)."""
    from safetensors import safe_open

    index = folder / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index} cannot be read as a safetensors index ({err}).") from None
        files = sorted({folder / name for name in weight_map.values()})
    else:
        files = sorted(folder.glob("*.safetensors"))
    located: dict[str, Path] = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file} is missing: {index.name} in {folder} lists it.")
        try:
            with safe_open(str(file), framework="pt") as handle:
                located.update((name, file) for name in handle.keys())  # noqa: SIM118  (not iterable)
        except Exception as err:  # safetensors' own error type for a corrupt header
            raise CheckpointError(f"{file} cannot be read as safetensors ({err}).") from None
    return located


def _check(entries: list[_Entry], files: dict[str, Path], folder: Path) -> None:
    from safetensors import safe_open

    for entry in entries:
        file = files.get(entry.name)
        if file is None:
            searched = ", ".join(sorted({f.name for f in files.values()})) or "no safetensors file"
            raise CheckpointError(
                f"The checkpoint in {folder} has no tensor {entry.name!r} ({entry.meaning}); searched "
                f"{searched}. The folder does not hold a complete checkpoint of the model its "
                "config.json describes."
            )
        with safe_open(str(file), framework="pt") as handle:
            view = handle.get_slice(entry.name)
            shape, dtype = tuple(view.get_shape()), view.get_dtype()
        if shape != entry.shape:
            raise CheckpointError(
                f"Tensor {entry.name!r} ({entry.meaning}) in {file} has shape {list(shape)}, but the "
                f"sizes in {folder / 'config.json'} need {list(entry.shape)}."
            )
        if dtype not in _FLOAT_DTYPES:
            raise CheckpointError(
                f"Tensor {entry.name!r} in {file} is stored as {dtype}; only unquantized floating-point "
                f"checkpoints ({', '.join(sorted(_FLOAT_DTYPES))}) load."
            )


def _read(file: Path, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The tensor in ``dtype`` on ``device``, copied slice by slice out of the memory-mapped file.

    The file is mapped for this one tensor only: its pages count as the process's memory while
    mapped. The result never aliases the file (a model must not change when its cache file does)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt", device="cpu") as handle:
        source = handle.get_tensor(name)  # a view of the mapped file: nothing is read yet
        tensor = torch.empty(source.shape, dtype=dtype, device=device)
        rows = max(1, SLICE_ELEMENTS // max(1, source[0].numel()))
        for start in range(0, source.shape[0], rows):
            tensor[start : start + rows].copy_(source[start : start + rows])
        del source
    return tensor


# ----------------------------------------------------------------------------- the model


def _empty_model(cfg: HookedTransformerConfig, tokenizer: Any) -> HookedSAETransformer:
    """The model with parameters on the meta device (no memory) and its small buffers on the CPU."""
    from accelerate import init_empty_weights
    from sae_lens import HookedSAETransformer

    with init_empty_weights(include_buffers=False):
        return HookedSAETransformer(cfg, tokenizer, move_to_device=False)


def _assign(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    old = getattr(module, leaf)
    if tuple(tensor.shape) != tuple(old.shape):  # the config and the model disagree: a bug here, not the user's
        raise RuntimeError(f"{name}: converted shape {list(tensor.shape)} != the model's {list(old.shape)}.")
    setattr(module, leaf, torch.nn.Parameter(tensor, requires_grad=old.requires_grad))


def _fill_zero_biases(model: torch.nn.Module, loaded: set[str], dtype: torch.dtype, device: torch.device) -> None:
    """Gemma has no biases: transformer-lens' zero biases, made on the device."""
    for name, param in list(model.named_parameters()):
        if name in loaded:
            continue
        if name.rpartition(".")[2] not in _ZERO_BIASES:
            raise RuntimeError(
                f"{name} is not in the Gemma mapping (a transformer-lens parameter scope does not know)."
            )
        _assign(model, name, torch.zeros(param.shape, dtype=dtype, device=device))


_ZERO_BIASES = {"b_Q", "_b_K", "_b_V", "b_O", "b_in", "b_out", "b_U"}


# ----------------------------------------------------------------------------- the mapping


def _entries(cfg: HookedTransformerConfig, hf_config: Any, files: dict[str, Path]) -> list[_Entry]:
    """Every checkpoint tensor the model needs, and the parameters each one fills."""
    if not cfg.use_normalization_before_and_after:
        raise ValueError(f"{cfg.original_architecture}: only Gemma 2 and Gemma 3 load this way.")
    prefix = _text_prefix(files)
    convert = _Conversions(cfg)
    entries = _embedding(cfg, hf_config, prefix, files, convert)
    for layer in range(cfg.n_layers):
        for hf_name, shape, tl_name, how, meaning in _layer_tensors(cfg, convert):
            target = _Target(f"blocks.{layer}.{tl_name}", how)
            entries.append(_Entry(f"{prefix}layers.{layer}.{hf_name}", shape, f"{meaning} of layer {layer}", (target,)))
    final_norm = _Target("ln_final.w", convert.norm)
    entries.append(_Entry(f"{prefix}norm.weight", (cfg.d_model,), "the final norm", (final_norm,)))
    return entries


def _layer_tensors(cfg: HookedTransformerConfig, convert: _Conversions) -> list[tuple]:
    """(HF name, HF shape, transformer-lens name, conversion, meaning) of one layer's tensors."""
    d_model, d_head, d_mlp = cfg.d_model, cfg.d_head, cfg.d_mlp
    n_heads, n_kv = cfg.n_heads, cfg.n_key_value_heads or cfg.n_heads
    tensors = [
        ("input_layernorm.weight", (d_model,), "ln1.w", convert.norm, "the norm before attention"),
        ("post_attention_layernorm.weight", (d_model,), "ln1_post.w", convert.norm, "the norm after attention"),
        ("pre_feedforward_layernorm.weight", (d_model,), "ln2.w", convert.norm, "the norm before the MLP"),
        ("post_feedforward_layernorm.weight", (d_model,), "ln2_post.w", convert.norm, "the norm after the MLP"),
        ("self_attn.q_proj.weight", (n_heads * d_head, d_model), "attn.W_Q", convert.heads(n_heads), "the queries"),
        ("self_attn.k_proj.weight", (n_kv * d_head, d_model), "attn._W_K", convert.heads(n_kv), "the keys"),
        ("self_attn.v_proj.weight", (n_kv * d_head, d_model), "attn._W_V", convert.heads(n_kv), "the values"),
        ("self_attn.o_proj.weight", (d_model, n_heads * d_head), "attn.W_O", convert.out_heads(n_heads), "the output"),
        ("mlp.gate_proj.weight", (d_mlp, d_model), "mlp.W_gate", convert.transposed, "the MLP gate"),
        ("mlp.up_proj.weight", (d_mlp, d_model), "mlp.W_in", convert.transposed, "the MLP input"),
        ("mlp.down_proj.weight", (d_model, d_mlp), "mlp.W_out", convert.transposed, "the MLP output"),
    ]
    if cfg.use_qk_norm:  # Gemma 3
        tensors += [
            ("self_attn.q_norm.weight", (d_head,), "attn.q_norm.w", convert.norm, "the query norm"),
            ("self_attn.k_norm.weight", (d_head,), "attn.k_norm.w", convert.norm, "the key norm"),
        ]
    return tensors


def _embedding(cfg, hf_config: Any, prefix: str, files: dict[str, Path], convert: _Conversions) -> list[_Entry]:
    """The embedding, and the unembedding: the embedding's transpose when tied (Gemma's default)."""
    shape = (cfg.d_vocab, cfg.d_model)
    embed = _Target("embed.W_E", convert.scaled_embedding)
    unembed = _Target("unembed.W_U", convert.transposed)
    if _tied(hf_config):
        return [_Entry(f"{prefix}embed_tokens.weight", shape, "the token embedding", (embed, unembed))]
    head = next((n for n in _LM_HEAD_NAMES if n in files), _LM_HEAD_NAMES[0])
    return [
        _Entry(f"{prefix}embed_tokens.weight", shape, "the token embedding", (embed,)),
        _Entry(head, shape, "the unembedding (lm_head; tie_word_embeddings is false)", (unembed,)),
    ]


# Text checkpoints; multimodal Gemma 3 as transformers 4 and 5 save it.
_LM_HEAD_NAMES = ("lm_head.weight", "language_model.lm_head.weight")


def _tied(hf_config: Any) -> bool:
    tied = getattr(hf_config, "tie_word_embeddings", None)
    if tied is None:
        tied = getattr(getattr(hf_config, "text_config", None), "tie_word_embeddings", True)
    return bool(tied)


def _text_prefix(files: dict[str, Path]) -> str:
    """Where the text model's tensors live: ``model.`` (text checkpoints) or the language model of a
    multimodal one (``language_model.model.``, ``model.language_model.``)."""
    for name in sorted(files, key=len):
        if name.endswith("embed_tokens.weight") and "vision" not in name:
            return name.removesuffix("embed_tokens.weight")
    return "model."  # missing: reported as a missing tensor under the usual name


class _Conversions:
    """HF tensor (in the model's dtype, on its device) -> transformer-lens parameter, as in
    transformer-lens' ``convert_gemma_weights``, as views wherever it takes none of arithmetic."""

    def __init__(self, cfg: HookedTransformerConfig):
        self.cfg = cfg

    def norm(self, weight: torch.Tensor) -> torch.Tensor:
        # Gemma's RMSNorm multiplies by 1 + w; transformer-lens stores 1 + w, computed in float32.
        return (weight.float() + 1.0).to(self.cfg.dtype)

    def scaled_embedding(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * torch.tensor(self.cfg.d_model**0.5, dtype=self.cfg.dtype)

    def heads(self, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
        # "(n h) m -> n m h" as a view: [n, d_model, d_head] whose permute(0, 2, 1) is contiguous.
        return lambda w: w.view(n, self.cfg.d_head, self.cfg.d_model).permute(0, 2, 1)

    def out_heads(self, n: int) -> Callable[[torch.Tensor], torch.Tensor]:
        # "m (n h) -> n h m" as a view: [n, d_head, d_model] whose permute(2, 0, 1) is contiguous.
        return lambda w: w.view(self.cfg.d_model, n, self.cfg.d_head).permute(1, 2, 0)

    @staticmethod
    def transposed(weight: torch.Tensor) -> torch.Tensor:
        return weight.T
