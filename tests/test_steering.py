import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

import scope
from scope.generation import generate_tokens
from scope.plots import steering_tradeoff_figure
from scope.steering import Scale, set_max_activations, steered
from tests.sae_util import jumprelu

HOOK = "blocks.1.hook_resid_post"
NEXT = "blocks.2.hook_resid_pre"  # what block 1 passes on: the steered stream
PROMPT = "Paris is the capital of France, and the quick brown fox"


@pytest.fixture
def sae_and_params(make_sae):
    return make_sae(HOOK, seed=3, threshold_scale=0.3)


@pytest.fixture
def sae(sae_and_params):
    return sae_and_params[0]


@pytest.fixture
def params(sae_and_params):
    return sae_and_params[1]


def streams(model, tokens, *ctx_args, **ctx_kwargs):
    """(clean stream at HOOK, stream passed on after steering), and the logits."""
    with torch.no_grad():
        if ctx_args:
            with scope.steer(model, *ctx_args, **ctx_kwargs):
                logits, cache = model.run_with_cache(tokens, names_filter=[HOOK, NEXT])
        else:
            logits, cache = model.run_with_cache(tokens, names_filter=[HOOK, NEXT])
    return cache[HOOK][0].double(), cache[NEXT][0].double(), logits


def test_clamp_is_the_golden_gate_formula_and_bos_is_untouched(tiny_model, sae, params):
    tokens = tiny_model.to_tokens(PROMPT)
    clean, _, _ = streams(tiny_model, tokens)
    feature, value = 7, 4.5
    _, steered_stream, _ = streams(tiny_model, tokens, sae, scope.Clamp(feature, value))
    acts, _ = jumprelu(clean, params)
    w_dec = torch.from_numpy(params["W_dec"]).double()
    expected = clean + (value - acts[:, feature])[:, None] * w_dec[feature]
    expected[0] = clean[0]  # BOS is never steered
    assert torch.allclose(steered_stream, expected, atol=1e-4)
    assert torch.equal(steered_stream[0], clean[0])


def test_add_scale_ablate_at_explicit_positions(tiny_model, sae, params):
    tokens = tiny_model.to_tokens(PROMPT)
    clean, _, _ = streams(tiny_model, tokens)
    acts, _ = jumprelu(clean, params)
    w_dec = torch.from_numpy(params["W_dec"]).double()
    live = int((acts[1:] > 0).sum(0).argmax())  # a feature that fires somewhere
    positions = [2, 5]  # (0, BOS, is rejected: test_bos_position_is_rejected)
    _, out, _ = streams(
        tiny_model, tokens, sae, scope.Add(3, 2.0), Scale(live, 3.0), scope.Ablate(11), positions=positions
    )
    expected = clean.clone()
    for p in (2, 5):
        expected[p] += 2.0 * w_dec[3] + 2.0 * acts[p, live] * w_dec[live] - acts[p, 11] * w_dec[11]
    assert torch.allclose(out, expected, atol=1e-4)


def test_several_saes_at_different_layers(tiny_model, sae, params, make_sae):
    other, _ = make_sae("blocks.2.hook_resid_post", d_sae=16, seed=9)
    tokens = tiny_model.to_tokens(PROMPT)
    with torch.no_grad():
        with scope.steer(tiny_model, None, (sae, scope.Add(1, 3.0)), (other, scope.Add(2, -1.0))):
            _, cache = tiny_model.run_with_cache(tokens, names_filter=[NEXT, "blocks.3.hook_resid_pre"])
        with scope.steer(tiny_model, sae, scope.Add(1, 3.0)):
            _, only_first = tiny_model.run_with_cache(tokens, names_filter=["blocks.3.hook_resid_pre"])
    assert not torch.allclose(cache[NEXT], _clean_next(tiny_model, tokens))
    delta = cache["blocks.3.hook_resid_pre"] - only_first["blocks.3.hook_resid_pre"]
    expected = -1.0 * other.W_dec[2]
    assert torch.allclose(delta[0, 1:], expected.expand_as(delta[0, 1:]), atol=1e-4)
    assert torch.equal(delta[0, 0], torch.zeros_like(delta[0, 0]))


def test_run_with_hooks_and_encode_are_steered_as_their_first_pass(tiny_model, sae, make_sae):
    # transformer-lens' run_with_hooks calls forward() directly: steering once missed such passes
    # (scope.encode runs that way) or steered them with the previous pass' mask
    later, _ = make_sae("blocks.2.hook_resid_post", d_sae=16, seed=9)
    plain = scope.encode(tiny_model, later, PROMPT).values
    tokens = tiny_model.to_tokens(PROMPT)
    with torch.no_grad():
        with scope.steer(tiny_model, sae, scope.Add(1, 30.0)):
            steered = scope.encode(tiny_model, later, PROMPT).values  # the first pass under steering
            hooked = tiny_model.run_with_hooks(tokens[:, :5])  # a shorter input: no stale mask may fit it
            _, cache = tiny_model.run_with_cache(tokens, names_filter="blocks.2.hook_resid_post")
            called = tiny_model(tokens[:, :5])
        expected = later.encode(cache["blocks.2.hook_resid_post"][0])
    assert not torch.allclose(steered, plain)
    torch.testing.assert_close(steered, expected)
    torch.testing.assert_close(hooked, called)


def _clean_next(model, tokens):
    with torch.no_grad():
        return model.run_with_cache(tokens, names_filter=NEXT)[1][NEXT]


def test_nested_contexts_add_up(tiny_model, sae):
    tokens = tiny_model.to_tokens(PROMPT)
    with (
        torch.no_grad(),
        scope.steer(tiny_model, sae, scope.Add(5, 1.5)),
        scope.steer(tiny_model, sae, scope.Add(5, 2.0)),
    ):
        nested = tiny_model(tokens)
    with torch.no_grad(), scope.steer(tiny_model, sae, scope.Add(5, 3.5)):
        single = tiny_model(tokens)
    assert torch.allclose(nested, single, atol=1e-4)


def no_hooks_left(model):
    return (
        all(not hp.fwd_hooks for hp in model.hook_dict.values())
        and not model._forward_pre_hooks
        and not model.embed._forward_pre_hooks
    )


def test_exception_inside_steer_removes_everything(tiny_model, sae):
    tokens = tiny_model.to_tokens(PROMPT)
    with torch.no_grad():
        before = tiny_model(tokens)
        with pytest.raises(RuntimeError, match="boom"):
            with scope.steer(tiny_model, sae, scope.Clamp(1, 50.0)):
                assert not torch.allclose(tiny_model(tokens), before)
                raise RuntimeError("boom")
        after = tiny_model(tokens)
    assert torch.equal(before, after) and no_hooks_left(tiny_model)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", [3, 20, 21]])
def test_steered_generation_with_cache_equals_without(tiny_model, sae, positions):
    tokens = scope.to_tokens(tiny_model, PROMPT)
    intervention = scope.Clamp(7, 12.0)
    with steered(tiny_model, sae, intervention, positions, prompt_length=tokens.shape[1]):
        cached = generate_tokens(tiny_model, tokens, max_new_tokens=10, stop_at_eos=False).tolist()
        # Reference: recompute the whole sequence each step (steering the same absolute positions).
        sequence, reference = tokens, []
        with torch.no_grad():
            for _ in range(10):
                nxt = tiny_model(sequence)[0, -1].argmax().item()
                reference.append(nxt)
                sequence = torch.cat([sequence, torch.tensor([[nxt]])], dim=1)
    assert cached == reference
    plain = generate_tokens(tiny_model, tokens, max_new_tokens=10, stop_at_eos=False).tolist()
    assert cached != plain  # the clamp did something
    assert no_hooks_left(tiny_model)


def test_positions_semantics_during_generation(tiny_model, sae):
    seen = []

    def record(resid, hook):
        seen.append(resid[0].clone())

    tokens = scope.to_tokens(tiny_model, PROMPT)
    n = tokens.shape[1]

    def run(positions, steering=scope.Add(4, 5.0)):
        seen.clear()
        with tiny_model.hooks(fwd_hooks=[(NEXT, record)]):
            with steered(tiny_model, sae, steering, positions, prompt_length=n):
                generate_tokens(tiny_model, tokens, max_new_tokens=3, stop_at_eos=False)
        return list(seen)

    plain = run("all", steering=())  # nothing steered (an empty positions list is now an error)
    prompt_only, generated_only = run("prompt"), run("generated")
    assert torch.allclose(prompt_only[0][1:], plain[0][1:] + 5.0 * sae.W_dec[4], atol=1e-4)
    assert torch.equal(prompt_only[0][0], plain[0][0])  # BOS
    assert torch.equal(generated_only[0], plain[0])  # prefill untouched
    assert not torch.allclose(generated_only[1], plain[1])  # first generated token steered


def test_unit_max_uses_recorded_max_activations(tiny_model, sae, params):
    tokens = tiny_model.to_tokens(PROMPT)
    with pytest.raises(ValueError, match="max activations"):
        with scope.steer(tiny_model, sae, scope.Clamp(2, 10.0, unit="max")):
            pass
    assert no_hooks_left(tiny_model)
    set_max_activations(sae, torch.arange(48, dtype=torch.float32) / 10)  # a fresh SAE per test
    assert scope.steering.max_activation(sae, 2) == pytest.approx(0.2)
    _, by_max, _ = streams(tiny_model, tokens, sae, scope.Clamp(2, 10.0, unit="max"))
    _, by_act, _ = streams(tiny_model, tokens, sae, scope.Clamp(2, 2.0))  # 10 x 0.2
    assert torch.allclose(by_max, by_act, atol=1e-6)


@pytest.mark.parametrize(
    "interventions, fragment",
    [
        ((scope.Add(48, 1.0),), "Add feature 48 is out of range: there are 48 features"),
        ((scope.Clamp(-1, 1.0),), "Clamp feature -1 is out of range"),
        ((scope.Add(1, 1.0), scope.Clamp(47, 1.0), scope.Scale(48, 2.0)), "Scale feature 48"),  # none attached
    ],
)
def test_validation_errors_attach_nothing(tiny_model, sae, interventions, fragment):
    with pytest.raises(ValueError, match=fragment):
        with scope.steer(tiny_model, sae, *interventions):
            pass
    assert no_hooks_left(tiny_model)


@pytest.mark.parametrize(
    "make, error, fragment",
    [
        (lambda: scope.Add(1, float("nan")), ValueError, "finite"),
        (lambda: scope.Clamp(1, float("inf")), ValueError, "finite"),
        (lambda: scope.Clamp(1, 1.0, unit="percent"), ValueError, "unit"),
        (lambda: scope.Add(1.5, 1.0), TypeError, "feature must be an integer"),
        (lambda: scope.Add(True, 1.0), TypeError, "feature must be an integer"),
        (lambda: scope.Scale(1, "2"), TypeError, "must be a number"),
        (lambda: scope.Add(1), TypeError, "needs a strength"),
    ],
)
def test_interventions_are_checked_when_made(make, error, fragment):
    """Type and finiteness are checked at construction (features against the SAE when steering starts)."""
    with pytest.raises(error, match=fragment):
        make()


def test_sae_that_does_not_fit_the_model(tiny_model, make_sae):
    wrong_hook, _ = make_sae("blocks.9.hook_resid_post", d_sae=8)
    wrong_width, _ = make_sae(HOOK, d_in=32, d_sae=8)
    with pytest.raises(ValueError, match="blocks.9.hook_resid_post"):
        with scope.steer(tiny_model, wrong_hook, scope.Add(0, 1.0)):
            pass
    with pytest.raises(ValueError, match="d_in is 32"):
        scope.generate(tiny_model, PROMPT, sae=wrong_width, steering=scope.Add(0, 1.0))
    with pytest.raises(ValueError, match="positions"):
        scope.generate(tiny_model, PROMPT, sae=wrong_width, steering=scope.Add(0, 1.0), positions="middle")
    assert no_hooks_left(tiny_model)


def test_sampled_steering_is_reproducible(tiny_model, sae):
    kwargs = dict(sae=sae, steering=[scope.Add(3, 4.0)], max_new_tokens=12, temperature=1.2, stop_at_eos=False)
    assert scope.generate(tiny_model, PROMPT, seed=5, **kwargs) == scope.generate(tiny_model, PROMPT, seed=5, **kwargs)


def test_sweep_columns_concept_and_fluency(tiny_model, sae, params):
    results = scope.sweep(
        tiny_model,
        sae,
        lambda v: scope.Clamp(7, v),
        [0.0, 8.0],
        [PROMPT, "knock knock"],
        max_new_tokens=5,
        stop_at_eos=False,
        progress=False,
    )
    assert list(results.columns) == ["prompt", "value", "text", "concept", "fluency"]
    assert len(results) == 4 and (results["fluency"] <= 0).all()
    row = results.iloc[1]  # value 0.0, "knock knock"
    # Independent re-read: regenerate with the clamp, then encode the unsteered stream by hand.
    tokens = scope.to_tokens(tiny_model, row["prompt"])
    with steered(tiny_model, sae, scope.Clamp(7, 0.0), "all", prompt_length=tokens.shape[1]):
        new = generate_tokens(tiny_model, tokens, max_new_tokens=5, stop_at_eos=False)
    full = torch.cat([tokens, new[None]], dim=1)
    clean, _, logits = streams(tiny_model, full)
    acts, _ = jumprelu(clean[tokens.shape[1] :], params)
    assert math.isclose(row["concept"], acts[:, 7].mean().item(), rel_tol=1e-4, abs_tol=1e-5)
    log_probs = logits[0, tokens.shape[1] - 1 : -1].log_softmax(-1).gather(-1, new[:, None])
    assert math.isclose(row["fluency"], log_probs.mean().item(), rel_tol=1e-4)
    figure = steering_tradeoff_figure(results)
    assert list(figure.data[0].text) == ["0", "8"]
    assert isinstance(results, pd.DataFrame)


# ---- deprecated aliases: one test each, a DeprecationWarning and the same result ---------------


def test_add_coeff_is_a_deprecated_alias_of_value():
    with pytest.warns(DeprecationWarning, match=r"Add\(coeff=...\) is deprecated; use value="):
        old = scope.Add(3, coeff=2.5)
    assert old == scope.Add(3, 2.5) and old.value == 2.5
    assert old.coeff == 2.5  # the old attribute name still reads the strength
    with pytest.raises(TypeError, match="both"):
        scope.Add(3, 1.0, coeff=2.0)


def test_scale_factor_is_a_deprecated_alias_of_value():
    with pytest.warns(DeprecationWarning, match=r"Scale\(factor=...\) is deprecated; use value="):
        old = scope.Scale(4, factor=0.5)
    assert old == scope.Scale(4, 0.5) and old.value == 0.5 and old.factor == 0.5


def test_generate_prompt_or_messages_is_a_deprecated_alias_of_text(tiny_model, sae):
    kwargs = dict(sae=sae, steering=scope.Clamp(7, 12.0), max_new_tokens=6, stop_at_eos=False)
    with pytest.warns(DeprecationWarning, match=r"generate\(prompt_or_messages=...\) is deprecated; use text="):
        old = scope.generate(tiny_model, prompt_or_messages=PROMPT, **kwargs)
    assert old == scope.generate(tiny_model, PROMPT, **kwargs)
    assert old != scope.generate(tiny_model, PROMPT, max_new_tokens=6, stop_at_eos=False)  # steered


def test_sweep_prompts_is_a_deprecated_alias_of_texts(tiny_model, sae):
    args = (tiny_model, sae, lambda v: scope.Add(3, v), [0.0, 4.0])
    kwargs = dict(max_new_tokens=3, stop_at_eos=False, progress=False)
    with pytest.warns(DeprecationWarning, match=r"sweep\(prompts=...\) is deprecated; use texts="):
        old = scope.sweep(*args, prompts=[PROMPT, "knock knock"], **kwargs)
    pd.testing.assert_frame_equal(old, scope.sweep(*args, [PROMPT, "knock knock"], **kwargs))


# ---- numpy feature indices (top_features(...).feature is an np.int64) --------------------------


@pytest.mark.parametrize("kind", [scope.Clamp, scope.Add])
def test_numpy_integer_features_steer_exactly_like_python_ints(tiny_model, sae, kind):
    tokens = tiny_model.to_tokens(PROMPT)
    as_numpy = kind(np.int64(7), 4.5)
    assert type(as_numpy.feature) is int and as_numpy == kind(7, 4.5)
    _, by_numpy, numpy_logits = streams(tiny_model, tokens, sae, as_numpy)
    _, by_int, int_logits = streams(tiny_model, tokens, sae, kind(7, 4.5))
    _, plain, _ = streams(tiny_model, tokens)
    assert torch.equal(by_numpy, by_int) and torch.equal(numpy_logits, int_logits)
    assert not torch.allclose(by_int[1:], plain[1:])  # it steered
    with pytest.raises(ValueError, match="feature 48 is out of range"):  # checked like an int, too
        with scope.steer(tiny_model, sae, kind(np.int64(48), 1.0)):
            pass
    assert no_hooks_left(tiny_model)


# ---- positions and strengths that cannot work are errors, with nothing left attached -----------


def test_bos_position_is_rejected(tiny_model, sae):
    with pytest.raises(ValueError, match="positions includes 0, the BOS token"):
        with scope.steer(tiny_model, sae, scope.Add(3, 2.0), positions=[0]):
            pass
    with pytest.raises(ValueError, match="positions includes 0, the BOS token"):
        scope.generate(tiny_model, PROMPT, sae=sae, steering=scope.Add(3, 2.0), positions=[0, 4], max_new_tokens=2)
    with pytest.raises(ValueError, match="positions is empty"):
        scope.generate(tiny_model, PROMPT, sae=sae, steering=scope.Add(3, 2.0), positions=[], max_new_tokens=2)
    with pytest.raises(ValueError, match="non-negative"):
        scope.generate(tiny_model, PROMPT, sae=sae, steering=scope.Add(3, 2.0), positions=[-1], max_new_tokens=2)
    assert no_hooks_left(tiny_model)


def test_positions_beyond_the_generation_are_rejected(tiny_model, sae):
    n = scope.to_tokens(tiny_model, PROMPT).shape[1]
    kwargs = dict(sae=sae, steering=scope.Add(3, 8.0), max_new_tokens=4, stop_at_eos=False)
    # The model runs on positions 0..n+2: the prompt, then generated tokens 1..3 (the 4th is only sampled).
    for beyond in ([n + 4], [n + 3], [2, n + 400], np.int64(n + 3)):
        with pytest.raises(ValueError, match="lie beyond this generation"):
            scope.generate(tiny_model, PROMPT, positions=beyond, **kwargs)
    assert no_hooks_left(tiny_model)
    last = scope.generate(tiny_model, PROMPT, positions=[n + 2], **kwargs)  # the last position that runs
    with steered(tiny_model, sae, scope.Add(3, 8.0), [n + 2], prompt_length=n) as state:
        steered_tokens = generate_tokens(
            tiny_model, scope.to_tokens(tiny_model, PROMPT), max_new_tokens=4, stop_at_eos=False
        )
        assert state.prompt_length == n
    plain_stream = generate_tokens(tiny_model, scope.to_tokens(tiny_model, PROMPT), max_new_tokens=4, stop_at_eos=False)
    assert steered_tokens[:3].tolist() == plain_stream[:3].tolist()  # only the last step was steered
    assert steered_tokens[3] != plain_stream[3]
    assert last == tiny_model.tokenizer.decode(steered_tokens.tolist(), skip_special_tokens=True)


def test_overflowing_strength_raises_and_leaves_no_hooks(tiny_model, sae):
    """Add(f, 1e30) is a finite float32, but its square is not: the next RMSNorm would scale the stream
    to zero and the model would babble. It raises instead, and nothing stays attached."""
    with pytest.raises(ValueError, match="non-finite"):
        scope.generate(tiny_model, PROMPT, sae=sae, steering=scope.Add(3, 1e30), max_new_tokens=3)
    assert no_hooks_left(tiny_model)
    tokens = tiny_model.to_tokens(PROMPT)
    with pytest.raises(ValueError, match=f"non-finite.*{HOOK}|{HOOK}.*non-finite"):
        with torch.no_grad(), scope.steer(tiny_model, sae, scope.Add(3, 1e30)):
            tiny_model(tokens)
    assert no_hooks_left(tiny_model)
    with torch.no_grad(), scope.steer(tiny_model, sae, scope.Add(3, 1e3)):  # large but sound: runs
        assert torch.isfinite(tiny_model(tokens)).all()
    assert no_hooks_left(tiny_model)


# ---- batches: shared and per-row steering, batched sweeps ---------------------------------------

BATCH = [PROMPT, "knock knock", [{"role": "user", "content": "def add(a, b):"}], "a"]


def test_batched_steered_generation_equals_each_text_alone(tiny_model, sae):
    kwargs = dict(sae=sae, steering=[scope.Clamp(7, 12.0)], max_new_tokens=12, stop_at_eos=False)
    batched = scope.generate(tiny_model, BATCH, **kwargs)
    assert batched == [scope.generate(tiny_model, text, **kwargs) for text in BATCH]
    assert batched != scope.generate(tiny_model, BATCH, max_new_tokens=12, stop_at_eos=False)  # it steered
    assert no_hooks_left(tiny_model)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", [2, 5, 9]])
def test_per_row_steering_equals_each_row_alone(tiny_model, sae, make_sae, positions):
    """Rows differ in features, strengths and SAEs, or have none; explicit positions count in each
    row's own tokens (left padding does not shift them)."""
    other, _ = make_sae("blocks.2.hook_resid_post", d_sae=16, seed=9)
    rows = [
        [scope.Clamp(7, 12.0)],
        [scope.Add(3, 6.0), (other, scope.Add(2, -4.0))],
        [],
        [scope.Clamp(7, -5.0), Scale(4, 3.0)],
    ]
    kwargs = dict(sae=sae, positions=positions, max_new_tokens=12, stop_at_eos=False)
    batched = scope.generate(tiny_model, BATCH, steering=rows, **kwargs)
    alone = [scope.generate(tiny_model, text, steering=row, **kwargs) for text, row in zip(BATCH, rows)]
    assert batched == alone
    plain = scope.generate(tiny_model, BATCH, max_new_tokens=12, stop_at_eos=False)
    assert batched[2] == plain[2]  # the row without steering
    assert sum(b != p for b, p in zip(batched, plain)) >= 2
    assert no_hooks_left(tiny_model)


def test_padding_and_bos_are_never_steered(tiny_model, sae):
    seen = []

    def record(resid, hook):
        seen.append(resid.clone())

    def prefill(steering):
        seen.clear()
        with tiny_model.hooks(fwd_hooks=[(NEXT, record)]):
            scope.generate(tiny_model, ["a", PROMPT], sae=sae, steering=steering, max_new_tokens=1)
        return seen[0]  # [batch, pos, d]: "a" left-padded in row 0

    plain, steered_batch = prefill(()), prefill([scope.Add(3, 5.0)])
    n_pad = plain.shape[1] - 2  # "a" is <bos> a
    assert torch.equal(steered_batch[0, : n_pad + 1], plain[0, : n_pad + 1])  # padding and BOS untouched
    assert torch.allclose(steered_batch[0, -1], plain[0, -1] + 5.0 * sae.W_dec[3], atol=1e-4)
    assert torch.equal(steered_batch[1, 0], plain[1, 0])  # the other row's BOS
    assert torch.allclose(steered_batch[1, 1:], plain[1, 1:] + 5.0 * sae.W_dec[3], atol=1e-4)


def test_per_row_steering_needs_one_list_per_text(tiny_model, sae):
    with pytest.raises(ValueError, match="steering has 2 per-row lists for 4 texts"):
        scope.generate(tiny_model, BATCH, sae=sae, steering=[[scope.Add(3, 1.0)], [scope.Add(3, 2.0)]])
    with pytest.raises(ValueError, match="feature 48 is out of range"):  # every row checked before running
        scope.generate(tiny_model, BATCH, sae=sae, steering=[[], [], [], [scope.Add(48, 1.0)]])
    assert no_hooks_left(tiny_model)


def test_batched_sweep_equals_the_sequential_sweep(tiny_model, sae):
    args = (tiny_model, sae, lambda v: scope.Clamp(7, v), [0.0, 8.0, -4.0], BATCH[:3])
    kwargs = dict(max_new_tokens=6, stop_at_eos=False, progress=False)
    sequential = scope.sweep(*args, batch_size=1, **kwargs)
    batched = scope.sweep(*args, batch_size=4, **kwargs)
    pd.testing.assert_frame_equal(batched, sequential)
    assert sequential["text"].nunique() > 1


@pytest.mark.slow
def test_bundled_per_row_steering_equals_each_row_alone(bundled_model):
    demo = scope.load_sae("demo-docs")
    texts = ["The history of the Roman Empire began when", "Once upon a time", "Water boils at"]
    rows = [[scope.Clamp(5, 40.0)], [], [scope.Add(11, 30.0)]]
    kwargs = dict(sae=demo, max_new_tokens=10, stop_at_eos=False)
    batched = scope.generate(bundled_model, texts, steering=rows, **kwargs)
    assert batched == [scope.generate(bundled_model, t, steering=r, **kwargs) for t, r in zip(texts, rows)]


# ---- generate inside a steer block; interventions given twice ------------------------------------

IN_BLOCK = dict(max_new_tokens=8, stop_at_eos=False, stop=["##", "\n\n"])  # rows leave the batch at different steps


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", [2, 5, 8]])
@pytest.mark.parametrize("text", [PROMPT, BATCH], ids=["one", "batch"])
def test_generate_inside_steer_honours_the_block_positions(tiny_model, sae, positions, text):
    intervention = scope.Clamp(7, 12.0)
    expected = scope.generate(tiny_model, text, sae=sae, steering=[intervention], positions=positions, **IN_BLOCK)
    with scope.steer(tiny_model, sae, intervention, positions=positions):
        inside = scope.generate(tiny_model, text, **IN_BLOCK)
    assert inside == expected
    assert no_hooks_left(tiny_model)


def test_the_position_modes_steer_differently(tiny_model, sae):
    """What makes the test above able to fail: each mode gives another text here."""
    outputs = [scope.generate(tiny_model, PROMPT, **IN_BLOCK)] + [
        scope.generate(tiny_model, PROMPT, sae=sae, steering=[scope.Clamp(7, 12.0)], positions=p, **IN_BLOCK)
        for p in ("all", "prompt", "generated")
    ]
    assert len(set(outputs)) == 4


def test_nested_blocks_keep_their_own_positions_in_generate(tiny_model, sae):
    n, k = scope.to_tokens(tiny_model, PROMPT).shape[1], IN_BLOCK["max_new_tokens"]
    with (
        scope.steer(tiny_model, sae, scope.Add(3, 6.0), positions="prompt"),
        scope.steer(tiny_model, sae, scope.Clamp(7, 12.0), positions="generated"),
    ):
        by_mode = scope.generate(tiny_model, PROMPT, **IN_BLOCK)
    with (  # the same positions as explicit indices (BOS = 0; the last token is sampled, never run)
        scope.steer(tiny_model, sae, scope.Add(3, 6.0), positions=range(1, n)),
        scope.steer(tiny_model, sae, scope.Clamp(7, 12.0), positions=range(n, n + k - 1)),
    ):
        by_index = scope.generate(tiny_model, PROMPT, **IN_BLOCK)
    assert by_mode == by_index
    assert by_mode != scope.generate(tiny_model, PROMPT, sae=sae, steering=[scope.Clamp(7, 12.0)], **IN_BLOCK)


def test_a_generation_nested_in_another_restores_the_outer_one(tiny_model, sae):
    """A generation started while another runs (here from its token stream) sees its own prompt
    lengths; the outer one continues with its own."""
    inner_text, inner = "knock knock", []
    with scope.steer(tiny_model, sae, scope.Clamp(7, 12.0), positions="generated"):
        alone = scope.generate(tiny_model, PROMPT, **IN_BLOCK)
        inner_alone = scope.generate(tiny_model, inner_text, max_new_tokens=3, stop_at_eos=False)
        kwargs = {k: v for k, v in IN_BLOCK.items() if k != "stop"}
        (outer,) = scope.generate_completions(
            tiny_model,
            [PROMPT],
            on_token=lambda row, token: inner.append(
                scope.generate(tiny_model, inner_text, max_new_tokens=3, stop_at_eos=False)
            ),
            **kwargs,
        )
    assert outer.text.startswith(alone) and inner and set(inner) == {inner_alone}


def test_identical_interventions_are_each_applied(tiny_model, sae, params):
    tokens = tiny_model.to_tokens(PROMPT)
    clean, _, _ = streams(tiny_model, tokens)
    _, twice, _ = streams(tiny_model, tokens, sae, scope.Add(5, 1.5), scope.Add(5, 1.5))
    expected = clean + 3.0 * torch.from_numpy(params["W_dec"]).double()[5]
    expected[0] = clean[0]  # BOS
    assert torch.allclose(twice, expected, atol=1e-4)
    text, add, double = "knock knock", scope.Add(5, 4.0), scope.Add(5, 8.0)

    def tokens_of(steering, texts=(text,)):
        done = scope.generate_completions(tiny_model, list(texts), sae=sae, steering=steering, max_new_tokens=6)
        return [c.tokens for c in done]

    assert tokens_of([add, add]) == tokens_of([double]) != tokens_of([add])
    # per row, sharing the work: row 0 applies it twice, row 1 once
    assert tokens_of([[add, add], [add]], [text, text]) == tokens_of([double]) + tokens_of([add])


@pytest.mark.parametrize(
    "pair",
    [
        (scope.Clamp(7, 1.0), scope.Clamp(7, 1.0)),
        (scope.Clamp(7, 1.0), scope.Clamp(7, 2.0)),
        (scope.Clamp(7, 1.0), Scale(7, 2.0)),
        (scope.Ablate(7), Scale(7, 2.0)),
    ],
    ids=["same clamp twice", "two clamps", "clamp and scale", "ablate and scale"],
)
def test_one_feature_set_twice_is_refused(tiny_model, sae, pair):
    with pytest.raises(ValueError, match=r"both set feature 7 of the SAE at blocks\.1\.hook_resid_post"):
        with scope.steer(tiny_model, sae, *pair):
            pass
    with pytest.raises(ValueError, match="both set feature 7"):
        scope.generate(tiny_model, BATCH[:2], sae=sae, steering=[[pair[0]], list(pair)], max_new_tokens=2)
    assert no_hooks_left(tiny_model)


def test_adds_compose_with_the_clamp_of_their_feature(tiny_model, sae):
    tokens = tiny_model.to_tokens(PROMPT)
    _, clamp_and_add, _ = streams(tiny_model, tokens, sae, scope.Clamp(7, 1.0), scope.Add(7, 2.0))
    _, clamp, _ = streams(tiny_model, tokens, sae, scope.Clamp(7, 3.0))
    assert torch.allclose(clamp_and_add, clamp, atol=1e-4)


# ---- every hook: steered in generate and in ShieldGemma scoring, or refused up front -------------

BLOCK_SITES = [
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
    "hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in",
    "ln1.hook_scale", "ln1.hook_normalized", "ln1_post.hook_scale", "ln1_post.hook_normalized",
    "ln2.hook_scale", "ln2.hook_normalized", "ln2_post.hook_scale", "ln2_post.hook_normalized",
    "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_rot_q", "attn.hook_rot_k",
    "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_result",
    "mlp.hook_in", "mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post",
]  # fmt: skip
OUTSIDE_BLOCKS = [
    "hook_embed",
    "ln_final.hook_scale",
    "ln_final.hook_normalized",
    "unembed.hook_in",
    "unembed.hook_out",
]
AUDITED = OUTSIDE_BLOCKS + [f"blocks.{layer}.{site}" for layer in (0, 3) for site in BLOCK_SITES]


def test_the_audit_covers_every_hook_of_the_model(tiny_model):
    sites = {re.sub(r"^blocks\.\d+\.", "", hook) for hook in tiny_model.hook_dict}
    assert sites == set(BLOCK_SITES) | set(OUTSIDE_BLOCKS)


def _widths(model, hook):
    """SAE widths to try at ``hook``: the last dimension and the whole per-token activation, as a
    forward pass shows them (the model width for a hook that never runs)."""
    _, cache = model.run_with_cache(model.to_tokens(PROMPT), names_filter=hook)
    if hook not in cache:
        return [model.cfg.d_model]
    shape = cache[hook].shape[2:]
    return sorted({shape[-1], math.prod(shape)})


@pytest.mark.parametrize("hook", AUDITED)
def test_every_hook_is_steered_or_refused_up_front(tiny_model, make_sae, hook):
    """A large Add at any hook that check_compatible accepts changes both what generate computes
    its logits from (the last residual of every pass, prefill and decode steps) and ShieldGemma's
    scores, or steer refuses it before attaching anything."""
    from scope.shield.scoring import score_tokens  # score's own computation (a ShieldGemma prompt is too
    # long for the tiny model's context of 256)

    texts = ["knock knock", PROMPT]
    sequences = [scope.to_tokens(tiny_model, t)[0] for t in texts]

    last = f"blocks.{tiny_model.cfg.n_layers - 1}.hook_resid_post"  # what generate's logits are computed from

    def outputs():
        seen = []
        with tiny_model.hooks(fwd_hooks=[(last, lambda act, hook: seen.append(act[:, -1].clone()))]):
            scope.generate_completions(tiny_model, texts, max_new_tokens=4, stop_at_eos=False)  # prefill + 3 steps
        return torch.cat(seen), score_tokens(tiny_model, sequences, progress=False)

    plain_stream, plain_scores = outputs()
    accepted = 0
    for d_in in _widths(tiny_model, hook):
        sae, _ = make_sae(hook, d_in=d_in, d_sae=4, seed=d_in)
        try:
            scope.check_compatible(tiny_model, sae)
        except ValueError:
            continue
        accepted += 1
        block = scope.steer(tiny_model, sae, scope.Add(0, 50.0))
        try:
            block.__enter__()
        except ValueError as refused:
            assert re.search("Cannot steer at", str(refused)) and no_hooks_left(tiny_model)
            continue
        try:
            stream, scores = outputs()
        finally:
            block.__exit__(None, None, None)
        assert not torch.allclose(stream, plain_stream), f"steering at {hook} (d_in {d_in}) did not change generate"
        assert not np.allclose(scores, plain_scores), f"steering at {hook} (d_in {d_in}) did not change scores"
    if hook.endswith(("hook_attn_in", "_input", "hook_mlp_in", "hook_result")):
        assert accepted == 0  # a hook that never runs is refused by check_compatible itself
