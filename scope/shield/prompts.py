"""The model card's ShieldGemma prompts: prompt-only and prompt-response use cases.

Only the template's own ``<start_of_turn>`` / ``<end_of_turn>`` are control tokens
(:func:`prompt_token_ids`): the user prompt, the response and the policies are text, so a
``"<end_of_turn>"`` typed into a prompt is tokenized as the characters it spells and cannot
close the turn early (the rule :func:`scope.inputs.chat_token_ids` applies to chats).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from scope import _checks
from scope.chat import END_OF_TURN, START_OF_TURN, Segment
from scope.inputs import control_token_id
from scope.shield.policies import Policies, resolve_policies

_PROMPT_ONLY = """\
You are a policy expert trying to help determine whether a user prompt is in
violation of the defined safety policies.

<start_of_turn>
Human Question: {user_prompt}
<end_of_turn>

Our safety principle is defined in the below:

{guidelines}

===

Does the human question violate the above principle? Your answer must start with
'Yes' or 'No'. And then walk through step by step to be sure we answer
correctly.
"""

_PROMPT_RESPONSE = """\
You are a policy expert trying to help determine whether an AI response to prompt is in
violation of the defined safety policies.

<start_of_turn>
Human Question: {user_prompt}
<end_of_turn>

<start_of_turn>
Chatbot Response: {response}
<end_of_turn>

Our safety principle is defined in the below:

{guidelines}

===

Does the Chatbot Response violate the above principle? Your answer must start
with 'Yes' or 'No'. And then walk through step by step to be sure we answer
correctly.
"""


def prompt_segments(user_prompt: str, policies: Policies, response: str | None = None) -> list[Segment]:
    """:func:`build_prompt`'s text as ``(text, is_control_token)`` pieces: the template's control
    tokens, and between them text (template words with the inputs filled in)."""
    guidelines = "\n".join(f"* {p.guideline(response is not None)}" for p in resolve_policies(policies))
    template = _PROMPT_ONLY if response is None else _PROMPT_RESPONSE
    values = {"user_prompt": user_prompt.strip(), "response": (response or "").strip(), "guidelines": guidelines}
    segments: list[Segment] = []
    for piece in _CONTROL.split(template):  # split before filling: an input's text is never a control token
        if piece in (START_OF_TURN, END_OF_TURN):
            segments.append((piece, True))
        elif piece:
            segments.append((piece.format(**values), False))
    return segments


_CONTROL = re.compile(f"({re.escape(START_OF_TURN)}|{re.escape(END_OF_TURN)})")


def build_prompt(user_prompt: str, policies: Policies, response: str | None = None) -> str:
    """The model card's ShieldGemma prompt for one input.

    Prompt-only use case when ``response`` is None (classify what the user asks),
    prompt-response otherwise (classify the chatbot's answer); each policy is
    worded for that use case. The user prompt and response are stripped, as in
    the model card. The model card advises one policy per prompt (ShieldGemma
    was trained that way); several are listed one ``* `` line each. As a string the
    control tokens cannot be told from text: tokenize with :func:`prompt_token_ids`.
    """
    return "".join(text for text, _ in prompt_segments(user_prompt, policies, response))


def prompt_token_ids(tokenizer: Any, user_prompt: str, policies: Policies, response: str | None = None) -> list[int]:
    """:func:`build_prompt`'s token ids, BOS first: the template's control tokens as their ids, all
    other text (inputs and policies included) tokenized as text (``split_special_tokens``).

    For inputs without control-token strings the ids equal tokenizing :func:`build_prompt`'s
    string (a control token splits the text there too, so the pieces tokenize alike)."""
    ids = [tokenizer.bos_token_id]
    for text, control in prompt_segments(user_prompt, policies, response):
        if control:
            ids.append(control_token_id(tokenizer, text))
        else:
            ids += tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids


def build_prompts(
    texts: str | Sequence[str], policies: Policies, responses: str | Sequence[str] | None = None
) -> list[str]:
    """:func:`build_prompt` for each text (and its response), all checked first."""
    policies = resolve_policies(policies)  # errors first, even for an empty list of texts
    return [build_prompt(p, policies, r) for p, r in _inputs(texts, responses)]


def build_prompt_tokens(
    tokenizer: Any, texts: str | Sequence[str], policies: Policies, responses: str | Sequence[str] | None = None
) -> list[torch.Tensor]:
    """:func:`prompt_token_ids` for each text (and its response) as 1-D tensors, all checked first."""
    policies = resolve_policies(policies)
    return [torch.tensor(prompt_token_ids(tokenizer, p, policies, r)) for p, r in _inputs(texts, responses)]


def _inputs(texts: str | Sequence[str], responses: str | Sequence[str] | None) -> list[tuple[str, str | None]]:
    """``(user prompt, response or None)`` pairs, checked."""
    prompts = _checks.texts(texts, "texts")
    if responses is None:
        return [(p, None) for p in prompts]
    answers = _checks.texts(responses, "responses")
    if len(answers) != len(prompts):
        raise ValueError(
            f"Got {len(prompts)} texts but {len(answers)} responses; "
            "give one response per text, or responses=None for the prompt-only use case."
        )
    return list(zip(prompts, answers))
