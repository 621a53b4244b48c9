"""``scope serve``: the OpenAI-compatible API with steering, the explorer's JSON, safety defaults.

A real uvicorn server on 127.0.0.1 (a free port) serves the tiny Gemma 2 model and two random
SAEs; the official ``openai`` client, httpx and curl talk to it over HTTP. Every generated text
is compared with ``scope.generate`` in-process on the same input.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pandas as pd
import pytest
import torch

import scope
from scope.feature_stats import set_max_activations
from scope.hooks import model_lock
from scope.serve import Limits, create_app, host_warning, serving
from tests.sae_util import random_params, write_params

PROMPT = "The quick brown fox"
MODEL = "shieldgemma-2b"  # the name the tiny model is loaded as (conftest's tiny_model)
CHAT = [{"role": "user", "content": "Paris is the capital of"}]


def no_hooks_left(model) -> bool:
    return (
        all(not hp.fwd_hooks for hp in model.hook_dict.values())
        and not model._forward_pre_hooks
        and not model.embed._forward_pre_hooks
        and not model.embed._forward_pre_hooks
    )


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-saes")
    early = scope.load_sae(
        write_params(folder / "early" / "params.npz", random_params(64, 48, seed=1)),
        hook="blocks.1.hook_resid_post",
        device="cpu",
    )
    set_max_activations(early, torch.linspace(1.0, 5.0, 48))
    late = scope.load_sae(
        write_params(folder / "late" / "params.npz", random_params(64, 32, seed=2)),
        hook="blocks.2.hook_resid_post",
        device="cpu",
    )
    return {"early": early, "late": late}


@pytest.fixture(scope="module")
def app(tiny_model, saes):
    labels = {"early": pd.DataFrame({"feature": [3, 5], "label": ["foxes and dogs", "capitals"]})}
    return create_app(tiny_model, saes, labels=labels)


@pytest.fixture(scope="module")
def url(app):
    with serving(app) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=60)


def steering_pairs(saes, spec):
    """The in-process equivalent of a request's steering interventions."""
    make = {
        "add": lambda i: scope.Add(i["feature"], i["value"]),
        "clamp": lambda i: scope.Clamp(i["feature"], i["value"], unit=i.get("unit", "act")),
        "scale": lambda i: scope.Scale(i["feature"], i["value"]),
        "ablate": lambda i: scope.Ablate(i["feature"]),
    }
    return [(saes[i["sae"]], make[i["mode"]](i)) for i in spec["interventions"]]


STEERINGS = [
    {"positions": "all", "interventions": [{"sae": "early", "feature": 3, "mode": "add", "value": 12.0}]},
    {
        "positions": "generated",
        "interventions": [{"sae": "early", "feature": 7, "mode": "clamp", "value": 3.0, "unit": "max"}],
    },
    {
        "positions": [2, 3],
        "interventions": [
            {"sae": "early", "feature": 5, "mode": "scale", "value": 4.0},
            {"sae": "late", "feature": 1, "mode": "add", "value": -9.0},
        ],
    },
    {"positions": "prompt", "interventions": [{"sae": "late", "feature": 4, "mode": "ablate"}]},
]


# ----------------------------------------------------------------------------- the OpenAI API


def test_models_lists_the_model_and_the_saes(client, saes):
    models = {m.id: m for m in client.models.list().data}
    assert list(models) == ["shieldgemma-2b", "early", "late"]
    assert models["early"].model_extra["hook"] == "blocks.1.hook_resid_post"
    assert models["late"].model_extra["d_sae"] == 32


def test_chat_greedy_equals_generate(client, tiny_model):
    reply = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=12, temperature=0)
    expected = scope.generate(tiny_model, CHAT, max_new_tokens=12)
    assert reply.choices[0].message.content == expected
    assert reply.choices[0].message.role == "assistant"
    prompt_tokens = scope.to_tokens(tiny_model, CHAT).shape[1]
    assert reply.usage.prompt_tokens == prompt_tokens
    assert reply.usage.total_tokens == prompt_tokens + reply.usage.completion_tokens


@pytest.mark.parametrize("seed", [0, 1])
def test_seeded_sampling_equals_generate(client, tiny_model, seed):
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=1.0, top_p=0.9, seed=seed)
    expected = scope.generate(tiny_model, PROMPT, max_new_tokens=12, temperature=1.0, top_p=0.9, seed=seed)
    assert reply.choices[0].text == expected


@pytest.mark.parametrize("steering", STEERINGS, ids=["add", "clamp-max-generated", "two-saes-indices", "ablate-prompt"])
def test_steered_completion_equals_steered_generate(client, tiny_model, saes, steering):
    options = dict(max_new_tokens=10, temperature=1.0, seed=3)
    reply = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=10, temperature=1.0, seed=3, extra_body={"steering": steering}
    )
    expected = scope.generate(
        tiny_model, PROMPT, steering=steering_pairs(saes, steering), positions=steering["positions"], **options
    )
    assert reply.choices[0].text == expected
    assert no_hooks_left(tiny_model)


def test_steering_reaches_the_model(client, tiny_model, saes):
    """The add steering changes the greedy text (else the equality tests above prove little)."""
    steering = STEERINGS[0]
    plain = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=10, temperature=0)
    steered = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=10, temperature=0, extra_body={"steering": steering}
    )
    expected = scope.generate(tiny_model, CHAT, max_new_tokens=10, steering=steering_pairs(saes, steering))
    assert steered.choices[0].message.content == expected
    assert steered.choices[0].message.content != plain.choices[0].message.content


def test_streaming_chat_and_completion_equal_the_whole_reply(client):
    for steering in (None, STEERINGS[0]):
        extra = {"steering": steering} if steering else {}
        whole = client.chat.completions.create(
            model=MODEL, messages=CHAT, max_tokens=10, temperature=0, extra_body=extra
        )
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=CHAT,
                max_tokens=10,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra,
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == whole.choices[0].message.content
        assert chunks[0].choices[0].delta.role == "assistant"
        finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finals == [whole.choices[0].finish_reason]
        assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
        assert len({c.id for c in chunks}) == 1
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=1.0, seed=5)
    stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=1.0, seed=5, stream=True)
    assert "".join(c.choices[0].text for c in stream) == whole.choices[0].text


def test_stream_is_server_sent_events_ending_with_done(url):
    body = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] in ("stop", "length")


def test_finish_reasons_and_stop_strings(client, tiny_model):
    options = dict(model=MODEL, prompt=PROMPT, temperature=1.0, seed=7)
    full = client.completions.create(max_tokens=16, **options).choices[0]
    expected = scope.generate(tiny_model, PROMPT, max_new_tokens=16, temperature=1.0, seed=7)
    assert full.text == expected
    assert full.finish_reason == ("length" if full.text and len(expected) else "stop")
    stop = expected[len(expected) // 2 : len(expected) // 2 + 2]
    assert stop, f"need a longer text than {expected!r}"
    cut = client.completions.create(max_tokens=16, stop=[stop], **options).choices[0]
    assert cut.text == expected[: expected.find(stop)]
    assert cut.finish_reason == "stop"
    streamed = client.completions.create(max_tokens=16, stop=stop, stream=True, **options)
    assert "".join(c.choices[0].text for c in streamed) == cut.text


def test_concurrent_mixed_steering_equals_sequential(app, client, tiny_model):
    """Requests with different steering in flight together: each equals its own result alone."""
    requests = [
        dict(prompt=p, seed=s, extra_body={"steering": st} if st else {})
        for p in (PROMPT, "Golden Gate Bridge")
        for s, st in enumerate([None, *STEERINGS])
    ]

    def ask(r):
        reply = client.completions.create(
            model=MODEL, prompt=r["prompt"], max_tokens=8, temperature=1.0, seed=r["seed"], extra_body=r["extra_body"]
        )
        return reply.choices[0].text

    sequential = [ask(r) for r in requests]
    assert len(set(sequential)) >= len(requests) - 2, sequential  # mixing would show
    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(ask, requests * 2))
    assert concurrent == sequential * 2
    assert max(app.state.engine.batches) > 1  # requests in flight together shared a batch
    assert no_hooks_left(tiny_model)


def test_curl_request_as_in_the_release_note(url, tiny_model):
    if shutil.which("curl") is None:
        pytest.skip("no curl")
    # llama-server's README request: the model's name, a system message and a placeholder key
    messages = [{"role": "system", "content": "You are a helpful assistant."}, *CHAT]
    body = json.dumps({"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0})
    out = subprocess.run(
        ["curl", "-s", f"{url}/v1/chat/completions", "-H", "Content-Type: application/json"]
        + ["-H", "Authorization: Bearer no-key", "-d", body],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(out)["choices"][0]["message"]["content"] == scope.generate(tiny_model, messages, max_new_tokens=8)


# ----------------------------------------------------------------------------- bad requests


def _steer(**item):
    return {"prompt": PROMPT, "max_tokens": 2, "steering": {"interventions": [item]}}


BAD = {
    "not JSON": ("{bad json", "not valid JSON"),
    "no prompt": ({"max_tokens": 2}, "prompt"),
    "prompt of token ids": ({"prompt": [[1, 2]]}, "prompt"),
    "unknown SAE": (
        _steer(sae="nope", feature=1, mode="add", value=1.0),
        "Unknown SAE 'nope'; served SAEs: 'early', 'late'",
    ),
    "feature past the width": (_steer(sae="late", feature=32, mode="add", value=1.0), "32 is out of range"),
    "negative feature": (_steer(sae="late", feature=-1, mode="add", value=1.0), "feature"),
    "NaN strength": (
        '{"prompt": "x", "steering": {"interventions": [{"sae": "early", "feature": 1, "mode": "add", "value": NaN}]}}',
        "finite",
    ),
    "Infinity strength": (
        '{"prompt": "x", "steering": {"interventions": [{"sae": "early", "feature": 1, "mode": "add", "value": Infinity}]}}',
        "finite",
    ),
    "unknown mode": (_steer(sae="early", feature=1, mode="boost", value=1.0), "'add', 'clamp', 'ablate' or 'scale'"),
    "add without a value": (_steer(sae="early", feature=1, mode="add"), "needs a value"),
    "max unit without max activations": (
        _steer(sae="late", feature=1, mode="clamp", value=2.0, unit="max"),
        "max activations",
    ),
    "BOS position": ({"prompt": PROMPT, "steering": {"positions": [0], "interventions": []}}, "BOS"),
    "bad positions": ({"prompt": PROMPT, "steering": {"positions": "everywhere"}}, "positions"),
    "position past the generation": (
        {
            "prompt": PROMPT,
            "max_tokens": 2,
            "steering": {
                "positions": [99],
                "interventions": [{"sae": "early", "feature": 1, "mode": "add", "value": 1.0}],
            },
        },
        "beyond this generation",
    ),
    "negative temperature": ({"prompt": PROMPT, "temperature": -1}, "temperature"),
    "top_p 0": ({"prompt": PROMPT, "top_p": 0}, "top_p"),
    "n=2": ({"prompt": PROMPT, "n": 2}, "n must be 1"),
    "past the context": ({"prompt": PROMPT, "max_tokens": 500}, "exceeds the model's context of 256 tokens"),
    "logprobs": ({"prompt": PROMPT, "logprobs": 3}, "logprobs is not implemented by scope serve"),
    "seed past int64": ({"prompt": PROMPT, "seed": 2**70}, "seed must be an integer in [-2**63, 2**63 - 1]"),
    "seed of a float": ({"prompt": PROMPT, "seed": 1.5}, "seed"),
    "unknown field": ({"prompt": PROMPT, "frobnicate": 1}, "frobnicate: not a field scope serve implements"),
    "presence_penalty": ({"prompt": PROMPT, "presence_penalty": 0.5}, "presence_penalty is not implemented"),
    "logit_bias": ({"prompt": PROMPT, "logit_bias": {"5": 10}}, "logit_bias is not implemented"),
    "echo": ({"prompt": PROMPT, "echo": True}, "echo is not implemented"),
    "best_of": ({"prompt": PROMPT, "best_of": 3}, "best_of is not implemented"),
    "suffix": ({"prompt": PROMPT, "suffix": "end"}, "suffix is not implemented"),
    "stream_options.foo": ({"prompt": PROMPT, "stream_options": {"foo": 1}}, "include_usage only, not foo"),
    "five stop strings": ({"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, "up to 4"),
    "unknown steering field": ({"prompt": PROMPT, "steering": {"strength": 3}}, "steering.strength"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_requests_get_a_clear_4xx_and_the_server_keeps_serving(url, client, tiny_model, name):
    body, message = BAD[name]
    content = body if isinstance(body, str) else json.dumps(body)
    response = httpx.post(
        f"{url}/v1/completions", content=content, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert no_hooks_left(tiny_model)
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0)
    assert reply.choices[0].text == scope.generate(tiny_model, PROMPT, max_new_tokens=3)


CHAT_BAD = {
    "tools": ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools is not implemented by scope serve"),
    "tool_choice": ({"tool_choice": "auto"}, "tool_choice is not implemented"),
    "response_format": ({"response_format": {"type": "json_object"}}, "response_format is not implemented"),
    "top_logprobs": ({"top_logprobs": 2}, "top_logprobs is not implemented"),
    "n=3": ({"n": 3}, "n must be 1"),
    "content None": (
        {"messages": [*CHAT, {"role": "assistant", "content": None}, *CHAT]},
        "messages.1.content: content is null: every message needs text content",
    ),
    "content 5": ({"messages": [{"role": "user", "content": 5}]}, "content must be a string or a list of text parts"),
    "an image part": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "content parts must be text",
    ),
    "a tool turn": ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages.0.role"),
    "a named message": ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name"),
    "seed past int64": ({"seed": -(2**64)}, "seed must be an integer in [-2**63, 2**63 - 1]"),
}


@pytest.mark.parametrize("name", list(CHAT_BAD))
def test_chat_fields_scope_does_not_implement_are_named_in_a_400(url, name):
    extra, message = CHAT_BAD[name]
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 2, **extra}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


def test_fields_at_the_value_that_asks_for_nothing_are_accepted(client, tiny_model):
    neutral = dict(n=1, logprobs=False, tools=[], presence_penalty=0, frequency_penalty=0.0, user="u-1")
    reply = client.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=4, temperature=0, response_format={"type": "text"}, **neutral
    )
    assert reply.choices[0].message.content == scope.generate(tiny_model, CHAT, max_new_tokens=4)
    seeded = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=1.0, seed=2**63 - 1)
    assert seeded.choices[0].text == scope.generate(
        tiny_model, PROMPT, max_new_tokens=4, temperature=1.0, seed=2**63 - 1
    )


def test_an_unknown_model_name_is_openais_404_unless_any_name_is_accepted(url, client, tiny_model, saes):
    for create in (
        lambda c, m: c.chat.completions.create(model=m, messages=CHAT, max_tokens=2),
        lambda c, m: c.completions.create(model=m, prompt=PROMPT, max_tokens=2),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            create(client, "gpt-4o")
        assert caught.value.code == "model_not_found" and caught.value.param == "model"
        assert "'gpt-4o' does not exist on this server: it serves 'shieldgemma-2b'" in caught.value.message
    with serving(create_app(tiny_model, saes, any_model_name=True)) as base:
        lenient = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=60)
        reply = lenient.chat.completions.create(model="gpt-3.5-turbo", messages=CHAT, max_tokens=3, temperature=0)
    assert reply.choices[0].message.content == scope.generate(tiny_model, CHAT, max_new_tokens=3)


def test_a_chat_to_a_base_model_is_answered_with_a_warning(tiny_dir, saes, caplog):
    base_model = scope.load_model("gemma-2-2b", weights=tiny_dir, device="cpu")  # the tiny weights as a base model
    with serving(create_app(base_model, {})) as base:
        models = httpx.get(f"{base}/v1/models").json()["data"]
        body = {"model": "gemma-2-2b", "messages": CHAT, "max_tokens": 3, "temperature": 0}
        with caplog.at_level("WARNING", logger="scope.serve"):
            whole = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
            with httpx.stream("POST", f"{base}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as s:
                streamed_warning = s.headers.get("x-scope-warning")
                list(s.iter_lines())
        completion = httpx.post(
            f"{base}/v1/completions", json={"model": "gemma-2-2b", "prompt": PROMPT, "max_tokens": 2}
        )
    assert models[0] == models[0] | {"id": "gemma-2-2b", "chat": False}
    assert whole.status_code == 200
    assert whole.json()["choices"][0]["message"]["content"] == scope.generate(base_model, CHAT, max_new_tokens=3)
    for warning in (whole.headers["x-scope-warning"], whole.json()["warning"], streamed_warning):
        assert "gemma-2-2b is a base model, not instruction-tuned" in warning
    assert sum("base model" in r.getMessage() for r in caplog.records) == 2
    assert "x-scope-warning" not in completion.headers and "warning" not in completion.json()


def test_models_says_the_chat_model_can_chat(client):
    assert client.models.list().data[0].model_extra["chat"] is True


def test_too_strong_steering_is_an_error_for_that_request_alone(url, client, tiny_model):
    response = httpx.post(
        f"{url}/v1/completions", json=_steer(sae="early", feature=1, mode="add", value=1e30), timeout=60
    )
    assert response.status_code == 400
    assert "too strong" in response.json()["error"]["message"]
    assert no_hooks_left(tiny_model)
    assert (
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2, temperature=0).choices[0].text is not None
    )


def test_an_error_in_a_shared_batch_reaches_only_its_request(app, url, tiny_model, saes):
    """A too-strong request batched with good ones: they still get their own texts."""
    good = [{"prompt": p, "max_tokens": 6, "temperature": 0} for p in (PROMPT, "Golden Gate", "Paris is")]
    bad = {**good[0], "steering": {"interventions": [{"sae": "early", "feature": 1, "mode": "add", "value": 1e30}]}}
    before = len(app.state.engine.batches)
    with ThreadPoolExecutor(4) as pool:
        responses = list(
            pool.map(lambda body: httpx.post(f"{url}/v1/completions", json=body, timeout=60), [bad, *good])
        )
    assert responses[0].status_code == 400 and "too strong" in responses[0].json()["error"]["message"]
    for body, response in zip(good, responses[1:]):
        assert response.json()["choices"][0]["text"] == scope.generate(tiny_model, body["prompt"], max_new_tokens=6)
    assert max(app.state.engine.batches[before:]) > 1  # they did share a batch
    assert no_hooks_left(tiny_model)


def test_unknown_routes_are_404_json(url):
    for path in ("/v2/nothing", "/static/../scope/serve/app.py", "/static/%2e%2e%2fapp.py", "/static/index.html/x"):
        response = httpx.get(url + path)
        assert response.status_code == 404, path


# ----------------------------------------------------------------------------- safety defaults


def test_api_key_is_required_on_every_api_route(tiny_model, saes):
    with serving(create_app(tiny_model, saes, api_key="s3cret")) as base:
        routes = [
            ("GET", "/v1/models", None),
            ("POST", "/v1/completions", {"prompt": PROMPT, "max_tokens": 1}),
            ("POST", "/v1/chat/completions", {"messages": CHAT, "max_tokens": 1}),
            ("POST", "/api/features", {"text": PROMPT}),
            ("GET", "/api/feature/early/3", None),
            ("POST", "/api/search", {"query": "fox"}),
        ]
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "s3cret"},
            {"Authorization": "Basic s3cret"},
        ):
            for method, path, body in routes:
                response = httpx.request(method, base + path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert "Bearer" in response.json()["error"]["message"]
        assert httpx.get(base + "/").status_code == 200  # the page itself holds no data
        good = openai.OpenAI(base_url=f"{base}/v1", api_key="s3cret", max_retries=0)
        reply = good.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0)
        assert reply.choices[0].text == scope.generate(tiny_model, PROMPT, max_new_tokens=3)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0).models.list()


def test_limits_answer_413_and_429_with_json(tiny_model, saes):
    limits = Limits(max_prompt_tokens=12, max_tokens=8, max_body_bytes=2000, max_queue=1)
    app = create_app(tiny_model, saes, limits=limits)
    short = {"prompt": "The", "max_tokens": 2}
    with serving(app) as base:
        too_big = {"prompt": "x" * 3000, "max_tokens": 1}
        cases = [
            (too_big, "2000 bytes"),
            ({"prompt": "The quick brown fox jumps over the lazy dog. " * 3, "max_tokens": 1}, "limit of 12"),
            ({"prompt": "The", "max_tokens": 9}, "limit of 8"),
        ]
        for body, message in cases:
            response = httpx.post(f"{base}/v1/completions", json=body)
            assert response.status_code == 413, response.text
            assert message in response.json()["error"]["message"]
        chunked = httpx.post(f"{base}/v1/completions", content=iter([json.dumps(too_big).encode()]))
        assert chunked.status_code == 413  # no Content-Length: counted as it streams in

        # The queue: one request waits on the model (held here), the next is refused at once.
        results = []
        first = threading.Thread(
            target=lambda: results.append(httpx.post(f"{base}/v1/completions", json=short, timeout=60))
        )
        with model_lock(tiny_model):
            first.start()
            deadline = time.monotonic() + 30
            while app.state.engine.pending < 1:
                assert time.monotonic() < deadline, "the first request never reached the queue"
                time.sleep(0.01)
            refused = httpx.post(f"{base}/v1/completions", json=short)
            assert refused.status_code == 429
            assert "limit is 1" in refused.json()["error"]["message"]
            assert refused.headers["retry-after"] == "1"
        first.join(timeout=60)
        assert results[0].status_code == 200
        assert httpx.post(f"{base}/v1/completions", json=short).status_code == 200


def test_cors_is_off_unless_enabled(url, tiny_model, saes):
    origin = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.get(f"{url}/v1/models", headers=origin).headers
    assert httpx.options(f"{url}/v1/completions", headers=origin).status_code in (404, 405)
    with serving(create_app(tiny_model, saes, cors_origins=["http://app.example"])) as base:
        allowed = httpx.get(f"{base}/v1/models", headers={"Origin": "http://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "http://app.example"
        other = httpx.get(f"{base}/v1/models", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_loopback_by_default_and_a_warning_otherwise():
    from scope.cli import build_parser
    from scope.serve import DEFAULT_HOST

    assert DEFAULT_HOST == "127.0.0.1"
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert host_warning(host) is None
    for host in ("0.0.0.0", "192.168.1.5", "example.org"):
        assert "not loopback" in host_warning(host)


def test_create_app_checks_its_arguments(tiny_model, saes, make_sae):
    wrong, _ = make_sae(hook="blocks.1.hook_resid_post", d_in=32)
    with pytest.raises(ValueError, match="32"):
        create_app(tiny_model, {"wrong": wrong})
    with pytest.raises(ValueError, match="not served"):
        create_app(tiny_model, saes, labels={"other": pd.DataFrame()})
    with pytest.raises(ValueError, match="max_queue"):
        Limits(max_queue=0)
    with pytest.raises(ValueError, match="api_key"):
        create_app(tiny_model, saes, api_key="")


# ----------------------------------------------------------------------------- explorer JSON


def test_features_endpoint_equals_encode(url, tiny_model, saes):
    data = httpx.post(f"{url}/api/features", json={"text": PROMPT, "sae": "early", "k": 3}).json()
    acts = scope.encode(tiny_model, saes["early"], PROMPT)
    assert [t["token"] for t in data["tokens"]] == acts.tokens
    assert data["tokens"][0]["features"] == []  # BOS
    for token in data["tokens"][1:]:
        values, features = torch.topk(acts.values[token["position"]], 3)
        expected = [(f, v) for f, v in zip(features.tolist(), values.tolist()) if v > 0]
        assert [(f["feature"], pytest.approx(f["activation"], rel=1e-5)) for f in token["features"]] == expected
        for feature in token["features"]:
            shaded = data["activations"][str(feature["feature"])][token["position"]]
            assert shaded == pytest.approx(feature["activation"], rel=1e-4)
    labelled = [f for t in data["tokens"] for f in t["features"] if f["feature"] in (3, 5)]
    assert all(f["label"] == {3: "foxes and dogs", 5: "capitals"}[f["feature"]] for f in labelled)
    unlabelled = [f for t in data["tokens"] for f in t["features"] if f["feature"] not in (3, 5)]
    assert unlabelled and all(len(f["promotes"]) == 3 for f in unlabelled)
    lens = scope.feature_logits(tiny_model, saes["early"], unlabelled[0]["feature"], k=3)
    assert unlabelled[0]["promotes"] == lens[lens.direction == "promoted"].token.tolist()


def test_feature_endpoint(url, tiny_model, saes):
    data = httpx.get(f"{url}/api/feature/early/3").json()
    lens = scope.feature_logits(tiny_model, saes["early"], 3, k=10)
    assert [r["token"] for r in data["logit_lens"]["promoted"]] == lens[lens.direction == "promoted"].token.tolist()
    assert data["label"] == "foxes and dogs"
    assert data["stats"]["max_activation"] == pytest.approx(1.0 + 4.0 * 3 / 47)
    assert data["hook"] == "blocks.1.hook_resid_post" and data["d_sae"] == 48
    for path, message in (("/api/feature/early/48", "out of range"), ("/api/feature/nope/1", "Unknown SAE")):
        response = httpx.get(url + path)
        assert response.status_code == 400 and message in response.json()["error"]["message"]


def test_feature_page_with_mined_examples(tiny_model, saes):
    texts = [PROMPT, "Golden Gate Bridge spans the strait."]
    mined = scope.mine(tiny_model, saes["early"], texts, k=3, progress=False)
    table = mined.examples
    feature = int(table.feature.iloc[0])
    late_table = scope.top_examples(tiny_model, saes["late"], texts, k=2, progress=False)
    late_feature = int(late_table.feature.iloc[0])
    with serving(create_app(tiny_model, saes, mined={"early": mined, "late": late_table})) as base:
        late = httpx.get(f"{base}/api/feature/late/{late_feature}").json()
        rows = late_table[late_table.feature == late_feature]
        assert [e["context"] for e in late["examples"]] == rows.context.tolist()
        assert late["label"] == scope.labels.label_features(late_table).set_index("feature").label[late_feature]
        data = httpx.get(f"{base}/api/feature/early/{feature}").json()
        rows = table[table.feature == feature]
        assert [e["activation"] for e in data["examples"]] == pytest.approx(rows.activation.tolist())
        assert data["examples"][0]["tokens"] == mined.span(rows.index[0])[0]
        assert sum(data["histogram"]["counts"]) == int(mined.histogram[mined.features.index(feature)].sum())
        assert httpx.get(f"{base}/feature/early/{feature}").status_code == 200


def test_search_endpoint(url, tiny_model, saes):
    response = httpx.post(f"{url}/api/search", json={"query": "foxes", "k": 3})
    try:
        import scope.search  # noqa: F401
    except ImportError:
        assert response.status_code == 501 and "search" in response.json()["error"]["message"]
        return
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["feature"] for r in results] == [3]  # the only label with "foxes" in it
    assert results[0]["label"] == "foxes and dogs"
    positive, negative = ["The quick brown fox", "a lazy dog"], ["Paris is the capital", "def add(a, b)"]
    contrast = httpx.post(f"{url}/api/search", json={"positive": positive, "negative": negative, "k": 4}).json()
    expected = scope.search.search_features(tiny_model, saes["early"], positive=positive, negative=negative, k=4)
    assert [r["feature"] for r in contrast["results"]] == expected.feature.tolist()
    assert [r["score"] for r in contrast["results"]] == pytest.approx(expected.score.tolist())
    assert httpx.post(f"{url}/api/search", json={}).status_code == 400


# ----------------------------------------------------------------------------- the bundled model


@pytest.mark.slow
def test_bundled_model_greedy_equals_generate_with_and_without_steering(bundled_model):
    sae = scope.load_sae("demo-docs")
    steering = {
        "positions": "all",
        "interventions": [{"sae": "demo-docs", "feature": 141, "mode": "clamp", "value": 2.0, "unit": "max"}],
    }
    with serving(create_app(bundled_model, {"demo-docs": sae})) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=300)
        plain = client.completions.create(
            model="gemma-3-270m", prompt="The Golden Gate Bridge is", max_tokens=12, temperature=0
        )
        steered = client.chat.completions.create(
            model="gemma-3-270m",
            messages=[{"role": "user", "content": "Tell me about bridges."}],
            max_tokens=12,
            temperature=0,
            extra_body={"steering": steering},
        )
    assert plain.choices[0].text == scope.generate(bundled_model, "The Golden Gate Bridge is", max_new_tokens=12)
    expected = scope.generate(
        bundled_model,
        [{"role": "user", "content": "Tell me about bridges."}],
        max_new_tokens=12,
        sae=sae,
        steering=[scope.Clamp(141, 2.0, unit="max")],
    )
    assert steered.choices[0].message.content == expected
    assert no_hooks_left(bundled_model)


# ----------------------------------------------------------------------------- the command


def test_cli_checks_its_arguments_before_loading_a_model(capsys, monkeypatch, tmp_path):
    from scope.cli import main

    def no_model(*args, **kwargs):
        raise RuntimeError("no model in this test")

    monkeypatch.setattr(scope, "load_model", no_model)
    # demo-docs: the spec checks pass without loading it (the default "demo" may not be built yet)
    assert main(["serve", "--sae", "a=demo-docs", "--mined", "b=top.parquet"]) == 2
    assert "--mined b=top.parquet names no served SAE; served: a" in capsys.readouterr().err
    assert main(["serve", "--sae", "demo-docs", "--mined", str(tmp_path / "none.parquet")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert main(["serve", "--sae", "a=demo-docs", "--sae", "a=demo-docs"]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["serve", "--sae", "demo-docs", "--assistant", "gemma-9"]) == 2  # before the target loads
    assert "Unknown model 'gemma-9'" in capsys.readouterr().err
    with socket.socket() as probe:  # a free port: 8000 may be taken on a shared machine
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    assert main(["serve", "--sae", "demo-docs", "--host", "0.0.0.0", "--port", port]) == 1  # warned before loading
    err = capsys.readouterr().err
    assert "scope: warning: serving on 0.0.0.0, not loopback" in err and "no model in this test" in err
    assert main(["serve", "--port", port]) == 1
    assert "warning" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- text of generated tokens


def test_streamed_text_leaves_out_control_tokens():
    """Deltas and the final text alike: a media marker that steering pushed out is not text."""
    from scope.serve.engine import TextStream
    from tests.tiny import make_tokenizer

    tokenizer = make_tokenizer()
    tokenizer.add_tokens(["<start_of_image>"])  # a plain added token, as in Gemma 3's vocabulary
    marker = tokenizer.convert_tokens_to_ids("<start_of_image>")
    words = tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]
    ids = [marker, marker, *words[:2], marker, *words[2:], marker]
    stream = TextStream(tokenizer, stops=[])
    deltas = [stream.push(i) for i in ids]
    assert "".join(deltas) + stream.finish("The quick brown fox") == "The quick brown fox"
    assert "<" not in "".join(deltas)


# ----------------------------------------------------------------------------- assisted generation


@pytest.fixture(scope="module")
def draft(tmp_path_factory, tiny_model):
    """A 2-layer draft sharing the tiny target's tokenizer: its embedding, first 2 blocks and unembedding."""
    from tests.tiny import save_tiny_gemma2

    folder = save_tiny_gemma2(tmp_path_factory.mktemp("serve-draft"), seed=7, num_hidden_layers=2)
    model = scope.load_model(MODEL, weights=folder, device="cpu")
    target = dict(tiny_model.named_parameters())
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(target[name])
    return model


@pytest.fixture(scope="module")
def assisted_url(tiny_model, saes, draft):
    with serving(create_app(tiny_model, saes, assistant=draft)) as base:
        yield base


@pytest.mark.parametrize("steering", [None, STEERINGS[0], STEERINGS[2]], ids=["plain", "add", "two-saes-indices"])
def test_assisted_server_greedy_equals_the_server_without_assistant(
    url, assisted_url, tiny_model, saes, draft, steering
):
    extra = {"steering": steering} if steering else {}
    for route, body in (
        ("completions", {"prompt": PROMPT}),
        ("chat/completions", {"messages": CHAT}),
    ):
        body = {"model": MODEL, "max_tokens": 14, "temperature": 0, **body, **extra}
        plain = httpx.post(f"{url}/v1/{route}", json=body, timeout=60).json()
        drafted = httpx.post(f"{assisted_url}/v1/{route}", json=body, timeout=60).json()
        assert drafted["choices"] == plain["choices"] and drafted["usage"] == plain["usage"]
        assert "scope" not in plain
        stats = drafted["scope"]["assisted"]
        assert 0 < stats["accepted"] <= stats["proposed"] and stats["target_passes"] > 0
        assert stats["acceptance_rate"] == stats["accepted"] / stats["proposed"]
    pairs = steering_pairs(saes, steering) if steering else ()
    positions = steering["positions"] if steering else "all"
    expected = scope.generate(tiny_model, PROMPT, max_new_tokens=14, steering=pairs, positions=positions)
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 14, "temperature": 0, **extra}
    assert httpx.post(f"{assisted_url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"] == expected
    assert no_hooks_left(tiny_model) and no_hooks_left(draft)


def test_an_assistant_with_another_tokenizer_is_refused_before_serving(tiny_model, saes, tmp_path):
    from tests.tiny import save_tiny_gemma2

    other = scope.load_model(MODEL, weights=save_tiny_gemma2(tmp_path, num_hidden_layers=1), device="cpu")
    other.tokenizer.add_tokens(["<a_word_the_target_lacks>"])
    with pytest.raises(ValueError, match="must share the target's tokenizer"):
        create_app(tiny_model, saes, assistant=other)
