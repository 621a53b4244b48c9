"""Steering evaluation: judge-free signals against hand computations on transformers, AxBench judge
scores through a protocol object, a loopback OpenAI-compatible endpoint and a local model, the
held-out strength, and the trade-off figure's Pareto front."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

import scope
from scope.llm import Endpoint
from scope.plots import pareto_front, steering_tradeoff_figure
from scope.steering.evaluation import JUDGE_PROMPTS, harmonic_mean, parse_rating
from tests.openai_server import ChatServer
from tests.sae_util import jumprelu

HOOK = "blocks.1.hook_resid_post"
PROMPT = "Paris is the capital of France, and the quick brown fox"
OUTPUTS = pd.DataFrame(
    {
        "prompt": [PROMPT, PROMPT, "knock knock"],
        "value": [0.0, 8.0, 8.0],
        "text": [" jumps over the lazy dog", " fox fox fox fox", " who is there"],
    }
)


@pytest.fixture
def sae_and_params(make_sae):
    return make_sae(HOOK, seed=3, threshold_scale=0.3)


def rating_for(content: str) -> str:
    """A deterministic stand-in judge: concept present when the output mentions a fox; every
    output follows the instruction somewhat; fluency 0 for repetition."""
    output = content.split("[Text Fragment Start]\n")[1].split("\n[Text Fragment End]")[0]
    if content.startswith(JUDGE_PROMPTS["concept_score"][:40]) and "[Concept Start]" in content:
        return f"The concept is there. Rating: [[{2 if 'fox' in output else 0}]]"
    if "[Instruction Start]" in content:
        return "Rating: [[1]]"
    return f"Rating: [[{0 if output.count('fox') > 2 else 2}]]"


class FakeJudge:
    name = "fake judge"

    def __init__(self):
        self.conversations = []

    def chat(self, conversations, *, max_tokens=64, temperature=0.0):
        self.conversations.extend(conversations)
        return [rating_for(c[-1]["content"]) for c in conversations]


EXPECTED = {
    "concept_score": [0.0, 2.0, 0.0],
    "instruction_score": [1.0, 1.0, 1.0],
    "fluency_score": [2.0, 0.0, 2.0],
    "harmonic_mean": [0.0, 0.0, 0.0],
}


def test_judge_free_signals_equal_hand_computations_on_transformers(tiny_model, tiny_hf, sae_and_params):
    sae, params = sae_and_params
    hf_model, _ = tiny_hf
    scores = scope.evaluate_steering(tiny_model, OUTPUTS, "foxes", sae=sae, feature=7)
    assert list(scores.columns[:3]) == ["prompt", "value", "text"]
    for row in scores.itertuples():
        prompt = scope.to_tokens(tiny_model, row.prompt)
        new = tiny_model.to_tokens(row.text, prepend_bos=False)
        tokens = torch.cat([prompt, new], dim=1)
        with torch.no_grad():
            out = hf_model(tokens, output_hidden_states=True)
        n = prompt.shape[1]
        log_probs = out.logits[0, n - 1 : -1].double().log_softmax(-1).gather(-1, new[0, :, None])
        assert math.isclose(row.perplexity, math.exp(-log_probs.mean().item()), rel_tol=1e-4)
        acts, _ = jumprelu(out.hidden_states[2][0, n:], params)
        assert math.isclose(row.concept_activation, acts[:, 7].mean().item(), rel_tol=1e-4, abs_tol=1e-5)
    assert "concept_score" not in scores  # no judge, no judge scores


def test_direction_concept_and_list_outputs(tiny_model, tiny_hf):
    hf_model, _ = tiny_hf
    direction = scope.Direction(torch.linspace(-1, 1, 64), HOOK, "ramp")
    scores = scope.evaluate_steering(
        tiny_model, [" fox fox", " hello"], "foxes", [PROMPT, [{"role": "user", "content": "hi"}]], feature=direction
    )
    assert list(scores["output"]) == [" fox fox", " hello"]
    prompt = scope.to_tokens(tiny_model, PROMPT)
    new = tiny_model.to_tokens(" fox fox", prepend_bos=False)
    with torch.no_grad():
        hidden = hf_model(torch.cat([prompt, new], 1), output_hidden_states=True).hidden_states[2][0, prompt.shape[1] :]
    expected = (hidden.double() @ direction.vector.double()).mean().item()
    assert math.isclose(scores["concept_activation"][0], expected, rel_tol=1e-4)
    no_concept = scope.evaluate_steering(tiny_model, [" hello"], "foxes", [PROMPT])
    assert math.isnan(no_concept["concept_activation"][0]) and no_concept["perplexity"][0] > 1


def test_judge_scores_and_harmonic_mean_through_the_llm_protocol(tiny_model):
    judge = FakeJudge()
    scores = scope.evaluate_steering(tiny_model, OUTPUTS, "foxes", judge=judge)
    for column, expected in EXPECTED.items():
        assert scores[column].tolist() == expected, column
    assert (scores["judge"] == "fake judge").all()
    assert len(judge.conversations) == 3 * len(OUTPUTS)
    first = judge.conversations[0][0]["content"]
    assert "foxes" in first and " jumps over the lazy dog" in first
    instruction = judge.conversations[len(OUTPUTS)][0]["content"]
    assert PROMPT in instruction


def test_judge_through_a_loopback_openai_compatible_endpoint(tiny_model):
    with ChatServer(lambda messages: rating_for(messages[-1]["content"])) as server:
        scores = scope.evaluate_steering(tiny_model, OUTPUTS, "foxes", judge=Endpoint(server.base_url, "judge-model"))
        requests = list(server.requests)
    for column, expected in EXPECTED.items():
        assert scores[column].tolist() == expected, column
    assert len(requests) == 9 and all(r["temperature"] == 0.0 for r in requests)


@pytest.mark.slow
@pytest.mark.heavy
def test_the_bundled_model_judges_end_to_end_offline_as_a_labelled_stand_in(bundled_model):
    demo = scope.load_sae("demo-docs")
    results = scope.sweep(
        bundled_model,
        demo,
        lambda v: scope.Clamp(5, v),
        [0.0, 40.0],
        ["The weather today", "My favourite food"],
        max_new_tokens=6,
        progress=False,
    )
    scores = scope.evaluate_steering(bundled_model, results, "the weather", judge=bundled_model, sae=demo, feature=5)
    assert scores["judge"].iloc[0] == "gemma-3-270m (base model stand-in)"
    for column in ("concept_score", "instruction_score", "fluency_score"):
        assert scores[column].dropna().isin([0.0, 1.0, 2.0]).all()
    assert scores["perplexity"].gt(1).all() and scores["concept_activation"].notna().all()


def test_ratings_and_harmonic_mean():
    assert parse_rating("Rating: [[2]]") == 2.0
    assert parse_rating("I'd say Rating: [[1.5]].") == 1.5
    assert parse_rating("1") == 1.0
    assert math.isnan(parse_rating("no idea")) and math.isnan(parse_rating("Rating: [[7]]"))
    assert harmonic_mean([2, 1, 2]) == pytest.approx(3 / (1 / 2 + 1 + 1 / 2))
    assert harmonic_mean([2, 0, 2]) == 0.0
    assert math.isnan(harmonic_mean([2, float("nan"), 2]))


@pytest.mark.parametrize(
    "reply",
    ["Rating: [[10]]", "2 out of 10", "Rating: 2/10", "Rating: [[-1]]", "Rating: [[2.5]]", "rating: 12", "[[20]]"],
)
def test_ratings_outside_the_0_2_scale_are_nan(reply):
    assert math.isnan(parse_rating(reply))


@pytest.mark.parametrize(
    "reply, rating",
    [("Rating: [[0]]", 0.0), ("1 out of 2", 1.0), ("Rating: 1.5/2", 1.5), ("[[2]]", 2.0), ("Score 1.", 1.0)],
)
def test_ratings_on_the_0_2_scale_are_read(reply, rating):
    assert parse_rating(reply) == rating


def test_recommend_strength_chooses_on_one_half_and_reports_the_other():
    instructions = ["a", "b", "c", "d", "e", "f"]
    rows = []
    for n, instruction in enumerate(instructions):
        rows += [
            {"instruction": instruction, "value": 1.0, "harmonic_mean": 0.1 * n},
            {"instruction": instruction, "value": 2.0, "harmonic_mean": 1.0 + 0.1 * n},  # best everywhere
        ]
    table = pd.DataFrame(rows)
    result = scope.recommend_strength(table, seed=3)
    assert result["value"] == 2.0 and result["selection_prompts"] == 3 and result["held_out_prompts"] == 3
    # The halves partition the prompts: their means at the chosen strength average to the overall mean.
    overall = table[table["value"] == 2.0]["harmonic_mean"].mean()
    assert (result["selection_score"] + result["held_out_score"]) / 2 == pytest.approx(overall)
    assert result["selection_score"] != pytest.approx(result["held_out_score"])  # different prompts
    # Strengths that only win on some prompts: choosing and reporting on one half would overstate.
    split = pd.DataFrame(
        [
            {"instruction": i, "value": v, "harmonic_mean": float((i in "abc") == (v == 1.0))}
            for i in "abcdef"
            for v in (1.0, 2.0)
        ]
    )
    optimistic = [scope.recommend_strength(split, seed=s) for s in range(10)]
    assert all(r["held_out_score"] <= r["selection_score"] for r in optimistic)
    assert any(r["held_out_score"] < r["selection_score"] for r in optimistic)


def test_pareto_front_and_the_tradeoff_figure():
    assert pareto_front([0, 1, 2, 3, 1], [3, 2, 2, 0, 1]) == [0, 2, 3]
    assert pareto_front([1, np.nan], [1, 5]) == [0]
    table = pd.DataFrame(
        {
            "method": ["SAE clamp"] * 3 + ["DiffMean add"] * 3,
            "value": [1.0, 2.0, 4.0] * 2,
            "concept_score": [0.5, 1.0, 2.0, 1.0, 1.5, 1.8],
            "fluency_score": [2.0, 1.5, 0.2, 1.9, 1.6, 1.0],
        }
    )
    figure = steering_tradeoff_figure(table, recommended=2.0)
    names = [trace.name for trace in figure.data]
    assert names == ["DiffMean add", "SAE clamp", "Pareto front", "recommended (2)"]
    front = figure.data[names.index("Pareto front")]
    # Brute force: (fluency, concept) points no other point beats on both.
    points = list(zip(table["fluency_score"], table["concept_score"]))
    undominated = sorted(p for p in points if not any(q != p and q[0] >= p[0] and q[1] >= p[1] for q in points))
    assert sorted(zip(front.x, front.y)) == undominated
    with pytest.raises(ValueError, match="no 'fluency' column"):
        steering_tradeoff_figure(table.drop(columns=["fluency_score"]))


@pytest.mark.parametrize(
    "args, kwargs, error, fragment",
    [
        ((OUTPUTS, ""), {}, ValueError, "concept must be a non-empty"),
        (([" a"], "foxes"), {}, ValueError, "instructions is required"),
        (([" a"], "foxes", [PROMPT, PROMPT]), {}, ValueError, "2 instructions for 1 outputs"),
        ((OUTPUTS, "foxes"), {"feature": 3}, ValueError, "needs its SAE"),
        ((OUTPUTS, "foxes"), {"judge": "gpt-4"}, TypeError, "An LLM must be"),
        (("text", "foxes"), {}, TypeError, "outputs must be a sweep DataFrame"),
    ],
)
def test_bad_evaluation_arguments(tiny_model, args, kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        scope.evaluate_steering(tiny_model, *args, **kwargs)


def test_sweep_then_evaluate_end_to_end(tiny_model, sae_and_params):
    sae, _ = sae_and_params
    results = scope.sweep(
        tiny_model,
        sae,
        lambda v: scope.Clamp(7, v),
        [0.0, 8.0],
        [PROMPT, "knock knock"],
        max_new_tokens=4,
        stop_at_eos=False,
        progress=False,
    )
    scores = scope.evaluate_steering(tiny_model, results, "foxes", judge=FakeJudge(), sae=sae, feature=7)
    assert len(scores) == 4 and scores["perplexity"].gt(1).all()
    figure = steering_tradeoff_figure(scores, recommended=scope.recommend_strength(scores)["value"])
    assert figure.data[-1].name.startswith("recommended")


def test_compare_steering_runs_every_method_in_one_batch(tiny_model, tiny_hf, sae_and_params):
    """Each row equals generating it alone with its method's steering; the DiffMean unit is the mean
    residual norm at the hook over the prompts (BOS excluded), recomputed here on transformers."""
    sae, _ = sae_and_params
    scope.steering.set_max_activations(sae, torch.full((48,), 2.0))
    hf_model, _ = tiny_hf
    direction = scope.diffmean(tiny_model, HOOK, ["def f(x): return x"], ["The fox ran."])
    prompts = [PROMPT, "knock knock"]
    strengths = {"SAE clamp": [0.0, 4.0], "SAE add": [3.0], "DiffMean add": [0.5], "prompting": [0.0, 1.0]}
    kwargs = dict(max_new_tokens=4)
    table = scope.compare_steering(
        tiny_model,
        prompts,
        "foxes",
        sae=sae,
        feature=7,
        direction=direction,
        strengths=strengths,
        judge=FakeJudge(),
        **kwargs,
    )
    assert len(table) == 2 * 6 and {"method", "value", "harmonic_mean", "perplexity"} <= set(table.columns)
    norm = np.mean([hf_resid_norm(hf_model, scope.to_tokens(tiny_model, p)) for p in prompts])
    expected = {
        ("SAE clamp", 0.0): lambda p: scope.generate(tiny_model, p, **kwargs),
        ("SAE clamp", 4.0): lambda p: scope.generate(
            tiny_model, p, sae=sae, steering=scope.Clamp(7, 4.0, unit="max"), **kwargs
        ),
        ("SAE add", 3.0): lambda p: scope.generate(tiny_model, p, sae=sae, steering=scope.Add(7, 6.0), **kwargs),
        ("DiffMean add", 0.5): lambda p: scope.generate(
            tiny_model, p, steering=scope.Add(direction, 0.5 * norm), **kwargs
        ),
        ("prompting", 0.0): lambda p: scope.generate(tiny_model, p, **kwargs),
        ("prompting", 1.0): lambda p: scope.generate(tiny_model, f"Talk about foxes. {p}", **kwargs),
    }
    for row in table.itertuples():
        assert row.text == expected[(row.method, row.value)](row.prompt), (row.method, row.value)
    assert table.loc[table["method"] == "prompting", "instruction"].tolist() == prompts * 2  # judged on the original
    with pytest.raises(ValueError, match="Unknown steering methods"):
        scope.compare_steering(tiny_model, prompts, "foxes", strengths={"vibes": [1.0]})
    with pytest.raises(ValueError, match="DiffMean method needs direction"):
        scope.compare_steering(tiny_model, prompts, "foxes", strengths={"DiffMean add": [1.0]})


def hf_resid_norm(hf_model, tokens):
    with torch.no_grad():
        hidden = hf_model(tokens, output_hidden_states=True).hidden_states[2][0, 1:]
    return hidden.double().norm(dim=-1).mean().item()


def test_recommend_strength_needs_one_method_of_a_comparison_table():
    rows = [
        {"method": method, "instruction": i, "value": v, "harmonic_mean": float(v == best)}
        for method, best in (("SAE clamp", 4.0), ("DiffMean add", 0.5))
        for i in "abcdef"
        for v in (0.5, 4.0)
    ]
    table = pd.DataFrame(rows)
    with pytest.raises(ValueError, match=r"2 steering methods \('SAE clamp', 'DiffMean add'\).*method="):
        scope.recommend_strength(table)
    assert scope.recommend_strength(table, method="SAE clamp")["value"] == 4.0
    assert scope.recommend_strength(table, method="DiffMean add")["value"] == 0.5
    with pytest.raises(ValueError, match=r"method must be one of 'SAE clamp', 'DiffMean add', got 'SAE add'"):
        scope.recommend_strength(table, method="SAE add")
