"""Steering never leaks across threads: scope's entry points take turns on a model (hooks.model_lock)."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import scope

PROMPTS = ["The quick brown fox", "Paris is the capital of", "Golden Gate Bridge spans"]


@pytest.fixture
def jobs(tiny_model, make_sae):
    """Named jobs over one model: plain and steered generations (several SAEs, strengths and
    modes), feature reads and ShieldGemma scores, each a function of no arguments."""
    sae, _ = make_sae(hook="blocks.1.hook_resid_post", seed=3)
    other, _ = make_sae(hook="blocks.2.hook_resid_post", seed=4)

    def gen(prompt, **steering):
        return lambda: scope.generate(tiny_model, prompt, max_new_tokens=8, **steering)

    table = {}
    for i, prompt in enumerate(PROMPTS):
        table[f"plain{i}"] = gen(prompt)
        table[f"add{i}"] = gen(prompt, sae=sae, steering=[scope.Add(3, 40.0)])
        table[f"clamp{i}"] = gen(prompt, sae=other, steering=[scope.Clamp(5, 30.0)])
        table[f"two_saes{i}"] = gen(prompt, sae=sae, steering=[scope.Add(7, -30.0), (other, scope.Add(1, 25.0))])
        table[f"features{i}"] = lambda p=prompt: scope.top_features(tiny_model, sae, p, k=3).to_dict("list")
    sequences = [scope.to_tokens(tiny_model, p)[0] for p in PROMPTS]  # the tiny context holds no ShieldGemma prompt
    table["score"] = lambda: scope.shield.score_tokens(tiny_model, sequences, progress=False).tolist()
    return table


def test_concurrent_calls_equal_their_sequential_results(jobs):
    expected = {name: job() for name, job in jobs.items()}
    # The test can fail: steering changes these generations.
    assert sum(expected[f"add{i}"] != expected[f"plain{i}"] for i in range(len(PROMPTS))) >= 2
    assert sum(expected[f"clamp{i}"] != expected[f"plain{i}"] for i in range(len(PROMPTS))) >= 1
    order = [name for name in jobs for _ in range(3)]
    random.Random(0).shuffle(order)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda name: (name, jobs[name]()), order))
    wrong = [(name, got, expected[name]) for name, got in results if got != expected[name]]
    assert not wrong, (
        f"{len(wrong)} of {len(results)} concurrent results differ from their sequential result: {wrong[:3]}"
    )


def test_a_steer_block_in_one_thread_does_not_steer_another(tiny_model, make_sae):
    sae, _ = make_sae(hook="blocks.1.hook_resid_post", seed=3)
    plain = scope.generate(tiny_model, PROMPTS[0], max_new_tokens=8)
    inside, entered, events = [], threading.Event(), []

    def steered_thread():
        with scope.steer(tiny_model, sae, scope.Add(3, 40.0)):
            entered.set()
            inside.append(scope.generate(tiny_model, PROMPTS[0], max_new_tokens=8))
            time.sleep(0.3)  # the other thread's call arrives while this block is open
            events.append("steer block exits")

    thread = threading.Thread(target=steered_thread)
    thread.start()
    entered.wait(10)
    other = scope.generate(tiny_model, PROMPTS[0], max_new_tokens=8)
    events.append("plain call returns")
    thread.join()
    assert inside[0] != plain  # the block does steer
    assert other == plain  # the other thread does not see it
    assert events == ["steer block exits", "plain call returns"]  # it waited for the block
    assert not any(hp._forward_hooks for hp in tiny_model.hook_dict.values())
