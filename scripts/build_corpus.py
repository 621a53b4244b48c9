"""Build the offline, licence-clean text corpus for the demo SAE (issue: demo SAE).

Nothing here downloads a dataset: the text comes from Debian packages (fetched with
``apt-get download`` through the machine's package mirror, never installed) whose licences
are free (DFSG) and recorded per source:

| package               | what                                          | language        |
|-----------------------|-----------------------------------------------|-----------------|
| python3.11-doc        | the Python documentation (reST sources)       | English prose + code |
| perl-doc              | the Perl documentation (POD, via pod2text)    | English prose + code |
| manpages              | Linux man pages (via groff)                   | English         |
| manpages-de/-fr/-es   | translated man pages (via groff)              | German, French, Spanish |
| libpython3.11-stdlib  | the Python standard library sources           | code            |

That is the documentation corpus (``--corpus docs``, the default). ``--corpus english`` builds the
general-English corpus beside it (issue: demo SAEs that read general English), from packages
whose text is prose a reader meets outside software manuals:

| package               | what                                                   | register |
|-----------------------|--------------------------------------------------------|----------|
| r-cran-janeaustenr    | Jane Austen's six novels (public domain), by chapter   | narrative, dialogue |
| r-cran-tokenizers     | Melville's Moby-Dick (Project Gutenberg, public domain), by chapter | narrative |
| dict-gcide            | the Collaborative International Dictionary of English  | definitional, citations |
| wordnet-base          | WordNet 3.0 glosses with their example sentences       | definitional |
| dict-devil            | Ambrose Bierce, The Devil's Dictionary (1911)           | satirical prose |
| fortunes              | the fortune-mod quotations, jokes and dialogues        | quotations, dialogue |
| debian-reference-en   | the Debian Reference (HTML, English)                   | instructions |
| debian-handbook       | The Debian Administrator's Handbook (HTML, en-US)      | instructions, explanation |

News-like text is the one register Debian does not ship under a clean licence; it is missing.

``--corpus modern`` builds modern English (written this century, for today's readers) from manuals,
handbooks and help systems: GNOME Help, LibreOffice Help (capped), the Debian installation guide,
Securing Debian, the New Maintainers' Guide, the Developer's Reference and the Policy Manual. Two
more sources are **evaluation-only**, one per genre, held out whole (``eval.jsonl``; never in
train or heldout): the Debian FAQ (instructions) and A Brief History of Debian (a chronicle).
R data sets are read with the ``rdata`` package (``pip install -e ".[corpus]"``; only this script needs it).

Each file is one document, except where a file holds many (novels are cut into chapters,
dictionaries and quotation files into runs of entries of a few thousand characters). Documents are
de-duplicated (normalised text), then split into train / held-out by a hash of the document id
(about 1 in 20 held out), so a document never straddles the split. Token counts use the bundled
model's tokenizer.

    python scripts/build_corpus.py                    # docs corpus -> $SCOPE_CACHE/corpus, sample -> data/
    python scripts/build_corpus.py --corpus english   # -> $SCOPE_CACHE/corpus-english, data/corpus_sample/english
    python scripts/build_corpus.py --corpus modern    # -> $SCOPE_CACHE/corpus-modern, data/corpus_sample/modern
    python scripts/build_corpus.py --out corpus       # elsewhere

Writes ``train.jsonl`` and ``heldout.jsonl``, and ``eval.jsonl`` when a source is evaluation-only
(one ``{"id", "source", "lang", "kind", "text"}`` per line) and ``manifest.json`` (sources,
versions, licences, documents, tokens), atomically; and the small sample in ``data/corpus_sample/``
(a few MB) that tests and notebooks use.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO / "data" / "corpus_sample"
HELDOUT_ONE_IN = 20
SAMPLE_CHARS = {"train": 2_000_000, "heldout": 1_000_000}
ENGLISH_SAMPLE_CHARS = {"train": 800_000, "heldout": 700_000}
MODERN_SAMPLE_CHARS = {"train": 200_000, "heldout": 80_000, "eval": 150_000}
ENTRY_RUN_CHARS = 4_000  # dictionaries and quotation files are cut into documents of about this size
SAMPLE_DOC_CHARS = 6_000  # long documents are cut in the sample (never in the full corpus)
MIN_CHARS = 200


@dataclass(frozen=True)
class Source:
    package: str
    lang: str
    kind: str  # "prose", "code", "man"
    pattern: str  # glob inside the unpacked package
    reader: str  # "text", "pod", "man", "html", "dictd", "wordnet", "fortune", "rdata-novels", "rdata-gutenberg"
    licence: str  # the licence of the text taken, from the package's Debian copyright file
    max_tokens: int | None = None  # keeps the mix mostly English
    evaluation_only: bool = False  # the whole source is an evaluation set: never in train or heldout
    exclude: str | None = None  # regex on the path inside the package: files not taken (licence appendices)


SOURCES = [
    Source(
        "python3.11-doc",
        "en",
        "prose",
        "usr/share/doc/python3.11/html/_sources/**/*.rst.txt",
        "text",
        "PSF-2.0 (Python Software Foundation License; documentation examples 0BSD)",
    ),
    Source("perl-doc", "en", "prose", "usr/share/perl/*/pod/*.pod", "pod", "GPL-1+ or Artistic (Perl's licence)"),
    Source(
        "manpages",
        "en",
        "man",
        "usr/share/man/man*/*.gz",
        "man",
        "Linux man-pages licences (verbatim copyleft, GPL-2+, BSD, Expat; per page)",
    ),
    Source("manpages-de", "de", "man", "usr/share/man/de/man*/*.gz", "man", "GPL-3+ (translations)", 600_000),
    Source("manpages-fr", "fr", "man", "usr/share/man/fr/man*/*.gz", "man", "GPL-3+ (translations)", 500_000),
    Source("manpages-es", "es", "man", "usr/share/man/es/man*/*.gz", "man", "GPL-3+ (translations)", 400_000),
    Source(
        "libpython3.11-stdlib",
        "code",
        "code",
        "usr/lib/python3.11/**/*.py",
        "text",
        "PSF-2.0 (Python Software Foundation License)",
    ),
]

ENGLISH_SOURCES = [
    Source(
        "r-cran-janeaustenr",
        "en",
        "narrative",
        "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb",
        "rdata-novels",
        "public domain (Jane Austen, 1811-1818); package MIT",
    ),
    Source(
        "r-cran-tokenizers",
        "en",
        "narrative",
        "usr/lib/R/site-library/tokenizers/data/Rdata.rdb",
        "rdata-gutenberg",
        "public domain (Herman Melville, 1851, via Project Gutenberg; header and licence footer removed); package MIT",
    ),
    Source(
        "dict-gcide",
        "en",
        "definitional",
        "usr/share/dictd/gcide.dict.dz",
        "dictd",
        "GPL-3+ (GCIDE)",
        1_500_000,
    ),
    Source(
        "wordnet-base",
        "en",
        "definitional",
        "usr/share/wordnet/data.*",
        "wordnet",
        "WordNet 3.0 licence (permissive, BSD-like)",
        600_000,
    ),
    Source("dict-devil", "en", "satire", "usr/share/dictd/devil.dict.dz", "dictd", "public domain (Bierce, 1911)"),
    Source(
        "fortunes",
        "en",
        "quotations",
        "usr/share/games/fortunes/*",
        "fortune",
        "public domain and BSD (fortune-mod; per file)",
    ),
    Source(
        "debian-reference-en",
        "en",
        "instructions",
        "usr/share/debian-reference/*.en.html",
        "html",
        "GPL-2+",
    ),
    Source(
        "debian-handbook",
        "en",
        "instructions",
        "usr/share/doc/debian-handbook/html/en-US/*.html",
        "html",
        "GPL-2.0+ or CC-BY-SA-3.0",
    ),
]

MODERN_SOURCES = [
    Source(
        "gnome-user-docs",
        "en",
        "instructions",
        "usr/share/help/C/*/*.page",
        "mallard",
        "CC-BY-SA-3.0 (GNOME Help and System Administration Guide)",
    ),
    Source(
        "libreoffice-help-en-us",
        "en",
        "instructions",
        "usr/share/libreoffice/help/en-US/text/**/*.html",
        "html-page",
        "MPL-2.0 (LibreOffice Help)",
        1_200_000,
    ),
    Source(
        "installation-guide-amd64",
        "en",
        "instructions",
        "usr/share/doc/installation-guide-amd64/en/*.html",
        "html",
        "GPL-2",
        exclude=r"/apf\.html$",  # the GPL's own text
    ),
    Source(
        "harden-doc",
        "en",
        "instructions",
        "usr/share/doc/harden-doc/html/en-US/*.html",
        "html",
        "GPL-2.0 (Securing Debian Manual)",
    ),
    Source(
        "maint-guide",
        "en",
        "instructions",
        "usr/share/doc/maint-guide/html/*.en.html",
        "html",
        "GPL-2.0+ or MIT (Debian New Maintainers' Guide)",
    ),
    Source(
        "developers-reference",
        "en",
        "reference",
        "usr/share/developers-reference/_sources/*.rst.txt",
        "text",
        "GPL-2 (Debian Developer's Reference)",
    ),
    Source(
        "debian-policy",
        "en",
        "reference",
        "usr/share/doc/debian-policy/policy.html/*.html",
        "html",
        "GPL-2+ (Debian Policy Manual)",
        exclude=r"/(genindex|search|index|ap-license)\.html$",
    ),
    # Evaluation only, one whole source per genre: text of a genre the SAE trains on, from a source it
    # never sees (the FAQ's instructions; a chronicle of people, places and dates).
    Source(
        "debian-faq",
        "en",
        "instructions",
        "usr/share/doc/debian/FAQ/*.en.html",
        "html",
        "verbatim copying and modified versions permitted (SPI, Debian FAQ)",
        evaluation_only=True,
        exclude=r"/index\.en\.html$",
    ),
    Source(
        "debian-history",
        "en",
        "history",
        "usr/share/doc/debian-history/docs/project-history.en.txt.gz",
        "gztext",
        "GPL-2+ (A Brief History of Debian)",
        evaluation_only=True,
    ),
]

CORPORA = {"docs": SOURCES, "english": ENGLISH_SOURCES, "modern": MODERN_SOURCES}


# ----------------------------------------------------------------------------- fetching


def fetch_package(package: str, debs: Path) -> Path:
    """The package's .deb in ``debs`` (downloaded once with apt-get, not installed)."""
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        result = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if result.returncode != 0 or not found:
            raise RuntimeError(
                f"apt-get download {package} failed (run `apt-get update` first?): {result.stderr.strip()[-400:]}"
            )
    return found[-1]


def unpack(deb: Path, into: Path) -> Path:
    target = into / deb.stem
    if not target.exists():
        staging = Path(tempfile.mkdtemp(dir=into))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True)
        os.replace(staging, target)
    return target


def licences(root: Path, package: str) -> list[str]:
    """The distinct ``License:`` fields of the package's Debian copyright file."""
    copyright_file = root / "usr" / "share" / "doc" / package / "copyright"
    if not copyright_file.exists():
        return ["see the package's copyright file"]
    fields = re.findall(r"^License: *(.+)$", copyright_file.read_text(errors="replace"), flags=re.M)
    return [name for name, _ in Counter(f.strip() for f in fields if len(f) < 60).most_common(6)]


# ----------------------------------------------------------------------------- reading


def read_documents(path: Path, reader: str) -> list[tuple[str, str]]:
    """The documents in one file: ``(suffix of the document id, text)``; suffix "" for a whole file."""
    if reader == "text":
        return [("", path.read_text(encoding="utf-8", errors="replace"))]
    if reader == "pod":
        return [("", _run(["pod2text", "-w", "100", str(path)]))]
    if reader == "man":
        return [("", _render_man(path))]
    if reader == "html":
        return [("", _html_text(path.read_text(encoding="utf-8", errors="replace")))]
    if reader == "html-page":
        return [("", _html_text(path.read_text(encoding="utf-8", errors="replace"), _TextOfPage()))]
    if reader == "mallard":
        return [("", _mallard_text(path.read_text(encoding="utf-8", errors="replace")))]
    if reader == "gztext":
        return [("", gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace"))]
    if reader == "dictd":
        return _runs(_dictd_entries(gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")))
    if reader == "wordnet":
        return _runs(_wordnet_glosses(path))
    if reader == "fortune":
        if path.suffix or path.name == "ascii-art":  # .dat indexes, .u8 copies, pictures
            return []
        text = path.read_text(encoding="utf-8", errors="replace")
        return _runs([f.strip() for f in re.split(r"^%$", text, flags=re.M) if f.strip()])
    if reader == "rdata-novels":
        return [item for name, lines in _rdata(path).items() for item in _chapters(name, "\n".join(lines))]
    if reader == "rdata-gutenberg":
        return [item for name, (text,) in _rdata(path).items() for item in _chapters(name, _strip_gutenberg(text))]
    raise ValueError(reader)


def _runs(entries: list[str]) -> list[tuple[str, str]]:
    """Consecutive entries joined into documents of about ENTRY_RUN_CHARS, numbered in file order."""
    documents, run, size = [], [], 0
    for entry in entries:
        run.append(entry)
        size += len(entry)
        if size >= ENTRY_RUN_CHARS:
            documents.append("\n\n".join(run))
            run, size = [], 0
    if run:
        documents.append("\n\n".join(run))
    return [(f"#{i}", text) for i, text in enumerate(documents)]


def _dictd_entries(text: str) -> list[str]:
    """The entries of a dictd database: blank-line separated blocks, the ``00-database`` header dropped,
    GCIDE's pronunciation markup (``\\Ab*do"men\\``) and source tags (``[1913 Webster]``) removed."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text)]
    entries = []
    for block in blocks:
        if not block or block.startswith("00-database") or block.startswith("00database"):
            continue
        block = re.sub(r"\\[^\\\n]{1,60}\\", "", block)
        block = re.sub(r"^\s*\[[^\]\n]*(Webster|WordNet|PJC|Century)[^\]\n]*\]\s*$", "", block, flags=re.M)
        block = re.sub(r"[ \t]+", " ", block).strip()
        if len(block) > 10:  # drops stray markup lines
            entries.append(block)
    return entries[8:] if entries and "GNU version" in "".join(entries[:8]) else entries


def _wordnet_glosses(path: Path) -> list[str]:
    """One line per synset: its words, part of speech and gloss (definition; "examples")."""
    pos = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}.get(path.name.split(".")[-1])
    if pos is None:
        return []
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("  ") or " | " not in line:
            continue  # the licence header
        fields, gloss = line.split(" | ", 1)
        parts = fields.split()
        words = [parts[4 + 2 * i].replace("_", " ") for i in range(int(parts[3], 16))]
        lines.append(f"{', '.join(words)} ({pos}): {gloss.strip()}")
    return lines


def _rdata(path: Path) -> dict:
    """The objects of an R package's lazy-load data base (``Rdata.rdx`` index + ``Rdata.rdb``)."""
    import zlib

    import rdata

    index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(path.with_suffix(".rdx").read_bytes())))
    blob = path.read_bytes()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        raw = zlib.decompress(blob[int(offset) + 4 : int(offset) + int(length)])  # 4 bytes: the length
        objects[str(name)] = [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(raw))]
    return objects


def _strip_gutenberg(text: str) -> str:
    """The book alone: Project Gutenberg's header and licence footer removed."""
    text = text.replace("\r\n", "\n").lstrip("\ufeff")
    start = re.search(r"^\*\*\* ?START OF.*$", text, flags=re.M)
    end = re.search(r"^\*\*\* ?END OF.*$", text, flags=re.M) or re.search(
        r"^End of (the )?Project Gutenberg", text, flags=re.M
    )
    return text[start.end() if start else 0 : end.start() if end else len(text)]


def _chapters(book: str, text: str) -> list[tuple[str, str]]:
    """A novel cut at its chapter headings (``CHAPTER 12``, ``Chapter XII``, ``CHAPTER 1. Loomings.``)."""
    parts = re.split(r"\n(?=(?:CHAPTER|Chapter) [0-9IVXLC]+\b)", text)
    return [(f"{book}#{i}", re.sub(r"\n{3,}", "\n\n", part).strip()) for i, part in enumerate(parts)]


class _TextOfHtml(html.parser.HTMLParser):
    SKIPPED = {"script", "style", "head", "nav"}
    BLOCKS = {"p", "div", "li", "pre", "h1", "h2", "h3", "h4", "h5", "tr", "br", "dt", "dd", "table", "section"}

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        self.skipping += tag in self.SKIPPED
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self.skipping -= tag in self.SKIPPED and self.skipping > 0
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


class _TextOfPage(_TextOfHtml):
    """A help page's own text: also without its site header, side panels (the index of every page)
    and footer."""

    SKIPPED = _TextOfHtml.SKIPPED | {"header", "aside", "footer"}


def _html_text(source: str, parser: _TextOfHtml | None = None) -> str:
    parser = parser or _TextOfHtml()
    parser.feed(source)
    text = "".join(parser.parts)
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n(\s*\n)+", "\n\n", text).strip()


class _TextOfMallard(_TextOfHtml):
    """GNOME's Mallard pages: the page's own text, without its metadata (credits, links, licence
    include) or the authors' review comments."""

    SKIPPED = {"info", "comment", "media", "links"}
    BLOCKS = {"p", "title", "item", "steps", "note", "section", "td", "tr", "terms", "code", "screen", "list"}

    def handle_data(self, data):
        super().handle_data(re.sub(r"\s+", " ", data))  # the source's hard wraps inside a paragraph


def _mallard_text(source: str) -> str:
    parser = _TextOfMallard()
    parser.feed(source)
    text = re.sub(r" *\n *", "\n", re.sub(r" +", " ", "".join(parser.parts)))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _run(command: list[str], stdin: bytes | None = None) -> str:
    result = subprocess.run(command, input=stdin, capture_output=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
    return result.stdout.decode("utf-8", errors="replace") if result.returncode == 0 else ""


def _render_man(path: Path) -> str:
    source = gzip.decompress(path.read_bytes())
    if source.lstrip().startswith(b".so "):  # an alias of another page: nothing of its own
        return ""
    text = _run(["groff", "-k", "-man", "-Tutf8", "-P-cbou", "-rLL=100n"], stdin=source)
    return re.sub(r"\n{3,}", "\n\n", text)


def normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def is_heldout(doc_id: str) -> bool:
    return int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % HELDOUT_ONE_IN == 0


def split_documents(documents: list[dict], sources: list[Source]) -> dict[str, list[dict]]:
    """``train`` / ``heldout`` by document hash within the training sources; ``eval`` (only when a
    source is evaluation-only) holds every document of the evaluation-only sources, so no source
    has documents both in an evaluation set and in training."""
    evaluation = {s.package for s in sources if s.evaluation_only}
    trained = [d for d in documents if d["source"] not in evaluation]
    splits = {
        "heldout": [d for d in trained if is_heldout(d["id"])],
        "train": [d for d in trained if not is_heldout(d["id"])],
    }
    if evaluation:
        splits["eval"] = [d for d in documents if d["source"] in evaluation]
    return splits


# ----------------------------------------------------------------------------- building


def source_paths(root: Path, source: Source) -> list[Path]:
    """The files of an unpacked package that ``source`` reads, in sorted order."""
    return sorted(
        p
        for p in root.glob(source.pattern)
        if p.is_file() and not (source.exclude and re.search(source.exclude, "/" + str(p.relative_to(root))))
    )


def collect(work: Path, sources: list[Source]) -> tuple[list[dict], list[dict]]:
    """All documents (deduplicated) and one manifest entry per source."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    documents, entries, seen = [], [], set()
    for source in tqdm(sources, desc="Sources"):
        deb = fetch_package(source.package, debs)
        root = unpack(deb, debs)
        paths = source_paths(root, source)
        kept = duplicates = 0
        for path in tqdm(paths, desc=source.package, leave=False):
            for suffix, text in read_documents(path, source.reader):
                text = text.strip()
                if len(text) < MIN_CHARS:
                    continue
                key = hashlib.sha1(normalised(text).encode()).hexdigest()
                if key in seen:
                    duplicates += 1
                    continue
                seen.add(key)
                doc_id = f"{source.package}:{path.relative_to(root)}{suffix}"
                documents.append(
                    {"id": doc_id, "source": source.package, "lang": source.lang, "kind": source.kind, "text": text}
                )
                kept += 1
        entries.append(
            {
                "package": source.package,
                "version": urllib.parse.unquote(deb.stem.split("_")[1]),
                "deb": deb.name,
                "licence": source.licence,
                "copyright_licences": licences(root, source.package),
                "lang": source.lang,
                "kind": source.kind,
                "documents": kept,
                "duplicates_dropped": duplicates,
            }
        )
    return documents, entries


def count_tokens(documents: list[dict]) -> None:
    from transformers import AutoTokenizer

    from scope.bundled import ensure_bundled_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(str(ensure_bundled_checkpoint()))
    batch = 64
    for start in tqdm(range(0, len(documents), batch), desc="Counting tokens"):
        chunk = documents[start : start + batch]
        encoded = tokenizer([d["text"] for d in chunk], add_special_tokens=False)["input_ids"]
        for doc, ids in zip(chunk, encoded):
            doc["tokens"] = len(ids)


def apply_budgets(documents: list[dict], entries: list[dict], sources: list[Source]) -> list[dict]:
    """Drop documents of capped sources (in hash order) beyond their token budget."""
    budgets = {s.package: s.max_tokens for s in sources if s.max_tokens}
    used: Counter = Counter()
    kept = []
    for doc in sorted(documents, key=lambda d: hashlib.sha1(d["id"].encode()).hexdigest()):
        budget = budgets.get(doc["source"])
        if budget is not None and used[doc["source"]] >= budget:
            continue
        used[doc["source"]] += doc["tokens"]
        kept.append(doc)
    for entry in entries:
        entry["documents_over_budget"] = entry["documents"] - sum(1 for d in kept if d["source"] == entry["package"])
    return kept


def write_jsonl(path: Path, documents: list[dict]) -> None:
    """Atomic: written beside the target, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        for doc in documents:
            out.write(
                json.dumps({k: doc[k] for k in ("id", "source", "lang", "kind", "text")}, ensure_ascii=False) + "\n"
            )
    os.replace(temporary, path)


def write_json(path: Path, value) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(value, out, indent=2, ensure_ascii=False)
        out.write("\n")
    os.replace(temporary, path)


def sample(documents: list[dict], budget: int) -> list[dict]:
    """A deterministic sample of about ``budget`` characters, each source in its corpus share."""
    by_source: dict[str, list[dict]] = {}
    for doc in sorted(documents, key=lambda d: hashlib.sha1(d["id"].encode()).hexdigest()):
        by_source.setdefault(doc["source"], []).append(doc)
    total = sum(len(d["text"]) for d in documents)
    chosen = []
    for docs in by_source.values():
        share = budget * sum(len(d["text"]) for d in docs) // total
        used = 0
        for doc in docs:
            if used >= share:
                break
            text = doc["text"][:SAMPLE_DOC_CHARS]
            chosen.append({**doc, "text": text})
            used += len(text)
    return chosen


def summarise(entries: list[dict], splits: dict[str, list[dict]]) -> dict:
    for entry in entries:
        for split, docs in splits.items():
            mine = [d for d in docs if d["source"] == entry["package"]]
            entry[f"{split}_documents"] = len(mine)
            entry[f"{split}_tokens"] = sum(d["tokens"] for d in mine)
    totals = {split: sum(d["tokens"] for d in docs) for split, docs in splits.items()}
    manifest = {
        "sources": entries,
        "tokens": totals,
        "tokenizer": "bundled gemma-3-270m",
        "heldout_rule": f"sha1(document id) % {HELDOUT_ONE_IN} == 0",
    }
    if "eval" in splits:
        manifest["eval_rule"] = "whole evaluation-only sources (one per genre), never in train or heldout"
    return manifest


def main() -> int:
    from scope.bundled import cache_root

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="docs")
    parser.add_argument("--out", type=Path, help="default: $SCOPE_CACHE/corpus (docs) or corpus-NAME")
    parser.add_argument("--no-sample", action="store_true", help="do not rewrite data/corpus_sample")
    args = parser.parse_args()
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        print("build_corpus: needs apt-get and dpkg-deb (Debian or Ubuntu)", file=sys.stderr)
        return 2
    sources = CORPORA[args.corpus]
    out = args.out or cache_root() / ("corpus" if args.corpus == "docs" else f"corpus-{args.corpus}")
    sample_dir, sample_chars = {
        "docs": (SAMPLE_DIR, SAMPLE_CHARS),
        "english": (SAMPLE_DIR / "english", ENGLISH_SAMPLE_CHARS),
        "modern": (SAMPLE_DIR / "modern", MODERN_SAMPLE_CHARS),
    }[args.corpus]
    documents, entries = collect(out, sources)
    count_tokens(documents)
    documents = apply_budgets(documents, entries, sources)
    splits = split_documents(documents, sources)
    manifest = summarise(entries, splits)
    for split, docs in splits.items():
        write_jsonl(out / f"{split}.jsonl", docs)
    write_json(out / "manifest.json", manifest)
    if not args.no_sample:
        sample_dir.mkdir(parents=True, exist_ok=True)
        for split, docs in splits.items():
            write_jsonl(sample_dir / f"{split}.jsonl", sample(docs, sample_chars[split]))
        write_json(sample_dir / "manifest.json", manifest)
    print(
        f"{len(documents)} documents; train {manifest['tokens']['train']:,} tokens, "
        f"held-out {manifest['tokens']['heldout']:,} tokens"
        + (f", evaluation-only {manifest['tokens']['eval']:,} tokens" if "eval" in splits else "")
        + f" -> {out}"
    )
    for entry in manifest["sources"]:
        kept = sum(entry[f"{split}_documents"] for split in splits)
        print(
            f"  {entry['package']} {entry['version']}: {kept} docs ({entry['duplicates_dropped']} duplicates, "
            f"{entry['documents_over_budget']} over the token budget dropped), "
            f"{sum(entry[f'{split}_tokens'] for split in splits):,} tokens; {entry['licence']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
