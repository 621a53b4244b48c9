"""Per-feature statistics kept in an SAE's cfg.metadata (scope/feature_stats.py).

A bundled SAE loading with its shipped statistics is tested in test_saes.py."""

import numpy as np
import pytest
import torch

import scope
from scope.feature_stats import feature_stats, max_activation, max_activations, set_feature_stats, set_max_activations


def test_feature_stats_live_in_the_metadata_and_are_saved_with_the_sae(make_sae, tmp_path):
    sae, _ = make_sae(d_sae=16)
    values = torch.arange(16, dtype=torch.float32) / 4
    set_max_activations(sae, values)
    set_feature_stats(sae, {"density": np.linspace(0, 1, 16)})  # merged, not replaced
    assert not hasattr(sae, "scope_max_activations")
    assert set(sae.cfg.metadata.scope_feature_stats) == {"max_activation", "density"}
    assert torch.equal(max_activations(sae), values)
    assert max_activation(sae, np.int64(5)) == 1.25
    sae.save_model(tmp_path / "saved")
    reloaded = scope.load_sae(tmp_path / "saved", device="cpu")
    assert torch.equal(max_activations(reloaded), values)
    torch.testing.assert_close(feature_stats(reloaded)["density"], torch.linspace(0, 1, 16), rtol=0, atol=1e-7)


def test_feature_stats_must_have_one_value_per_feature(make_sae):
    sae, _ = make_sae(d_sae=16)
    with pytest.raises(ValueError, match=r"max_activation must have one value per feature \(16\), got 15"):
        set_max_activations(sae, torch.ones(15))
    with pytest.raises(
        ValueError, match=r"needs the SAE's per-feature max activations.*set_max_activations.*unit='act'"
    ):
        max_activation(sae, 3)
