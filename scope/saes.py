"""SAE specs and loading: which Gemma Scope SAE fits which model, and loading any SAE.

Everything loads into sae-lens' own classes (a Gemma Scope ``params.npz`` becomes a
sae-lens ``JumpReLUSAE``), so an SAE from scope works with every sae-lens and
``HookedSAETransformer`` API. What sae-lens lacks and this module adds:

- :func:`gemma_scope_id`: the Gemma Scope ``(release, sae_id)`` for a model, layer,
  site, width and sparsity, read from sae-lens' registry (no network), with errors
  that say what does exist (e.g. Gemma 2 9B-IT has its own residual SAEs only at
  layers 9, 20 and 31).
- :func:`load_sae`: one entry point for registry ids, local ``params.npz`` files,
  sae-lens folders and the bundled demo SAE, with malformed files reported by
  name and problem.
- :func:`check_compatible`: an SAE meeting a model must read a hook that exists
  there, with the width it has there.
- :func:`load_saes`: every layer's SAE, loaded only when first used.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scope.subjects import SUBJECTS, ModelUnavailableError, default_device, subject

SITES = ("res", "mlp", "att")
SITE_NAMES = {"res": "residual stream", "mlp": "MLP output", "att": "attention output (hook_z)"}
DEMO_SAE_DIR = Path(__file__).resolve().parent.parent / "data" / "demo_sae"
GEMMA_SCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")

_WIDTHS = {"4k": 4096, "16k": 16384, "32k": 32768, "65k": 65536, "131k": 131072,
           "262k": 262144, "524k": 524288, "1m": 1048576}
_RELEASE_RE = re.compile(r"^gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att)(-canonical)?$")
_ID_RE = re.compile(r"^layer_(\d+)/width_(\w+)/(canonical|average_l0_(\d+))$")
_BLOCK_HOOK_RE = re.compile(r"^blocks\.(\d+)\.")


# ----------------------------------------------------------------------------- registry


@dataclass
class _Family:
    """The Gemma Scope SAEs of one (size, pt/it, site): canonical ids and l0 variants per (layer, width)."""

    release: str  # the non-canonical release name (without "-canonical")
    canonical: set[tuple[int, str]] = field(default_factory=set)
    l0s: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    has_canonical_release: bool = False
    has_l0_release: bool = False

    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.canonical | set(self.l0s)})

    def widths(self, layer: int) -> list[str]:
        found = {w for lay, w in self.canonical | set(self.l0s) if lay == layer}
        return sorted(found, key=_WIDTHS.get)


@functools.lru_cache(maxsize=1)
def _gemma_scope_index() -> dict[tuple[str, str, str], _Family]:
    """sae-lens' Gemma Scope (Gemma 2) releases, indexed by (size, "pt"/"it", site)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    index: dict[tuple[str, str, str], _Family] = {}
    for release, lookup in get_pretrained_saes_directory().items():
        match = _RELEASE_RE.match(release)
        if not match:
            continue
        size, variant, site, canonical = match.groups()
        base = release.removesuffix("-canonical")
        family = index.setdefault((size, variant, site), _Family(base))
        if canonical:
            family.has_canonical_release = True
        else:
            family.has_l0_release = True
        for sae_id in lookup.saes_map:
            parsed = _ID_RE.match(sae_id)
            if not parsed:  # e.g. embedding SAEs
                continue
            layer, width, kind, l0 = int(parsed[1]), parsed[2], parsed[3], parsed[4]
            if kind == "canonical":
                family.canonical.add((layer, width))
            else:
                family.l0s.setdefault((layer, width), []).append(int(l0))
    for family in index.values():
        for values in family.l0s.values():
            values.sort()
    return index


def _model_name(model: Any) -> str:
    if isinstance(model, str):
        return model
    spec = getattr(model, "scope_subject", None)
    if spec is None:
        raise TypeError(
            "model must be a model name (e.g. 'gemma-2-2b') or a model loaded with scope.load_model, "
            f"got {type(model).__name__} without a scope_subject."
        )
    return spec.name


def _gemma_scope_models() -> list[str]:
    return [name for name in SUBJECTS if _size_of(name) is not None]


def _size_of(name: str) -> str | None:
    match = re.match(r"^(?:gemma-2|shieldgemma)-(2b|9b|27b)(-it)?$", name)
    return match[1] if match else None


def _family_for(name: str, site: str) -> _Family:
    """Which Gemma Scope family serves ``name`` at ``site``: the model's own IT SAEs when they
    exist (9B-IT residual), otherwise the base model's (they transfer to -it and ShieldGemma)."""
    subject(name)  # unknown names: ValueError listing valid ones
    size = _size_of(name)
    if size is None:
        raise ValueError(
            f"There are no Gemma Scope (Gemma 2) SAEs for {name!r}. Models with Gemma Scope SAEs: "
            f"{', '.join(_gemma_scope_models())}."
            + (" For the bundled model use scope.load_sae('demo'), or a 'RELEASE/SAE_ID' spec from "
               "sae-lens' registry (e.g. the gemma-scope-2-270m-pt-res releases)." if "gemma-3" in name else "")
        )
    if site not in SITES:
        raise ValueError(f"Unknown site {site!r}. Valid sites: {', '.join(map(repr, SITES))} "
                         f"({', '.join(SITE_NAMES.values())}).")
    index = _gemma_scope_index()
    if name.startswith("gemma-2-") and name.endswith("-it") and (size, "it", site) in index:
        return index[(size, "it", site)]
    if (size, "pt", site) in index:
        return index[(size, "pt", site)]
    sites = [s for s in SITES if (size, "pt", s) in index or (size, "it", s) in index]
    raise ValueError(f"Gemma Scope has no {SITE_NAMES[site]} SAEs for {name}; it has site(s) "
                     f"{', '.join(map(repr, sites))} for this model size.")


def _normalize_width(width: str | int) -> str:
    if isinstance(width, int) and not isinstance(width, bool):
        for name, size in _WIDTHS.items():
            if size == width:
                return name
    elif isinstance(width, str) and width.lower() in _WIDTHS:
        return width.lower()
    raise ValueError(f"Unknown width {width!r}. Gemma Scope widths: {', '.join(_WIDTHS)} "
                     f"(or the numbers {', '.join(str(v) for v in _WIDTHS.values())}).")


def _describe_layers(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    runs: list[list[int]] = []
    for layer in sorted(layers):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def gemma_scope_id(
    model: Any,
    layer: int,
    site: str = "res",
    width: str | int = "16k",
    l0: str | float = "canonical",
) -> tuple[str, str]:
    """The Gemma Scope ``(release, sae_id)`` for ``model`` at ``layer``, from sae-lens' registry.

    No network: this only reads the registry bundled with sae-lens. Pass the result to
    :func:`load_sae` as ``f"{release}/{sae_id}"``.

    Args:
        model: a model name (``"gemma-2-2b"``, ``"gemma-2-9b-it"``, ``"shieldgemma-2b"`` ...) or a
            model from :func:`scope.load_model`. ``-it`` models and ShieldGemma use the base
            model's SAEs (they transfer), except Gemma 2 9B-IT's residual stream, which has its
            own SAEs at layers 9, 20 and 31 only.
        layer: the block whose output (res/mlp) or attention (att) the SAE reads.
        site: ``"res"`` (``blocks.L.hook_resid_post``), ``"mlp"`` (``blocks.L.hook_mlp_out``) or
            ``"att"`` (``blocks.L.attn.hook_z``).
        width: dictionary size, ``"16k"``, ``"65k"``, ``"131k"``, ``"1m"`` ... or its number.
        l0: ``"canonical"`` (the SAE Neuronpedia shows, average L0 closest to 100) or a number:
            the listed SAE with the nearest average L0.

    Raises:
        ValueError: unknown model, site, layer, width or l0; the message names what exists.
    """
    name = _model_name(model)
    family = _family_for(name, site)
    width = _normalize_width(width)
    _check_layer(family, name, site, layer)
    if width not in family.widths(layer):
        raise ValueError(f"No {width}-wide Gemma Scope {site} SAE for {name} at layer {layer}; "
                         f"widths there: {', '.join(family.widths(layer))}.")
    if isinstance(l0, str) and l0 == "canonical":
        return _canonical_id(family, name, site, layer, width)
    return _nearest_l0_id(family, name, site, layer, width, l0)


def _check_layer(family: _Family, name: str, site: str, layer: Any) -> None:
    if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool):
        raise ValueError(f"layer must be an integer, got {layer!r}.")
    layers = family.layers()
    if layer in layers:
        return
    message = (f"No Gemma Scope {site} SAE for {name} at layer {layer}; {family.release} covers "
               f"layer(s) {_describe_layers(layers)} only.")
    if family.release.startswith("gemma-scope-9b-it"):
        message += (" The base model's SAEs transfer to the IT model: "
                    f"scope.gemma_scope_id('gemma-2-9b', {layer}, site={site!r}).")
    raise ValueError(message)


def _canonical_id(family: _Family, name: str, site: str, layer: int, width: str) -> tuple[str, str]:
    if (layer, width) not in family.canonical:
        listed = family.l0s.get((layer, width), [])
        raise ValueError(f"Gemma Scope lists no canonical {width} {site} SAE for {name} at layer {layer}; "
                         f"pass l0= one of {listed} instead.")
    return f"{family.release}-canonical", f"layer_{layer}/width_{width}/canonical"


def _nearest_l0_id(family: _Family, name: str, site: str, layer: int, width: str,
                   l0: Any) -> tuple[str, str]:
    if isinstance(l0, bool) or not isinstance(l0, (int, float, np.integer, np.floating)) or not math.isfinite(l0):
        raise ValueError(f"l0 must be 'canonical' or a number (the target average L0), got {l0!r}.")
    listed = family.l0s.get((layer, width), [])
    if not listed:
        raise ValueError(f"Gemma Scope lists only the canonical {width} {site} SAE for {name} at layer "
                         f"{layer}; use l0='canonical'.")
    nearest = min(listed, key=lambda value: (abs(value - l0), value))
    return family.release, f"layer_{layer}/width_{width}/average_l0_{nearest}"


# ----------------------------------------------------------------------------- loading


def load_sae(
    spec: str | os.PathLike,
    *,
    hook: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
):
    """Load an SAE as a sae-lens ``SAE`` from any of the places SAEs live.

    Args:
        spec: one of
            - ``"RELEASE/SAE_ID"`` from sae-lens' registry, e.g.
              ``"gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"`` (downloaded
              from the Hugging Face Hub through ``SAE.from_pretrained``; see :func:`gemma_scope_id`),
            - a local Gemma Scope ``params.npz`` (or a folder holding one); ``hook=`` is required
              because the file does not record where it was trained,
            - a local sae-lens folder (``cfg.json`` + ``sae_weights.safetensors``),
            - ``"demo"``: the bundled SAE for the bundled ``gemma-3-270m``.
        hook: the hook the SAE reads, e.g. ``"blocks.20.hook_resid_post"``. Required for
            ``params.npz``; for other specs it overrides the recorded hook.
        device: default cuda if available, else cpu.
        dtype: default float32 (Gemma Scope's own dtype); pass the model's dtype to save memory.

    Raises:
        FileNotFoundError: a local path (or the demo SAE) that does not exist.
        ValueError: a malformed file (naming the file and the problem), an unknown release or id,
            or a missing ``hook=``.
        ModelUnavailableError: a registry SAE that cannot be downloaded.
    """
    device = str(device) if device is not None else default_device()
    dtype_name = _dtype_name(dtype)
    text = os.fspath(spec)
    if text == "demo":
        sae = _load_demo(device, dtype_name)
    else:
        path = Path(text).expanduser()
        if path.exists():
            sae = _load_local(path, hook, device, dtype_name)
        else:
            sae = _load_registry_or_fail(text, device, dtype_name)
    if hook is not None:
        sae.cfg.metadata.hook_name = hook
    return sae


def sae_hook(sae) -> str:
    """The hook name an SAE reads (sae-lens 6 keeps it in ``cfg.metadata``)."""
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise ValueError("This SAE records no hook name; load it with scope.load_sae(..., hook='blocks.L.hook_resid_post').")
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


def _dtype_name(dtype: torch.dtype | str | None) -> str:
    if dtype is None:
        return "float32"
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}. Use e.g. 'float32', 'bfloat16', 'float16'.")
    return str(resolved).removeprefix("torch.")


def _load_demo(device: str, dtype: str):
    if not (DEMO_SAE_DIR / "cfg.json").is_file():
        raise FileNotFoundError(
            f"The demo SAE is not in {DEMO_SAE_DIR} (expected cfg.json + sae_weights.safetensors). "
            "It is built by scripts/train_demo_sae.py; run that script once to create it."
        )
    sae = _load_sae_lens_folder(DEMO_SAE_DIR, device, dtype)
    _attach_feature_stats(sae, DEMO_SAE_DIR / "feature_stats.safetensors")
    return sae


def _attach_feature_stats(sae, path: Path) -> None:
    """Give the SAE its held-out max activations (written by scripts/eval_demo_sae.py), so that
    ``Clamp(..., unit="max")`` works offline; the full statistics stay on ``sae.scope_feature_stats``."""
    if not path.is_file():
        return
    from safetensors.torch import load_file

    from scope.steering import set_max_activations

    stats = load_file(str(path))
    set_max_activations(sae, stats["max_activation"])
    sae.scope_feature_stats = stats


def _load_local(path: Path, hook: str | None, device: str, dtype: str):
    if path.is_dir() and (path / "cfg.json").is_file():
        return _load_sae_lens_folder(path, device, dtype)
    npz = path / "params.npz" if path.is_dir() else path
    if npz.suffix == ".npz" and npz.is_file():
        return load_gemma_scope_npz(npz, hook=hook, device=device, dtype=dtype)
    raise ValueError(
        f"{path} is not an SAE: expected a sae-lens folder (cfg.json + sae_weights.safetensors), "
        "a Gemma Scope params.npz, or a folder holding params.npz."
    )


def _load_sae_lens_folder(path: Path, device: str, dtype: str):
    from sae_lens import SAE

    weights = path / "sae_weights.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: a sae-lens SAE folder holds cfg.json and sae_weights.safetensors.")
    try:
        return SAE.load_from_disk(path, device=device, dtype=dtype)
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        raise ValueError(f"Could not load the sae-lens SAE folder {path}: {err}") from err


def _load_registry_or_fail(text: str, device: str, dtype: str):
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    release, sae_id = _split_registry_spec(text, directory)
    if release is None:
        if text.startswith(("/", ".", "~")) or text.endswith((".npz", ".json", ".safetensors")):
            raise FileNotFoundError(f"No such SAE file or folder: {text}")
        close = difflib.get_close_matches(text.split("/")[0], list(directory), n=3)
        raise ValueError(
            f"SAE spec {text!r} is neither an existing local path nor 'RELEASE/SAE_ID' from sae-lens' registry"
            + (f" (did you mean release {' or '.join(map(repr, close))}?)" if close else "")
            + ". Use scope.gemma_scope_id(model, layer) for Gemma Scope ids, a local params.npz or "
            "sae-lens folder, or 'demo'."
        )
    ids = directory[release].saes_map
    if sae_id not in ids:
        close = difflib.get_close_matches(sae_id, list(ids), n=3, cutoff=0.5)
        raise ValueError(f"SAE id {sae_id!r} is not in release {release!r}"
                         + (f"; closest ids: {', '.join(close)}" if close else "")
                         + f". The release has {len(ids)} ids, e.g. {next(iter(ids))!r}.")
    return _from_pretrained(release, sae_id, device, dtype)


def _split_registry_spec(text: str, directory: Mapping[str, Any]) -> tuple[str | None, str]:
    """Longest release name that prefixes ``text`` followed by '/'."""
    parts = text.split("/")
    for cut in range(len(parts) - 1, 0, -1):
        release = "/".join(parts[:cut])
        if release in directory:
            return release, "/".join(parts[cut:])
    return None, ""


def _from_pretrained(release: str, sae_id: str, device: str, dtype: str):
    from sae_lens import SAE

    try:
        return SAE.from_pretrained(release, sae_id, device=device, dtype=dtype)
    except OSError as err:
        raise ModelUnavailableError(
            f"Cannot download SAE {release}/{sae_id} from the Hugging Face Hub ({err}). Connect to the "
            "internet once (it is cached afterwards), or load a local params.npz / sae-lens folder."
        ) from err


# ----------------------------------------------------------------------------- params.npz


def read_params_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a Gemma Scope ``params.npz``, checked for keys, shapes and readability.

    Raises ValueError naming the file and the problem (missing key, wrong shape, truncated or
    not an npz), so that a bad download is not mistaken for a bad model.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in GEMMA_SCOPE_KEYS if key not in data.files]
            if missing:
                raise ValueError(f"{path}: missing key(s) {', '.join(missing)}; a Gemma Scope params.npz holds "
                                 f"{', '.join(GEMMA_SCOPE_KEYS)} (found {', '.join(data.files) or 'nothing'}).")
            arrays = {key: data[key] for key in GEMMA_SCOPE_KEYS}
    except ValueError as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path} is not a readable params.npz (truncated or corrupt?): {err}") from err
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable params.npz (truncated or corrupt?): {err}") from err
    _check_npz_shapes(path, arrays)
    return arrays


def _check_npz_shapes(path: Path, arrays: dict[str, np.ndarray]) -> None:
    for key, array in arrays.items():
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{path}: {key} has dtype {array.dtype}, expected floating point.")
    if arrays["W_enc"].ndim != 2:
        raise ValueError(f"{path}: W_enc has shape {arrays['W_enc'].shape}, expected 2-D [d_in, d_sae].")
    d_in, d_sae = arrays["W_enc"].shape
    expected = {"W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,), "threshold": (d_sae,)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ValueError(f"{path}: {key} has shape {arrays[key].shape}, expected {shape} "
                             f"(W_enc is [d_in, d_sae] = {(d_in, d_sae)}).")


def load_gemma_scope_npz(
    path: str | os.PathLike,
    *,
    hook: str | None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
):
    """A Gemma Scope ``params.npz`` as a sae-lens ``JumpReLUSAE`` reading ``hook``.

    Built through sae-lens' own disk loader with a converter, so the SAE is exactly what
    ``SAE.from_pretrained`` makes from the same file (same config: JumpReLU, no b_dec
    subtraction on input).
    """
    from sae_lens import SAE

    if not hook:
        raise ValueError(f"hook= is required to load {path}: a Gemma Scope params.npz does not record where "
                         "it was trained. Pass e.g. hook='blocks.20.hook_resid_post' (res), "
                         "'blocks.20.hook_mlp_out' (mlp) or 'blocks.20.attn.hook_z' (att).")
    device = str(device) if device is not None else default_device()
    converter = functools.partial(_npz_converter, hook=hook)
    return SAE.load_from_disk(path, device=device, dtype=_dtype_name(dtype), converter=converter)


def _npz_converter(path: str | Path, device: str, cfg_overrides: dict[str, Any] | None, *, hook: str):
    arrays = read_params_npz(path)
    d_in, d_sae = arrays["W_enc"].shape
    cfg = {
        "architecture": "jumprelu", "d_in": int(d_in), "d_sae": int(d_sae), "dtype": "float32",
        "device": device, "hook_name": hook, "hook_head_index": None, "activation_fn": "relu",
        "apply_b_dec_to_input": False, "normalize_activations": None, "prepend_bos": True,
        "reshape_activations": "hook_z" if hook.endswith("hook_z") else "none",
        "neuronpedia_id": None, "model_name": None,
    }
    cfg.update(cfg_overrides or {})
    dtype = getattr(torch, cfg["dtype"])
    state = {key: torch.from_numpy(np.ascontiguousarray(value)).to(device=device, dtype=dtype)
             for key, value in arrays.items()}
    return cfg, state


# ----------------------------------------------------------------------------- compatibility


def activation_widths(model, hooks: list[str]) -> dict[str, tuple[int, ...]]:
    """Activation shape (without batch and position) at each hook, from one 1-token forward
    that stops after the last block needed."""
    from scope.features import run_to_hooks

    tokens = torch.tensor([[model.tokenizer.bos_token_id or 0]], device=model.cfg.device)
    acts = run_to_hooks(model, tokens, hooks)
    return {hook: tuple(act.shape[2:]) for hook, act in acts.items()}


def check_compatible(model, sae, *, _shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Raise ValueError unless ``sae`` can read ``model``: its hook exists there and its d_in
    equals the activation width at that hook. Attaches nothing.

    An SAE for another model usually fails here (Gemma 2 2B's d_model is 2304, 9B's 3584),
    rather than deep inside a matmul or, worse, silently on a same-width model's wrong layer.
    The width is measured with a one-token forward that stops at the hook's block.
    """
    hook = sae_hook(sae)
    check_hook_exists(model, hook)
    check_width(model, sae, (_shapes or activation_widths(model, [hook]))[hook])


def check_width(model, sae, shape: tuple[int, ...]) -> None:
    """ValueError unless an activation of ``shape`` (no batch/position dims) fits ``sae``'s d_in,
    and the SAE sits on the model's device type."""
    hook = sae_hook(sae)
    width = math.prod(shape) if sae.cfg.reshape_activations == "hook_z" else shape[-1]
    if width != sae.cfg.d_in:
        raise ValueError(f"SAE d_in is {sae.cfg.d_in} but {_describe_model(model)} has width {width} at {hook} "
                         f"(activation shape {list(shape)}): this SAE was made for another model or hook.")
    if torch.device(sae.device).type != torch.device(model.cfg.device).type:
        raise ValueError(f"SAE is on {sae.device} but the model is on {model.cfg.device}; "
                         f"load it with device={str(model.cfg.device)!r} or call sae.to(...).")


def check_hook_exists(model, hook: str) -> None:
    """ValueError naming the hook and examples of valid ones when ``model`` has no such hook."""
    if hook in model.hook_dict or hook in getattr(model, "acts_to_saes", {}):
        return
    close = difflib.get_close_matches(hook, list(model.hook_dict), n=3)
    last = model.cfg.n_layers - 1
    raise ValueError(f"{_describe_model(model)} has no hook {hook!r}"
                     + (f"; closest: {', '.join(close)}" if close else "")
                     + f". Blocks are 0..{last}, e.g. blocks.{last}.hook_resid_post, "
                     f"blocks.{last}.hook_mlp_out, blocks.{last}.attn.hook_z.")


def _describe_model(model) -> str:
    spec = getattr(model, "scope_subject", None)
    name = spec.name if spec is not None else type(model).__name__
    return f"{name} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model})"


# ----------------------------------------------------------------------------- every layer


class LazySAEs(Mapping):
    """layer -> SAE, each loaded (and checked against the model) on first access, then kept.

    Iterating keys costs nothing; touching values loads them. ``loaded`` says which layers are
    in memory; ``unload(layer)`` frees one.
    """

    def __init__(self, model, specs: dict[int, str], device: str, dtype: torch.dtype | str):
        self._model = model
        self._specs = specs
        self._device = device
        self._dtype = dtype
        self._cache: dict[int, Any] = {}

    def __getitem__(self, layer: int):
        if layer not in self._specs:
            raise KeyError(f"No SAE for layer {layer}; layers here: {_describe_layers(sorted(self._specs))}.")
        if layer not in self._cache:
            sae = load_sae(self._specs[layer], device=self._device, dtype=self._dtype)
            if not isinstance(self._model, str):
                check_compatible(self._model, sae)
            self._cache[layer] = sae
        return self._cache[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def specs(self) -> dict[int, str]:
        """layer -> the ``"RELEASE/SAE_ID"`` spec it loads."""
        return dict(self._specs)

    @property
    def loaded(self) -> list[int]:
        return sorted(self._cache)

    def unload(self, layer: int) -> None:
        self._cache.pop(layer, None)

    def __repr__(self) -> str:
        return f"LazySAEs(layers={_describe_layers(sorted(self._specs))}, loaded={self.loaded})"


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
    name = _model_name(model)
    if layers == "all":
        layers = _family_for(name, site).layers()
    elif isinstance(layers, (str, int)):
        raise ValueError(f"layers must be 'all' or a list of integers, got {layers!r}.")
    specs = {int(layer): "/".join(gemma_scope_id(name, layer, site, width, l0)) for layer in layers}
    if not isinstance(model, str):
        device = device if device is not None else str(model.cfg.device)
        dtype = dtype if dtype is not None else model.cfg.dtype
    return LazySAEs(model, specs, str(device) if device is not None else default_device(), dtype)
