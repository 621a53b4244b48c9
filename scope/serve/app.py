"""``scope.serve.create_app``: the ASGI app behind ``scope serve`` (FastAPI, served by uvicorn).

1. The model and SAEs are checked once (:class:`scope.serve.state.Served`); one worker thread
   generates (:class:`scope.serve.engine.Engine`), started with the app and stopped with it.
2. Every request passes the body-size limit first (413 before anything is parsed), then, on
   API routes (``/v1/...``, ``/api/...``), the API key when one is set (401 without
   ``Authorization: Bearer KEY``). The explorer's HTML and scripts hold no data and need no key.
3. Errors are OpenAI-shaped JSON (:mod:`scope.serve.errors`); a failing request never stops the server.
4. CORS stays off (browsers refuse cross-origin calls) unless ``cors_origins`` names origins.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scope import _checks
from scope.serve.engine import Engine, QueueFullError
from scope.serve.errors import BodyTooLargeError, error_body, error_status
from scope.serve.explorer import api as explorer_api
from scope.serve.explorer import pages as explorer_pages
from scope.serve.graph_page import api as graph_api
from scope.serve.graph_page import pages as graph_pages
from scope.serve.openai_api import router as openai_router
from scope.serve.state import LimitError, Limits, Served

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def create_app(
    model: Any,
    saes: Mapping[str, Any] | None = None,
    *,
    labels: Mapping[str, Any] | None = None,
    mined: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
    api_key: str | None = None,
    cors_origins: list[str] | None = None,
    any_model_name: bool = False,
    assistant: Any = None,
) -> FastAPI:
    """The server for ``model`` and its SAEs (``{"demo": sae}``): OpenAI-compatible routes and the explorer.

    Args:
        model: a loaded subject (:func:`scope.load_model`).
        saes: SAEs by the name requests use (``"sae": "demo"`` in a steering intervention).
        labels: per SAE name, a DataFrame with ``feature`` and ``label`` (optionally ``explanation``).
        mined: per SAE name, :func:`scope.top_examples`' table or a :class:`scope.examples.Mined`.
        limits: prompt tokens, ``max_tokens``, body bytes, queued requests (:class:`Limits`).
        api_key: when set, every API route needs ``Authorization: Bearer <api_key>``.
        cors_origins: origins allowed to call the API from a browser (default: none, CORS off).
        any_model_name: accept any ``model`` in requests, as llama-server does. Off by default: a
            request naming another model gets OpenAI's 404 ``model_not_found``, so that a client
            configured for some other model learns it is not talking to it.
        assistant: a small model sharing ``model``'s tokenizer that drafts tokens for every request
            (assisted generation, :mod:`scope.assisted`): greedy text is unchanged, steering
            applies to ``model`` only, and each reply carries ``scope.assisted`` acceptance stats.
    """
    if api_key is not None:
        api_key = _checks.text(api_key, "api_key")
        if not api_key:
            raise ValueError("api_key is empty: give a key, or None for no key.")
    served = Served(
        model,
        dict(saes or {}),
        labels=dict(labels or {}),
        mined=dict(mined or {}),
        limits=limits if limits is not None else Limits(),
        any_model_name=any_model_name,
    )
    engine = Engine(model, max_queue=served.limits.max_queue, max_batch=served.limits.max_batch, assistant=assistant)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="scope serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = served
    app.state.engine = engine
    app.state.created = int(time.time())
    _add_error_handlers(app)
    guard = [Depends(_bearer(api_key))]
    app.include_router(openai_router, dependencies=guard)
    app.include_router(explorer_api, dependencies=guard)
    app.include_router(explorer_pages)
    app.include_router(graph_api, dependencies=guard)
    app.include_router(graph_pages)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    app.add_middleware(_BodyLimit, max_bytes=served.limits.max_body_bytes)
    return app


def _bearer(api_key: str | None):
    """The dependency that demands ``Authorization: Bearer <api_key>`` (nothing when no key is set)."""

    def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise HTTPException(
                401, "Invalid or missing API key: send 'Authorization: Bearer <key>'.", {"WWW-Authenticate": "Bearer"}
            )

    return check


def _add_error_handlers(app: FastAPI) -> None:
    def respond(request: Request, err: Exception) -> JSONResponse:
        body = error_body(err)
        headers = getattr(err, "headers", None) or {}
        if isinstance(err, QueueFullError):
            headers = {"Retry-After": "1"}
        return JSONResponse(body, status_code=error_status(err), headers=headers)

    for kind in (
        StarletteHTTPException,
        RequestValidationError,
        LimitError,
        QueueFullError,
        ValueError,
        TypeError,
        LookupError,
    ):
        app.add_exception_handler(kind, respond)
    app.add_exception_handler(Exception, respond)


class _BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, by its Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._too_large(send)
            return
        # Read the whole body (at most max_bytes) before the app sees any of it, then replay it.
        chunks, received = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.max_bytes:
                await self._too_large(send)
                return
            if not message.get("more_body", False):
                break
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    def _message(self) -> str:
        return f"The request body is over this server's limit of {self.max_bytes} bytes."

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse(error_body(BodyTooLargeError(self._message())), status_code=413)
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def host_warning(host: str) -> str | None:
    """A warning for a host that is not loopback (None for ``127.0.0.1``, ``::1``, ``localhost``)."""
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (
        f"serving on {host}, not loopback: anyone who can reach this machine can use the model "
        "(set --api-key, and put TLS in front)."
    )


def check_address(host: str, port: int) -> None:
    """That the server could listen on ``host:port``, checked by binding it once (as uvicorn will).

    Raises ValueError for a port outside 1..65535 or a host that does not resolve, OSError (with
    the address and the reason) for an address in use or not this machine's.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an integer in 1..65535, got {port!r}.")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ValueError(f"host {host!r} does not resolve to an address ({err.strerror}).") from err
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # what uvicorn sets
        try:
            probe.bind(address)
        except OSError as err:
            raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}.") from err


def serve(app: FastAPI, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until interrupted."""
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


@contextlib.contextmanager
def serving(app: FastAPI, *, host: str = DEFAULT_HOST, port: int = 0, startup_timeout: float = 60.0) -> Iterator[str]:
    """Serve ``app`` from a background thread for the ``with`` block (a notebook, a test, a
    benchmark); yields its base URL, e.g. ``http://127.0.0.1:8123``. ``port=0`` picks a free port."""
    if port == 0:
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, name="scope-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"scope serve did not start on {host}:{port}.")
        time.sleep(0.02)
    try:
        yield f"http://{f'[{host}]' if ':' in host else host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
