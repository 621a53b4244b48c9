"""The OpenAI-compatible routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``.

Responses follow OpenAI's shapes (``chat.completion`` / ``text_completion`` objects, ``usage``,
``finish_reason``); with ``"stream": true`` they are server-sent events of OpenAI's chunk
objects ending with ``data: [DONE]``. The extension field ``steering`` (see
:class:`scope.serve.schemas.SteeringSpec`) steers the request; without it the plain model answers.

A request naming another model than the served one gets OpenAI's 404 ``model_not_found`` (unless
the app accepts any name). ``/v1/models`` says whether the model can chat (``"chat"``); a chat
request to a base model is answered, with a warning in the ``X-Scope-Warning`` header, in the
response's ``"warning"`` field (whole responses) and in the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from scope.serve.engine import Engine, Event, Job
from scope.serve.errors import error_body, error_status
from scope.serve.schemas import ChatRequest, CompletionRequest
from scope.serve.state import GenerationArgs, Served

router = APIRouter()
log = logging.getLogger("scope.serve")


def _served(request: Request) -> tuple[Served, Engine]:
    return request.app.state.served, request.app.state.engine


@router.get("/v1/models")
def list_models(request: Request) -> dict[str, Any]:
    """The model (``"chat"``: instruction-tuned, or None when unknown), then each SAE
    (``"owned_by": "scope"``; SAEs carry their hook and width)."""
    served, _ = _served(request)
    created = request.app.state.created
    model = {
        "id": served.model_name,
        "object": "model",
        "created": created,
        "owned_by": "scope",
        "chat": served.can_chat,
    }
    data: list[dict[str, Any]] = [model]
    for name, sae in served.saes.items():
        data.append(
            {
                "id": name,
                "object": "sae",
                "created": created,
                "owned_by": "scope",
                "hook": sae.cfg.metadata.hook_name,
                "d_sae": int(sae.cfg.d_sae),
            }
        )
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request) -> Any:
    served, _ = _served(request)
    served.check_model(body.model)
    args = served.generation_args(body.chat(), body, chat=True)
    reply = _Reply("chatcmpl", "chat.completion", served.model_name, chat=True, warning=served.chat_warning())
    if reply.warning:
        log.warning("chat request to a base model: %s", reply.warning)
    return await _respond(request, args, reply, stream=body.stream, include_usage=body.include_usage())


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request) -> Any:
    served, _ = _served(request)
    served.check_model(body.model)
    args = served.generation_args(body.text(), body, chat=False)
    reply = _Reply("cmpl", "text_completion", served.model_name, chat=False)
    return await _respond(request, args, reply, stream=body.stream, include_usage=body.include_usage())


class _Reply:
    """OpenAI's response and chunk objects for one request."""

    def __init__(self, prefix: str, kind: str, model: str, *, chat: bool, warning: str | None = None):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.kind = kind
        self.model = model
        self.chat = chat
        self.warning = warning
        self.created = int(time.time())

    def headers(self) -> dict[str, str]:
        return {"X-Scope-Warning": self.warning} if self.warning else {}

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, done: Event) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice |= {"logprobs": None, "finish_reason": done.finish_reason}
        warning = {"warning": self.warning} if self.warning else {}
        return self._head(self.kind) | {"choices": [choice], "usage": usage(done)} | warning | assisted(done)

    def chunk(self, text: str | None, finish_reason: str | None = None, *, first: bool = False) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if text:
                delta["content"] = text
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text or ""}
        choice |= {"logprobs": None, "finish_reason": finish_reason}
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._head(kind) | {"choices": [choice]}

    def usage_chunk(self, done: Event) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return self._head(kind) | {"choices": [], "usage": usage(done)} | assisted(done)


def usage(done: Event) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def assisted(done: Event) -> dict[str, Any]:
    """``{"scope": {"assisted": ...}}``: the draft's acceptance for this request (nothing without an assistant)."""
    stats = done.assisted
    if stats is None:
        return {}
    acceptance = {
        "proposed": stats.proposed,
        "accepted": stats.accepted,
        "acceptance_rate": stats.acceptance_rate,
        "target_passes": stats.target_passes,
    }
    return {"scope": {"assisted": acceptance}}


def _submit(engine: Engine, args: GenerationArgs, timeout_s: float) -> tuple[Job, asyncio.Queue[Event]]:
    """Queue the job; its events arrive on the returned asyncio queue (raises QueueFullError)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()

    def sink(event: Event) -> None:
        # RuntimeError: the event loop is gone (the server shut down): nobody is listening
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(events.put_nowait, event)

    job = Job(args, sink, timeout_s=timeout_s)
    engine.submit(job)
    return job, events


async def _respond(request: Request, args: GenerationArgs, reply: _Reply, *, stream: bool, include_usage: bool) -> Any:
    served, engine = _served(request)
    job, events = _submit(engine, args, served.limits.request_timeout_s)
    if stream:  # Starlette ends the stream when its client goes away: _sse's finally cancels the job
        return StreamingResponse(
            _sse(job, events, reply, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **reply.headers()},
        )
    # Nothing cancels a plain handler whose client went away: wait for the disconnect beside the reply.
    answer = asyncio.ensure_future(_whole(events, reply))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            return Response(status_code=499)  # nobody reads it
        result = answer.result()
        return JSONResponse(result, headers=reply.headers()) if isinstance(result, dict) else result
    finally:
        job.cancelled.set()  # a client that went away stops its generation
        answer.cancel()
        gone.cancel()


async def _whole(events: asyncio.Queue[Event], reply: _Reply) -> Any:
    """The whole reply (or the error) once the job is done."""
    parts: list[str] = []
    while True:
        event = await events.get()
        if event.kind == "delta":
            parts.append(event.text)
        elif event.kind == "error":
            assert event.error is not None
            return JSONResponse(error_body(event.error), status_code=error_status(event.error))
        else:
            return reply.whole("".join(parts), event)


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away (the body was read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _sse(job: Job, events: asyncio.Queue[Event], reply: _Reply, include_usage: bool) -> AsyncIterator[str]:
    try:
        yield _data(reply.chunk(None, first=True))
        while True:
            event = await events.get()
            if event.kind == "delta":
                yield _data(reply.chunk(event.text))
            elif event.kind == "error":
                assert event.error is not None
                yield _data(error_body(event.error))
                break
            else:
                yield _data(reply.chunk(None, event.finish_reason))
                if include_usage:
                    yield _data(reply.usage_chunk(event))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
