"""Language models that answer chats: the one interface explainers, scorers and judges use.

Anything with a ``name`` and a ``chat(conversations, *, max_tokens, temperature) -> list[str]``
method is an :class:`LLM`. scope ships two:

- :class:`Endpoint`: any OpenAI-compatible chat endpoint (llama-server, vLLM, OpenAI, scope's own
  ``scope serve``), through the official ``openai`` client, with ``concurrency`` requests in flight.
- :class:`LocalLLM`: a subject loaded with :func:`scope.load_model`, answering through
  :func:`scope.generate` (greedy at temperature 0). A base model (the bundled Gemma 3 270M) is not
  a chat model; it still answers, as a stand-in, and its ``name`` says so.

:func:`as_llm` turns whatever a user passed as ``explainer=`` / ``judge=`` into an :class:`LLM`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from scope import _checks
from scope.steering import generate
from scope.subjects import subject_of

Message = Mapping[str, str]
Conversation = Sequence[Message]

ROLES = ("system", "user", "assistant", "model")


@runtime_checkable
class LLM(Protocol):
    """A model that answers chats, a batch at a time."""

    name: str

    def chat(
        self, conversations: Sequence[Conversation], *, max_tokens: int = 64, temperature: float = 0.0
    ) -> list[str]:
        """One reply per conversation, in order (each conversation a list of role/content messages)."""
        ...


class LLMError(RuntimeError):
    """An LLM could not answer (endpoint unreachable, refused the request, returned no text)."""


class Endpoint:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Args:
        base_url: the API root, e.g. ``"http://127.0.0.1:8080/v1"`` (llama-server, vLLM and
            ``scope serve`` all serve under ``/v1``).
        model: the model name the endpoint expects (llama-server ignores it; vLLM checks it).
        api_key: sent as a bearer token; None uses ``OPENAI_API_KEY`` when set, else a placeholder
            (local servers need none).
        timeout: seconds per request (the client retries a failed request twice).
        concurrency: requests in flight at once; replies still come back in order.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        concurrency: int = 8,
    ) -> None:
        import openai  # the client is a core dependency, but only endpoint users pay its import

        self.base_url = _checks.text(base_url, "base_url")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as 'http://127.0.0.1:8080/v1', got {base_url!r}.")
        self.model = _checks.text(model, "model")
        self.timeout = _checks.finite(timeout, "timeout")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}.")
        self.concurrency = _checks.positive_int(concurrency, "concurrency")
        if api_key is not None:
            _checks.text(api_key, "api_key")
        key = api_key or os.environ.get("OPENAI_API_KEY") or "not-needed"
        self.name = model
        self._client = openai.OpenAI(base_url=base_url, api_key=key, timeout=self.timeout)
        self._errors = (openai.APIError,)

    def __repr__(self) -> str:
        return f"Endpoint({self.base_url!r}, {self.model!r}, concurrency={self.concurrency})"

    def chat(
        self, conversations: Sequence[Conversation], *, max_tokens: int = 64, temperature: float = 0.0
    ) -> list[str]:
        """One reply per conversation, ``concurrency`` requests at a time, in order."""
        conversations = check_conversations(conversations)
        max_tokens, temperature = check_options(max_tokens, temperature)
        if not conversations:
            return []

        def ask(conversation: list[dict[str, str]]) -> str:
            return self._ask(conversation, max_tokens, temperature)

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(ask, conversations))

    def _ask(self, conversation: list[dict[str, str]], max_tokens: int, temperature: float) -> str:
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=[_openai_message(m) for m in conversation],  # type: ignore[misc]
                max_tokens=max_tokens,
                temperature=temperature,
            )
        except self._errors as err:
            raise LLMError(f"The chat endpoint {self.base_url} (model {self.model!r}) failed: {err}") from err
        if not response.choices or response.choices[0].message.content is None:
            raise LLMError(f"The chat endpoint {self.base_url} (model {self.model!r}) returned no text: {response!r}")
        return response.choices[0].message.content


class LocalLLM:
    """A loaded subject answering chats with :func:`scope.generate`, ``batch_size`` generated together
    (left-padded and KV-cached; greedy replies equal generating each chat alone).

    The conversation is rendered in the Gemma turn format (a leading system message is folded
    into the first user turn). Use an instruction-tuned subject (``gemma-2-9b-it`` on a GPU) for
    real explanations; a base model such as the bundled ``gemma-3-270m`` is a stand-in for
    offline runs and tests, and its ``name`` carries ``"(base model stand-in)"``.
    """

    def __init__(self, model: Any, *, batch_size: int = 8) -> None:
        if not _is_model(model):
            raise TypeError(f"model must be a model loaded with scope.load_model, got {type(model).__name__}.")
        self.model = model
        self.batch_size = _checks.positive_int(batch_size, "batch_size")
        spec = subject_of(model)
        base = spec.name if spec is not None else str(getattr(model.cfg, "model_name", type(model).__name__))
        self.is_chat_model = bool(spec is not None and spec.chat)
        self.name = base if self.is_chat_model else f"{base} (base model stand-in)"

    def __repr__(self) -> str:
        return f"LocalLLM({self.name!r}, batch_size={self.batch_size})"

    def chat(
        self, conversations: Sequence[Conversation], *, max_tokens: int = 64, temperature: float = 0.0
    ) -> list[str]:
        """One reply per conversation (greedy at temperature 0), in order."""
        conversations = check_conversations(conversations)
        max_tokens, temperature = check_options(max_tokens, temperature)
        if not conversations:
            return []
        replies = generate(
            self.model, conversations, max_new_tokens=max_tokens, temperature=temperature, batch_size=self.batch_size
        )
        return list(replies)


def as_llm(x: Any) -> LLM:
    """An :class:`LLM` from an LLM (an :class:`Endpoint`, a :class:`LocalLLM`, or any object with
    ``name`` and ``chat``) or a model loaded with :func:`scope.load_model` (wrapped in a
    :class:`LocalLLM`). TypeError for anything else."""
    if isinstance(x, LLM):
        return x
    if _is_model(x):
        return LocalLLM(x)
    hint = " (load it first: scope.load_model(name))" if isinstance(x, str) else ""
    raise TypeError(
        f"An LLM must be a scope.Endpoint(base_url, model), a scope.LocalLLM, a model loaded with "
        f"scope.load_model{hint}, or an object with a 'name' and a 'chat(conversations, *, max_tokens, "
        f"temperature)' method; got {type(x).__name__}: {x!r:.80}."
    )


def check_conversations(conversations: Any) -> list[list[dict[str, str]]]:
    """A list of conversations, each a non-empty list of ``{"role", "content"}`` string dicts."""
    if isinstance(conversations, (str, Mapping)) or not isinstance(conversations, Sequence):
        raise TypeError(
            "conversations must be a list of conversations, each a list of {'role', 'content'} messages; "
            f"got {type(conversations).__name__}."
        )
    checked = []
    for i, conversation in enumerate(conversations):
        if isinstance(conversation, (str, Mapping)) or not isinstance(conversation, Sequence) or not conversation:
            raise TypeError(
                f"conversations[{i}] must be a non-empty list of {{'role', 'content'}} messages, "
                f"got {conversation!r:.80}."
            )
        checked.append([_message(message, f"conversations[{i}][{j}]") for j, message in enumerate(conversation)])
    return checked


def check_options(max_tokens: Any, temperature: Any) -> tuple[int, float]:
    """``max_tokens`` >= 1 and a finite ``temperature`` >= 0."""
    max_tokens = _checks.positive_int(max_tokens, "max_tokens")
    temperature = _checks.finite(temperature, "temperature")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature!r}.")
    return max_tokens, temperature


def _message(message: Any, name: str) -> dict[str, str]:
    if not isinstance(message, Mapping) or not isinstance(message.get("content"), str):
        raise TypeError(f"{name} must be a dict with a string 'content', got {message!r:.80}.")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{name} has role {role!r}; valid roles: {', '.join(map(repr, ROLES))}.")
    return {"role": role, "content": message["content"]}


def _openai_message(message: dict[str, str]) -> dict[str, str]:
    """Gemma's ``model`` role is OpenAI's ``assistant``."""
    return {"role": "assistant" if message["role"] == "model" else message["role"], "content": message["content"]}


def _is_model(x: Any) -> bool:
    """A transformer-lens model (what scope.load_model returns), recognised without importing it."""
    return hasattr(x, "cfg") and hasattr(x, "tokenizer") and hasattr(x, "to_tokens") and hasattr(x, "run_with_hooks")
