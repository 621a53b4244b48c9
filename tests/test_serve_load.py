"""A bounded load test of ``scope serve`` on loopback: 16 clients x 4 requests, mixed steering,
streaming and not. Nothing may be lost, mixed between requests, or left hooked; it stops by itself
(every request and the whole run have deadlines)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait

import httpx
import openai
import pytest
import torch

import scope
from scope.saes import set_max_activations
from scope.serve import Limits, create_app, serving
from tests.sae_util import random_params, write_params

CLIENTS, REQUESTS_EACH = 16, 4
DEADLINE_S = 240
PROMPTS = ["The quick brown fox", "Golden Gate Bridge", "Paris is the capital", "def add(a, b):"]
STEERINGS = [
    None,
    {"positions": "all", "interventions": [{"sae": "s", "feature": 3, "mode": "add", "value": 12.0}]},
    {"positions": "all", "interventions": [{"sae": "s", "feature": 9, "mode": "clamp", "value": 2.0, "unit": "max"}]},
    {"positions": "all", "interventions": [{"sae": "s", "feature": 5, "mode": "scale", "value": 3.0}]},
]


def _pairs(sae, steering):
    if steering is None:
        return []
    make = {
        "add": lambda i: scope.Add(i["feature"], i["value"]),
        "clamp": lambda i: scope.Clamp(i["feature"], i["value"], unit=i["unit"]),
        "scale": lambda i: scope.Scale(i["feature"], i["value"]),
    }
    return [(sae, make[i["mode"]](i)) for i in steering["interventions"]]


def test_sixteen_clients_four_requests_each(tiny_model, tmp_path):
    sae = scope.load_sae(
        write_params(tmp_path / "params.npz", random_params(64, 48, seed=4)),
        hook="blocks.1.hook_resid_post",
        device="cpu",
    )
    set_max_activations(sae, torch.full((48,), 3.0))
    app = create_app(tiny_model, {"s": sae}, limits=Limits(max_queue=CLIENTS * 2, max_batch=8))
    plan = [
        (client, n, PROMPTS[(client + n) % 4], STEERINGS[(client * 3 + n) % 4], (client + n) % 4)
        for client in range(CLIENTS)
        for n in range(REQUESTS_EACH)
    ]
    options = dict(max_new_tokens=8, temperature=1.0)
    expected = {
        (prompt, str(steering), seed): scope.generate(
            tiny_model, prompt, seed=seed, steering=_pairs(sae, steering), **options
        )
        for _, _, prompt, steering, seed in plan
    }
    assert len(set(expected.values())) > len(expected) // 2  # distinct answers: mixing would show
    strongest = {}
    for p in PROMPTS:
        values = scope.encode(tiny_model, sae, p).values[1:]
        strongest[p] = [int(row.argmax()) if row.max() > 0 else None for row in values]

    with serving(app) as base:

        def run_client(client: int) -> list[tuple[tuple, str]]:
            api = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=120)
            answers = []
            for c, n, prompt, steering, seed in plan:
                if c != client:
                    continue
                extra = {"steering": steering} if steering else {}
                kwargs = dict(model="m", prompt=prompt, max_tokens=8, temperature=1.0, seed=seed, extra_body=extra)
                if n % 2:  # odd requests stream
                    text = "".join(chunk.choices[0].text for chunk in api.completions.create(stream=True, **kwargs))
                else:
                    text = api.completions.create(**kwargs).choices[0].text
                answers.append(((prompt, str(steering), seed), text))
                if client % 4 == 0:  # the explorer's reads, between steered generations: never steered
                    data = httpx.post(f"{base}/api/features", json={"text": prompt, "k": 1}, timeout=120).json()
                    seen = [t["features"][0]["feature"] if t["features"] else None for t in data["tokens"][1:]]
                    answers.append((("features", prompt), str(seen == strongest[prompt])))
            return answers

        start = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(run_client, client) for client in range(CLIENTS)]
            done, not_done = wait(futures, timeout=DEADLINE_S)
            assert not not_done, f"{len(not_done)} clients still running after {DEADLINE_S} s"
        elapsed = time.monotonic() - start
        answers = [answer for future in futures for answer in future.result()]

    features = [answer for answer in answers if answer[0][0] == "features"]
    assert features and all(same == "True" for _, same in features)
    answers = [answer for answer in answers if answer[0][0] != "features"]
    assert len(answers) == CLIENTS * REQUESTS_EACH  # nothing lost
    wrong = [(key, text) for key, text in answers if text != expected[key]]
    assert not wrong, wrong[:3]  # nothing mixed
    assert (
        all(not hp.fwd_hooks for hp in tiny_model.hook_dict.values())
        and not tiny_model._forward_pre_hooks
        and not tiny_model.embed._forward_pre_hooks
    )
    assert app.state.engine.pending == 0
    assert max(app.state.engine.batches) > 1, "concurrent requests never shared a batch"
    print(f"{len(answers)} requests in {elapsed:.1f} s; batch sizes seen: {sorted(set(app.state.engine.batches))}")


@pytest.mark.parametrize("clients", [4])
def test_disconnecting_stream_clients_free_the_server(tiny_model, tmp_path, clients):
    """Clients that drop a stream after one chunk leave the queue empty and the model unhooked."""
    sae = scope.load_sae(
        write_params(tmp_path / "params.npz", random_params(64, 48, seed=4)),
        hook="blocks.1.hook_resid_post",
        device="cpu",
    )
    app = create_app(tiny_model, {"s": sae})
    with serving(app) as base:
        api = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)
        for _ in range(clients):
            stream = api.completions.create(
                model="m",
                prompt=PROMPTS[0],
                max_tokens=200,
                temperature=0,
                stream=True,
                extra_body={"steering": STEERINGS[1]},
            )
            next(iter(stream))
            stream.close()
        deadline = time.monotonic() + 60
        while app.state.engine.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.state.engine.pending == 0
        reply = api.completions.create(model="m", prompt=PROMPTS[1], max_tokens=4, temperature=0)
        assert reply.choices[0].text == scope.generate(tiny_model, PROMPTS[1], max_new_tokens=4)
    assert (
        all(not hp.fwd_hooks for hp in tiny_model.hook_dict.values())
        and not tiny_model._forward_pre_hooks
        and not tiny_model.embed._forward_pre_hooks
    )
