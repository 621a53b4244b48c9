"""A bounded load test of ``scope serve`` on loopback: 16 clients x 4 requests, mixed steering,
streaming and not. Nothing may be lost, mixed between requests, or left hooked; it stops by itself
(every request and the whole run have deadlines)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor, wait

import httpx
import openai
import pytest
import torch

import scope
from scope.feature_stats import set_max_activations
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
                kwargs = dict(
                    model="shieldgemma-2b", prompt=prompt, max_tokens=8, temperature=1.0, seed=seed, extra_body=extra
                )
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
                model="shieldgemma-2b",
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
        reply = api.completions.create(model="shieldgemma-2b", prompt=PROMPTS[1], max_tokens=4, temperature=0)
        assert reply.choices[0].text == scope.generate(tiny_model, PROMPTS[1], max_new_tokens=4)
    assert (
        all(not hp.fwd_hooks for hp in tiny_model.hook_dict.values())
        and not tiny_model._forward_pre_hooks
        and not tiny_model.embed._forward_pre_hooks
    )


# ----------------------------------------------------------------------------- abandoned and overlong requests

SLOW_S = 0.05  # per forward pass: 200 tokens take >= 10 s


@contextlib.contextmanager
def slowed(model, batch_sizes: list[int] | None = None):
    """Every forward pass of ``model`` takes SLOW_S longer (a torch hook, not a transformer-lens
    one, so the server's own hook handling never sees it); optionally records each pass's batch."""

    def hook(module, inputs, output):
        time.sleep(SLOW_S)
        if batch_sizes is not None:
            batch_sizes.append(int(inputs[0].shape[0]))

    handle = model.blocks[0].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _long_enough(model, prompt: str, tokens: int) -> None:
    """The request below really needs ``tokens`` steps (greedy does not stop early)."""
    from scope.steering.steered_generation import generate_completions

    (completion,) = generate_completions(model, [prompt], max_new_tokens=tokens)
    assert len(completion.tokens) == tokens, "pick a prompt whose greedy continuation does not stop"


def _raw_post(base: str, path: str, body: dict) -> socket.socket:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


def _wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_client_that_goes_away_frees_the_server(tiny_model, stream):
    """The abandoned request stops at once: the next request waits for a token, not for 200."""
    _long_enough(tiny_model, PROMPTS[1], 200)
    app = create_app(tiny_model, {})
    short = {"prompt": PROMPTS[0], "max_tokens": 2, "temperature": 0}
    with serving(app) as base, slowed(tiny_model):
        started = time.monotonic()
        assert httpx.post(f"{base}/v1/completions", json=short, timeout=60).status_code == 200
        alone = time.monotonic() - started
        sock = _raw_post(
            base, "/v1/completions", {"prompt": PROMPTS[1], "max_tokens": 200, "temperature": 0, "stream": stream}
        )
        _wait_for(lambda: app.state.engine.pending == 1)
        time.sleep(10 * SLOW_S)  # generating
        sock.close()
        started = time.monotonic()
        reply = httpx.post(f"{base}/v1/completions", json=short, timeout=60)
        after = time.monotonic() - started
        _wait_for(lambda: app.state.engine.pending == 0, seconds=5)
    abandoned_needs = 200 * SLOW_S
    print(
        f"next request: {after:.2f} s after an abandoned one, {alone:.2f} s alone; the abandoned needed >= {abandoned_needs:.0f} s"
    )
    assert reply.status_code == 200
    assert after < abandoned_needs / 4


def test_a_request_past_its_deadline_is_a_504_and_stops(tiny_model):
    _long_enough(tiny_model, PROMPTS[1], 200)
    app = create_app(tiny_model, {}, limits=Limits(request_timeout_s=1.0))
    body = {"prompt": PROMPTS[1], "max_tokens": 200, "temperature": 0}
    with serving(app) as base, slowed(tiny_model):
        started = time.monotonic()
        response = httpx.post(f"{base}/v1/completions", json=body, timeout=60)
        took = time.monotonic() - started
        assert response.status_code == 504, response.text
        assert "limit of 1 s per request" in response.json()["error"]["message"]
        assert took < 200 * SLOW_S / 4
        with httpx.stream("POST", f"{base}/v1/completions", json={**body, "stream": True}, timeout=60) as streamed:
            events = [line for line in streamed.iter_lines() if line]
        assert "limit of 1 s per request" in events[-2] and events[-1] == "data: [DONE]"
        _wait_for(lambda: app.state.engine.pending == 0, seconds=5)
        short = httpx.post(f"{base}/v1/completions", json={**body, "max_tokens": 2}, timeout=60)
        assert short.status_code == 200


def test_a_cancelled_row_leaves_its_batch_and_the_others_go_on(tiny_model):
    """Engine level: one of two batched jobs is cancelled after its second token; the forward
    passes shrink to one row, and the other job's text equals generating it alone."""
    from scope.serve.engine import Engine, Job
    from scope.serve.state import Served

    served = Served(tiny_model, {})
    texts = {PROMPTS[0]: [], PROMPTS[2]: []}
    engine = Engine(tiny_model, max_queue=4, max_batch=2, batch_window_s=1.0, batch_gap_s=0.5)
    jobs = []
    for prompt, events in texts.items():
        request = _Request(max_tokens=30)
        args = served.generation_args(prompt, request, chat=False)

        def sink(event, events=events, index=len(jobs)):
            events.append(event)
            if index == 0 and sum(e.kind == "delta" for e in events) == 2:
                jobs[0].cancelled.set()

        jobs.append(Job(args, sink))
    batch_sizes: list[int] = []
    with slowed(tiny_model, batch_sizes):
        engine.start()
        for job in jobs:
            engine.submit(job)
        _wait_for(lambda: engine.pending == 0)
        engine.stop()
    first, second = texts.values()
    assert [e.kind for e in first] == ["delta", "delta"]  # nothing after it went away
    assert "".join(e.text for e in second if e.kind == "delta") == scope.generate(
        tiny_model, PROMPTS[2], max_new_tokens=30
    )
    assert batch_sizes[:2] == [2, 2] and batch_sizes[-1] == 1 and batch_sizes.count(2) <= 4


class _Request:
    """The fields Served.generation_args reads off a request body."""

    def __init__(self, max_tokens: int):
        self.max_tokens = max_tokens
        self.temperature, self.top_p, self.seed, self.steering = 0.0, 1.0, None, None

    def requested_tokens(self) -> int:
        return self.max_tokens

    def stops(self) -> list[str]:
        return []
