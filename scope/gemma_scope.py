"""Gemma Scope and Gemma Scope 2 ids from sae-lens' registry: which SAE fits which model, layer,
site, width and L0.

Reads the registry file that ships with sae-lens (``pretrained_saes.yaml``) directly, so this
module needs neither torch nor the network. :func:`gemma_scope_id` answers with errors that say
what does exist (e.g. Gemma 2 9B-IT has its own residual SAEs only at layers 9, 20 and 31).

- Gemma 2 (and ShieldGemma): Gemma Scope, ``gemma-scope-{2b,9b,27b}-{pt,it}-{res,mlp,att}[-canonical]``
  and ``gemma-scope-2b-pt-transcoders``; ids like ``layer_20/width_16k/canonical``.
- Gemma 3: Gemma Scope 2, ``gemma-scope-2-{size}-{pt,it}-{res,mlp,att,transcoders}[-all]``; ids like
  ``layer_12_width_16k_l0_medium`` (transcoders: ``transcoder/...``, ``..._affine`` for skip
  transcoders). The plain releases cover 4 layers (25/50/65/85% depth) with widths 16k-1m and L0
  targets small/medium/big; the ``-all`` releases cover every layer with 16k and 262k, small and big
  only (and their "small"/"big" are lower L0s than the plain releases').
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from scope import _checks
from scope.subjects import SUBJECTS, model_name, subject

SITES = ("res", "mlp", "att", "transcoder")
SITE_NAMES = {
    "res": "residual stream",
    "mlp": "MLP output",
    "att": "attention output (hook_z)",
    "transcoder": "MLP transcoder",
}
SITE_HOOKS = {
    "res": "blocks.{layer}.hook_resid_post",
    "mlp": "blocks.{layer}.hook_mlp_out",
    "att": "blocks.{layer}.attn.hook_z",
    "transcoder": "blocks.{layer}.ln2.hook_normalized",  # the MLP's input: after its RMSNorm
}
GEMMA_SCOPE_2_L0S = ("small", "medium", "big")

_WIDTHS = {
    "4k": 4096,
    "16k": 16384,
    "32k": 32768,
    "65k": 65536,
    "131k": 131072,
    "262k": 262144,
    "524k": 524288,
    "1m": 1048576,
}
_RELEASE_RE = re.compile(r"^gemma-scope-(2b|9b|27b)-(pt|it)-(res|mlp|att|transcoders)(-canonical)?$")
_ID_RE = re.compile(r"^layer_(\d+)/width_(\w+)/(canonical|average_l0_(\d+))$")


class GemmaScopeId(NamedTuple):
    """A registry SAE: ``(release, sae_id)``; ``str()`` gives the ``"release/sae_id"`` spec."""

    release: str
    sae_id: str

    def __str__(self) -> str:
        return f"{self.release}/{self.sae_id}"


# ----------------------------------------------------------------------------- sae-lens' registry


@dataclass(frozen=True)
class Release:
    """One release of sae-lens' registry: the model it was trained on and its SAE ids."""

    name: str
    model: str
    ids: tuple[str, ...]
    neuronpedia: dict[str, str] = field(default_factory=dict, compare=False)
    repo_id: str = ""
    conversion_func: str = ""
    paths: dict[str, str] = field(default_factory=dict, compare=False)  # sae_id -> folder in the repo
    l0s: dict[str, float] = field(default_factory=dict, compare=False)  # sae_id -> its listed L0


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, Release]:
    """Every release of sae-lens' registry, read from the YAML file sae-lens ships (no torch)."""
    import yaml

    spec = importlib.util.find_spec("sae_lens")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("sae-lens is not installed; scope needs it for SAEs (pip install sae-lens).")
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained_saes.yaml"
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    return {name: _release(name, entry) for name, entry in data.items()}


def _release(name: str, entry: dict[str, Any]) -> Release:
    saes = entry.get("saes", [])
    return Release(
        name,
        str(entry.get("model", "")),
        tuple(sae["id"] for sae in saes),
        {sae["id"]: sae["neuronpedia"] for sae in saes if sae.get("neuronpedia")},
        repo_id=str(entry.get("repo_id", "")),
        conversion_func=str(entry.get("conversion_func") or ""),
        paths={sae["id"]: str(sae["path"]) for sae in saes if sae.get("path")},
        l0s={sae["id"]: float(sae["l0"]) for sae in saes if sae.get("l0") is not None},
    )


def split_spec(text: str) -> GemmaScopeId | None:
    """``"release/sae_id"`` split at the longest release name of the registry; None if none fits."""
    parts = text.split("/")
    releases = registry()
    for cut in range(len(parts) - 1, 0, -1):
        release = "/".join(parts[:cut])
        if release in releases:
            return GemmaScopeId(release, "/".join(parts[cut:]))
    return None


def releases_by_model() -> dict[str, list[str]]:
    """The Gemma Scope releases of the registry, by the model they were trained on."""
    by_model: dict[str, list[str]] = {}
    for release in registry().values():
        if release.name.startswith("gemma-scope"):
            by_model.setdefault(release.model, []).append(release.name)
    return {m: sorted(r) for m, r in by_model.items()}


# ----------------------------------------------------------------------------- Gemma Scope families


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
        return sorted(found, key=lambda width: _WIDTHS[width])


@functools.lru_cache(maxsize=1)
def _gemma_scope_index() -> dict[tuple[str, str, str], _Family]:
    """sae-lens' Gemma Scope (Gemma 2) releases, indexed by (size, "pt"/"it", site)."""
    index: dict[tuple[str, str, str], _Family] = {}
    for release, entry in registry().items():
        match = _RELEASE_RE.match(release)
        if not match:
            continue
        size, variant, site, canonical = match.groups()
        site = "transcoder" if site == "transcoders" else site
        base = release.removesuffix("-canonical")
        family = index.setdefault((size, variant, site), _Family(base))
        if canonical:
            family.has_canonical_release = True
        else:
            family.has_l0_release = True
        for sae_id in entry.ids:
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
            + (
                " For the bundled model use scope.load_sae('demo'), or a 'RELEASE/SAE_ID' spec from "
                "sae-lens' registry (e.g. the gemma-scope-2-270m-pt-res releases)."
                if "gemma-3" in name
                else ""
            )
        )
    if site not in SITES:
        raise ValueError(
            f"Unknown site {site!r}. Valid sites: {', '.join(map(repr, SITES))} ({', '.join(SITE_NAMES.values())})."
        )
    index = _gemma_scope_index()
    if name.startswith("gemma-2-") and name.endswith("-it") and (size, "it", site) in index:
        return index[(size, "it", site)]
    if (size, "pt", site) in index:
        return index[(size, "pt", site)]
    sites = [s for s in SITES if (size, "pt", s) in index or (size, "it", s) in index]
    raise ValueError(
        f"Gemma Scope has no {SITE_NAMES[site]} SAEs for {name}; it has site(s) "
        f"{', '.join(map(repr, sites))} for this model size."
    )


def _normalize_width(width: str | int) -> str:
    if isinstance(width, int) and not isinstance(width, bool):
        for name, size in _WIDTHS.items():
            if size == width:
                return name
    elif isinstance(width, str) and width.lower() in _WIDTHS:
        return width.lower()
    raise ValueError(
        f"Unknown width {width!r}. Gemma Scope widths: {', '.join(_WIDTHS)} "
        f"(or the numbers {', '.join(str(v) for v in _WIDTHS.values())})."
    )


def covered_layers(model: Any, site: str = "res") -> list[int]:
    """The layers Gemma Scope (or Gemma Scope 2) covers for ``model`` at ``site``."""
    name = model_name(model)
    if SUBJECTS[name].family == "Gemma 3":
        return sorted({entry.layer for entry in _gemma_scope_2_entries(name, site)})
    return _family_for(name, site).layers()


def describe_layers(layers: list[int]) -> str:
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
    affine: bool | None = None,
) -> GemmaScopeId:
    """The Gemma Scope (Gemma 2) or Gemma Scope 2 (Gemma 3) ``(release, sae_id)`` for ``model`` at
    ``layer``, from sae-lens' registry.

    No network: this only reads the registry bundled with sae-lens. The result is a
    ``(release, sae_id)`` tuple that :func:`scope.load_sae` takes as it is (``str()`` of it is
    the ``"release/sae_id"`` spec).

    Args:
        model: a model name (``"gemma-2-2b"``, ``"gemma-2-9b-it"``, ``"shieldgemma-2b"`` ...) or a
            model from :func:`scope.load_model`. ``-it`` models and ShieldGemma use the base
            model's SAEs (they transfer), except Gemma 2 9B-IT's residual stream, which has its
            own SAEs at layers 9, 20 and 31 only.
            Gemma 3 models (``"gemma-3-270m"``, ``"gemma-3-1b-it"`` ...) get Gemma Scope 2, the
            ``-it`` models their own SAEs.
        layer: the block whose output (res/mlp), attention (att) or MLP (transcoder) the SAE reads.
        site: ``"res"`` (``blocks.L.hook_resid_post``), ``"mlp"`` (``blocks.L.hook_mlp_out``),
            ``"att"`` (``blocks.L.attn.hook_z``) or ``"transcoder"`` (MLP input -> ``hook_mlp_out``;
            Gemma 2 2B and every Gemma 3 model).
        width: dictionary size, ``"16k"``, ``"65k"``, ``"131k"``, ``"262k"``, ``"1m"`` ... or its number.
        l0: Gemma 2: ``"canonical"`` (the SAE Neuronpedia shows, average L0 closest to 100) or a
            number: the listed SAE with the nearest average L0. Gemma 3: ``"small"``, ``"medium"``
            or ``"big"`` (Gemma Scope 2's L0 targets; ``"canonical"`` means ``"medium"``, the one
            Neuronpedia shows, listed at 4 layers per model) or a number (nearest listed L0). A
            layer's SAE comes from the plain release when it lists one, else from the ``-all`` one.
        affine: transcoders only: True for skip-transcoders (an affine skip connection, Gemma
            Scope 2's ``..._affine`` ids), False (the default) for plain ones.

    Raises:
        ValueError: unknown model, site, layer, width or l0; the message names what exists.
    """
    name = model_name(model)
    if SUBJECTS[name].family == "Gemma 3":
        return _gemma_scope_2_id(name, layer, site, width, l0, affine)
    if affine:
        raise ValueError(f"affine=True (skip-transcoders) exists in Gemma Scope 2 (Gemma 3) only, not for {name}.")
    family = _family_for(name, site)
    width = _normalize_width(width)
    layer = _check_layer(family, name, site, layer)
    if width not in family.widths(layer):
        raise ValueError(
            f"No {width}-wide Gemma Scope {site} SAE for {name} at layer {layer}; "
            f"widths there: {', '.join(family.widths(layer))}."
        )
    if isinstance(l0, str) and l0 == "canonical":
        return _canonical_id(family, name, site, layer, width)
    return _nearest_l0_id(family, name, site, layer, width, l0)


def _check_layer(family: _Family, name: str, site: str, layer: Any) -> int:
    layer = _checks.integer(layer, "layer")
    layers = family.layers()
    if layer in layers:
        return layer
    message = (
        f"No Gemma Scope {site} SAE for {name} at layer {layer}; {family.release} covers "
        f"layer(s) {describe_layers(layers)} only."
    )
    if family.release.startswith("gemma-scope-9b-it"):
        message += (
            " The base model's SAEs transfer to the IT model: "
            f"scope.gemma_scope_id('gemma-2-9b', {layer}, site={site!r})."
        )
    raise ValueError(message)


def _canonical_id(family: _Family, name: str, site: str, layer: int, width: str) -> GemmaScopeId:
    if (layer, width) not in family.canonical:
        listed = family.l0s.get((layer, width), [])
        if not family.has_canonical_release and len(listed) == 1:  # e.g. the 2B transcoders: one per layer
            return GemmaScopeId(family.release, f"layer_{layer}/width_{width}/average_l0_{listed[0]}")
        raise ValueError(
            f"Gemma Scope lists no canonical {width} {site} SAE for {name} at layer {layer}; "
            f"pass l0= one of {listed} instead."
        )
    return GemmaScopeId(f"{family.release}-canonical", f"layer_{layer}/width_{width}/canonical")


def _nearest_l0_id(family: _Family, name: str, site: str, layer: int, width: str, l0: Any) -> GemmaScopeId:
    if isinstance(l0, str):
        raise ValueError(f"l0 must be 'canonical' or a number (the target average L0), got {l0!r}.")
    l0 = _checks.finite(l0, "l0")
    listed = family.l0s.get((layer, width), [])
    if not listed:
        raise ValueError(
            f"Gemma Scope lists only the canonical {width} {site} SAE for {name} at layer {layer}; use l0='canonical'."
        )
    nearest = min(listed, key=lambda value: (abs(value - l0), value))
    return GemmaScopeId(family.release, f"layer_{layer}/width_{width}/average_l0_{nearest}")


# ----------------------------------------------------------------------------- Gemma Scope 2 (Gemma 3)

_RELEASE_2_RE = re.compile(r"^gemma-scope-2-(?:270m|1b|4b|12b|27b)-(?:pt|it)-(res|mlp|att|transcoders)(-all)?$")
_ID_2_RE = re.compile(r"^(?:transcoder/)?layer_(\d+)_width_(\w+?)_l0_(small|medium|big)(_affine)?$")


class _Sae2(NamedTuple):
    """One Gemma Scope 2 SAE of the registry (seed variants left out)."""

    release: str
    sae_id: str
    layer: int
    width: str
    label: str  # small / medium / big
    l0: float  # the L0 the registry lists for it
    affine: bool
    every_layer: bool  # from an -all release


@functools.lru_cache(maxsize=1)
def _gemma_scope_2_index() -> dict[tuple[str, str], list[_Sae2]]:
    """sae-lens' Gemma Scope 2 SAEs by (the hub model they were trained on, site)."""
    index: dict[tuple[str, str], list[_Sae2]] = {}
    for name, release in registry().items():
        match = _RELEASE_2_RE.match(name)
        if not match:
            continue
        site = "transcoder" if match[1] == "transcoders" else match[1]
        entries = index.setdefault((release.model, site), [])
        for sae_id in release.ids:
            parsed = _ID_2_RE.match(sae_id)
            if parsed:
                layer, width, label, affine = int(parsed[1]), parsed[2], parsed[3], bool(parsed[4])
                l0 = release.l0s.get(sae_id, float("nan"))
                entries.append(_Sae2(name, sae_id, layer, width, label, l0, affine, bool(match[2])))
    return index


def _gemma_scope_2_entries(name: str, site: str) -> list[_Sae2]:
    if site not in SITES:
        raise ValueError(
            f"Unknown site {site!r}. Valid sites: {', '.join(map(repr, SITES))} ({', '.join(SITE_NAMES.values())})."
        )
    hub_model = SUBJECTS[name].sae_models[0]
    entries = _gemma_scope_2_index().get((hub_model, site), [])
    if not entries:
        sites = [s for s in SITES if _gemma_scope_2_index().get((hub_model, s))]
        raise ValueError(
            f"Gemma Scope 2 (in the installed sae-lens) has no {SITE_NAMES[site]} SAEs for {name}; "
            f"it has site(s) {', '.join(map(repr, sites))} for this model."
        )
    return entries


def _gemma_scope_2_id(name: str, layer: Any, site: str, width: Any, l0: Any, affine: bool | None) -> GemmaScopeId:
    entries = _gemma_scope_2_entries(name, site)
    if affine is not None and not isinstance(affine, bool):
        raise TypeError(f"affine must be True, False or None, got {affine!r}.")
    if affine and site != "transcoder":
        raise ValueError(f"affine=True picks skip-transcoders; it needs site='transcoder', not {site!r}.")
    layer = _checks.integer(layer, "layer")
    here = [e for e in entries if e.layer == layer]
    if not here:
        layers = sorted({e.layer for e in entries})
        raise ValueError(f"No Gemma Scope 2 {site} SAE for {name} at layer {layer}; layers: {describe_layers(layers)}.")
    width = _normalize_width(width)
    widths = sorted({e.width for e in here}, key=lambda w: _WIDTHS[w])
    here = [e for e in here if e.width == width and e.affine == bool(affine)]
    if not here:
        raise ValueError(
            f"No {width}-wide Gemma Scope 2 {site} SAE for {name} at layer {layer}"
            + (f" with affine={bool(affine)}" if site == "transcoder" else "")
            + f"; widths there: {', '.join(widths)}."
        )
    return _pick_l0(here, name, site, layer, width, l0)


def _pick_l0(entries: list[_Sae2], name: str, site: str, layer: int, width: str, l0: Any) -> GemmaScopeId:
    listed = ", ".join(f"{e.label} (L0 {e.l0:g}{', -all' if e.every_layer else ''})" for e in entries)
    if isinstance(l0, str):
        label = "medium" if l0 == "canonical" else l0
        if label not in GEMMA_SCOPE_2_L0S:
            raise ValueError(
                f"l0 must be one of {', '.join(map(repr, GEMMA_SCOPE_2_L0S))}, 'canonical' (= 'medium') "
                f"or a number for Gemma Scope 2, got {l0!r}."
            )
        found = sorted((e for e in entries if e.label == label), key=lambda e: e.every_layer)
        if not found:
            hint = " ('canonical' is 'medium', listed at 4 layers only; every layer has 'small' and 'big')"
            raise ValueError(
                f"No {label!r}-L0 {width} Gemma Scope 2 {site} SAE for {name} at layer {layer}; listed: {listed}"
                + (hint if label == "medium" else "")
                + "."
            )
        return GemmaScopeId(found[0].release, found[0].sae_id)  # the plain release before -all
    target = _checks.finite(l0, "l0")
    nearest = min(entries, key=lambda e: (abs(e.l0 - target), e.every_layer, e.l0))
    return GemmaScopeId(nearest.release, nearest.sae_id)
