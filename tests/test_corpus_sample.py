"""The shipped corpus sample is what scripts/build_corpus.py promises."""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "corpus_sample"


def load_builder():
    path = Path(__file__).resolve().parent.parent / "scripts" / "build_corpus.py"
    spec = importlib.util.spec_from_file_location("build_corpus", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def splits():
    return {
        split: [json.loads(line) for line in (SAMPLE / f"{split}.jsonl").open(encoding="utf-8")]
        for split in ("train", "heldout")
    }


def test_documents_never_straddle_the_split(splits):
    builder = load_builder()
    train_ids = {d["id"] for d in splits["train"]}
    heldout_ids = {d["id"] for d in splits["heldout"]}
    assert not train_ids & heldout_ids
    assert all(builder.is_heldout(i) for i in heldout_ids)
    assert not any(builder.is_heldout(i) for i in train_ids)


def test_no_duplicate_documents_and_every_source_present(splits):
    builder = load_builder()
    everything = splits["train"] + splits["heldout"]
    keys = [hashlib.sha1(builder.normalised(d["text"]).encode()).hexdigest() for d in everything]
    assert len(keys) == len(set(keys))
    sources = {s.package for s in builder.SOURCES}
    assert {d["source"] for d in splits["train"]} == sources
    assert {d["source"] for d in splits["heldout"]} == sources
    assert all(set(d) == {"id", "source", "lang", "kind", "text"} for d in everything)


def test_manifest_describes_a_big_enough_mostly_english_corpus():
    manifest = json.loads((SAMPLE / "manifest.json").read_text())
    assert manifest["tokens"]["train"] + manifest["tokens"]["heldout"] >= 2_000_000
    by_lang = {}
    for entry in manifest["sources"]:
        assert entry["licence"] and entry["version"]
        by_lang[entry["lang"]] = by_lang.get(entry["lang"], 0) + entry["train_tokens"] + entry["heldout_tokens"]
    total = sum(by_lang.values())
    assert by_lang["en"] / total > 0.5 and by_lang["code"] > 0 and {"de", "fr", "es"} <= set(by_lang)


def test_sample_is_small():
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 5_000_000
