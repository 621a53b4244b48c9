"""Miniature WordNets written in WordNet's own file format (wndb(5WN)), for fast tests."""

from __future__ import annotations

from pathlib import Path

HEADER = "  1 This is a miniature WordNet written by a test, in WordNet 3.0's format.\n"


def write_wordnet(
    folder: Path, synsets: dict[int, tuple[list[str], list[int], str]], exceptions: dict[str, str] | None = None
) -> Path:
    """``synsets``: offset -> (lemmas, hypernym offsets, "@" or "@i"). Writes index.noun,
    data.noun and noun.exc; a lemma's senses are listed in offset order."""
    folder.mkdir(parents=True, exist_ok=True)
    data, senses = [HEADER], {}
    for offset, (lemmas, parents, symbol) in sorted(synsets.items()):
        words = " ".join(f"{lemma} 0" for lemma in lemmas)
        pointers = " ".join(f"{symbol} {parent:08d} n 0000" for parent in parents)
        data.append(f"{offset:08d} 03 n {len(lemmas):02x} {words} {len(parents):03d} {pointers} | a test synset\n")
        for lemma in lemmas:
            senses.setdefault(lemma.lower(), []).append(offset)
    index = [HEADER] + [
        f"{lemma} n {len(offsets)} 1 @ {len(offsets)} 0 {' '.join(f'{o:08d}' for o in offsets)}\n"
        for lemma, offsets in sorted(senses.items())
    ]
    (folder / "data.noun").write_text("".join(data))
    (folder / "index.noun").write_text("".join(index))
    (folder / "noun.exc").write_text("".join(f"{a} {b}\n" for a, b in sorted((exceptions or {}).items())))
    return folder


# entity -> physical entity -> object -> animal -> canine / feline; object -> location -> city / country;
# entity -> abstraction -> communication -> utterance (capital, knock, lamda: the tiny tokenizer's whole words)
MINI = {
    100: (["entity"], [], "@"),
    101: (["physical_entity"], [100], "@"),
    102: (["object"], [101], "@"),
    103: (["animal"], [102], "@"),
    104: (["canine"], [103], "@"),
    105: (["feline"], [103], "@"),
    106: (["location"], [102], "@"),
    107: (["city"], [106], "@"),
    108: (["country"], [106], "@"),
    110: (["abstraction"], [100], "@"),
    111: (["communication"], [110], "@"),
    112: (["utterance"], [111], "@"),
    201: (["dog"], [104], "@"),
    202: (["fox"], [104], "@"),
    203: (["wolf"], [104], "@"),
    204: (["cat"], [105], "@"),
    205: (["Paris"], [107], "@i"),
    206: (["Rome"], [107], "@i"),
    207: (["France"], [108], "@i"),
    208: (["Italy"], [108], "@i"),
    209: (["bridge"], [102], "@"),
    210: (["dog", "frump"], [112], "@"),  # dog's second sense, under another branch
    211: (["capital"], [112], "@"),
    212: (["knock"], [112], "@"),
    213: (["LaMDA"], [112], "@"),
    214: (["dog", "andiron"], [209], "@"),  # dog's third sense: beyond the two senses that count
    215: (["ox"], [103], "@"),  # too short to count
}
EXCEPTIONS = {"wolves": "wolf", "is": "i"}  # "i" is no noun of this WordNet
