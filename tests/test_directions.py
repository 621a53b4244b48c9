"""Direction interventions and DiffMean, checked against hand-computed edits on transformers' activations."""

import math

import pytest
import torch

import scope
from tests.test_steering import no_hooks_left

HOOK = "blocks.1.hook_resid_post"
NEXT = "blocks.2.hook_resid_pre"
PROMPT = "Paris is the capital of France, and the quick brown fox"
POSITIVE = ["def add(a, b):\n    return a + b", "import os\nprint(os.getcwd())", "for i in range(3): pass"]
NEGATIVE = ["The quick brown fox jumps.", "Paris is the capital of France.", "Knock knock. Who is there?"]


def hf_resid(hf_model, tokens: torch.Tensor, layer: int = 1) -> torch.Tensor:
    """transformers' residual stream after block ``layer`` ``[pos, d]`` (float64)."""
    with torch.no_grad():
        out = hf_model(tokens, output_hidden_states=True)
    return out.hidden_states[layer + 1][0].double()


def hf_mean(hf_model, model, texts) -> torch.Tensor:
    rows = [hf_resid(hf_model, scope.to_tokens(model, text))[1:] for text in texts]  # BOS excluded
    return torch.cat(rows).mean(0)


@pytest.fixture
def direction(tiny_model):
    return scope.diffmean(tiny_model, HOOK, POSITIVE, NEGATIVE, batch_size=2)


def test_diffmean_equals_the_hand_computed_difference_of_means(tiny_model, tiny_hf, direction):
    hf_model, _ = tiny_hf
    expected = hf_mean(hf_model, tiny_model, POSITIVE) - hf_mean(hf_model, tiny_model, NEGATIVE)
    expected = expected / expected.norm()
    assert isinstance(direction, scope.Direction) and direction.hook == HOOK
    assert torch.allclose(direction.vector.double(), expected, atol=1e-4)
    assert math.isclose(direction.vector.norm().item(), 1.0, rel_tol=1e-6)
    # Padding does not leak in: one text per batch gives the same direction.
    alone = scope.diffmean(tiny_model, HOOK, POSITIVE, NEGATIVE, batch_size=1)
    assert torch.allclose(alone.vector, direction.vector, atol=1e-5)


def steered_stream(model, tokens, *interventions):
    with torch.no_grad(), scope.steer(model, None, *interventions):
        _, cache = model.run_with_cache(tokens, names_filter=[NEXT])
    return cache[NEXT][0].double()


@pytest.mark.parametrize("value", [0.0, 2.5, -4.0])
def test_direction_clamp_sets_the_projection_and_keeps_the_orthogonal_part(tiny_model, tiny_hf, direction, value):
    hf_model, _ = tiny_hf
    tokens = scope.to_tokens(tiny_model, PROMPT)
    clean = hf_resid(hf_model, tokens)
    u = direction.vector.double()
    expected = clean + (value - clean @ u)[:, None] * u
    expected[0] = clean[0]  # BOS is never steered
    out = steered_stream(tiny_model, tokens, scope.Clamp(direction, value))
    assert torch.allclose(out, expected, atol=1e-4)
    assert torch.allclose(out[1:] @ u, torch.full((tokens.shape[1] - 1,), value, dtype=torch.float64), atol=1e-4)
    orthogonal = lambda h: h - (h @ u)[:, None] * u  # noqa: E731
    assert torch.allclose(orthogonal(out), orthogonal(clean), atol=1e-4)


def test_direction_add_ablate_and_scale(tiny_model, tiny_hf, direction):
    hf_model, _ = tiny_hf
    tokens = scope.to_tokens(tiny_model, PROMPT)
    clean = hf_resid(hf_model, tokens)
    u = direction.vector.double()
    projection = clean @ u
    for intervention, coefficient in [
        (scope.Add(direction, 3.0), torch.full_like(projection, 3.0)),
        (scope.Ablate(direction), -projection),
        (scope.Scale(direction, 2.0), projection),
    ]:
        expected = clean + coefficient[:, None] * u
        expected[0] = clean[0]
        assert torch.allclose(steered_stream(tiny_model, tokens, intervention), expected, atol=1e-4), intervention
    assert no_hooks_left(tiny_model)


def hf_clamp_hook(direction, value):
    """The same clamp, written by hand on transformers' decoder layer 1 output (BOS left alone)."""
    u = direction.vector

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        edited = hidden + (value - hidden @ u)[..., None] * u
        edited[:, 0] = hidden[:, 0]
        return (edited, *output[1:]) if isinstance(output, tuple) else edited

    return hook


def test_direction_steered_generation_equals_the_hand_edited_transformers_model(tiny_model, tiny_hf, direction):
    hf_model, _ = tiny_hf
    tokens = scope.to_tokens(tiny_model, PROMPT)
    value, n = 30.0, 8
    handle = hf_model.model.layers[1].register_forward_hook(hf_clamp_hook(direction, value))
    try:  # greedy, recomputing the whole sequence each step (the edit then applies at every position)
        sequence, expected = tokens, []
        with torch.no_grad():
            for _ in range(n):
                expected.append(int(hf_model(sequence).logits[0, -1].argmax()))
                sequence = torch.cat([sequence, torch.tensor([expected[-1:]])], dim=1)
    finally:
        handle.remove()
    steering = scope.Clamp(direction, value)
    text = scope.generate(tiny_model, PROMPT, steering=steering, max_new_tokens=n, stop_at_eos=False)
    assert text == tiny_model.tokenizer.decode(expected, skip_special_tokens=True)
    assert text != scope.generate(tiny_model, PROMPT, max_new_tokens=n, stop_at_eos=False)
    # Per-row in a batch, and beside an SAE intervention on another row.
    texts = [PROMPT, "knock knock"]
    batched = scope.generate(tiny_model, texts, steering=[[steering], []], max_new_tokens=n, stop_at_eos=False)
    assert batched == [text, scope.generate(tiny_model, "knock knock", max_new_tokens=n, stop_at_eos=False)]


def test_sweep_over_a_direction_rereads_its_projection(tiny_model, tiny_hf, direction):
    hf_model, _ = tiny_hf
    results = scope.sweep(
        tiny_model,
        None,
        lambda v: scope.Add(direction, v),
        [0.0, 30.0],
        [PROMPT],
        max_new_tokens=5,
        stop_at_eos=False,
        progress=False,
    )
    assert results["value"].tolist() == [0.0, 30.0] and results["text"].nunique() == 2
    row = results.iloc[1]
    tokens = scope.to_tokens(tiny_model, PROMPT)
    with scope.steer(tiny_model, None, scope.Add(direction, 30.0)):
        new = scope.generate_tokens(tiny_model, tokens, max_new_tokens=5, stop_at_eos=False)
    clean = hf_resid(hf_model, torch.cat([tokens, new[None]], dim=1))
    expected = (clean[tokens.shape[1] :] @ direction.vector.double()).mean().item()
    assert math.isclose(row["concept"], expected, rel_tol=1e-4, abs_tol=1e-5)
    assert scope.steering.describe(scope.Add(direction, 30.0)) == "Add(diffmean, 30)"


def test_bad_directions(tiny_model, direction):
    with pytest.raises(ValueError, match=r"unit='max'\) needs an SAE feature"):
        scope.Clamp(direction, 2.0, unit="max")
    with pytest.raises(ValueError, match="non-zero"):
        scope.Direction(torch.zeros(64), HOOK)
    with pytest.raises(TypeError, match="hook name"):
        scope.Direction(torch.ones(64), 3)
    with pytest.raises(ValueError, match="d_in is 32"):
        scope.generate(tiny_model, PROMPT, steering=scope.Add(scope.Direction(torch.ones(32), HOOK), 1.0))
    with pytest.raises(ValueError, match="has no hook 'blocks.9.hook_resid_post'"):
        scope.generate(
            tiny_model, PROMPT, steering=scope.Add(scope.Direction(torch.ones(64), "blocks.9.hook_resid_post"), 1.0)
        )
    with pytest.raises(ValueError, match="residual-width hook"):
        scope.diffmean(tiny_model, "blocks.1.attn.hook_z", POSITIVE, NEGATIVE)
    with pytest.raises(ValueError, match="negative must be a non-empty list"):
        scope.diffmean(tiny_model, HOOK, POSITIVE, [])
    with pytest.raises(ValueError, match="same mean activation"):
        scope.diffmean(tiny_model, HOOK, POSITIVE, POSITIVE)
    assert no_hooks_left(tiny_model)
