"""scope.llm: chat endpoints over real HTTP (loopback server + the real openai client), local models."""

import socket
import threading
import time

import pytest

import scope
from scope.llm import LLM, Endpoint, LLMError, LocalLLM, as_llm
from tests.openai_server import ChatServer, serve_chat

HI = [{"role": "user", "content": "hi"}]


def test_endpoint_replies_in_order_over_http():
    def responder(messages):
        return "echo " + messages[-1]["content"].upper()

    with serve_chat(responder) as base_url:
        replies = Endpoint(base_url, "test-model", concurrency=3).chat(
            [[{"role": "user", "content": f"number {i}"}] for i in range(7)]
        )
    assert replies == [f"echo NUMBER {i}" for i in range(7)]


def test_endpoint_sends_options_key_and_openai_roles():
    with ChatServer(lambda m: "ok", api_key="sekret") as server:
        endpoint = Endpoint(server.base_url, "some-model", api_key="sekret")
        conversation = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "a"},
            {"role": "model", "content": "b"},  # Gemma's name for the assistant
            {"role": "user", "content": "c"},
        ]
        assert endpoint.chat([conversation], max_tokens=5, temperature=0.5) == ["ok"]
        with pytest.raises(LLMError, match="401"):
            Endpoint(server.base_url, "some-model", api_key="wrong").chat([HI])
    body = server.requests[0]
    assert body["model"] == "some-model"
    assert body["max_tokens"] == 5 and body["temperature"] == 0.5
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_endpoint_keeps_at_most_concurrency_requests_in_flight(concurrency):
    in_flight, peak, lock = 0, 0, threading.Lock()

    def responder(messages):
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.15)
        with lock:
            in_flight -= 1
        return "x"

    with serve_chat(responder) as base_url:
        Endpoint(base_url, "m", concurrency=concurrency).chat([HI] * 6)
    assert peak == concurrency


def test_unreachable_endpoint_names_the_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = Endpoint(f"http://127.0.0.1:{port}/v1", "m", timeout=2)
    with pytest.raises(LLMError, match=f"127.0.0.1:{port}"):
        endpoint.chat([HI])


def test_bad_arguments_fail_before_any_request():
    with pytest.raises(ValueError, match="base_url"):
        Endpoint("127.0.0.1:8080", "m")
    with pytest.raises(ValueError, match="concurrency"):
        Endpoint("http://127.0.0.1:1/v1", "m", concurrency=0)
    endpoint = Endpoint("http://127.0.0.1:1/v1", "m")
    with pytest.raises(TypeError, match="list of conversations"):
        endpoint.chat("hi")
    with pytest.raises(TypeError, match=r"conversations\[0\]"):
        endpoint.chat(["hi"])
    with pytest.raises(ValueError, match="role 'robot'"):
        endpoint.chat([[{"role": "robot", "content": "x"}]])
    with pytest.raises(ValueError, match="max_tokens"):
        endpoint.chat([HI], max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        endpoint.chat([HI], temperature=-1)
    assert endpoint.chat([]) == []


def test_as_llm_accepts_llms_and_models_and_names_what_is_valid(tiny_model):
    endpoint = Endpoint("http://127.0.0.1:1/v1", "m")
    assert as_llm(endpoint) is endpoint

    class Custom:
        name = "custom"

        def chat(self, conversations, *, max_tokens=64, temperature=0.0):
            return ["c"] * len(conversations)

    custom = Custom()
    assert as_llm(custom) is custom and isinstance(custom, LLM)
    local = as_llm(tiny_model)
    assert isinstance(local, LocalLLM) and local.model is tiny_model
    with pytest.raises(TypeError, match=r"scope.load_model\(name\)"):
        as_llm("gemma-2-9b-it")
    with pytest.raises(TypeError, match="Endpoint"):
        as_llm(42)


def test_local_llm_answers_like_generate(tiny_model):
    chats = [[{"role": "user", "content": f"word {i}"}] for i in range(3)]
    llm = LocalLLM(tiny_model, batch_size=2)
    assert llm.name == "shieldgemma-2b"  # loaded as a chat subject: no stand-in label
    replies = llm.chat(chats, max_tokens=4)
    assert replies == [scope.generate(tiny_model, chat, max_new_tokens=4) for chat in chats]
    assert all(isinstance(r, str) for r in replies)


@pytest.mark.slow
def test_bundled_base_model_is_labelled_a_stand_in(bundled_model):
    llm = as_llm(bundled_model)
    assert llm.name == "gemma-3-270m (base model stand-in)"
    assert len(llm.chat([HI], max_tokens=3)) == 1
