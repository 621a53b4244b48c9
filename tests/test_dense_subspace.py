"""scripts/dense_subspace.py against data whose dense subspace is known by construction."""

import numpy as np
import pytest
import torch

import scope
from tests.sae_util import write_params
from tests.test_golden_gate import _script


@pytest.fixture
def planted(tmp_path):
    """A JumpReLU SAE on 16 dims: features 0 / 1 read e0 with either sign (threshold ~0, an
    antipodal pair), features 2..9 read e1..e8 above 1; data = g e0 + sparse 3s (3% of tokens each) on e1..e8."""
    d_in, d_sae = 16, 10
    eye = np.eye(d_in, dtype=np.float32)
    rows = np.stack([eye[0], -eye[0], *eye[1:9]])
    params = {
        "W_enc": rows.T.copy(),
        "W_dec": rows.copy(),
        "b_enc": np.zeros(d_sae, np.float32),
        "b_dec": np.zeros(d_in, np.float32),
        "threshold": np.array([1e-6, 1e-6] + [1.0] * 8, np.float32),
    }
    sae = scope.load_sae(write_params(tmp_path / "params.npz", params), hook="blocks.1.hook_resid_post")
    rng = np.random.default_rng(0)
    n = 20_000
    dense_part = np.outer(rng.normal(size=n), eye[0])
    sparse_part = 3.0 * (rng.random((n, 8)) < 0.03) @ eye[1:9]
    return sae, torch.from_numpy(dense_part + sparse_part).float(), torch.from_numpy(sparse_part)


def test_dense_subspace_measures_the_planted_linear_pair(planted):
    sae, x, sparse_part = planted
    figures = _script("dense_subspace").measure(sae, x, threshold=0.1)
    centred = (x - x.mean(0)).double()
    total = centred.pow(2).sum()
    assert figures["dense"] == 2 and figures["over_20%"] == 2 and figures["over_5%"] == 2  # e1..e8 fire on ~3%
    assert figures["paired"] == 2 and figures["dims_90"] == 1
    assert figures["ev"] == pytest.approx(1.0, abs=1e-6)  # every part is read back exactly
    # alone, the pair gives back everything but the sparse part
    assert figures["dense_ev"] == pytest.approx(float(1 - sparse_part.pow(2).sum() / total), abs=1e-4)
    # the top principal component is e0 (up to sampled correlations): its variance share, computed directly
    assert figures["pca_share"] == pytest.approx(float(centred[:, 0].pow(2).sum() / total), abs=1e-3)
    assert figures["dense_mass"] == pytest.approx(
        float(x[:, 0].abs().sum() / (x[:, 0].abs().sum() + x[:, 1:].sum())), rel=1e-5
    )
