"""The shipped corpus sample is what scripts/build_corpus.py promises."""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "corpus_sample"
# corpus name -> its sample folder (scripts/build_corpus.py --corpus NAME)
SAMPLES = {"docs": SAMPLE, "english": SAMPLE / "english", "modern": SAMPLE / "modern"}


def load_builder():
    path = Path(__file__).resolve().parent.parent / "scripts" / "build_corpus.py"
    spec = importlib.util.spec_from_file_location("build_corpus", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=sorted(SAMPLES))
def corpus(request):
    return request.param


def read_splits(folder: Path) -> dict[str, list[dict]]:
    return {path.stem: [json.loads(line) for line in path.open(encoding="utf-8")] for path in folder.glob("*.jsonl")}


@pytest.fixture(scope="module")
def splits(corpus):
    return read_splits(SAMPLES[corpus])


def test_documents_never_straddle_the_split(splits):
    builder = load_builder()
    train_ids = {d["id"] for d in splits["train"]}
    heldout_ids = {d["id"] for d in splits["heldout"]}
    assert not train_ids & heldout_ids
    assert all(builder.is_heldout(i) for i in heldout_ids)
    assert not any(builder.is_heldout(i) for i in train_ids)


def test_no_duplicate_documents_and_every_source_present(corpus, splits):
    builder = load_builder()
    everything = [d for docs in splits.values() for d in docs]
    keys = [hashlib.sha1(builder.normalised(d["text"]).encode()).hexdigest() for d in everything]
    assert len(keys) == len(set(keys))
    trained = {s.package for s in builder.CORPORA[corpus] if not s.evaluation_only}
    evaluated = {s.package for s in builder.CORPORA[corpus] if s.evaluation_only}
    assert {d["source"] for d in splits["train"]} == trained
    assert {d["source"] for d in splits["heldout"]} <= trained
    assert {d["source"] for d in splits.get("eval", [])} == evaluated
    assert all(set(d) == {"id", "source", "lang", "kind", "text"} for d in everything)


def test_modern_evaluation_sources_are_whole_and_never_trained_on():
    """Every evaluation-only source is held out whole (none of its documents in train or heldout),
    and at least two genres have one."""
    splits = read_splits(SAMPLES["modern"])
    trained = {d["source"] for split in ("train", "heldout") for d in splits[split]}
    evaluated = {d["source"] for d in splits["eval"]}
    assert evaluated and not trained & evaluated
    assert len({d["kind"] for d in splits["eval"]}) >= 2


def test_manifest_describes_a_big_enough_mostly_english_corpus():
    manifest = json.loads((SAMPLE / "manifest.json").read_text())
    assert manifest["tokens"]["train"] + manifest["tokens"]["heldout"] >= 2_000_000
    by_lang = {}
    for entry in manifest["sources"]:
        assert entry["licence"] and entry["version"]
        by_lang[entry["lang"]] = by_lang.get(entry["lang"], 0) + entry["train_tokens"] + entry["heldout_tokens"]
    total = sum(by_lang.values())
    assert by_lang["en"] / total > 0.5 and by_lang["code"] > 0 and {"de", "fr", "es"} <= set(by_lang)


def test_english_corpus_is_general_prose_in_several_registers():
    manifest = json.loads((SAMPLES["english"] / "manifest.json").read_text())
    tokens = {}
    for entry in manifest["sources"]:
        assert entry["licence"] and entry["version"] and entry["lang"] == "en"
        tokens[entry["kind"]] = tokens.get(entry["kind"], 0) + entry["train_tokens"] + entry["heldout_tokens"]
    assert {"narrative", "definitional", "quotations", "instructions"} <= set(tokens)
    # at least half of a docs + english training mix can be general English
    assert manifest["tokens"]["train"] >= 4_000_000
    assert max(tokens.values()) / sum(tokens.values()) < 0.6  # no one register dominates


def test_english_readers_cut_books_and_dictionaries_into_documents(tmp_path):
    builder = load_builder()
    book = "Title\n\nCHAPTER 1. One.\n\nCall me Ishmael.\n\nCHAPTER 2. Two.\n\nSome years ago."
    assert [t for _, t in builder._chapters("moby", book)] == [
        "Title",
        "CHAPTER 1. One.\n\nCall me Ishmael.",
        "CHAPTER 2. Two.\n\nSome years ago.",
    ]
    gutenberg = "\ufeffHeader\r\n*** START OF THIS BOOK ***\r\nText.\r\n*** END OF THIS BOOK ***\r\nLicence"
    assert builder._strip_gutenberg(gutenberg).strip() == "Text."
    entries = builder._dictd_entries(
        'Abdomen \\Ab*do"men\\, n. [L.]\n   The belly.\n   [1913 Webster]\n\nAbed \\A*bed"\\, adv.\n   In bed.'
    )
    assert entries == ["Abdomen , n. [L.]\n The belly.", "Abed , adv.\n In bed."]
    fortunes = tmp_path / "wisdom"
    fortunes.write_text("One.\n%\nTwo.\n%\n")
    assert builder.read_documents(fortunes, "fortune") == [("#0", "One.\n\nTwo.")]
    assert builder.read_documents(tmp_path / "wisdom.dat", "fortune") == []
    page = "<html><head><title>t</title></head><body><p>Install  it.</p><script>x()</script><p>Done.</p></body></html>"
    assert builder._html_text(page) == "Install it.\n\nDone."


def test_modern_corpus_is_licence_recorded_modern_prose():
    manifest = json.loads((SAMPLES["modern"] / "manifest.json").read_text())
    for entry in manifest["sources"]:
        assert entry["licence"] and entry["version"] and entry["lang"] == "en"
    assert manifest["tokens"]["train"] >= 1_000_000 and manifest["tokens"]["eval"] >= 50_000


def test_sample_is_small():
    files = [p for folder in SAMPLES.values() for p in folder.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5_000_000
