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

Each file is one document. Documents are de-duplicated (normalised text), then split into
train / held-out by a hash of the document id (about 1 in 20 held out), so a document never
straddles the split. Token counts use the bundled model's tokenizer.

    python scripts/build_corpus.py                 # full corpus -> $SCOPE_CACHE/corpus, sample -> data/
    python scripts/build_corpus.py --out corpus    # elsewhere

Writes ``train.jsonl`` and ``heldout.jsonl`` (one ``{"id", "source", "lang", "kind", "text"}``
per line) and ``manifest.json`` (sources, versions, licences, documents, tokens), atomically;
and the small sample in ``data/corpus_sample/`` (a few MB) that tests and notebooks use.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO / "data" / "corpus_sample"
HELDOUT_ONE_IN = 20
SAMPLE_CHARS = {"train": 2_000_000, "heldout": 1_000_000}
SAMPLE_DOC_CHARS = 6_000  # long documents are cut in the sample (never in the full corpus)
MIN_CHARS = 200


@dataclass(frozen=True)
class Source:
    package: str
    lang: str
    kind: str  # "prose", "code", "man"
    pattern: str  # glob inside the unpacked package
    reader: str  # "text", "pod", "man"
    licence: str  # the licence of the text taken, from the package's Debian copyright file
    max_tokens: int | None = None  # keeps the mix mostly English


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


def read_document(path: Path, reader: str) -> str:
    if reader == "text":
        return path.read_text(encoding="utf-8", errors="replace")
    if reader == "pod":
        return _run(["pod2text", "-w", "100", str(path)])
    if reader == "man":
        return _render_man(path)
    raise ValueError(reader)


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


# ----------------------------------------------------------------------------- building


def collect(work: Path) -> tuple[list[dict], list[dict]]:
    """All documents (deduplicated) and one manifest entry per source."""
    debs = work / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    documents, entries, seen = [], [], set()
    for source in tqdm(SOURCES, desc="Sources"):
        deb = fetch_package(source.package, debs)
        root = unpack(deb, debs)
        paths = sorted(p for p in root.glob(source.pattern) if p.is_file())
        kept = duplicates = 0
        for path in tqdm(paths, desc=source.package, leave=False):
            text = read_document(path, source.reader).strip()
            if len(text) < MIN_CHARS:
                continue
            key = hashlib.sha1(normalised(text).encode()).hexdigest()
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            doc_id = f"{source.package}:{path.relative_to(root)}"
            documents.append(
                {"id": doc_id, "source": source.package, "lang": source.lang, "kind": source.kind, "text": text}
            )
            kept += 1
        entries.append(
            {
                "package": source.package,
                "version": deb.stem.split("_")[1],
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


def apply_budgets(documents: list[dict], entries: list[dict]) -> list[dict]:
    """Drop documents of capped sources (in hash order) beyond their token budget."""
    budgets = {s.package: s.max_tokens for s in SOURCES if s.max_tokens}
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
    return {
        "sources": entries,
        "tokens": totals,
        "tokenizer": "bundled gemma-3-270m",
        "heldout_rule": f"sha1(document id) % {HELDOUT_ONE_IN} == 0",
    }


def main() -> int:
    from scope.bundled import cache_root

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=cache_root() / "corpus")
    parser.add_argument("--no-sample", action="store_true", help="do not rewrite data/corpus_sample")
    args = parser.parse_args()
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        print("build_corpus: needs apt-get and dpkg-deb (Debian or Ubuntu)", file=sys.stderr)
        return 2
    documents, entries = collect(args.out)
    count_tokens(documents)
    documents = apply_budgets(documents, entries)
    splits = {
        "heldout": [d for d in documents if is_heldout(d["id"])],
        "train": [d for d in documents if not is_heldout(d["id"])],
    }
    manifest = summarise(entries, splits)
    for split, docs in splits.items():
        write_jsonl(args.out / f"{split}.jsonl", docs)
    write_json(args.out / "manifest.json", manifest)
    if not args.no_sample:
        SAMPLE_DIR.mkdir(parents=True, exist_ok=True)
        for split, docs in splits.items():
            write_jsonl(SAMPLE_DIR / f"{split}.jsonl", sample(docs, SAMPLE_CHARS[split]))
        write_json(SAMPLE_DIR / "manifest.json", manifest)
    print(
        f"{len(documents)} documents; train {manifest['tokens']['train']:,} tokens, "
        f"held-out {manifest['tokens']['heldout']:,} tokens -> {args.out}"
    )
    for entry in manifest["sources"]:
        kept = entry["train_documents"] + entry["heldout_documents"]
        print(
            f"  {entry['package']} {entry['version']}: {kept} docs ({entry['duplicates_dropped']} duplicates, "
            f"{entry['documents_over_budget']} over the token budget dropped), "
            f"{entry['train_tokens'] + entry['heldout_tokens']:,} tokens; {entry['licence']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
