"""WordNet's noun hierarchy, read from its data files, and the concept a set of words shares.

A feature whose peak tokens are "ocean", "sea", "lake" and "river" is about bodies of water;
its token label lists the words, WordNet names what they share. This module reads Princeton
WordNet 3.0's own files (``index.noun``, ``data.noun``, ``noun.exc``; the format is WordNet's
``wndb(5WN)`` manual page) with a small parser, no dependency:

- ``index.noun``: ``lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt offset...``
  (a lemma's synsets, most frequent sense first);
- ``data.noun``: ``offset lex_filenum ss_type w_cnt word lex_id ... p_cnt [ptr offset pos st]... | gloss``;
  pointers ``@`` (hypernym) and ``@i`` (instance hypernym) lead up the hierarchy.

Where the files are, first found: ``$SCOPE_WORDNET``, ``/usr/share/wordnet`` (Debian's
``wordnet-base``), ``$SCOPE_CACHE/wordnet``. ``scripts/label_demo_sae.py`` puts Debian's package
there when it is missing (``apt-get download`` + ``dpkg-deb -x``, as ``scripts/build_corpus.py``
reads its corpus; WordNet's licence is BSD-like, in the package's copyright file).

:meth:`WordNet.concept` is the rule: the lowest common hypernym of at least ``min_words`` of
the words and at least ``min_share`` of them (a word counts when one of its first ``senses``
senses is under it), among synsets that are not too generic: at most ``max_below`` synsets
under them and ``min_depth`` steps below ``entity``. "Lowest" is the candidate with the fewest
synsets under it: an ancestor always has more than its descendant. (Depth alone is a poor
measure of how generic a synset is: "body of water" is 3 steps below ``entity``, "organism" 5.)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

MIN_SHARE = 0.6  # of the distinct words, under the concept
MIN_WORDS = 3
MIN_DEPTH = 3  # hypernym steps below "entity": "physical entity", "abstraction" (1), "object" (2) say nothing
MAX_BELOW = 2000  # synsets under a concept: "structure" 1528, "food" 1526 pass; "animal" 4016, "person" 10296 do not
SENSES = 2  # a word's most frequent senses that count (WordNet lists senses by frequency)
MIN_CHARS = 3  # shorter tokens are letters and abbreviations to WordNet ("c": speed of light, "in": indium)
HYPERNYMS = ("@", "@i")
_MORPHY = [
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("s", ""),
]
_WORD = re.compile(r"^[a-z][a-z'-]*$")


def wordnet_dir() -> Path | None:
    """The first folder holding WordNet's noun files, or None."""
    from scope.bundled import cache_root

    candidates = [os.environ.get("SCOPE_WORDNET"), "/usr/share/wordnet", cache_root() / "wordnet"]
    for folder in candidates:
        if folder and (Path(folder) / "data.noun").is_file() and (Path(folder) / "index.noun").is_file():
            return Path(folder)
    return None


@dataclass(frozen=True)
class Concept:
    """A synset that a share of the words fall under."""

    offset: int
    name: str  # the synset's first lemma, underscores as spaces
    depth: int
    words: tuple[str, ...]  # the words under it, in the order given
    share: float  # len(words) / the distinct words considered

    @property
    def text(self) -> str:
        return f"{self.name} ({', '.join(self.words[:4])}{', ...' if len(self.words) > 4 else ''})"


class WordNet:
    """The noun hierarchy of one WordNet folder (read once per folder: :func:`load`)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        self.senses = _read_index(folder / "index.noun")
        self.lemmas, self.hypernyms = _read_data(folder / "data.noun")
        exceptions = folder / "noun.exc"
        self.exceptions = _read_exceptions(exceptions) if exceptions.is_file() else {}
        self._ancestors: dict[int, frozenset[int]] = {}
        self._depths: dict[int, int] = {}
        self.children: dict[int, list[int]] = {}
        for child, parents in self.hypernyms.items():
            for parent in parents:
                self.children.setdefault(parent, []).append(child)
        self._below: dict[int, int] = {}

    def lemma(self, word: str) -> str | None:
        """The WordNet noun lemma of ``word`` (lower-cased; plurals reduced), or None (also for
        words under ``MIN_CHARS``: measured on the demo SAE, single letters and "in", "be", "as"
        made concepts such as "unit of measurement (c, m, r, k)" and "chemical element")."""
        word = word.strip().lower().replace(" ", "_")
        if len(word) < MIN_CHARS or not _WORD.match(word):
            return None
        if word in self.senses:
            return word
        if self.exceptions.get(word) in self.senses:  # noun.exc also lists forms of verbs' lemmas
            return self.exceptions[word]
        for suffix, ending in _MORPHY:
            if word.endswith(suffix) and word[: -len(suffix)] + ending in self.senses:
                return word[: -len(suffix)] + ending
        return None

    def ancestors(self, offset: int) -> frozenset[int]:
        """The synset and every hypernym above it."""
        if offset not in self._ancestors:
            above: set[int] = {offset}
            for parent in self.hypernyms.get(offset, ()):
                above |= self.ancestors(parent)
            self._ancestors[offset] = frozenset(above)
        return self._ancestors[offset]

    def depth(self, offset: int) -> int:
        """Hypernym steps to the root on the shortest path (``entity`` is 0)."""
        if offset not in self._depths:
            parents = self.hypernyms.get(offset, ())
            self._depths[offset] = 1 + min(self.depth(p) for p in parents) if parents else 0
        return self._depths[offset]

    def below(self, offset: int, cap: int = MAX_BELOW) -> int:
        """How many synsets are under ``offset`` (hyponyms, instances, and theirs), counted up to
        ``cap + 1`` (enough to tell a concept too generic)."""
        if offset not in self._below:
            seen: set[int] = set()
            todo = list(self.children.get(offset, ()))
            while todo and len(seen) <= cap:
                synset = todo.pop()
                if synset not in seen:
                    seen.add(synset)
                    todo.extend(self.children.get(synset, ()))
            self._below[offset] = len(seen)
        return self._below[offset]

    def under(self, word: str, senses: int = SENSES) -> frozenset[int]:
        """Every synset above one of ``word``'s first ``senses`` noun senses (empty: not a noun)."""
        lemma = self.lemma(word)
        if lemma is None:
            return frozenset()
        return frozenset().union(*(self.ancestors(s) for s in self.senses[lemma][:senses]))

    def name(self, offset: int) -> str:
        return self.lemmas[offset][0].replace("_", " ")

    def concept(
        self,
        words: Iterable[str],
        *,
        min_share: float = MIN_SHARE,
        min_words: int = MIN_WORDS,
        min_depth: int = MIN_DEPTH,
        max_below: int = MAX_BELOW,
        senses: int = SENSES,
    ) -> Concept | None:
        """The lowest synset (see the module's rule) that ``min_words`` and ``min_share`` of the
        distinct ``words`` (case-folded; non-nouns count against it) fall under; None if none."""
        distinct = list(dict.fromkeys(w.strip().lower() for w in words if w.strip()))
        if not distinct:
            return None
        need = max(min_words, math.ceil(min_share * len(distinct) - 1e-9))
        covering: dict[int, list[str]] = {}
        for word in distinct:
            for synset in self.under(word, senses):
                covering.setdefault(synset, []).append(word)
        eligible = [
            s
            for s, covered in covering.items()
            if len(covered) >= need and self.depth(s) >= min_depth and self.below(s, max_below) <= max_below
        ]
        if not eligible:
            return None
        best = min(eligible, key=lambda s: (self.below(s, max_below), -len(covering[s]), s))
        covered = covering[best]
        return Concept(best, self.name(best), self.depth(best), tuple(covered), len(covered) / len(distinct))

    def matches(self, concept: Concept, word: str, senses: int = SENSES) -> bool:
        """Whether ``word`` falls under ``concept`` (one of its first senses is a hyponym of it)."""
        return concept.offset in self.under(word, senses)


@cache
def load(folder: str | os.PathLike | None = None) -> WordNet | None:
    """The WordNet of ``folder`` (default: :func:`wordnet_dir`), read once; None when there is none."""
    folder = Path(folder) if folder is not None else wordnet_dir()
    if folder is None:
        return None
    if not (folder / "data.noun").is_file() or not (folder / "index.noun").is_file():
        raise FileNotFoundError(f"No WordNet noun files (index.noun, data.noun) in {str(folder)!r}.")
    return WordNet(folder)


def _lines(path: Path) -> Iterable[str]:
    with open(path, encoding="utf-8", errors="replace") as file:
        for line in file:
            if not line.startswith("  "):  # the licence header
                yield line


def _read_index(path: Path) -> dict[str, list[int]]:
    senses = {}
    for line in _lines(path):
        parts = line.split()
        synsets, pointers = int(parts[2]), int(parts[3])
        first = 4 + pointers + 2  # after the pointer symbols, sense_cnt and tagsense_cnt
        senses[parts[0]] = [int(offset) for offset in parts[first : first + synsets]]
    return senses


def _read_data(path: Path) -> tuple[dict[int, list[str]], dict[int, list[int]]]:
    lemmas, hypernyms = {}, {}
    for line in _lines(path):
        parts = line.split(" | ", 1)[0].split()
        offset, n_words = int(parts[0]), int(parts[3], 16)
        lemmas[offset] = [w.lower() for w in parts[4 : 4 + 2 * n_words : 2]]
        at = 4 + 2 * n_words
        pointers = parts[at + 1 : at + 1 + 4 * int(parts[at])]
        parents = [int(pointers[i + 1]) for i in range(0, len(pointers), 4) if pointers[i] in HYPERNYMS]
        if parents:
            hypernyms[offset] = parents
    return lemmas, hypernyms


def _read_exceptions(path: Path) -> dict[str, str]:
    found = {}
    for line in _lines(path):
        parts = line.split()
        if len(parts) >= 2:
            found[parts[0]] = parts[1]
    return found
