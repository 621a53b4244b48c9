"""scope.mining.scores: a JumpReLU SAE's pre-activations with thresholds give exactly what its
``encode`` gives, anything else (other architectures, hooked SAEs) goes through ``encode``, and
mining an SAE of another architecture still equals a search written here."""

from __future__ import annotations

import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

import scope
from scope.mining.scores import scores_of

HOOK = "blocks.1.hook_resid_post"
TEXTS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "She sells sea shells by the sea shore every summer morning.",
]


def _activations(scores) -> torch.Tensor:
    if scores.threshold is None:
        return scores.score
    return torch.where(scores.score > scores.threshold, scores.score, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_jumprelu_scores_give_exactly_encode(make_sae, dtype):
    sae, params = make_sae(d_sae=64, seed=1, dtype=str(dtype).removeprefix("torch."))
    with torch.no_grad():
        sae.threshold[:8] = -0.3  # negative thresholds: ReLU still zeroes what is below 0
    x = torch.randn(200, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    scores = scores_of(sae, x)
    assert scores.threshold is not None  # the JumpReLU path, not encode
    expected = sae.encode(x)
    assert torch.equal(_activations(scores), expected)
    assert 0 < (expected > 0).float().mean() < 0.9


def test_a_hook_on_the_activations_sends_scores_through_encode(make_sae):
    sae, _ = make_sae(d_sae=32)
    seen = []
    handle = sae.hook_sae_acts_post.register_forward_hook(lambda _m, _i, out: seen.append(out) or out * 2)
    try:
        x = torch.randn(10, 64)
        scores = scores_of(sae, x)
        assert scores.threshold is None and len(seen) == 1  # the user's hook ran, and counts
        assert torch.equal(scores.score, sae.encode(x))
    finally:
        handle.remove()
    assert scores_of(sae, x).threshold is not None  # hook gone: back to the JumpReLU path


@pytest.fixture
def topk_sae():
    torch.manual_seed(5)
    cfg = TopKSAEConfig(d_in=64, d_sae=40, k=6, metadata=SAEMetadata(hook_name=HOOK))
    sae = TopKSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(0, 64**-0.5)
        sae.b_enc.normal_(0, 0.1)
    return sae


def test_mining_a_topk_sae_equals_a_search_over_encode(tiny_model, topk_sae):
    """A TopK SAE's activations come from its own ``encode``: each feature's best window maximum,
    found here by running every text alone."""
    got = scope.top_examples(tiny_model, topk_sae, TEXTS, k=1, batch_size=2, progress=False)
    assert scores_of(topk_sae, torch.randn(3, 64)).threshold is None
    best: dict[int, tuple[float, int, int]] = {}
    for text_id, text in enumerate(TEXTS):
        tokens = tiny_model.to_tokens(text)
        _, cache = tiny_model.run_with_cache(tokens, names_filter=HOOK)
        with torch.no_grad():
            acts = topk_sae.encode(cache[HOOK][0, 1:])
        values, peak = acts.max(0)
        for feature in range(40):
            value = float(values[feature])
            if value > 0 and value > best.get(feature, (0.0,))[0]:
                best[feature] = (value, text_id, 1 + int(peak[feature]))
    assert len(best) > 10
    assert got.feature.tolist() == sorted(best)
    assert got[["text_id", "position"]].values.tolist() == [list(best[f][1:]) for f in sorted(best)]
    torch.testing.assert_close(
        torch.tensor(got.activation.values), torch.tensor([best[f][0] for f in sorted(best)], dtype=torch.float64)
    )
