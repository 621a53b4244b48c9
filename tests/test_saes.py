"""SAE specs and loading: Gemma Scope ids against sae-lens' registry, local files, compatibility."""

import re
import zipfile

import numpy as np
import pytest
import torch

import scope
from scope import saes as saes_module
from tests.sae_util import random_params, write_params

HOOK = "blocks.1.hook_resid_post"


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


@pytest.mark.parametrize("model,size", [("gemma-2-2b", "2b"), ("gemma-2-9b", "9b")])
@pytest.mark.parametrize("site", ["res", "mlp", "att"])
def test_every_layer_resolves_to_a_listed_canonical_id(model, size, site):
    n_layers = {"2b": 26, "9b": 42}[size]
    registry = _registry()
    for layer in range(n_layers):
        release, sae_id = scope.gemma_scope_id(model, layer, site=site)
        assert release == f"gemma-scope-{size}-pt-{site}-canonical"
        assert sae_id in registry[release].saes_map


def test_numeric_l0_picks_the_nearest_listed_sae():
    ids = _registry()["gemma-scope-2b-pt-res"].saes_map
    listed = sorted(int(m[1]) for i in ids if (m := re.match(r"layer_20/width_16k/average_l0_(\d+)$", i)))
    assert len(listed) > 2
    for target in [1, 60, 100, 10_000, listed[1]]:
        nearest = min(listed, key=lambda v: abs(v - target))
        assert scope.gemma_scope_id("gemma-2-2b", 20, l0=target) == (
            "gemma-scope-2b-pt-res", f"layer_20/width_16k/average_l0_{nearest}")


def test_width_as_number_and_other_widths():
    assert scope.gemma_scope_id("gemma-2-2b", 12, width=65536) == (
        "gemma-scope-2b-pt-res-canonical", "layer_12/width_65k/canonical")
    assert scope.gemma_scope_id("gemma-2-2b", 12, width="1M")[1] == "layer_12/width_1m/canonical"


def test_9b_it_residual_saes_are_its_own_at_layers_9_20_31():
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
        "gemma-scope-27b-pt-res-canonical", "layer_22/width_131k/canonical")


def test_a_loaded_model_is_identified_by_its_subject(tiny_model):
    # the tiny model is loaded as shieldgemma-2b: Gemma 2 2B base SAEs
    assert scope.gemma_scope_id(tiny_model, 3) == scope.gemma_scope_id("gemma-2-2b", 3)


@pytest.mark.parametrize("args,kwargs,pattern", [
    (("gemma-2-2b", 26), {}, r"layer 26.*0-25"),
    (("gemma-2-2b", -1), {}, r"layer -1.*0-25"),
    (("gemma-2-2b", "20"), {}, r"layer must be an integer"),
    (("gemma-2-2b", 20), {"width": "17k"}, r"Unknown width '17k'.*16k"),
    (("gemma-2-2b", 20), {"width": "1m"}, r"No 1m-wide.*layer 20.*widths there: 16k, 65k"),
    (("gemma-2-27b", 22), {}, r"No 16k-wide.*gemma-2-27b.*131k"),
    (("gemma-2-27b", 5), {"width": "131k"}, r"layer 5.*10, 22, 34"),
    (("gemma-2-2b", 20), {"site": "resid"}, r"Unknown site 'resid'.*'res', 'mlp', 'att'"),
    (("gemma-2-27b", 22), {"site": "mlp"}, r"no MLP output SAEs for gemma-2-27b.*'res'"),
    (("gemma-2-2b", 12), {"width": "131k"}, r"no canonical 131k.*l0= one of \[\d+"),
    (("gemma-2-2b", 20), {"l0": "small"}, r"l0 must be 'canonical' or a number"),
    (("gemma-3-270m", 6), {}, r"no Gemma Scope \(Gemma 2\) SAEs for 'gemma-3-270m'.*demo"),
    (("gemma-7b", 6), {}, r"Unknown model 'gemma-7b'.*gemma-2-2b"),
])
def test_gemma_scope_id_errors_name_what_exists(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        scope.gemma_scope_id(*args, **kwargs)


# ----------------------------------------------------------------------------- params.npz


def test_params_npz_loads_as_a_jumprelu_sae_with_the_file_s_weights(tmp_path):
    params = random_params(64, 48)
    path = write_params(tmp_path / "params.npz", params)
    sae = scope.load_sae(path, hook=HOOK, device="cpu")
    assert type(sae).__name__ == "JumpReLUSAE"
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (64, 48)
    assert sae.cfg.metadata.hook_name == HOOK
    assert sae.cfg.apply_b_dec_to_input is False  # Gemma Scope encodes x, not x - b_dec
    for key, value in params.items():
        assert torch.equal(getattr(sae, key).detach(), torch.from_numpy(value)), key
    # a folder holding params.npz, and a dtype
    half = scope.load_sae(tmp_path, hook=HOOK, device="cpu", dtype="bfloat16")
    assert half.W_enc.dtype == torch.bfloat16


def test_params_npz_without_hook_is_refused(tmp_path):
    path = write_params(tmp_path / "params.npz", random_params(8, 4))
    with pytest.raises(ValueError, match=r"hook= is required.*params\.npz.*blocks\.20\.hook_resid_post"):
        scope.load_sae(path)


@pytest.mark.parametrize("key", ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"])
def test_params_npz_missing_key_names_file_and_key(tmp_path, key):
    params = random_params(8, 4)
    del params[key]
    path = write_params(tmp_path / "params.npz", params)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: missing key\(s\) {key}"):
        scope.load_sae(path, hook=HOOK)


@pytest.mark.parametrize("key,shape,expected", [
    ("W_dec", (8, 4), r"W_dec has shape \(8, 4\), expected \(4, 8\)"),
    ("b_enc", (8,), r"b_enc has shape \(8,\), expected \(4,\)"),
    ("b_dec", (4,), r"b_dec has shape \(4,\), expected \(8,\)"),
    ("threshold", (4, 1), r"threshold has shape \(4, 1\), expected \(4,\)"),
    ("W_enc", (8, 4, 1), r"W_enc has shape \(8, 4, 1\), expected 2-D"),
])
def test_params_npz_wrong_shape_names_file_key_and_shapes(tmp_path, key, shape, expected):
    params = random_params(8, 4)
    params[key] = np.zeros(shape, dtype=np.float32)
    path = write_params(tmp_path / "params.npz", params)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ": " + expected):
        scope.load_sae(path, hook=HOOK)


def test_params_npz_truncated_or_not_an_npz_names_the_file(tmp_path):
    path = write_params(tmp_path / "params.npz", random_params(64, 256))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path)) + r" is not a readable params\.npz \(truncated"):
        scope.load_sae(path, hook=HOOK)
    junk = tmp_path / "junk" / "params.npz"
    junk.parent.mkdir()
    junk.write_text("not a zip file")
    with pytest.raises(ValueError, match=re.escape(str(junk)) + r" is not a readable params\.npz"):
        scope.load_sae(junk, hook=HOOK)


def test_params_npz_with_a_corrupt_member_names_the_file(tmp_path):
    path = write_params(tmp_path / "params.npz", random_params(64, 256))
    with zipfile.ZipFile(path) as archive:  # keep the directory intact, damage W_dec's bytes
        info = archive.getinfo("W_dec.npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 200
    data[start:start + 64] = b"\x00" * 64
    data[start + 64:start + 96] = b"\xff" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=re.escape(str(path))):
        scope.load_sae(path, hook=HOOK)


def test_missing_local_paths_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="params.npz"):
        scope.load_sae(str(tmp_path / "nowhere" / "params.npz"), hook=HOOK)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"{re.escape(str(empty))} is not an SAE: expected a sae-lens folder"):
        scope.load_sae(empty)


# ----------------------------------------------------------------------------- sae-lens folders, demo


def _sae_lens_folder(tmp_path, name="folder"):
    sae = scope.load_sae(write_params(tmp_path / "src" / "params.npz", random_params(64, 32)), hook=HOOK, device="cpu")
    folder = tmp_path / name
    sae.save_model(folder)
    return sae, folder


def test_sae_lens_folder_round_trips(tmp_path):
    original, folder = _sae_lens_folder(tmp_path)
    loaded = scope.load_sae(folder, device="cpu")
    assert loaded.cfg.metadata.hook_name == HOOK
    for key in ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"]:
        assert torch.equal(getattr(loaded, key), getattr(original, key))
    moved = scope.load_sae(folder, device="cpu", hook="blocks.2.hook_resid_post")
    assert moved.cfg.metadata.hook_name == "blocks.2.hook_resid_post"


def test_sae_lens_folder_without_weights_names_the_missing_file(tmp_path):
    _, folder = _sae_lens_folder(tmp_path)
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"sae_weights\.safetensors is missing"):
        scope.load_sae(folder)


def test_demo_spec_resolves_to_data_demo_sae(tmp_path, monkeypatch):
    assert saes_module.DEMO_SAE_DIR.parts[-2:] == ("data", "demo_sae")
    absent = tmp_path / "data" / "demo_sae"
    monkeypatch.setattr(saes_module, "DEMO_SAE_DIR", absent)
    with pytest.raises(FileNotFoundError, match=re.escape(str(absent)) + r".*scripts/train_demo_sae\.py"):
        scope.load_sae("demo")
    original, folder = _sae_lens_folder(tmp_path, "data/demo_sae")
    assert folder == absent
    demo = scope.load_sae("demo", device="cpu")
    assert torch.equal(demo.W_dec, original.W_dec)
    assert getattr(demo, "scope_max_activations", None) is None  # no statistics shipped yet


def test_demo_sae_carries_its_shipped_max_activations(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    original, folder = _sae_lens_folder(tmp_path, "data/demo_sae")
    monkeypatch.setattr(saes_module, "DEMO_SAE_DIR", folder)
    max_acts = torch.rand(original.cfg.d_sae) * 10
    save_file({"max_activation": max_acts, "density": torch.rand(original.cfg.d_sae)},
              str(folder / "feature_stats.safetensors"))
    demo = scope.load_sae("demo", device="cpu")
    assert torch.equal(demo.scope_max_activations, max_acts)
    assert set(demo.scope_feature_stats) == {"max_activation", "density"}


# ----------------------------------------------------------------------------- registry specs


class _FakeFromPretrained:
    """Stands in for the hub: records calls, returns a small SAE reading the id's layer."""

    def __init__(self, tmp_path, d_in=64):
        self.calls = []
        self.tmp_path = tmp_path
        self.d_in = d_in

    def __call__(self, release, sae_id, device="cpu", dtype="float32", **kwargs):
        self.calls.append((release, sae_id, device, dtype))
        layer = int(re.match(r"layer_(\d+)", sae_id)[1])
        path = write_params(self.tmp_path / f"hub{len(self.calls)}" / "params.npz", random_params(self.d_in, 16, seed=layer))
        sae = scope.load_sae(path, hook=f"blocks.{layer}.hook_resid_post", device=device, dtype=dtype)
        sae.cfg.metadata.neuronpedia_id = _registry()[release].neuronpedia_id.get(sae_id)
        return sae


def test_registry_spec_goes_through_sae_lens_from_pretrained(tmp_path, monkeypatch):
    from sae_lens import SAE

    fake = _FakeFromPretrained(tmp_path)
    monkeypatch.setattr(SAE, "from_pretrained", fake)
    sae = scope.load_sae("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical", device="cpu", dtype=torch.bfloat16)
    assert fake.calls == [("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical", "cpu", "bfloat16")]
    assert sae.cfg.metadata.hook_name == "blocks.20.hook_resid_post"


def test_registry_spec_errors(tmp_path, monkeypatch):
    from sae_lens import SAE

    with pytest.raises(ValueError, match=r"SAE id 'layer_20/width_16k/canon' is not in release 'gemma-scope-2b-pt-res-canonical'; closest ids: layer_20/width_16k/canonical"):
        scope.load_sae("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canon")
    with pytest.raises(ValueError, match=r"neither an existing local path nor 'RELEASE/SAE_ID'.*did you mean release 'gemma-scope-2b-pt-res-canonical'"):
        scope.load_sae("gemma-scope-2b-pt-res-canonicl/layer_20/width_16k/canonical")

    def offline(*args, **kwargs):
        raise OSError("couldn't connect to huggingface.co")

    monkeypatch.setattr(SAE, "from_pretrained", offline)
    with pytest.raises(scope.ModelUnavailableError, match=r"Cannot download SAE gemma-scope-2b-pt-res-canonical/layer_3"):
        scope.load_sae("/".join(scope.gemma_scope_id("gemma-2-2b", 3)))


# ----------------------------------------------------------------------------- compatibility


def test_check_compatible_accepts_a_fitting_sae_and_measures_the_width(tiny_model, tmp_path):
    sae = scope.load_sae(write_params(tmp_path / "a" / "params.npz", random_params(64, 8)), hook=HOOK, device="cpu")
    scope.check_compatible(tiny_model, sae)
    # the MLP's hidden layer is d_mlp = 128 wide, not d_model = 64
    mlp = scope.load_sae(write_params(tmp_path / "b" / "params.npz", random_params(128, 8)),
                         hook="blocks.2.mlp.hook_post", device="cpu")
    scope.check_compatible(tiny_model, mlp)
    # attention SAEs read hook_z flattened over heads: 4 heads x 16 = 64
    att = scope.load_sae(write_params(tmp_path / "c" / "params.npz", random_params(64, 8)),
                         hook="blocks.2.attn.hook_z", device="cpu")
    assert att.cfg.reshape_activations == "hook_z"
    scope.check_compatible(tiny_model, att)


def test_check_compatible_rejects_wrong_hook_and_width_attaching_nothing(tiny_model, tmp_path):
    wrong_width = scope.load_sae(write_params(tmp_path / "a" / "params.npz", random_params(2304, 8)), hook=HOOK, device="cpu")
    with pytest.raises(ValueError, match=r"SAE d_in is 2304 but .* has width 64 at blocks\.1\.hook_resid_post"):
        scope.check_compatible(tiny_model, wrong_width)
    wrong_hook = scope.load_sae(write_params(tmp_path / "b" / "params.npz", random_params(64, 8)),
                                hook="blocks.20.hook_resid_post", device="cpu")
    with pytest.raises(ValueError, match=r"no hook 'blocks\.20\.hook_resid_post'.*Blocks are 0\.\.3"):
        scope.check_compatible(tiny_model, wrong_hook)
    assert tiny_model.acts_to_saes == {}
    assert all(not hp.fwd_hooks for hp in tiny_model.hook_dict.values())


# ----------------------------------------------------------------------------- load_saes


def test_load_saes_is_lazy_and_loads_in_the_model_dtype(tiny_model, tmp_path, monkeypatch):
    from sae_lens import SAE

    fake = _FakeFromPretrained(tmp_path)
    monkeypatch.setattr(SAE, "from_pretrained", fake)
    every = scope.load_saes(tiny_model)  # "all" for a 2B-shaped subject: 26 layers, nothing loaded
    assert list(every) == list(range(26)) and fake.calls == []
    saes = scope.load_saes(tiny_model, layers=[0, 2])
    assert len(saes) == 2 and saes.loaded == [] and fake.calls == []
    sae = saes[2]
    assert saes[2] is sae and saes.loaded == [2] and len(fake.calls) == 1
    assert fake.calls[0][:2] == scope.gemma_scope_id("gemma-2-2b", 2)
    assert fake.calls[0][2:] == ("cpu", "float32")
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    with pytest.raises(KeyError, match="layer 1"):
        saes[1]
    saes.unload(2)
    assert saes.loaded == []


def test_load_saes_rejects_bad_layers_before_loading(tiny_model, tmp_path, monkeypatch):
    from sae_lens import SAE

    fake = _FakeFromPretrained(tmp_path)
    monkeypatch.setattr(SAE, "from_pretrained", fake)
    with pytest.raises(ValueError, match=r"layer 40.*0-25"):
        scope.load_saes(tiny_model, layers=[1, 40])
    with pytest.raises(ValueError, match="layers must be 'all' or a list"):
        scope.load_saes(tiny_model, layers=3)
    assert fake.calls == []


def test_load_saes_checks_each_sae_against_the_model_on_load(tiny_model, tmp_path, monkeypatch):
    from sae_lens import SAE

    monkeypatch.setattr(SAE, "from_pretrained", _FakeFromPretrained(tmp_path, d_in=2304))
    saes = scope.load_saes(tiny_model, layers=[1])
    with pytest.raises(ValueError, match="SAE d_in is 2304 but"):
        saes[1]
    assert saes.loaded == []


def test_unknown_specs_say_what_a_spec_can_be():
    with pytest.raises(FileNotFoundError, match="No such SAE file or folder: ./saes/params.npz"):
        scope.load_sae("./saes/params.npz", hook=HOOK)
    with pytest.raises(ValueError, match=r"'my-release/blocks\.8' is neither an existing local path nor 'RELEASE/SAE_ID'.*'demo'"):
        scope.load_sae("my-release/blocks.8")
