"""scripts/build_corpus.py's readers and split rules, on tiny fixtures (no package downloads)."""

import gzip

import pytest

from tests.test_corpus_sample import load_builder


@pytest.fixture(scope="module")
def builder():
    return load_builder()


def test_mallard_page_keeps_the_text_and_drops_metadata_and_comments(builder, tmp_path):
    page = tmp_path / "sound-broken.page"
    page.write_text(
        '<page xmlns="http://projectmallard.org/1.0/" id="x">\n'
        "  <info>\n    <credit><name>GNOME Documentation Project</name></credit>\n"
        "    <desc>Troubleshoot sound.</desc>\n  </info>\n"
        "<title>Sound problems</title>\n"
        "<comment><p>Consider merging this page.</p></comment>\n"
        "<p>There are a number of ways for\n   sound playback to break.</p>\n"
        "<steps><item><p>Click <gui>Settings</gui>.</p></item><item><p>Press <key>Super</key>.</p></item></steps>\n"
        '<media type="image" src="figures/x.png"/>\n'
        "</page>\n"
    )
    assert builder.read_documents(page, "mallard") == [
        (
            "",
            "Sound problems\n\nThere are a number of ways for sound playback to break.\n\nClick Settings.\n\nPress Super.",
        )
    ]


def test_help_page_drops_header_side_panels_and_footer(builder, tmp_path):
    page = tmp_path / "spadmin.html"
    page.write_text(
        "<html><head><title>t</title></head><body><header>LibreOffice Help</header>"
        "<aside><nav>Index of every page</nav><p>Contents</p></aside>"
        '<div id="DisplayArea"><h1>Printing</h1><p>Select the  printer.</p></div>'
        "<footer>Please support us!</footer></body></html>"
    )
    assert builder.read_documents(page, "html-page") == [("", "Printing\n\nSelect the printer.")]
    # the plain html reader (english corpus) is unchanged: it keeps asides
    assert "Contents" in builder.read_documents(page, "html")[0][1]


def test_gzipped_text_is_read_whole(builder, tmp_path):
    path = tmp_path / "project-history.en.txt.gz"
    path.write_bytes(gzip.compress(b"A Brief History of Debian\n\nIt began in 1993."))
    assert builder.read_documents(path, "gztext") == [("", "A Brief History of Debian\n\nIt began in 1993.")]


def test_evaluation_only_sources_never_reach_train_or_heldout(builder):
    sources = [
        builder.Source("guide", "en", "instructions", "*", "html", "GPL-2"),
        builder.Source("faq", "en", "instructions", "*", "html", "GPL-2", evaluation_only=True),
        builder.Source("history", "en", "history", "*", "gztext", "GPL-2", evaluation_only=True),
    ]
    documents = [
        {"id": f"{source}:{i}.html", "source": source} for source in ("guide", "faq", "history") for i in range(200)
    ]
    splits = builder.split_documents(documents, sources)
    assert {d["source"] for d in splits["train"] + splits["heldout"]} == {"guide"}
    assert {d["source"] for d in splits["eval"]} == {"faq", "history"} and len(splits["eval"]) == 400
    # within the training source, the hash rule alone decides (about 1 in 20 held out)
    heldout = {d["id"] for d in splits["heldout"]}
    assert heldout == {d["id"] for d in documents if d["source"] == "guide" and builder.is_heldout(d["id"])}
    assert 0 < len(heldout) < 30
    # a corpus without evaluation-only sources has no eval split (docs and english are unchanged)
    assert set(builder.split_documents(documents[:200], sources[:1])) == {"train", "heldout"}


def test_modern_corpus_holds_out_whole_sources_of_two_genres(builder):
    evaluated = [s for s in builder.CORPORA["modern"] if s.evaluation_only]
    trained = [s for s in builder.CORPORA["modern"] if not s.evaluation_only]
    assert len({s.kind for s in evaluated}) >= 2
    assert not {s.package for s in evaluated} & {s.package for s in trained}
    # no package is an evaluation source here and a training source in another corpus either
    elsewhere = {s.package for name, corpus in builder.CORPORA.items() if name != "modern" for s in corpus}
    assert not {s.package for s in evaluated} & elsewhere


def test_excluded_paths_are_not_read(builder, tmp_path):
    root = tmp_path / "pkg"
    (root / "doc").mkdir(parents=True)
    for name in ("ch01.html", "apf.html"):
        (root / "doc" / name).write_text("<p>x</p>")
    source = builder.Source("pkg", "en", "instructions", "doc/*.html", "html", "GPL-2", exclude=r"/apf\.html$")
    assert [p.name for p in builder.source_paths(root, source)] == ["ch01.html"]
