"""The request bodies the server accepts, as pydantic models (OpenAI's fields plus ``steering``).

Every field is either implemented or refused with a 400 that names it: an unknown field, and an
OpenAI field scope does not implement (``tools``, ``response_format``, ``logit_bias``,
``presence_penalty``...) unless it holds the value that asks for nothing (``n=1``,
``presence_penalty=0``, ``tools=[]``...), so that a client's request never silently means
something else here. ``user`` (the client's end-user id) is accepted: it changes nothing.
Values are checked here (types, ranges, finite numbers); what needs the model or the SAEs
(the model's name, feature past the width, prompt length) is checked in :mod:`scope.serve.state`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

MODES = ("add", "clamp", "ablate", "scale")
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's int64, which torch's generators take
# OpenAI fields scope does not implement, and the values that ask for nothing (accepted).
NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0),
    "presence_penalty": (None, 0),
    "logit_bias": (None, {}),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
}


class InterventionSpec(BaseModel):
    """One feature edit: ``{"sae": "demo", "feature": 141, "mode": "clamp", "value": 2.0, "unit": "max"}``."""

    model_config = ConfigDict(extra="forbid")

    sae: str = Field(description="the name of a served SAE (GET /v1/models lists them)")
    feature: int = Field(ge=0, strict=True)
    mode: Literal["add", "clamp", "ablate", "scale"]
    value: FiniteFloat | None = Field(default=None, description="strength; not used by ablate")
    unit: Literal["act", "max"] = Field(default="act", description="clamp only: 'max' reads value in max activations")

    @model_validator(mode="after")
    def _value_given(self) -> InterventionSpec:
        if self.mode != "ablate" and self.value is None:
            raise ValueError(f"mode {self.mode!r} needs a value (a finite number)")
        if self.unit == "max" and self.mode != "clamp":
            raise ValueError(f"unit 'max' applies to mode 'clamp' only, not {self.mode!r}")
        return self


class SteeringSpec(BaseModel):
    """``{"positions": "all", "interventions": [...]}``, as :func:`scope.steer` takes them."""

    model_config = ConfigDict(extra="forbid")

    positions: Union[Literal["all", "prompt", "generated"], list[Annotated[int, Field(strict=True)]]] = "all"
    interventions: list[InterventionSpec] = Field(default_factory=list, max_length=64)


class _Sampling(BaseModel):
    """What both endpoints share."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None  # the served model's name (checked by the route: 404 model_not_found)
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: FiniteFloat = Field(default=1.0, ge=0.0)  # OpenAI's default; 0 is greedy
    top_p: FiniteFloat = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    steering: SteeringSpec | None = None
    user: str | None = None  # the client's end-user id: accepted, changes nothing
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logit_bias: Any = None
    logprobs: Any = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"n must be 1 (one choice per request), got {n}")
        return n

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, seed: int | None) -> int | None:
        low, high = SEED_RANGE
        if seed is not None and not low <= seed <= high:
            raise ValueError(f"seed must be an integer in [-2**63, 2**63 - 1] (int64), got {seed}")
        return seed

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, options: dict[str, Any] | None) -> dict[str, Any] | None:
        unknown = sorted(set(options or {}) - {"include_usage"})
        if unknown:
            raise ValueError(f"scope serve implements stream_options.include_usage only, not {', '.join(unknown)}")
        return options

    @field_validator(*NOT_IMPLEMENTED, check_fields=False)
    @classmethod
    def _asks_for_nothing(cls, value: Any, info: ValidationInfo) -> None:
        neutral = [n for n in NOT_IMPLEMENTED[str(info.field_name)] if n is not None]
        if value is not None and not any(_same(value, n) for n in neutral):
            allowed = f" (or send {' or '.join(map(repr, neutral))}, which asks for nothing)" if neutral else ""
            raise ValueError(f"{info.field_name} is not implemented by scope serve; leave it out{allowed}")
        return None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: Union[str, list[str], None]) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return stops

    def stops(self) -> list[str]:
        return list(self.stop or [])

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


def _same(value: Any, neutral: Any) -> bool:
    """``value == neutral`` without Python's ``True == 1`` and ``False == 0``."""
    return isinstance(value, bool) == isinstance(neutral, bool) and value == neutral


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]  # scope serve reads text only (no images, no audio)
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")  # name, tool_calls...: no place in the Gemma turn format

    role: Literal["system", "developer", "user", "assistant", "model"]
    content: Any

    @field_validator("content")
    @classmethod
    def _text_content(cls, content: Any) -> Union[str, list[ContentPart]]:
        # None is refused, not read as empty: OpenAI allows it for an assistant turn that calls
        # tools, and scope has no tools, so that turn's meaning would be lost.
        if content is None:
            raise ValueError("content is null: every message needs text content (scope serve has no tools)")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            kinds = [part.get("type") if isinstance(part, dict) else type(part).__name__ for part in content]
            if any(kind != "text" for kind in kinds):
                raise ValueError(f"content parts must be text (scope serve reads text only), got types {kinds}")
            return [ContentPart.model_validate(part) for part in content]
        raise ValueError(f"content must be a string or a list of text parts, got {type(content).__name__}")

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)  # OpenAI's newer name for max_tokens
    top_logprobs: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None

    def chat(self) -> list[dict[str, str]]:
        # "developer" is OpenAI's newer name for the system message
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: one prompt string (or a list holding one)."""

    prompt: Union[str, list[str]]
    echo: Any = None
    best_of: Any = None
    suffix: Any = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Union[str, list[str]]) -> Union[str, list[str]]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError(f"prompt must be one string (n=1), got a list of {len(prompt)}")
        return prompt

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def requested_tokens(self) -> int | None:
        return self.max_tokens


class FeaturesRequest(BaseModel):
    """``POST /api/features``: the top features per token of a text."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    sae: str | None = None  # default: the first served SAE
    k: int = Field(default=5, ge=1, le=64)
    dense: bool = False  # show dense features (hidden by default, scope.density)
    rank_by: Literal["activation", "relative"] = "activation"


class SearchRequest(BaseModel):
    """``POST /api/search``: features by a query, or contrastive (positive vs negative texts)."""

    model_config = ConfigDict(extra="forbid")

    sae: str | None = None
    query: str | None = None
    positive: list[str] | None = None
    negative: list[str] | None = None
    k: int = Field(default=10, ge=1, le=100)

    @model_validator(mode="after")
    def _something(self) -> SearchRequest:
        if not self.query and not self.positive:
            raise ValueError("give a query, or positive (and optionally negative) texts")
        return self
