"""Loading SAEs from anywhere, as sae-lens' own classes.

Everything loads into sae-lens' classes (a Gemma Scope ``params.npz`` becomes a sae-lens
``JumpReLUSAE``), so an SAE from scope works with every sae-lens and ``HookedSAETransformer``
API. What sae-lens lacks and this module adds:

- :func:`load_sae`: one entry point for registry ids (a ``"release/sae_id"`` string or a
  :func:`scope.gemma_scope_id` tuple), local ``params.npz`` files, sae-lens folders and the
  bundled demo SAEs, with malformed files reported by name and problem.
- :data:`DEMO_SAES`: the SAEs shipped in ``data/`` for the bundled ``gemma-3-270m``, by name:

  - ``"demo"`` (``data/demo_sae``): the general demo SAE, 8,192 JumpReLU features on
    ``blocks.9.hook_resid_post`` (layer 9 of 18), unit-norm decoder rows, trained on general
    English and Debian documentation/code in equal characters;
  - ``"demo-docs"`` (``data/demo_sae_docs``): the first demo SAE, 4,096 JumpReLU features on
    ``blocks.6.hook_resid_post``, trained on Debian documentation and code only (decoder rows
    not unit-norm); feature 141 is ``if`` opening a Python statement;
  - ``"demo-modern"`` (``data/demo_sae_modern``): 4,096 BatchTopK features (k = 50, saved as
    JumpReLU) on ``blocks.12.hook_resid_post``, the layer that separates concepts best, trained
    on general, modern (Debian FAQs, manuals, handbooks) and documentation English; its features
    include concept features that steer (its ``golden_gate.json``), and ~190 dense features
    that are antipodal pairs (:func:`scope.density.antipodal_pairs`), hidden by the views.

  All are built by ``scripts/train_demo_sae.py`` (:attr:`DemoSAE.command`), and each ships
  its per-feature statistics and labels beside its weights.

A demo SAE loads with its shipped per-feature statistics (:mod:`scope.feature_stats`) and labels
(:mod:`scope.labels`). Every layer's SAE at once, loaded lazily: :mod:`scope.lazy_layers`.
"""

from __future__ import annotations

import difflib
import functools
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from scope import _checks
from scope.feature_stats import STATS_TOKENS, set_feature_stats
from scope.gemma_scope import GemmaScopeId, registry, split_spec
from scope.labels import read_labels, set_labels
from scope.sae_formats import is_gemma_scope_2_folder, load_gemma_scope_2, load_gemma_scope_2_from_hub
from scope.subjects import ModelUnavailableError

if TYPE_CHECKING:
    from sae_lens import SAE

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class DemoSAE:
    """A bundled SAE for the bundled ``gemma-3-270m``: where it lives and what it is."""

    folder: Path  # a sae-lens folder, plus feature_stats.safetensors and labels.parquet
    hook: str
    width: int
    corpus: str  # what it was trained on
    command: str  # the command (from the repository root) that builds the folder


DEMO_SAES: dict[str, DemoSAE] = {
    "demo": DemoSAE(
        folder=DATA_DIR / "demo_sae",
        hook="blocks.9.hook_resid_post",
        width=8192,
        corpus="general English and Debian documentation/code, equal characters",
        command="scripts/train_demo_sae.py",
    ),
    "demo-docs": DemoSAE(
        folder=DATA_DIR / "demo_sae_docs",
        hook="blocks.6.hook_resid_post",
        width=4096,
        corpus="Debian documentation and code",
        command=(
            "scripts/train_demo_sae.py --layer 6 --width 4096 --corpus ~/.cache/scope/corpus/train.jsonl "
            "--no-fold-decoder-norm --frequency-coeff 0 --out data/demo_sae_docs"
        ),
    ),
    "demo-modern": DemoSAE(
        folder=DATA_DIR / "demo_sae_modern",
        hook="blocks.12.hook_resid_post",
        width=4096,
        corpus="general English, modern English (Debian FAQs, manuals, handbooks) and documentation/code, 2 : 2 : 1",
        command=(
            "scripts/train_demo_sae.py --bf16 --architecture batchtopk --width 4096 --k 50 --layer 12 "
            "--corpus ~/.cache/scope/corpus-english/train.jsonl ~/.cache/scope/corpus-modern/train.jsonl "
            "data/corpus_sample/train.jsonl --corpus-weights 2 2 1 --cache-tokens 3000000 --cache-shards 30 "
            "--epochs 1 --out data/demo_sae_modern"
        ),
    ),
}
GEMMA_SCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


# ----------------------------------------------------------------------------- loading


def load_sae(
    spec: str | os.PathLike | tuple[str, str],
    *,
    hook: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> SAE:
    """Load an SAE as a sae-lens ``SAE`` from any of the places SAEs live.

    Args:
        spec: one of
            - ``"RELEASE/SAE_ID"`` from sae-lens' registry, e.g.
              ``"gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"`` (downloaded
              from the Hugging Face Hub through ``SAE.from_pretrained``), or the
              ``(release, sae_id)`` tuple :func:`scope.gemma_scope_id` returns,
            - a local Gemma Scope ``params.npz`` (or a folder holding one); ``hook=`` is required
              because the file does not record where it was trained,
            - a local sae-lens folder (``cfg.json`` + ``sae_weights.safetensors``),
            - a bundled SAE for the bundled ``gemma-3-270m``, by its name in :data:`DEMO_SAES`:
              ``"demo"``, the general demo SAE (``data/demo_sae``: 8,192 features on
              ``blocks.9.hook_resid_post``, general English + documentation/code, unit-norm
              decoder rows), ``"demo-docs"``, the documentation SAE (``data/demo_sae_docs``:
              4,096 features on ``blocks.6.hook_resid_post``, Debian documentation/code only),
              or ``"demo-modern"`` (``data/demo_sae_modern``: 4,096 BatchTopK features on
              ``blocks.12.hook_resid_post``, general and modern English + documentation).
              Each loads with its shipped per-feature statistics and labels.
        hook: the hook the SAE reads, e.g. ``"blocks.20.hook_resid_post"``. Required for
            ``params.npz``; for a sae-lens folder it overrides the recorded hook at load time;
            for a registry SAE it must equal the recorded hook.
        device: default cuda if available, else cpu.
        dtype: default float32 (Gemma Scope's own dtype); pass the model's dtype to save memory.

    Raises:
        FileNotFoundError: a local path (or a demo SAE's folder) that does not exist; for a demo
            SAE the message names the command that builds it.
        ValueError: a malformed file (naming the file and the problem), an unknown release or id,
            or a missing ``hook=``.
        ModelUnavailableError: a registry SAE that cannot be downloaded.
    """
    text = _spec_text(spec)
    if hook is not None:
        _checks.text(hook, "hook")
    device = _checks.device(device)
    dtype_name = _checks.dtype_name(dtype)
    if text in DEMO_SAES:
        sae = _load_demo(text, hook, device, dtype_name)
    else:
        path = Path(text).expanduser()
        if path.exists():
            sae = _load_local(path, hook, device, dtype_name)
        else:
            sae = _load_registry_or_fail(text, hook, device, dtype_name)
    return sae


@dataclass(frozen=True)
class SAESource:
    """Where :func:`load_sae` would read a spec from, found by :func:`resolve_sae_spec`."""

    kind: str  # "demo", "sae-lens folder", "params.npz", "Gemma Scope 2 folder" or "registry"
    location: str  # the demo SAE's name, the local file or folder, or "release/sae_id"


def resolve_sae_spec(spec: str | os.PathLike | tuple[str, str]) -> SAESource:
    """What ``load_sae(spec)`` would load, checked without reading weights or downloading
    (a command checks its ``--sae`` with it before loading a model).

    Raises load_sae's own errors for a spec that names nothing loadable: FileNotFoundError (a
    demo SAE not built yet, a missing local file), ValueError (a local path that is not an SAE,
    a release or id not in sae-lens' registry), TypeError (not a spec).
    """
    text = _spec_text(spec)
    if text in DEMO_SAES:
        if not (DEMO_SAES[text].folder / "cfg.json").is_file():
            raise FileNotFoundError(_demo_missing(text))
        return SAESource("demo", text)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_dir() and (path / "cfg.json").is_file():
            return SAESource("sae-lens folder", str(path))
        npz = path / "params.npz" if path.is_dir() else path
        if npz.suffix == ".npz" and npz.is_file():
            return SAESource("params.npz", str(npz))
        if is_gemma_scope_2_folder(path):
            return SAESource("Gemma Scope 2 folder", str(path))
        raise ValueError(_not_an_sae(path))
    release, sae_id = _registry_id(text)
    return SAESource("registry", f"{release}/{sae_id}")


def _spec_text(spec: Any) -> str:
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(p, str) for p in spec):
        return str(GemmaScopeId(*spec))
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(
            f"spec must be a 'release/sae_id' string, a (release, sae_id) tuple, a path or one of "
            f"{_demo_names()}, got {type(spec).__name__}."
        )
    return os.fspath(spec)


def _demo_names() -> str:
    *rest, last = map(repr, DEMO_SAES)
    return f"{', '.join(rest)} or {last}" if rest else last


def _demo_missing(name: str) -> str:
    demo = DEMO_SAES[name]
    return (
        f"The {name!r} SAE is not in {demo.folder} (expected cfg.json + sae_weights.safetensors). "
        f"It is built by {demo.command} (run from the repository root)."
    )


def _load_demo(name: str, hook: str | None, device: str, dtype: str) -> SAE:
    demo = DEMO_SAES[name]
    if not (demo.folder / "cfg.json").is_file():
        raise FileNotFoundError(_demo_missing(name))
    sae = _load_sae_lens_folder(demo.folder, hook, device, dtype)
    stats_file = demo.folder / "feature_stats.safetensors"  # written by scripts/eval_demo_sae.py
    if stats_file.is_file():
        from safetensors.torch import load_file

        stats = load_file(str(stats_file))
        # per-feature columns [d_sae]; the file also holds n_tokens [1], the tokens they were measured on
        set_feature_stats(sae, {name: column for name, column in stats.items() if name != "n_tokens"})
        if "n_tokens" in stats:
            sae.cfg.metadata[STATS_TOKENS] = int(stats["n_tokens"].sum())
    labels_file = demo.folder / "labels.parquet"  # written by scripts/label_demo_sae.py
    if labels_file.is_file():
        set_labels(sae, read_labels(labels_file))
    return sae


def _load_local(path: Path, hook: str | None, device: str, dtype: str) -> SAE:
    if path.is_dir() and (path / "cfg.json").is_file():
        return _load_sae_lens_folder(path, hook, device, dtype)
    npz = path / "params.npz" if path.is_dir() else path
    if npz.suffix == ".npz" and npz.is_file():
        return load_gemma_scope_npz(npz, hook=hook, device=device, dtype=dtype)
    if is_gemma_scope_2_folder(path):  # Gemma Scope 2: params.safetensors (+ config.json)
        sae = check_finite(load_gemma_scope_2(path, device=device, dtype=dtype), str(path))
        return _checked_hook(sae, hook, str(path))
    raise ValueError(_not_an_sae(path))


def _not_an_sae(path: Path) -> str:
    return (
        f"{path} is not an SAE: expected a sae-lens folder (cfg.json + sae_weights.safetensors), "
        "a Gemma Scope params.npz, a folder holding params.npz, or a Gemma Scope 2 folder (params.safetensors)."
    )


def _load_sae_lens_folder(path: Path, hook: str | None, device: str, dtype: str) -> SAE:
    from sae_lens import SAE
    from sae_lens.loading.pretrained_sae_loaders import sae_lens_disk_loader
    from safetensors import SafetensorError

    weights = path / "sae_weights.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(
            f"{weights} is missing: a sae-lens SAE folder holds cfg.json and sae_weights.safetensors."
        )

    def load(path: Any, device: str, cfg_overrides: dict[str, Any] | None = None) -> Any:
        try:
            cfg, state = sae_lens_disk_loader(path, device, cfg_overrides)
        except SafetensorError as err:
            raise ValueError(f"{weights} is not a readable safetensors file (truncated or corrupt?): {err}") from None
        _check_sae_lens_cfg(Path(path) / "cfg.json", cfg)
        if hook is not None:  # an override asked for, at load time
            # sae-lens 6 reads the hook from cfg["metadata"]; older configs keep it at the top level
            # (and sae-lens moves it into the metadata when it converts them)
            if isinstance(cfg.get("metadata"), dict):
                cfg["metadata"] = {**cfg["metadata"], "hook_name": hook}
            else:
                cfg["hook_name"] = hook
            cfg["reshape_activations"] = "hook_z" if hook.endswith("hook_z") else "none"
        return cfg, state

    try:
        sae = SAE.load_from_disk(path, device=device, dtype=dtype, converter=load)
    except ValueError as err:
        if str(weights) in str(err) or str(path / "cfg.json") in str(err):  # already names the file
            raise
        raise ValueError(f"Could not load the sae-lens SAE folder {path}: {err}") from err
    except (KeyError, OSError, RuntimeError) as err:
        raise ValueError(f"Could not load the sae-lens SAE folder {path}: {err}") from err
    return check_finite(sae, str(weights))


def _check_sae_lens_cfg(path: Path, cfg: dict[str, Any]) -> None:
    """ValueError naming ``cfg.json`` and its missing keys (sae-lens raises a bare TypeError)."""
    from dataclasses import MISSING, fields

    from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting
    from sae_lens.registry import SAE_CLASS_REGISTRY

    cfg = handle_config_defaulting(dict(cfg))
    architecture = cfg.get("architecture", "standard")
    if architecture not in SAE_CLASS_REGISTRY:
        raise ValueError(
            f"{path}: unknown architecture {architecture!r}; sae-lens knows {', '.join(sorted(SAE_CLASS_REGISTRY))}."
        )
    config_class = SAE_CLASS_REGISTRY[architecture][1]
    required = [
        f.name for f in fields(config_class) if f.init and f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [key for key in required if key not in cfg]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(missing)}: a sae-lens cfg.json of a {architecture!r} SAE needs "
            f"{', '.join(required)} (it has {', '.join(sorted(cfg))})."
        )


def check_finite(sae: SAE, source: str) -> SAE:
    """``sae`` if every weight is finite; else ValueError naming ``source`` (the file) and the
    tensor. A NaN weight makes NaN features that no ranking, threshold or plot shows as wrong."""
    for name, tensor in sae.state_dict().items():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            raise ValueError(
                f"{source}: the SAE tensor {name} holds {int((~finite).sum())} non-finite values "
                f"(NaN or inf) out of {tensor.numel()}; the file is corrupt or the SAE diverged in training."
            )
    return sae


def _load_registry_or_fail(text: str, hook: str | None, device: str, dtype: str) -> SAE:
    release, sae_id = _registry_id(text)
    if registry()[release].conversion_func == "gemma_3":  # Gemma Scope 2: scope's reader, cache-aware
        sae = load_gemma_scope_2_from_hub(release, sae_id, device=device, dtype=dtype)
        return _checked_hook(check_finite(sae, text), hook, text)
    sae = _from_pretrained(release, sae_id, device, dtype)
    if hook is not None and hook != sae.cfg.metadata.hook_name:
        raise ValueError(
            f"{release}/{sae_id} was trained at {sae.cfg.metadata.hook_name!r}, not hook={hook!r}; "
            "a registry SAE keeps its recorded hook (save it as a sae-lens folder and load "
            "that with hook= to move it)."
        )
    return sae


def _registry_id(text: str) -> tuple[str, str]:
    """``(release, sae_id)`` of a registry spec, or the error naming what is wrong with it."""
    directory = registry()
    parts = split_spec(text)
    if parts is None:
        if text.startswith(("/", ".", "~")) or text.endswith((".npz", ".json", ".safetensors")):
            raise FileNotFoundError(f"No such SAE file or folder: {text}")
        bundled = difflib.get_close_matches(text, list(DEMO_SAES), n=1)
        close = difflib.get_close_matches(text.split("/")[0], list(directory), n=3)
        raise ValueError(
            f"SAE spec {text!r} is neither an existing local path nor 'RELEASE/SAE_ID' from sae-lens' registry"
            + (f" (did you mean the bundled {bundled[0]!r}?)" if bundled else "")
            + (f" (did you mean release {' or '.join(map(repr, close))}?)" if close and not bundled else "")
            + ". Use scope.gemma_scope_id(model, layer) for Gemma Scope ids, a local params.npz or "
            f"sae-lens folder, or a bundled SAE: {_demo_names()}."
        )
    release, sae_id = parts
    ids = directory[release].ids
    if sae_id not in ids:
        close = difflib.get_close_matches(sae_id, list(ids), n=3, cutoff=0.5)
        raise ValueError(
            f"SAE id {sae_id!r} is not in release {release!r}"
            + (f"; closest ids: {', '.join(close)}" if close else "")
            + f". The release has {len(ids)} ids, e.g. {next(iter(ids))!r}."
        )
    return release, sae_id


def _checked_hook(sae: SAE, hook: str | None, where: str) -> SAE:
    if hook is not None and hook != sae.cfg.metadata.hook_name:
        raise ValueError(f"{where} reads {sae.cfg.metadata.hook_name!r} (its config says so), not hook={hook!r}.")
    return sae


def _from_pretrained(release: str, sae_id: str, device: str, dtype: str) -> SAE:
    from sae_lens import SAE

    try:
        return check_finite(SAE.from_pretrained(release, sae_id, device=device, dtype=dtype), f"{release}/{sae_id}")
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
                raise ValueError(
                    f"{path}: missing key(s) {', '.join(missing)}; a Gemma Scope params.npz holds "
                    f"{', '.join(GEMMA_SCOPE_KEYS)} (found {', '.join(data.files) or 'nothing'})."
                )
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
            raise ValueError(
                f"{path}: {key} has shape {arrays[key].shape}, expected {shape} "
                f"(W_enc is [d_in, d_sae] = {(d_in, d_sae)})."
            )


def load_gemma_scope_npz(
    path: str | os.PathLike,
    *,
    hook: str | None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> SAE:
    """A Gemma Scope ``params.npz`` as a sae-lens ``JumpReLUSAE`` reading ``hook``.

    Built through sae-lens' own disk loader with a converter, so the SAE is exactly what
    ``SAE.from_pretrained`` makes from the same file (same config: JumpReLU, no b_dec
    subtraction on input).
    """
    from sae_lens import SAE

    if not hook:
        raise ValueError(
            f"hook= is required to load {path}: a Gemma Scope params.npz does not record where "
            "it was trained. Pass e.g. hook='blocks.20.hook_resid_post' (res), "
            "'blocks.20.hook_mlp_out' (mlp) or 'blocks.20.attn.hook_z' (att)."
        )
    converter = functools.partial(_npz_converter, hook=hook)
    sae = SAE.load_from_disk(path, device=_checks.device(device), dtype=_checks.dtype_name(dtype), converter=converter)
    return check_finite(sae, str(path))


def _npz_converter(path: str | Path, device: str, cfg_overrides: dict[str, Any] | None, *, hook: str):
    arrays = read_params_npz(path)
    d_in, d_sae = arrays["W_enc"].shape
    cfg = {
        "architecture": "jumprelu",
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "dtype": "float32",
        "device": device,
        "hook_name": hook,
        "hook_head_index": None,
        "activation_fn": "relu",
        "apply_b_dec_to_input": False,
        "normalize_activations": None,
        "prepend_bos": True,
        "reshape_activations": "hook_z" if hook.endswith("hook_z") else "none",
        "neuronpedia_id": None,
        "model_name": None,
    }
    cfg.update(cfg_overrides or {})
    dtype = _checks.dtype(cfg["dtype"])
    state = {
        key: torch.from_numpy(np.ascontiguousarray(value)).to(device=device, dtype=dtype)
        for key, value in arrays.items()
    }
    return cfg, state
