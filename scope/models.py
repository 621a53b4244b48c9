"""Loading a subject into transformer-lens, from the hub, a local checkpoint or the bundled GGUF.

Every subject becomes a sae-lens ``HookedSAETransformer`` built from transformer-lens'
official config for its architecture, loaded *without* weight processing (no LayerNorm
folding or centring), so that activations are the model's own and Gemma Scope SAEs, trained
on the raw residual stream, fit. Which subjects exist is :mod:`scope.subjects`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from scope import _checks
from scope.bundled import ensure_bundled_checkpoint
from scope.gemma_scope import releases_by_model
from scope.layout import relayout_for_speed
from scope.loading import has_safetensors, load_hooked
from scope.subjects import BUNDLED, SUBJECTS, ModelUnavailableError, Subject, register, subject

if TYPE_CHECKING:
    import pandas
    from sae_lens import HookedSAETransformer


def list_models() -> pandas.DataFrame:
    """Every loadable model: name, family, parameters, hub id, gated, fitting Gemma Scope releases."""
    import pandas as pd

    releases = releases_by_model()
    rows = []
    for s in SUBJECTS.values():
        fitting = [r for m in s.sae_models for r in releases.get(m, [])]
        if s.name == BUNDLED:
            fitting = ["demo (bundled)"] + fitting
        rows.append(
            {
                "name": s.name,
                "family": s.family,
                "parameters": s.parameters,
                "hub_id": s.hub_id or "(bundled, offline)",
                "gated": s.gated,
                "chat": s.chat,
                "gemma_scope_releases": fitting,
            }
        )
    return pd.DataFrame(rows)


def default_dtype(device: str | torch.device) -> torch.dtype:
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def load_model(
    name: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    weights: str | Path | None = None,
    verify: bool = False,
) -> HookedSAETransformer:
    """Load a subject as a sae-lens ``HookedSAETransformer`` (no weight processing).

    Args:
        name: one of :func:`list_models`' names, e.g. ``"gemma-2-2b"``, ``"shieldgemma-2b"``,
            or ``"gemma-3-270m"`` (bundled, offline).
        device: default cuda if available, else cpu.
        dtype: default bfloat16 on cuda, float32 on cpu (Google recommends bfloat16 for Gemma 2).
        weights: a local folder holding the HF checkpoint (config, weights, tokenizer) to use
            instead of the hub, e.g. a snapshot you downloaded or a fine-tune of the same
            architecture. The architecture template still comes from ``name``: the checkpoint's
            ``model_type`` must be the subject's (``gemma2`` for Gemma 2 and ShieldGemma,
            ``gemma3_text`` for Gemma 3); its sizes may differ.
        verify: check the sha256 of every file of the bundled model's cache on this load (it is
            checked on the first load of each process anyway, sizes on every load); a cache that
            does not match is converted again. Only for the bundled model.

    Every argument is checked before anything loads. Without network (or with
    ``HF_HUB_OFFLINE=1``) a hub model loads from the local Hugging Face cache, or fails at once.

    Raises:
        ValueError: unknown name, bad device or dtype, a weights folder that does not exist or
            holds another architecture.
        ModelUnavailableError: a hub model that cannot be fetched (offline, or gated without login).
        scope.bundled.CacheError: (an OSError) the bundled model's cache folder ($SCOPE_CACHE) is
            read-only or full.
    """
    spec = subject(name)
    device = _checks.device(device)
    dtype = _checks.dtype(dtype) if dtype is not None else default_dtype(device)
    folder = _weights_folder(spec, weights) if weights is not None else None
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be True or False, got {verify!r}.")
    if verify and (spec.hub_id is not None or folder is not None):
        raise ValueError(
            f"verify=True checks the checksums scope records for the bundled {BUNDLED!r} cache; "
            f"{spec.name} from {folder or spec.hub_id} has none to check. Leave verify out."
        )
    if folder is None and spec.hub_id is None:
        folder = ensure_bundled_checkpoint(verify=verify)
    elif folder is None:
        folder = _hub_snapshot(spec, local_files_only=_hub_offline() or not _hub_reachable())
    model = _load_checkpoint(spec, folder, dtype=dtype, device=device)
    register(model, spec)
    return model


def _load_checkpoint(spec: Subject, folder: Path, *, dtype: torch.dtype, device: str) -> HookedSAETransformer:
    """The checkpoint in ``folder`` as a hooked model: straight from its safetensors onto ``device``
    in ``dtype`` (:mod:`scope.loading`); through a transformers model when it has none (``.bin``)."""
    if not has_safetensors(folder):
        tokenizer, hf_model = _load_hf(spec, folder, dtype)
        return hooked_from_hf(spec.tl_template, hf_model, tokenizer, dtype=dtype, device=device, consume_hf=True)
    from transformers import AutoConfig, AutoTokenizer

    try:
        # With add_bos_token=True up front: transformer-lens would otherwise load it a second time
        # with that setting (get_tokenizer_with_bos), which for Gemma's 256k vocabulary takes seconds.
        tokenizer = AutoTokenizer.from_pretrained(str(folder), add_bos_token=True)
        hf_config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise ValueError(f"Could not load {spec.name} weights from {folder}: {err}") from err
    cfg = _tl_config(spec.tl_template, hf_config, dtype=dtype, device=device)
    return load_hooked(cfg, hf_config, folder, tokenizer)


# What a hub snapshot needs: config, weights (safetensors and their index), tokenizer files. Not
# the GGUF or PyTorch copies some Gemma repositories also carry.
_SNAPSHOT_FILES = ["*.json", "*.safetensors", "tokenizer.model"]


def _hub_snapshot(spec: Subject, *, local_files_only: bool) -> Path:
    """The local folder of ``spec``'s hub checkpoint, downloaded unless ``local_files_only``."""
    from huggingface_hub import snapshot_download

    assert spec.hub_id is not None
    try:
        folder = snapshot_download(spec.hub_id, allow_patterns=_SNAPSHOT_FILES, local_files_only=local_files_only)
    except (OSError, ValueError) as err:  # huggingface_hub's errors are OSErrors (HTTP) or ValueErrors
        raise ModelUnavailableError(_unavailable_message(spec, err, offline=local_files_only)) from err
    return Path(folder)


def _load_hf(
    spec: Subject, source: str | Path, dtype: torch.dtype, *, local_files_only: bool = False
) -> tuple[Any, Any]:
    """Tokenizer and HF model from a hub id or a local checkpoint folder.

    A multimodal Gemma 3 checkpoint (4B-27B, ``Gemma3ForConditionalGeneration``) loads whole;
    :func:`hooked_from_hf` converts its language model only, so the vision tower is dropped with
    the HF model and scope takes text alone.

    ``local_files_only``: the hub is not reachable (or HF_HUB_OFFLINE): only the local HF cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = isinstance(source, Path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=local_files_only)
        hf_model = AutoModelForCausalLM.from_pretrained(str(source), dtype=dtype, local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        if local:
            raise ValueError(f"Could not load {spec.name} weights from {source}: {err}") from err
        if isinstance(err, ValueError):
            raise
        raise ModelUnavailableError(_unavailable_message(spec, err, offline=local_files_only)) from err
    hf_model.eval()
    return tokenizer, hf_model


def _weights_folder(spec: Subject, weights: Any) -> Path:
    """``weights`` as a checkpoint folder of ``spec``'s architecture; TypeError/ValueError otherwise."""
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be a folder (a str or Path), got {type(weights).__name__}: {weights!r}.")
    folder = Path(weights).expanduser()
    how = "config.json, the weights (*.safetensors) and the tokenizer files, as written by save_pretrained()"
    if spec.hub_id:
        how += f" or downloaded with `hf download {spec.hub_id} --local-dir <folder>`"
    if not folder.exists():
        raise ValueError(
            f"weights={str(weights)!r}: the folder {folder} does not exist. Pass a local folder "
            f"holding a checkpoint of {spec.name} ({how}), or leave weights out to load "
            + (f"{spec.hub_id} from the hub." if spec.hub_id else "the bundled model.")
        )
    if not folder.is_dir():
        raise ValueError(f"weights={str(weights)!r} is a file, not a folder: pass the folder that holds {how}.")
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"weights={str(folder)!r} is not a Hugging Face checkpoint folder for {spec.name}: it needs {how}."
        )
    try:
        config = json.loads((folder / "config.json").read_text())
        found = config.get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(
            f"weights={str(folder)!r}: its config.json cannot be read as a Hugging Face config ({err})."
        ) from None
    if spec.model_types and found not in spec.model_types:
        expected = " or ".join(map(repr, spec.model_types))
        fitting = [s for s in SUBJECTS.values() if found in s.model_types]
        families = " or ".join(dict.fromkeys(s.family for s in fitting))
        hint = (
            f" A {found!r} checkpoint loads under a {families} name, e.g. {fitting[0].name!r}."
            if fitting
            else f" scope loads only {', '.join(sorted({t for s in SUBJECTS.values() for t in s.model_types}))} "
            "checkpoints."
        )
        if found is None:
            raise ValueError(
                f"weights={str(folder)!r}: its config.json has no model_type, so it cannot be "
                f"checked to be a {spec.family} checkpoint (model_type {expected}) for {spec.name}."
            )
        raise ValueError(
            f"weights={str(folder)!r} holds a {found!r} checkpoint (model_type in its config.json), "
            f"but {spec.name} is {spec.family}: model_type {expected} expected. Its weights would "
            f"run through the wrong architecture.{hint}"
        )
    return folder


# The hub's reachability is probed this long before a download is tried (the hub library's own
# retries take most of a minute to give up).
HUB_PROBE_TIMEOUT_S = 2.5


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, in huggingface_hub's settings or the environment."""
    from huggingface_hub import constants

    env = any(
        os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )
    return bool(constants.HF_HUB_OFFLINE) or env


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the hub endpoint answers an HTTP request within ``timeout`` seconds.

    Through huggingface_hub's own HTTP client (its proxies and endpoint settings), in a thread,
    so that a name lookup that hangs (which no socket timeout covers) costs ``timeout`` too."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    answered: list[bool] = []

    def probe() -> None:
        try:
            response = get_session().head(constants.ENDPOINT, timeout=timeout, follow_redirects=False)
            answered.append(response.status_code < 500)
        except Exception:  # any failure to get an answer: unreachable
            answered.append(False)

    thread = threading.Thread(target=probe, name="scope-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(answered and answered[0])


def hub_status() -> str:
    """One line on whether hub models can be downloaded now (for ``scope doctor``)."""
    from huggingface_hub import constants

    if _hub_offline():
        return "offline: HF_HUB_OFFLINE is set; hub models load from the local Hugging Face cache only"
    if _hub_reachable():
        return f"{constants.ENDPOINT} answers"
    return (
        f"{constants.ENDPOINT} does not answer within {HUB_PROBE_TIMEOUT_S} s; hub models load from the "
        "local Hugging Face cache only"
    )


def _unavailable_message(spec: Subject, err: BaseException, *, offline: bool = False) -> str:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    chain = _exception_chain(err)
    text = " ".join(str(e) for e in chain).lower()
    url = f"https://huggingface.co/{spec.hub_id}"
    if any(isinstance(e, GatedRepoError) for e in chain) or "gated" in text:
        why = f"{spec.hub_id} is gated and this machine is not logged in with access to it"
        fix = f"accept the licence at {url}, then run `hf auth login` (or set HF_TOKEN)"
    elif any(isinstance(e, RepositoryNotFoundError) for e in chain):
        why = f"{spec.hub_id} was not found on the Hugging Face Hub (or is gated without login)"
        fix = f"check {url}, accept its licence and log in with `hf auth login`"
    else:
        if offline and _hub_offline():
            why = f"HF_HUB_OFFLINE is set and {spec.hub_id} is not in the local Hugging Face cache"
            connect = "unset HF_HUB_OFFLINE and connect to the internet once to download it"
        else:
            why = f"the Hugging Face Hub could not be reached and {spec.hub_id} is not in the local cache"
            connect = "connect to the internet once to download it"
        fix = f"{connect} (it is cached afterwards), or pass weights=<local folder> with a downloaded snapshot"
    return (
        f"Cannot load {spec.name!r}: {why}. Fix: {fix}. "
        f"Working offline? The bundled model needs no network: scope.load_model({BUNDLED!r})."
    )


def _exception_chain(err: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return chain


def hooked_from_hf(
    template: str, hf_model: Any, tokenizer: Any, *, dtype: torch.dtype, device: str, consume_hf: bool = False
):
    """Build a ``HookedSAETransformer`` from a HF model with transformer-lens' official config.

    ``template`` names the official architecture (e.g. ``google/gemma-2-2b``). Sizes are read
    from the HF model's own config, so the same path serves the real weights (where they equal
    the template's) and small models of the same architecture used in tests.

    With ``consume_hf`` the HF model's weights are released as they are converted (it is left
    on the meta device), so that loading holds about one copy of the weights, not two or three.
    """
    import transformer_lens.loading_from_pretrained as tl_loading
    from sae_lens import HookedSAETransformer

    cfg = _tl_config(template, hf_model.config, dtype=dtype, device=device)
    model = HookedSAETransformer(cfg, tokenizer, move_to_device=False)  # weights allocated lazily
    with contextlib.redirect_stdout(io.StringIO()):  # transformer-lens prints on load
        # Passed without keeping a reference: transformer-lens loads the state dict key by key and
        # deletes each entry once copied, so converted weights are freed as the model fills up.
        model.load_and_process_state_dict(
            _converted_weights(tl_loading, template, cfg, hf_model, dtype, consume_hf),
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
    model.move_model_modules_to_device()
    relayout_for_speed(model)  # same values, strides that spare a weight copy per matmul
    model.eval()
    return model


def _converted_weights(tl_loading, template, cfg, hf_model, dtype, consume_hf: bool) -> dict:
    state_dict = tl_loading.get_pretrained_state_dict(template, cfg, hf_model, dtype=dtype)
    if consume_hf:
        hf_model.to("meta")  # from here on the state dict holds the only reference to each weight
    return state_dict


def _tl_config(template: str, hf_config: Any, *, dtype: torch.dtype, device: str):
    """transformer-lens' official config of ``template`` with the sizes of the checkpoint's ``hf_config``."""
    import transformer_lens.loading_from_pretrained as tl_loading

    cfg = tl_loading.get_pretrained_model_config(template, dtype=dtype, device=device, fold_ln=False)
    return _with_sizes_of(cfg, hf_config)


def _with_sizes_of(cfg, hf_config):
    """transformer-lens config ``cfg`` with the sizes of ``hf_config`` (a Gemma 2/3 HF config).

    For Gemma 3 that includes what differs between checkpoints beyond sizes: the sliding window,
    which layers are local, the attention scale, and the two rope bases (and the global layers'
    linear rope scaling of 4B-27B). A multimodal config (4B-27B) is read through its ``text_config``.
    """
    from transformer_lens import HookedTransformerConfig

    text_config = getattr(hf_config, "text_config", None) or hf_config
    sizes = {
        "d_model": text_config.hidden_size,
        "d_head": text_config.head_dim,
        "n_heads": text_config.num_attention_heads,
        "n_key_value_heads": text_config.num_key_value_heads,
        "d_mlp": text_config.intermediate_size,
        "n_layers": text_config.num_hidden_layers,
        "d_vocab": text_config.vocab_size,
        "window_size": text_config.sliding_window,
        "rotary_dim": text_config.head_dim,
        "eps": text_config.rms_norm_eps,
        "attn_scores_soft_cap": _softcap(getattr(text_config, "attn_logit_softcapping", None)),
        "output_logits_soft_cap": _softcap(getattr(text_config, "final_logit_softcapping", None)),
        "n_ctx": min(cfg.n_ctx, text_config.max_position_embeddings),
    }
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types:
        sizes["attn_types"] = ["local" if t == "sliding_attention" else "global" for t in layer_types]
    scalar = getattr(text_config, "query_pre_attn_scalar", None)
    if scalar is not None:
        sizes["attn_scale"] = math.sqrt(scalar)
    sizes.update(_rope_of(text_config))
    current = cfg.to_dict()
    sizes = {k: v for k, v in sizes.items() if not _same(current.get(k), v)}
    if not sizes:  # the official config already describes this checkpoint
        return cfg
    updated = {k: v for k, v in current.items() if k not in _DERIVED_CONFIG_FIELDS}
    updated.update(sizes)
    updated["d_vocab_out"] = updated["d_vocab"]
    return HookedTransformerConfig.from_dict(updated)


def _rope_of(text_config) -> dict[str, Any]:
    """Gemma 3's two rope bases (global and local layers) and the global layers' linear scaling,
    as transformer-lens names them. Gemma 2 configs (one base, no layer kinds) give nothing."""
    params = getattr(text_config, "rope_parameters", None) or {}
    if "full_attention" not in params:  # Gemma 2, or a config without per-kind rope parameters
        return {}
    full, local = params["full_attention"], params.get("sliding_attention", params["full_attention"])
    for kind, rope in (("full_attention", full), ("sliding_attention", local)):
        if rope.get("rope_type", "default") not in ("default", "linear"):
            raise ValueError(
                f"rope_type {rope['rope_type']!r} of the {kind} layers is not one transformer-lens "
                "runs for Gemma 3; 'default' and 'linear' are (what Gemma 3 checkpoints use)."
            )
    if local.get("rope_type", "default") == "linear" and float(local.get("factor", 1.0)) != 1.0:
        raise ValueError("transformer-lens scales the rope of global layers only; this config scales local ones too.")
    return {
        "rotary_base": float(full["rope_theta"]),
        "rotary_base_local": float(local["rope_theta"]),
        "rotary_scaling_factor": float(full.get("factor", 1.0)) if full.get("rope_type") == "linear" else 1.0,
    }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def _softcap(value: float | None) -> float:
    from transformer_lens.utilities.activation_functions import SOFTCAP_DISABLED

    return SOFTCAP_DISABLED if value is None else float(value)


# Fields HookedTransformerConfig computes itself in __post_init__.
_DERIVED_CONFIG_FIELDS = {"n_params", "d_vocab_out"}
