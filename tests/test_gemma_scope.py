"""Gemma Scope ids (scope/gemma_scope.py) against sae-lens' own registry: which SAE fits which
model, layer, site, width and L0, and the errors that say what exists."""

import re
import subprocess
import sys

import numpy as np
import pytest

import scope
from scope import gemma_scope


def _registry():
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


# ----------------------------------------------------------------------------- gemma_scope_id


def test_gemma_2_2b_layer_20_canonical_is_in_the_registry():
    release, sae_id = scope.gemma_scope_id("gemma-2-2b", 20)
    assert (release, sae_id) == ("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")
    lookup = _registry()[release]
    assert sae_id in lookup.saes_map
    assert lookup.neuronpedia_id[sae_id] == "gemma-2-2b/20-gemmascope-res-16k"


def test_the_id_is_a_named_tuple_whose_str_is_the_spec():
    sae_id = scope.gemma_scope_id("gemma-2-2b", 20)
    assert isinstance(sae_id, scope.GemmaScopeId) and isinstance(sae_id, tuple)
    assert (sae_id.release, sae_id.sae_id) == tuple(sae_id)
    assert str(sae_id) == "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"
    assert gemma_scope.split_spec(str(sae_id)) == sae_id


@pytest.mark.parametrize("model,size", [("gemma-2-2b", "2b"), ("gemma-2-9b", "9b")])
@pytest.mark.parametrize("site", ["res", "mlp", "att"])
def test_every_layer_resolves_to_a_listed_canonical_id(model, size, site):
    n_layers = {"2b": 26, "9b": 42}[size]
    registry = _registry()
    assert gemma_scope.covered_layers(model, site) == list(range(n_layers))
    for layer in range(n_layers):
        release, sae_id = scope.gemma_scope_id(model, layer, site=site)
        assert release == f"gemma-scope-{size}-pt-{site}-canonical"
        assert sae_id in registry[release].saes_map


def test_numeric_l0_picks_the_nearest_listed_sae():
    ids = _registry()["gemma-scope-2b-pt-res"].saes_map
    listed = sorted(int(m[1]) for i in ids if (m := re.match(r"layer_20/width_16k/average_l0_(\d+)$", i)))
    assert len(listed) > 2
    for target in [1, 60, 100, 10_000, listed[1], np.float64(60.0)]:
        nearest = min(listed, key=lambda v: abs(v - target))
        assert scope.gemma_scope_id("gemma-2-2b", 20, l0=target) == (
            "gemma-scope-2b-pt-res",
            f"layer_20/width_16k/average_l0_{nearest}",
        )


def test_width_as_number_and_other_widths():
    assert scope.gemma_scope_id("gemma-2-2b", 12, width=65536) == (
        "gemma-scope-2b-pt-res-canonical",
        "layer_12/width_65k/canonical",
    )
    assert scope.gemma_scope_id("gemma-2-2b", 12, width="1M")[1] == "layer_12/width_1m/canonical"


def test_layer_may_be_a_numpy_integer():
    assert scope.gemma_scope_id("gemma-2-2b", np.int64(20)) == scope.gemma_scope_id("gemma-2-2b", 20)


def test_9b_it_residual_saes_are_its_own_at_layers_9_20_31():
    assert gemma_scope.covered_layers("gemma-2-9b-it") == [9, 20, 31]
    for layer in (9, 20, 31):
        release, sae_id = scope.gemma_scope_id("gemma-2-9b-it", layer)
        assert release == "gemma-scope-9b-it-res-canonical"
        assert sae_id in _registry()[release].saes_map
    with pytest.raises(ValueError, match=r"layer 5.*9, 20, 31.*gemma_scope_id\('gemma-2-9b', 5"):
        scope.gemma_scope_id("gemma-2-9b-it", 5)


def test_it_and_shieldgemma_use_base_saes_where_they_have_none():
    assert scope.gemma_scope_id("gemma-2-9b-it", 5, site="mlp")[0] == "gemma-scope-9b-pt-mlp-canonical"
    assert scope.gemma_scope_id("gemma-2-2b-it", 20) == scope.gemma_scope_id("gemma-2-2b", 20)
    assert scope.gemma_scope_id("shieldgemma-9b", 20) == scope.gemma_scope_id("gemma-2-9b", 20)
    assert scope.gemma_scope_id("gemma-2-27b-it", 22, width="131k") == (
        "gemma-scope-27b-pt-res-canonical",
        "layer_22/width_131k/canonical",
    )


def test_a_loaded_model_is_identified_by_its_subject(tiny_model):
    # the tiny model is loaded as shieldgemma-2b: Gemma 2 2B base SAEs
    assert scope.gemma_scope_id(tiny_model, 3) == scope.gemma_scope_id("gemma-2-2b", 3)
    assert gemma_scope.covered_layers(tiny_model) == list(range(26))


@pytest.mark.parametrize(
    "args,kwargs,pattern",
    [
        (("gemma-2-2b", 26), {}, r"layer 26.*0-25"),
        (("gemma-2-2b", -1), {}, r"layer -1.*0-25"),
        (("gemma-2-2b", 20), {"width": "17k"}, r"Unknown width '17k'.*16k"),
        (("gemma-2-2b", 20), {"width": "1m"}, r"No 1m-wide.*layer 20.*widths there: 16k, 65k"),
        (("gemma-2-27b", 22), {}, r"No 16k-wide.*gemma-2-27b.*131k"),
        (("gemma-2-27b", 5), {"width": "131k"}, r"layer 5.*10, 22, 34"),
        (("gemma-2-2b", 20), {"site": "resid"}, r"Unknown site 'resid'.*'res', 'mlp', 'att'"),
        (("gemma-2-27b", 22), {"site": "mlp"}, r"no MLP output SAEs for gemma-2-27b.*'res'"),
        (("gemma-2-2b", 12), {"width": "131k"}, r"no canonical 131k.*l0= one of \[\d+"),
        (("gemma-2-2b", 20), {"l0": "small"}, r"l0 must be 'canonical' or a number"),
        (("gemma-2-2b", 20), {"l0": float("nan")}, r"l0 must be a finite number"),
        (("gemma-7b", 6), {}, r"Unknown model 'gemma-7b'.*gemma-2-2b"),
    ],
)
def test_gemma_scope_id_errors_name_what_exists(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        scope.gemma_scope_id(*args, **kwargs)


@pytest.mark.parametrize("layer", ["20", 20.0, True, None])
def test_a_layer_that_is_not_an_integer_is_a_type_error(layer):
    # wrong type -> TypeError (was a ValueError before the redesign); a bad value stays a ValueError
    with pytest.raises(TypeError, match=r"layer must be an integer"):
        scope.gemma_scope_id("gemma-2-2b", layer)


# ----------------------------------------------------------------------------- the registry itself


def test_split_spec_cuts_at_a_registry_release():
    assert gemma_scope.split_spec("gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71") == (
        "gemma-scope-2b-pt-res",
        "layer_20/width_16k/average_l0_71",
    )
    assert gemma_scope.split_spec("my-release/blocks.8") is None
    assert gemma_scope.split_spec("gemma-scope-2b-pt-res-canonical") is None  # a release alone is no spec


def test_registry_matches_sae_lens_directory():
    ours, theirs = gemma_scope.registry(), _registry()
    assert set(ours) == set(theirs)
    for name in ("gemma-scope-2b-pt-res-canonical", "gemma-scope-9b-it-res-canonical"):
        assert set(ours[name].ids) == set(theirs[name].saes_map)
        assert ours[name].model == theirs[name].model


def test_releases_by_model_lists_gemma_scope_releases():
    by_model = gemma_scope.releases_by_model()
    assert "gemma-scope-2b-pt-res-canonical" in by_model["gemma-2-2b"]
    assert all(r.startswith("gemma-scope") for releases in by_model.values() for r in releases)
    assert all(releases == sorted(releases) for releases in by_model.values())


def test_describe_layers_joins_runs():
    assert gemma_scope.describe_layers([5, 0, 1, 2, 7, 8]) == "0-2, 5, 7-8"
    assert gemma_scope.describe_layers([3]) == "3"
    assert gemma_scope.describe_layers([]) == ""


def test_ids_need_neither_torch_nor_the_network():
    code = (
        "import sys, scope; from scope.gemma_scope import gemma_scope_id; "
        "print(gemma_scope_id('gemma-2-9b-it', 20)); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["gemma-scope-9b-it-res-canonical/layer_20/width_16k/canonical", "False"]


# ----------------------------------------------------------------------------- Gemma Scope 2 (Gemma 3)

GEMMA3 = {  # scope name -> (Gemma Scope 2 release stem, hub model sae-lens records, layers)
    "gemma-3-270m": ("gemma-scope-2-270m-pt", "google/gemma-3-270m", 18),
    "gemma-3-270m-it": ("gemma-scope-2-270m-it", "google/gemma-3-270m-it", 18),
    "gemma-3-1b": ("gemma-scope-2-1b-pt", "google/gemma-3-1b-pt", 26),
    "gemma-3-1b-it": ("gemma-scope-2-1b-it", "google/gemma-3-1b-it", 26),
    "gemma-3-4b": ("gemma-scope-2-4b-pt", "google/gemma-3-4b-pt", 34),
    "gemma-3-4b-it": ("gemma-scope-2-4b-it", "google/gemma-3-4b-it", 34),
    "gemma-3-12b": ("gemma-scope-2-12b-pt", "google/gemma-3-12b-pt", 48),
    "gemma-3-12b-it": ("gemma-scope-2-12b-it", "google/gemma-3-12b-it", 48),
    "gemma-3-27b": ("gemma-scope-2-27b-pt", "google/gemma-3-27b-pt", 62),
    "gemma-3-27b-it": ("gemma-scope-2-27b-it", "google/gemma-3-27b-it", 62),
}


def _listed(release, layer, width, label, affine=False):
    """The ids sae-lens lists for one (layer, width, L0 label[, affine]), read off its id strings."""
    pattern = rf"^(transcoder/)?layer_{layer}_width_{width}_l0_{label}{'_affine' if affine else ''}$"
    return [i for i in _registry()[release].saes_map if re.match(pattern, i)] if release in _registry() else []


@pytest.mark.parametrize("model", list(GEMMA3))
def test_gemma_3_canonical_is_the_medium_l0_sae_neuronpedia_shows(model):
    stem, hub_model, _ = GEMMA3[model]
    lookup = _registry()[f"{stem}-res"]
    assert lookup.model == hub_model
    layers = sorted({int(m[1]) for i in lookup.saes_map if (m := re.match(r"layer_(\d+)_width_16k_l0_medium$", i))})
    assert len(layers) == 4
    for layer in layers:
        release, sae_id = scope.gemma_scope_id(model, layer)
        assert (release, sae_id) == (f"{stem}-res", f"layer_{layer}_width_16k_l0_medium")
        if any(lookup.neuronpedia_id.values()):  # where Neuronpedia hosts the release, it shows this one
            assert lookup.neuronpedia_id[sae_id].endswith(f"/{layer}-gemmascope-2-res-16k")


@pytest.mark.parametrize("model", ["gemma-3-270m", "gemma-3-1b-it", "gemma-3-27b"])
@pytest.mark.parametrize("label", ["small", "big"])
def test_every_layer_has_small_and_big_from_the_plain_release_else_the_all_release(model, label):
    stem, _, n_layers = GEMMA3[model]
    assert gemma_scope.covered_layers(model) == list(range(n_layers))
    for layer in range(n_layers):
        plain, every = _listed(f"{stem}-res", layer, "16k", label), _listed(f"{stem}-res-all", layer, "16k", label)
        expected = (f"{stem}-res", plain[0]) if plain else (f"{stem}-res-all", every[0])
        assert scope.gemma_scope_id(model, layer, l0=label) == expected


@pytest.mark.parametrize("affine", [False, True])
def test_gemma_3_transcoders_and_skip_transcoders(affine):
    stem, _, _ = GEMMA3["gemma-3-1b"]
    release, sae_id = scope.gemma_scope_id("gemma-3-1b", 13, site="transcoder", l0="medium", affine=affine)
    assert release == f"{stem}-transcoders"
    assert sae_id == _listed(release, 13, "16k", "medium", affine)[0]
    assert sae_id.endswith("_affine") == affine
    release, sae_id = scope.gemma_scope_id("gemma-3-1b", 2, site="transcoder", l0="small", affine=affine)
    assert (release, sae_id) == (
        f"{stem}-transcoders-all",
        _listed(f"{stem}-transcoders-all", 2, "16k", "small", affine)[0],
    )


def test_gemma_3_numeric_l0_picks_the_nearest_listed_l0():
    lookups = [_registry()["gemma-scope-2-270m-pt-res"], _registry()["gemma-scope-2-270m-pt-res-all"]]
    candidates = [
        (lookup.expected_l0[i], lookup.release, i)
        for lookup in lookups
        for i in lookup.saes_map
        if re.match(r"^layer_9_width_16k_l0_(small|medium|big)$", i)
    ]
    assert len({value for value, _, _ in candidates}) >= 4
    for target in [0, 17, 40, 59, 100, 1000]:
        best = min(abs(value - target) for value, _, _ in candidates)
        release, sae_id = scope.gemma_scope_id("gemma-3-270m", 9, l0=target)
        assert abs(dict(((r, i), v) for v, r, i in candidates)[(release, sae_id)] - target) == best


@pytest.mark.parametrize("site", ["res", "mlp", "att"])
def test_gemma_3_sites_and_widths(site):
    release, sae_id = scope.gemma_scope_id("gemma-3-270m", 9, site=site, width="262k")
    assert (release, sae_id) == (f"gemma-scope-2-270m-pt-{site}", "layer_9_width_262k_l0_medium")
    assert sae_id in _registry()[release].saes_map


def test_gemma_2_2b_transcoders_resolve_to_the_one_listed_per_layer():
    for layer in (0, 12, 25):
        release, sae_id = scope.gemma_scope_id("gemma-2-2b", layer, site="transcoder")
        assert release == "gemma-scope-2b-pt-transcoders"
        assert sae_id in _registry()[release].saes_map and sae_id.startswith(f"layer_{layer}/width_16k/average_l0_")


@pytest.mark.parametrize(
    "args,kwargs,pattern",
    [
        (("gemma-3-270m", 6), {}, r"No 'medium'-L0 16k .*gemma-3-270m at layer 6; listed: big .*small .*every layer"),
        (("gemma-3-270m", 18), {}, r"No Gemma Scope 2 res SAE for gemma-3-270m at layer 18; layers: 0-17"),
        (
            ("gemma-3-270m", 9),
            {"width": "1m", "site": "mlp"},
            r"No 1m-wide .*mlp.*layer 9; widths there: 16k, 65k, 262k",
        ),
        (
            ("gemma-3-27b", 16),
            {"site": "mlp"},
            r"no MLP output SAEs for gemma-3-27b; it has site\(s\) 'res', 'transcoder'",
        ),
        (("gemma-3-270m", 9), {"l0": "tiny"}, r"l0 must be one of 'small', 'medium', 'big'"),
        (("gemma-3-270m", 9), {"affine": True}, r"affine=True .* site='transcoder', not 'res'"),
        (("gemma-3-270m", 9), {"site": "transcoders"}, r"Unknown site 'transcoders'.*'transcoder'"),
        (("gemma-2-2b", 9), {"site": "transcoder", "affine": True}, r"affine=True .*Gemma Scope 2 \(Gemma 3\) only"),
        (("gemma-2-9b", 9), {"site": "transcoder"}, r"no MLP transcoder SAEs for gemma-2-9b"),
    ],
)
def test_gemma_scope_2_errors_name_what_exists(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        scope.gemma_scope_id(*args, **kwargs)


def test_load_saes_resolves_every_gemma_3_layer_without_loading():
    saes = scope.load_saes("gemma-3-270m", layers="all", l0="big", device="cpu")
    assert list(saes) == list(range(18)) and saes.loaded == []
    assert saes.specs[9] == "gemma-scope-2-270m-pt-res/layer_9_width_16k_l0_big"
    assert saes.specs[0] == "gemma-scope-2-270m-pt-res-all/layer_0_width_16k_l0_big"
    with pytest.raises(ValueError, match=r"layer 0.*'medium'"):
        scope.load_saes("gemma-3-270m", layers="all", device="cpu")
