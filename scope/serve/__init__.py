"""``scope serve``: an OpenAI-compatible steering server and a self-hosted feature explorer.

- :mod:`scope.serve.app`: :func:`create_app` (the ASGI app), :func:`serve` (run it with uvicorn),
  :func:`serving` (run it in a background thread for a ``with`` block), :func:`check_address`
- :mod:`scope.serve.openai_api`: ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``
- :mod:`scope.serve.explorer`: the explorer pages and ``/api/...`` JSON endpoints
- :mod:`scope.serve.engine`: the queue and the worker thread that generates
- :mod:`scope.serve.state`: what is served, limits, request checks
- :mod:`scope.serve.schemas`: request bodies; :mod:`scope.serve.errors`: OpenAI-shaped errors
"""

from scope.serve.app import DEFAULT_HOST, DEFAULT_PORT, check_address, create_app, host_warning, serve, serving
from scope.serve.state import Limits

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Limits", "check_address", "create_app", "host_warning", "serve", "serving"]
