"""Loading SAEs (scope/saes.py): params.npz files, sae-lens folders, the bundled demo SAEs, registry specs.

Gemma Scope ids are tested in test_gemma_scope.py, whether an SAE fits a model in test_hooks.py."""

import dataclasses
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import scope
from scope import saes as saes_module
from scope.feature_stats import feature_stats, max_activation, max_activations
from scope.labels import feature_labels, save_labels
from tests.sae_util import FakeFromPretrained, random_params, write_params

HOOK = "blocks.1.hook_resid_post"


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


@pytest.mark.parametrize(
    "key,shape,expected",
    [
        ("W_dec", (8, 4), r"W_dec has shape \(8, 4\), expected \(4, 8\)"),
        ("b_enc", (8,), r"b_enc has shape \(8,\), expected \(4,\)"),
        ("b_dec", (4,), r"b_dec has shape \(4,\), expected \(8,\)"),
        ("threshold", (4, 1), r"threshold has shape \(4, 1\), expected \(4,\)"),
        ("W_enc", (8, 4, 1), r"W_enc has shape \(8, 4, 1\), expected 2-D"),
    ],
)
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
    data[start : start + 64] = b"\x00" * 64
    data[start + 64 : start + 96] = b"\xff" * 32
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


def _sae_lens_folder(make_sae, tmp_path, name="folder"):
    sae, _ = make_sae(hook=HOOK, d_sae=32)
    folder = tmp_path / name
    sae.save_model(folder)
    return sae, folder


def test_sae_lens_folder_round_trips(make_sae, tmp_path):
    original, folder = _sae_lens_folder(make_sae, tmp_path)
    loaded = scope.load_sae(folder, device="cpu")
    assert loaded.cfg.metadata.hook_name == HOOK
    for key in ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"]:
        assert torch.equal(getattr(loaded, key), getattr(original, key))


def test_hook_overrides_a_sae_lens_folder_s_hook_at_load_time(make_sae, tmp_path):
    original, folder = _sae_lens_folder(make_sae, tmp_path)
    moved = scope.load_sae(folder, device="cpu", hook="blocks.2.hook_resid_post")
    assert moved.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert moved.cfg.reshape_activations == "none"
    assert torch.equal(moved.W_dec, original.W_dec)
    att = scope.load_sae(folder, device="cpu", hook="blocks.2.attn.hook_z")  # 64 = 4 heads x 16
    assert att.cfg.metadata.hook_name == "blocks.2.attn.hook_z" and att.cfg.reshape_activations == "hook_z"
    assert scope.load_sae(folder, device="cpu").cfg.metadata.hook_name == HOOK  # the folder is unchanged


def test_sae_lens_folder_without_weights_names_the_missing_file(make_sae, tmp_path):
    _, folder = _sae_lens_folder(make_sae, tmp_path)
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"sae_weights\.safetensors is missing"):
        scope.load_sae(folder)


ROOT = Path(__file__).resolve().parent.parent


def test_the_bundled_sae_names_resolve_to_their_folders_and_hooks():
    demo, docs, modern = (saes_module.DEMO_SAES[n] for n in ("demo", "demo-docs", "demo-modern"))
    assert list(saes_module.DEMO_SAES) == ["demo", "demo-docs", "demo-modern"]
    assert demo.folder == ROOT / "data" / "demo_sae" and docs.folder == ROOT / "data" / "demo_sae_docs"
    assert modern.folder == ROOT / "data" / "demo_sae_modern"
    assert (demo.hook, demo.width) == ("blocks.9.hook_resid_post", 8192)
    assert (docs.hook, docs.width) == ("blocks.6.hook_resid_post", 4096)
    assert (modern.hook, modern.width) == ("blocks.12.hook_resid_post", 4096)
    for entry in (demo, docs, modern):
        assert entry.command.startswith("scripts/train_demo_sae.py")
        assert (ROOT / entry.command.split()[0]).is_file()
    assert "--out data/demo_sae_docs" in docs.command  # the script's default --out is the general SAE's
    assert "--out data/demo_sae_modern" in modern.command


def _demo_folders(make_sae, tmp_path, monkeypatch) -> dict:
    """Both names pointed at SAE folders in tmp_path, each a different SAE at its own hook."""
    originals = {}
    for seed, (name, hook) in enumerate([("demo", "blocks.2.hook_resid_post"), ("demo-docs", HOOK)]):
        sae, _ = make_sae(hook=hook, d_sae=32, seed=seed)
        folder = tmp_path / "data" / name
        sae.save_model(folder)
        entry = dataclasses.replace(saes_module.DEMO_SAES[name], folder=folder, hook=hook, width=32)
        monkeypatch.setitem(saes_module.DEMO_SAES, name, entry)
        originals[name] = sae
    return originals


def test_each_bundled_name_loads_its_own_folder(make_sae, tmp_path, monkeypatch):
    originals = _demo_folders(make_sae, tmp_path, monkeypatch)
    for name, original in originals.items():
        loaded = scope.load_sae(name, device="cpu")
        assert loaded.cfg.metadata.hook_name == saes_module.DEMO_SAES[name].hook == original.cfg.metadata.hook_name
        assert torch.equal(loaded.W_dec, original.W_dec)
        # no statistics or labels shipped in these folders
        assert max_activations(loaded) is None
        assert feature_stats(loaded) == {}
        assert feature_labels(loaded) is None
    assert not torch.equal(originals["demo"].W_dec, originals["demo-docs"].W_dec)  # two different SAEs


def test_a_missing_bundled_folder_names_the_folder_and_the_command_that_builds_it(tmp_path, monkeypatch):
    for name in ("demo", "demo-docs"):
        absent = tmp_path / "data" / name
        entry = dataclasses.replace(saes_module.DEMO_SAES[name], folder=absent)
        monkeypatch.setitem(saes_module.DEMO_SAES, name, entry)
        with pytest.raises(FileNotFoundError) as err:
            scope.load_sae(name)
        assert str(absent) in str(err.value) and entry.command in str(err.value)
        assert "scripts/train_demo_sae.py" in str(err.value)
    assert "--layer 6 --width 4096" in str(err.value)  # demo-docs: the flags that build the layer-6 SAE


def test_a_bundled_sae_carries_its_shipped_statistics_and_labels(make_sae, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    originals = _demo_folders(make_sae, tmp_path, monkeypatch)
    folder = saes_module.DEMO_SAES["demo-docs"].folder
    d_sae = originals["demo-docs"].cfg.d_sae
    max_acts = torch.rand(d_sae) * 10
    density = torch.rand(d_sae)
    # the layout scripts/eval_demo_sae.py --save-stats writes: per-feature columns and n_tokens [1]
    save_file(
        {"max_activation": max_acts, "density": density, "n_tokens": torch.tensor([12345])},
        str(folder / "feature_stats.safetensors"),
    )
    labels = pd.DataFrame({"feature": range(d_sae), "label": [f"label {i}" for i in range(d_sae)]})
    save_labels(labels, folder / "labels.parquet")  # as scripts/label_demo_sae.py writes it
    demo = scope.load_sae("demo-docs", device="cpu")
    assert torch.equal(max_activations(demo), max_acts)
    stats = feature_stats(demo)
    assert set(stats) == {"max_activation", "density"}
    assert demo.cfg.metadata.scope_feature_stats_tokens == 12345
    assert torch.equal(stats["density"], density)
    assert max_activation(demo, 3) == pytest.approx(float(max_acts[3]))
    assert feature_labels(demo)["label"].tolist() == labels["label"].tolist()
    # the other name's folder has none of it
    assert max_activations(scope.load_sae("demo", device="cpu")) is None


# ----------------------------------------------------------------------------- registry specs


def test_registry_spec_goes_through_sae_lens_from_pretrained(make_sae, monkeypatch):
    from sae_lens import SAE

    fake = FakeFromPretrained(make_sae)
    monkeypatch.setattr(SAE, "from_pretrained", fake)
    sae = scope.load_sae(
        "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical", device="cpu", dtype=torch.bfloat16
    )
    assert fake.calls == [("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical", "cpu", "bfloat16")]
    assert sae.cfg.metadata.hook_name == "blocks.20.hook_resid_post"
    assert sae.cfg.metadata.neuronpedia_id == "gemma-2-2b/20-gemmascope-res-16k"
    # the (release, sae_id) tuple of gemma_scope_id is a spec too
    scope.load_sae(("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical"), device="cpu")
    assert fake.calls[1] == ("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical", "cpu", "float32")


def test_registry_sae_keeps_its_recorded_hook(make_sae, monkeypatch):
    from sae_lens import SAE

    monkeypatch.setattr(SAE, "from_pretrained", FakeFromPretrained(make_sae))
    spec = "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"
    assert (
        scope.load_sae(spec, hook="blocks.20.hook_resid_post", device="cpu").cfg.metadata.hook_name
        == "blocks.20.hook_resid_post"
    )
    with pytest.raises(
        ValueError,
        match=r"layer_20/width_16k/canonical was trained at 'blocks\.20\.hook_resid_post', "
        r"not hook='blocks\.3\.hook_resid_post'",
    ):
        scope.load_sae(spec, hook="blocks.3.hook_resid_post", device="cpu")


def test_registry_spec_errors(monkeypatch):
    from sae_lens import SAE

    with pytest.raises(
        ValueError,
        match=r"SAE id 'layer_20/width_16k/canon' is not in release 'gemma-scope-2b-pt-res-canonical'; closest ids: layer_20/width_16k/canonical",
    ):
        scope.load_sae("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canon")
    with pytest.raises(
        ValueError,
        match=r"neither an existing local path nor 'RELEASE/SAE_ID'.*did you mean release 'gemma-scope-2b-pt-res-canonical'",
    ):
        scope.load_sae("gemma-scope-2b-pt-res-canonicl/layer_20/width_16k/canonical")

    def offline(*args, **kwargs):
        raise OSError("couldn't connect to huggingface.co")

    monkeypatch.setattr(SAE, "from_pretrained", offline)
    with pytest.raises(
        scope.ModelUnavailableError, match=r"Cannot download SAE gemma-scope-2b-pt-res-canonical/layer_3"
    ):
        scope.load_sae(scope.gemma_scope_id("gemma-2-2b", 3))


@pytest.mark.parametrize("spec", [123, None, ["gemma-scope-2b-pt-res-canonical", "layer_3/width_16k/canonical"]])
def test_a_spec_of_the_wrong_type_is_a_type_error(spec):
    with pytest.raises(TypeError, match=r"spec must be a 'release/sae_id' string, a \(release, sae_id\) tuple"):
        scope.load_sae(spec)


def test_unknown_specs_say_what_a_spec_can_be():
    with pytest.raises(FileNotFoundError, match="No such SAE file or folder: ./saes/params.npz"):
        scope.load_sae("./saes/params.npz", hook=HOOK)
    with pytest.raises(
        ValueError,
        match=r"'my-release/blocks\.8' is neither an existing local path nor 'RELEASE/SAE_ID'.*'demo', 'demo-docs' or 'demo-modern'",
    ):
        scope.load_sae("my-release/blocks.8")
    with pytest.raises(
        ValueError, match=r"'demo_docs' is neither.*did you mean the bundled 'demo-docs'\?.*'demo', 'demo-docs' or"
    ):
        scope.load_sae("demo_docs")
    with pytest.raises(TypeError, match=r"a path or one of 'demo', 'demo-docs' or 'demo-modern', got int"):
        scope.load_sae(6)


# ----------------------------------------------------------------------------- weights checked at load


@pytest.mark.parametrize("tensor", ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_on_every_load_path(make_sae, tmp_path, monkeypatch, tensor, bad):
    params = random_params(64, 16)
    params[tensor].flat[3] = bad
    npz = write_params(tmp_path / "npz" / "params.npz", params)
    with pytest.raises(ValueError, match=rf"{re.escape(str(npz))}: the SAE tensor {tensor} holds 1 non-finite"):
        scope.load_sae(npz, hook=HOOK)
    sae, _ = make_sae(hook=HOOK, d_sae=16)
    with torch.no_grad():
        getattr(sae, tensor).view(-1)[3] = bad
    folder = tmp_path / "folder"
    sae.save_model(folder)
    weights = re.escape(str(folder / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match=rf"{weights}: the SAE tensor {tensor} holds 1 non-finite"):
        scope.load_sae(folder)
    entry = dataclasses.replace(saes_module.DEMO_SAES["demo"], folder=folder, hook=HOOK, width=16)
    monkeypatch.setitem(saes_module.DEMO_SAES, "demo", entry)
    with pytest.raises(ValueError, match=rf"{weights}: the SAE tensor {tensor}"):
        scope.load_sae("demo")
    from sae_lens import SAE

    monkeypatch.setattr(SAE, "from_pretrained", lambda *args, **kwargs: sae)
    spec = "gemma-scope-2b-pt-res-canonical/layer_1/width_16k/canonical"
    with pytest.raises(ValueError, match=rf"{re.escape(spec)}: the SAE tensor {tensor}"):
        scope.load_sae(spec)


def test_a_truncated_safetensors_file_names_the_file(make_sae, tmp_path):
    _, folder = _sae_lens_folder(make_sae, tmp_path)
    weights = folder / "sae_weights.safetensors"
    for content in (weights.read_bytes()[:1000], b"xx"):
        weights.write_bytes(content)
        with pytest.raises(ValueError, match=rf"{re.escape(str(weights))} is not a readable safetensors file"):
            scope.load_sae(folder)


@pytest.mark.parametrize("keys", [["d_sae"], ["d_in", "d_sae"]])
def test_a_cfg_json_without_required_keys_names_the_file_and_the_keys(make_sae, tmp_path, keys):
    import json

    _, folder = _sae_lens_folder(make_sae, tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    for key in keys:
        del cfg[key]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    pattern = rf"{re.escape(str(folder / 'cfg.json'))} lacks {', '.join(keys)}: .*needs d_in, d_sae"
    with pytest.raises(ValueError, match=pattern):
        scope.load_sae(folder)
