"""A small OpenAI-compatible chat server on loopback, for tests that talk real HTTP.

It serves ``POST /v1/chat/completions`` (non-streaming) and ``GET /v1/models`` with FastAPI on
uvicorn, in a background thread, on ``127.0.0.1`` at a free port. Replies come from a
deterministic *responder* you pass: ``responder(messages) -> str``, where ``messages`` is the
request's list of ``{"role", "content"}`` dicts. Use it with the real ``openai`` client (e.g.
through ``scope.llm.Endpoint``)::

    from tests.openai_server import serve_chat

    with serve_chat(lambda messages: "yes") as base_url:  # "http://127.0.0.1:PORT/v1"
        replies = scope.llm.Endpoint(base_url, "test-model").chat([[{"role": "user", "content": "hi"}]])

For more control, :class:`ChatServer` is the same thing as an object: ``server.base_url``,
``server.requests`` (every request body received, in arrival order), an optional ``api_key`` the
server demands as ``Authorization: Bearer ...`` (401 otherwise), and ``delay`` seconds added to
each reply (requests are served concurrently, so this shows client-side concurrency).
A responder that raises makes the server answer HTTP 500.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request

Responder = Callable[[list[dict[str, str]]], str]


class ChatServer:
    """A running loopback chat server (use as a context manager: it starts on enter, stops on exit)."""

    def __init__(
        self, responder: Responder, *, model: str = "test-model", api_key: str | None = None, delay: float = 0.0
    ) -> None:
        self.responder = responder
        self.model = model
        self.api_key = api_key
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))  # port 0: the OS picks a free port, held from here on
        self.port = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(self._app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        def models(request: Request) -> dict[str, Any]:
            self._authorise(request)
            return {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "tests"}]}

        @app.post("/v1/chat/completions")
        def chat(request: Request, body: dict[str, Any]) -> dict[str, Any]:
            self._authorise(request)
            with self._lock:
                self.requests.append(body)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise HTTPException(status_code=400, detail="'messages' must be a non-empty list")
            if self.delay:
                time.sleep(self.delay)  # a sync handler runs in FastAPI's thread pool: requests overlap
            try:
                content = self.responder(messages)
            except Exception as err:  # the client sees a server error, as with a real backend fault
                raise HTTPException(status_code=500, detail=f"responder failed: {err!r}") from err
            return _completion(str(body.get("model", self.model)), messages, content)

        return app

    def _authorise(self, request: Request) -> None:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            raise HTTPException(status_code=401, detail="invalid api key")

    def __enter__(self) -> ChatServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test chat server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


@contextmanager
def serve_chat(
    responder: Responder, *, model: str = "test-model", api_key: str | None = None, delay: float = 0.0
) -> Iterator[str]:
    """Run a loopback chat server answering with ``responder``; yields its base URL (ending ``/v1``)."""
    with ChatServer(responder, model=model, api_key=api_key, delay=delay) as server:
        yield server.base_url


def _completion(model: str, messages: list[dict[str, Any]], content: str) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object (token counts are whitespace words: only a stand-in)."""
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
    completion_tokens = len(content.split())
    return {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"},
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
