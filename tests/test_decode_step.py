"""The fast decode step against transformer-lens' own forward (the reference) and transformers."""

import contextlib

import pytest
import torch

import scope
from scope.decode_step import StaticKVCache, unsupported
from scope.generation import generate_batch, make_passes
from scope.logits import final_logits

PROMPT = "Paris is the capital of France, and the quick brown fox"
TEXTS = [PROMPT, "knock knock", "def add(a, b):", "a"]


def passes_logits(model, fast: bool, prompts, steps: int = 3) -> list[torch.Tensor]:
    """Logits of a left-padded prefill and ``steps`` greedy decode passes (one runner: fast or plain)."""
    tokens, mask = scope.inputs.pad(prompts, scope.inputs.pad_id(model), side="left")
    passes = make_passes(model, len(prompts), tokens.shape[1] + steps + 1, fast)
    out = []
    with torch.no_grad():
        logits = final_logits(model, passes(tokens, mask)[:, -1])
        for _ in range(steps):
            out.append(logits)
            logits = final_logits(model, passes(logits.argmax(-1, keepdim=True))[:, -1])
    return out + [logits]


def test_the_tiny_gemma2_runs_the_fast_step(tiny_model):
    assert unsupported(tiny_model) is None


@pytest.mark.parametrize("texts", [[PROMPT], TEXTS])
def test_fast_greedy_equals_transformers_and_the_plain_path(tiny_model, tiny_hf, texts):
    hf_model, _ = tiny_hf
    prompts = [scope.to_tokens(tiny_model, t)[0] for t in texts]
    tokens, mask = scope.inputs.pad(prompts, scope.inputs.pad_id(tiny_model), side="left")
    n, eos = 24, tiny_model.tokenizer.eos_token_id  # crosses the 8-token sliding window
    expected = hf_model.generate(
        tokens, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0, suppress_tokens=[eos]
    )[:, tokens.shape[1] :].tolist()

    def suppress_eos(logits, hook):
        logits = logits.clone()
        logits[..., eos] = -1e4
        return logits

    with tiny_model.hooks(fwd_hooks=[("unembed.hook_out", suppress_eos)]):
        fast = generate_batch(tiny_model, prompts, max_new_tokens=n, stop_at_eos=False, decode="fast")
        plain = generate_batch(tiny_model, prompts, max_new_tokens=n, stop_at_eos=False, decode="plain")
    assert [c.tokens for c in fast] == expected == [c.tokens for c in plain]


def test_fast_logits_equal_the_plain_forward_within_float_tolerance(tiny_model):
    prompts = [scope.to_tokens(tiny_model, t)[0] for t in TEXTS]
    for fast, plain in zip(passes_logits(tiny_model, True, prompts), passes_logits(tiny_model, False, prompts)):
        torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


def hook_points_called(model) -> list[str]:
    """Every hook point transformer-lens' forward calls on this model (found by running it)."""
    called = []
    hooks = [(name, lambda act, hook: called.append(hook.name)) for name in model.hook_dict]
    tokens = scope.to_tokens(model, "knock knock")
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        final_logits(model, model(tokens, stop_at_layer=model.cfg.n_layers)[:, -1])
    return list(dict.fromkeys(called))


def test_every_hook_point_sees_and_edits_what_transformer_lens_gives_it(tiny_model):
    """One hook point at a time: a hook that records its activation and scales it by 1.5 sees the
    same activations (shape and values) and leaves the same logits on both paths, in a padded
    prefill and the decode passes after it."""
    names = hook_points_called(tiny_model)
    assert len(names) > 30 * tiny_model.cfg.n_layers // 2  # blocks' norms, attention, MLP, residual points
    prompts = [scope.to_tokens(tiny_model, t)[0] for t in TEXTS[:2]]
    for name in names:
        seen = {}
        for fast in (True, False):
            acts = seen.setdefault(fast, [])

            def record_and_edit(act, hook, acts=acts):
                acts.append(act.detach().clone())
                return act * 1.5

            with tiny_model.hooks(fwd_hooks=[(name, record_and_edit)]):
                seen[fast, "logits"] = passes_logits(tiny_model, fast, prompts, steps=2)
        assert [a.shape for a in seen[True]] == [a.shape for a in seen[False]], name
        for fast_act, plain_act in zip(seen[True], seen[False]):
            torch.testing.assert_close(fast_act, plain_act, rtol=1e-4, atol=1e-4, msg=name)
        for fast_logits, plain_logits in zip(seen[True, "logits"], seen[False, "logits"]):
            torch.testing.assert_close(fast_logits, plain_logits, rtol=1e-4, atol=1e-4, msg=name)


def test_steered_generation_is_the_same_on_both_paths(tiny_model, make_sae):
    sae, _ = make_sae()
    steering = [[scope.Clamp(3, 8.0)], [], [scope.Add(5, 4.0), scope.Ablate(1)], [scope.Clamp(3, 2.0)]]
    for positions in ("all", "generated", [2, 5, 9]):
        kwargs = dict(sae=sae, steering=steering, positions=positions, max_new_tokens=10, stop_at_eos=False)
        fast = scope.generate(tiny_model, TEXTS, **kwargs)
        with forced_plain(tiny_model):
            plain = scope.generate(tiny_model, TEXTS, **kwargs)
        assert fast == plain, positions
        assert fast != scope.generate(tiny_model, TEXTS, max_new_tokens=10, stop_at_eos=False)


@contextlib.contextmanager
def forced_plain(model):
    """Make ``decode="auto"`` choose the plain path: a forward hook on a non-HookPoint module (here
    one that does nothing) is something the fast step cannot reproduce."""
    handle = model.blocks[0].mlp.register_forward_hook(lambda module, args, out: None)
    try:
        yield
    finally:
        handle.remove()


def test_a_hook_on_another_module_falls_back_and_still_fires(tiny_model):
    def double(module, args, out):
        return out * 2

    plain = scope.generate(tiny_model, PROMPT, max_new_tokens=8, stop_at_eos=False)
    handle = tiny_model.blocks[1].ln1_post.register_forward_hook(double)  # its output is hook_attn_out's input
    try:
        assert unsupported(tiny_model) == "a hook on the module blocks.1.ln1_post (not a HookPoint)"
        with pytest.raises(ValueError, match=r"decode='fast' cannot run this model: a hook on the module blocks.1.ln1"):
            generate_batch(tiny_model, [scope.to_tokens(tiny_model, PROMPT)[0]], max_new_tokens=2, decode="fast")
        doubled = scope.generate(tiny_model, PROMPT, max_new_tokens=8, stop_at_eos=False)
    finally:
        handle.remove()
    with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_attn_out", lambda act, hook: act * 2)]):
        assert doubled == scope.generate(tiny_model, PROMPT, max_new_tokens=8, stop_at_eos=False)
    assert doubled != plain


def test_backward_hooks_and_attached_saes_fall_back(tiny_model, make_sae):
    tiny_model.add_hook("blocks.2.hook_resid_post", lambda grad, hook: None, dir="bwd")
    try:
        assert unsupported(tiny_model) == "a backward hook at blocks.2.hook_resid_post"
    finally:
        tiny_model.reset_hooks()
    sae, _ = make_sae()
    tiny_model.add_sae(sae)
    try:
        assert "add_sae" in unsupported(tiny_model)
    finally:
        tiny_model.reset_saes()
    assert unsupported(tiny_model) is None


def test_bad_decode_mode(tiny_model):
    with pytest.raises(ValueError, match="decode must be one of"):
        generate_batch(tiny_model, [scope.to_tokens(tiny_model, PROMPT)[0]], decode="quick")


def test_a_pre_hook_that_changes_the_inputs_is_refused(tiny_model):
    handle = tiny_model.register_forward_pre_hook(lambda module, args: (args[0],))
    try:
        with pytest.raises(RuntimeError, match="returned new inputs"):
            generate_batch(tiny_model, [scope.to_tokens(tiny_model, PROMPT)[0]], max_new_tokens=2, decode="fast")
    finally:
        handle.remove()


def test_static_cache_reads_like_transformer_lens_cache(tiny_model):
    """What forward pre-hooks (scope.steering) read: the mask before the pass, keys per layer."""
    prompts = [scope.to_tokens(tiny_model, t)[0] for t in TEXTS[:2]]
    tokens, mask = scope.inputs.pad(prompts, scope.inputs.pad_id(tiny_model), side="left")
    fast = make_passes(tiny_model, 2, tokens.shape[1] + 4, True)
    plain = make_passes(tiny_model, 2, tokens.shape[1] + 4, False)
    with torch.no_grad():
        fast(tokens, mask)
        plain(tokens, mask)
    assert isinstance(fast.cache, StaticKVCache)
    assert torch.equal(fast.cache.previous_attention_mask, plain.cache.previous_attention_mask.long())
    assert fast.cache.entries[1].past_keys.shape == plain.cache.entries[1].past_keys.shape
    torch.testing.assert_close(fast.cache.entries[1].past_values, plain.cache.entries[1].past_values)


@pytest.mark.slow
def test_bundled_gemma3_fast_equals_transformers_and_plain(bundled_model):
    from transformers import AutoModelForCausalLM

    from scope.bundled import ensure_bundled_checkpoint

    assert unsupported(bundled_model) is None
    hf_model = AutoModelForCausalLM.from_pretrained(str(ensure_bundled_checkpoint()), dtype=torch.float32).eval()
    texts = ["The history of the Roman Empire began when", "Once upon a time", "Water boils at"]
    prompts = [scope.to_tokens(bundled_model, t)[0] for t in texts]
    tokens, mask = scope.inputs.pad(prompts, scope.inputs.pad_id(bundled_model), side="left")
    n = 12
    with torch.no_grad():
        expected = hf_model.generate(tokens, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0)
    fast = generate_batch(bundled_model, prompts, max_new_tokens=n, decode="fast")
    plain = generate_batch(bundled_model, prompts, max_new_tokens=n, decode="plain")
    eos = scope.generation.stop_token_ids(bundled_model)
    cut = [[t for t in row[tokens.shape[1] :]] for row in expected.tolist()]
    cut = [row[: next((i for i, t in enumerate(row) if t in eos), len(row))] for row in cut]
    assert [c.tokens for c in fast] == cut == [c.tokens for c in plain]
    for f, p in zip(passes_logits(bundled_model, True, prompts), passes_logits(bundled_model, False, prompts)):
        torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-4)
