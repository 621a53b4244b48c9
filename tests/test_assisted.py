"""Assisted generation: a 4-layer draft for a 26-layer target (tiny Gemma 2s sharing a tokenizer)."""

import pytest
import torch

import scope
from scope.assisted import generate_assisted, summary
from tests.tiny import save_tiny_gemma2

TEXTS = ["Paris is the capital of France, and the quick brown fox", "knock knock", "def add(a, b):", "a"]
GREEDY = dict(max_new_tokens=14, stop_at_eos=False)  # crosses the 8-token sliding window


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    folder = save_tiny_gemma2(tmp_path_factory.mktemp("target26"), seed=1, num_hidden_layers=26)
    return scope.load_model("shieldgemma-2b", weights=folder, device="cpu")


@pytest.fixture(scope="module")
def near_draft(tmp_path_factory, target):
    """A 4-layer draft that often agrees with the target: the target's own embedding, first 3 blocks
    and unembedding, and one more block of noise-perturbed copies."""
    folder = save_tiny_gemma2(tmp_path_factory.mktemp("draft4"), seed=1, num_hidden_layers=4)
    draft = scope.load_model("shieldgemma-2b", weights=folder, device="cpu")
    with torch.no_grad():
        for name, param in draft.named_parameters():
            source = dict(target.named_parameters())[name]
            param.copy_(source)
        for param in draft.blocks[3].parameters():
            param.mul_(0.2)
    return draft


def alone(model, texts, **kwargs):
    return [(c.tokens, c.finish_reason) for c in scope.generate_completions(model, texts, **kwargs)]


def assisted(model, texts, **kwargs):
    completions = scope.generate_completions(model, texts, **kwargs)
    return [(c.tokens, c.finish_reason) for c in completions], completions


@pytest.mark.parametrize("batch_size", [16, 1])
def test_greedy_equals_the_target_alone(target, near_draft, tiny_model, batch_size):
    expected = alone(target, TEXTS, **GREEDY)
    for draft in (near_draft, tiny_model, target):  # often right, mostly wrong, always right
        got, completions = assisted(target, TEXTS, assistant=draft, batch_size=batch_size, **GREEDY)
        assert got == expected
        stats = summary(completions)
        if draft is target:
            assert stats["acceptance_rate"] == 1.0 and stats["tokens_per_target_pass"] > 2
    assert 0.0 < summary(completions)["acceptance_rate"] <= 1.0


def test_one_text_and_text_api(target, near_draft):
    assert scope.generate(target, TEXTS[0], assistant=near_draft, **GREEDY) == scope.generate(
        target, TEXTS[0], **GREEDY
    )


def test_steering_applies_to_the_target_only(target, near_draft, make_sae):
    sae, _ = make_sae(hook="blocks.5.hook_resid_post")
    steering = [[scope.Clamp(3, 8.0)], [], [scope.Add(5, 4.0)], [scope.Clamp(3, 2.0)]]
    for positions in ("all", "generated"):
        kwargs = dict(sae=sae, steering=steering, positions=positions, **GREEDY)
        expected = alone(target, TEXTS, **kwargs)
        assert expected != alone(target, TEXTS, **GREEDY)
        got, _ = assisted(target, TEXTS, assistant=near_draft, **kwargs)
        assert got == expected, positions


def test_stops_equal_the_target_alone(target, near_draft):
    plain = scope.generate_completions(target, TEXTS[:1], **GREEDY)[0]
    stop = target.tokenizer.decode(plain.tokens[5:7])
    kwargs = dict(max_new_tokens=14, stop=stop)
    got, _ = assisted(target, TEXTS, assistant=near_draft, **kwargs)
    assert got == alone(target, TEXTS, **kwargs)
    assert got[0][1] == "stop"


def test_sampling_follows_the_target_distribution(target, tiny_model):
    """Speculative sampling's output is distributed as the target's own sampling. Top-3 sampling:
    the first two tokens of 3000 rows (the second is the draft's proposal, accepted or resampled)
    against the target's exact joint probabilities of the 9 pairs; the draft's own are far off."""
    from scope.generation import token_probabilities
    from scope.logits import final_logits

    rows, sampling = 3000, dict(temperature=1.0, top_k=3)
    torch.manual_seed(0)
    kwargs = dict(max_new_tokens=2, stop_at_eos=False, batch_size=rows, **sampling)
    _, completions = assisted(target, ["knock knock"] * rows, assistant=tiny_model, **kwargs)
    assert summary(completions)["acceptance_rate"] < 0.9  # the draft is often rejected: the rule matters

    def joint(model):
        prompt = scope.to_tokens(model, "knock knock")
        with torch.no_grad():
            logits = final_logits(model, model(prompt, stop_at_layer=model.cfg.n_layers)[:, -1])
            first = token_probabilities(logits, **sampling)[0]
            firsts = first.nonzero()[:, 0]
            after = torch.cat([prompt.repeat(len(firsts), 1), firsts[:, None]], dim=1)
            logits = final_logits(model, model(after, stop_at_layer=model.cfg.n_layers)[:, -1])
            second = token_probabilities(logits, **sampling)
        return {
            (a, b): first[a].item() * second[i, b].item()
            for i, a in enumerate(firsts.tolist())
            for b in second[i].nonzero()[:, 0].tolist()
        }

    def distance(p, q):
        return 0.5 * sum(abs(p.get(pair, 0.0) - q.get(pair, 0.0)) for pair in set(p) | set(q))

    counts: dict = {}
    for completion in completions:
        counts[tuple(completion.tokens)] = counts.get(tuple(completion.tokens), 0) + 1
    empirical = {pair: c / rows for pair, c in counts.items()}
    exact, draft_mix = joint(target), joint(tiny_model)
    assert distance(empirical, exact) < 0.045, distance(empirical, exact)
    assert distance(exact, draft_mix) > 0.3


def test_draft_must_share_the_vocabulary(target, tmp_path):
    from transformers import Gemma2Config

    from tests.tiny import make_tokenizer

    other = make_tokenizer(vocab_size=300)
    config = Gemma2Config(
        vocab_size=len(other), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
    )  # fmt: skip
    from transformers import Gemma2ForCausalLM

    Gemma2ForCausalLM(config).save_pretrained(tmp_path)
    other.save_pretrained(tmp_path)
    draft = scope.load_model("shieldgemma-2b", weights=tmp_path, device="cpu")
    with pytest.raises(ValueError, match=r"share the target's tokenizer.*target shieldgemma-2b \(26 layers.*assistant"):
        scope.generate(target, TEXTS[0], assistant=draft, max_new_tokens=2)
    with pytest.raises(TypeError, match="assistant must be a loaded model"):
        scope.generate(target, TEXTS[0], assistant="gemma-2-2b", max_new_tokens=2)
    with pytest.raises(ValueError, match="draft_tokens must be a positive integer"):
        generate_assisted(target, [scope.to_tokens(target, "a")[0]], assistant=target, draft_tokens=0)
