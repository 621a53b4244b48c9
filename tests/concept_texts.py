"""Hand-written texts for contrastive feature search: Python with ``if`` statements, and Python
(plus a little prose) without any ``if``. Used by tests/test_search.py and scripts/bench_search.py.

Fifty of each: ten templates per set, each filled with five different names, so the sets differ
in the concept and not in length, style or vocabulary. The negatives carry the other control
flow (for, while, with, try, return), and four of their ten templates are English prose that
uses "if" as a word: the concept is the Python statement, not the word, so the word is
controlled for.
"""

from __future__ import annotations

NAMES = [
    ("data", "value", "limit"),
    ("items", "count", "size"),
    ("rows", "total", "width"),
    ("path", "name", "mode"),
    ("queue", "job", "retries"),
]

_IF = [
    "def check({a}):\n    if {a} is None:\n        return 0\n    return len({a})\n",
    "for {b} in {a}:\n    if {b} > {c}:\n        break\n",
    "    if not {a}:\n        raise ValueError('empty {a}')\n",
    "if {b} == {c}:\n    print('{b} reached {c}')\n",
    "    while True:\n        {b} += 1\n        if {b} >= {c}:\n            return {b}\n",
    "result = []\nfor x in {a}:\n    if x % 2 == 0:\n        result.append(x)\n",
    "def load(self):\n        if self.{a} is not None:\n            return self.{a}\n        self.{a} = {c}\n",
    "if isinstance({a}, str):\n    {a} = [{a}]\n",
    "    if {b} < 0 or {b} > {c}:\n        {b} = 0\n",
    "try:\n    {b} = int({a})\nexcept ValueError:\n    {b} = None\nif {b}:\n    total = {b} * {c}\n",
]

_NO_IF = [
    "def check({a}):\n    {a} = {a} or []\n    return len({a})\n",
    "for {b} in {a}:\n    print({b}, {c})\n",
    "    while {b} < {c}:\n        {b} += 1\n    return {b}\n",
    "result = []\nfor x in {a}:\n    result.append(x * 2)\n",
    "with open('{a}.txt') as handle:\n    {b} = handle.read()\n",
    "try:\n    {b} = int({a})\nexcept ValueError:\n    {b} = None\ntotal = ({b} or 0) * {c}\n",
    "If the {a} is empty, the function returns zero instead of the {b}.",
    "Check the {b} first: if it is larger than the {c}, the loop stops.",
    "The {c} is optional. If you leave it out, every {b} in the {a} is read.",
    "Ask the maintainer if the {a} may change; even if it does, the {b} stays the same.",
]


def _fill(templates: list[str]) -> list[str]:
    return [t.format(a=a, b=b, c=c) for t in templates for a, b, c in NAMES]


IF_STATEMENTS = _fill(_IF)
NO_IF = _fill(_NO_IF)
assert len(IF_STATEMENTS) == len(NO_IF) == 50
assert not any("if " in text for text in NO_IF[:30])
