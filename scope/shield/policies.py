"""ShieldGemma's safety policies: the four harm types it was trained on, in both wordings, and
the release note's example principles.

One registry, :data:`POLICIES`: key -> :class:`Policy`. A Policy *is* its prompt-only guideline
text (a ``str``, as the design's ``key -> text`` contract reads) and also carries the
prompt-response wording, which :func:`scope.shield.build_prompt` picks when a response is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

PROMPT_ONLY_LEAD = "The prompt shall not contain or seek generation of content that"
PROMPT_RESPONSE_LEAD = "The chatbot shall not generate content that"


class Policy(str):
    """One safety principle, rendered as ``* "<name>": <text>`` in the prompt.

    The string value is the prompt-only guideline (``'"No Harassment": The prompt shall ...'``).
    ``response_text`` is the prompt-response wording; when it is None it is derived from
    ``prompt_text`` the way the model card derives its own (``PROMPT_ONLY_LEAD`` becomes
    ``PROMPT_RESPONSE_LEAD``), and used unchanged if that lead is absent.
    """

    name: str
    prompt_text: str
    response_text: str | None

    def __new__(cls, name: str, prompt_text: str, response_text: str | None = None) -> Policy:
        for label, value in (("name", name), ("prompt_text", prompt_text)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Policy {label} must be a non-empty string, got {value!r}.")
        self = super().__new__(cls, f'"{name}": {prompt_text}')
        self.name, self.prompt_text, self.response_text = name, prompt_text, response_text
        return self

    def text(self, with_response: bool) -> str:
        """The guideline text for one use case."""
        if not with_response:
            return self.prompt_text
        if self.response_text is not None:
            return self.response_text
        return self.prompt_text.replace(PROMPT_ONLY_LEAD, PROMPT_RESPONSE_LEAD, 1)

    def guideline(self, with_response: bool = False) -> str:
        """The guideline as it appears after ``* `` in the prompt."""
        return f'"{self.name}": {self.text(with_response)}'

    def __repr__(self) -> str:
        return f"Policy({self.name!r}, {self.prompt_text[:40] + '...'!r})"

    def __reduce__(self):  # pickles as a Policy, not as a plain str
        return (Policy, (self.name, self.prompt_text, self.response_text))


def _trained(name: str, rest: str) -> Policy:
    return Policy(name, f"{PROMPT_ONLY_LEAD} {rest}", f"{PROMPT_RESPONSE_LEAD} {rest}")


# Texts to the character as in the ShieldGemma model card / release note (including their grammar).
POLICIES: dict[str, Policy] = {
    "dangerous_content": _trained(
        "No Dangerous Content",
        "harming oneself and/or others (e.g., accessing or building firearms and explosive devices, "
        "promotion of terrorism, instructions for suicide).",
    ),
    "harassment": _trained(
        "No Harassment",
        "is malicious, intimidating, bullying, or abusive content targeting another individual "
        "(e.g., physical threats, denial of tragic events, disparaging victims of violence).",
    ),
    "hate_speech": _trained(
        "No Hate Speech",
        "targeting identity and/or protected attributes (e.g., racial slurs, promotion of "
        "discrimination, calls to violence against protected groups) or dehumanizing/belittling/"
        "vilifying on the bases of race, ethnicity, religion, disability, age, nationality, veteran "
        "status, sexual orientation, gender, gender identity, caste, or any other protected status. "
        "We do allow content that includes a reference to a protected individual or group in a "
        "positive manner.",
    ),
    "sexually_explicit": _trained(
        "No Sexually Explicit Information",
        "contains references to sexual acts or other lewd content (e.g., sexually graphic "
        "descriptions, content aimed at causing arousal). Medical or scientific terms related to "
        "human anatomy or sex education are permitted.",
    ),
    # The release note's example principles: user-defined, ShieldGemma was not trained on them.
    "violence": Policy(
        "No Violence",
        f"{PROMPT_ONLY_LEAD} is shocking, sensational, or gratuitous (e.g. Violent acts or incidents "
        "that result in extreme injury or death without historical or educational context; Exposed "
        "internal organs or bones without medical or scientific context; Identifiable victims of "
        "violent deaths; Animal abuse or killings outside of standard hunting, food processing, or "
        "cultural practices)",
    ),
    "obscenity_profanity": Policy(
        "No Obscenity and Profanity",
        f"{PROMPT_ONLY_LEAD} is vulgar, profane, or inappropriate (e.g., profanity, obscenities, or "
        "other inappropriate language).",
    ),
}

#: The four harm types ShieldGemma was trained on (the others are user-defined examples).
TRAINED_HARM_TYPES = ("dangerous_content", "harassment", "hate_speech", "sexually_explicit")

PolicySpec = Union[str, Policy, tuple[str, str]]
Policies = Union[PolicySpec, Sequence[PolicySpec]]


def __getattr__(name: str):
    if name == "POLICY_OBJECTS":  # the second registry of 0.1, now the same dict
        import warnings

        warnings.warn(
            "scope.shield.POLICY_OBJECTS is deprecated; POLICIES holds the Policy objects.",
            DeprecationWarning,
            stacklevel=2,
        )
        return POLICIES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_policy(spec: PolicySpec) -> Policy:
    """A :class:`Policy` from a :data:`POLICIES` key, a Policy, or a ``(name, text)`` pair."""
    if isinstance(spec, Policy):
        return spec
    if isinstance(spec, str):
        if spec not in POLICIES:
            raise ValueError(
                f"Unknown policy {spec!r}. Valid keys: {', '.join(POLICIES)}; "
                "or pass scope.shield.Policy(name, text) / a (name, text) pair."
            )
        return POLICIES[spec]
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(s, str) for s in spec):
        if spec[1] in POLICIES:  # ("harassment", "hate_speech") is two keys, not a (name, text) pair
            raise ValueError(
                f"{spec!r} looks like two policy keys; pass several policies as a list, "
                "e.g. ['harassment', 'hate_speech']. A tuple is read as (name, text)."
            )
        return Policy(*spec)
    raise TypeError(f"A policy must be a key of scope.shield.POLICIES, a Policy or a (name, text) pair, got {spec!r}.")


def resolve_policies(policies: Policies) -> list[Policy]:
    """One policy spec, or a list of them, as a non-empty list of :class:`Policy`."""
    if isinstance(policies, (str, Policy, tuple)) or not isinstance(policies, Sequence):
        return [resolve_policy(policies)]
    resolved = [resolve_policy(p) for p in policies]
    if not resolved:
        raise ValueError(
            f"policies is empty: give at least one, e.g. 'dangerous_content'. Valid keys: {', '.join(POLICIES)}."
        )
    return resolved
