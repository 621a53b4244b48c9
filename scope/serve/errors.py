"""Errors as JSON in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with their HTTP status.

A request the server cannot serve gets one clear message naming the bad value and what is
valid (the same messages scope's Python API raises); the server itself carries on serving.
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from scope.serve.engine import DeadlineError, QueueFullError
from scope.serve.state import LimitError, ModelNotFoundError


class BodyTooLargeError(LimitError):
    """A request body over the server's size limit."""


def error_status(err: BaseException) -> int:
    if isinstance(err, HTTPException):
        return err.status_code
    if isinstance(err, LimitError):
        return 413
    if isinstance(err, ModelNotFoundError):
        return 404
    if isinstance(err, QueueFullError):
        return 429
    if isinstance(err, DeadlineError):
        return 504
    if isinstance(err, (ValueError, TypeError, RequestValidationError)):
        return 400
    return 500


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
}


def error_body(err: BaseException, *, param: str | None = None) -> dict[str, Any]:
    status = error_status(err)
    if isinstance(err, RequestValidationError):
        message, param = validation_message(err)
    elif isinstance(err, HTTPException):
        message = str(err.detail)
    elif status == 500:
        message = f"Internal error ({type(err).__name__}): {err}"
    else:
        message = str(err)
    if isinstance(err, ModelNotFoundError):  # OpenAI's own shape for it
        return {
            "error": {"message": message, "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
        }
    kind = _TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    """``"steering.interventions.0.mode: Input should be 'add', ..."`` for each problem, and the first field."""
    parts, first = [], None
    for problem in err.errors():
        if problem.get("type") == "json_invalid":
            parts.append(f"The body is not valid JSON ({problem.get('ctx', {}).get('error', 'parse error')}).")
            continue
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        first = first or where or None
        message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        if problem.get("type") == "extra_forbidden":
            message = "not a field scope serve implements; leave it out"
        given = problem.get("input")
        plain = given is not None and not isinstance(given, (dict, list)) and problem.get("type") != "value_error"
        shown = f" (got {given!r})" if plain else ""
        parts.append(f"{where or 'body'}: {message}{shown}")
    return "; ".join(parts) or "Invalid request.", first
