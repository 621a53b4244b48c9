"""The request bodies the server accepts, as pydantic models (OpenAI's fields plus ``steering``).

Fields that OpenAI defines and scope does not use (``user``, ``presence_penalty``...) are
accepted and ignored, as llama-server and vLLM do, so that existing clients work unchanged;
fields scope cannot honour (``n`` other than 1, token-id prompts) are refused with a message.
Values are checked here (types, ranges, finite numbers); what needs the model or the SAEs
(feature past the width, prompt length) is checked in :mod:`scope.serve.state`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODES = ("add", "clamp", "ablate", "scale")
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


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

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # any value is accepted: the server serves one model
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: FiniteFloat = Field(default=1.0, ge=0.0)  # OpenAI's default; 0 is greedy
    top_p: FiniteFloat = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    n: int = 1
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    steering: SteeringSpec | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError(f"n must be 1 (one choice per request), got {n}")
        return n

    logprobs: Union[bool, int, None] = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, logprobs: Union[bool, int, None]) -> None:
        if logprobs:
            raise ValueError("logprobs are not supported by scope serve; leave logprobs out")
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


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "model"]
    content: Union[str, list[ContentPart]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)  # OpenAI's newer name for max_tokens

    def chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def requested_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: one prompt string (or a list holding one)."""

    prompt: Union[str, list[str]]

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
