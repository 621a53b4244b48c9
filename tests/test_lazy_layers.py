"""Every layer's SAE, loaded lazily (scope/lazy_layers.py: scope.load_saes, LazySAEs).

The hub is replaced by FakeFromPretrained; which ids a model's layers map to is tested in
test_gemma_scope.py."""

import pytest

import scope
from tests.sae_util import FakeFromPretrained


def test_load_saes_is_lazy_and_loads_in_the_model_dtype(tiny_model, make_sae, monkeypatch):
    from sae_lens import SAE

    fake = FakeFromPretrained(make_sae)
    monkeypatch.setattr(SAE, "from_pretrained", fake)
    every = scope.load_saes(tiny_model)  # "all" for a 2B-shaped subject: 26 layers, nothing loaded
    assert list(every) == list(range(26)) and fake.calls == []
    saes = scope.load_saes(tiny_model, layers=[0, 2])
    assert len(saes) == 2 and saes.loaded == [] and fake.calls == []
    assert saes.specs == {layer: str(scope.gemma_scope_id("gemma-2-2b", layer)) for layer in (0, 2)}
    sae = saes[2]
    assert saes[2] is sae and saes.loaded == [2] and len(fake.calls) == 1
    assert fake.calls[0][:2] == scope.gemma_scope_id("gemma-2-2b", 2)
    assert fake.calls[0][2:] == ("cpu", "float32")
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    with pytest.raises(KeyError, match="layer 1"):
        saes[1]
    saes.unload(2)
    assert saes.loaded == []


def test_load_saes_rejects_bad_layers_before_loading(tiny_model, make_sae, monkeypatch):
    from sae_lens import SAE

    fake = FakeFromPretrained(make_sae)
    monkeypatch.setattr(SAE, "from_pretrained", fake)
    with pytest.raises(ValueError, match=r"layer 40.*0-25"):
        scope.load_saes(tiny_model, layers=[1, 40])
    # a wrong type is a TypeError now (it was a ValueError before the redesign)
    with pytest.raises(TypeError, match="layers must be 'all' or a list"):
        scope.load_saes(tiny_model, layers=3)
    with pytest.raises(TypeError, match="layer must be an integer"):
        scope.load_saes(tiny_model, layers=["1"])
    assert fake.calls == []


def test_load_saes_checks_each_sae_against_the_model_on_load(tiny_model, make_sae, monkeypatch):
    from sae_lens import SAE

    monkeypatch.setattr(SAE, "from_pretrained", FakeFromPretrained(make_sae, d_in=2304))
    saes = scope.load_saes(tiny_model, layers=[1])
    with pytest.raises(ValueError, match="SAE d_in is 2304 but"):
        saes[1]
    assert saes.loaded == []
