"""Feature pages: their content, and what a real browser (headless Chromium) shows of them."""

import os
import re
import shutil
import subprocess

import pytest

import scope
from scope.pages import dashboards

HOOK = "blocks.1.hook_resid_post"
TEXTS = [
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog, again and again.",
    "def add(a, b): return a + b",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "One two three <b>four</b> five & six.",  # markup in the text must be shown, not parsed
]


@pytest.fixture
def sae(make_sae):
    return make_sae(hook=HOOK, d_sae=40, seed=3)[0]


def _firing_feature(model, sae):
    return int(scope.top_examples(model, sae, TEXTS, k=5, progress=False).feature.value_counts().index[0])


def test_page_shows_examples_histogram_and_logit_lens(tiny_model, sae, tmp_path):
    feature = _firing_feature(tiny_model, sae)
    path = scope.dashboard(tiny_model, sae, feature, TEXTS, tmp_path / "page.html", k=5, progress=False)
    page = path.read_text()
    top = scope.top_examples(tiny_model, sae, TEXTS, features=[feature], k=5, progress=False)
    assert page.count("class='example'") == len(top)
    # every example's peak activation is printed, and every shaded token carries its value on hover
    for value in top.activation:
        assert f">{value:.2f}</span>" in page
    assert re.search(r"title='activation \d+\.\d{3}'", page)
    assert "<b>four" not in page  # text is escaped, never parsed as markup
    assert "Plotly.newPlot" in page and "plotly.js" in page.lower()  # plotly inlined: works offline
    lens = scope.feature_logits(tiny_model, sae, feature, k=10)
    assert repr(lens.token.iloc[0]).replace("'", "&#x27;") in page
    assert "Neuronpedia" not in page  # a local params.npz has no Neuronpedia id


def test_unmined_feature_is_refused(tiny_model, sae, tmp_path):
    mined = scope.examples.mine(tiny_model, sae, TEXTS, features=[1, 2], k=2, progress=False)
    with pytest.raises(ValueError, match="Feature 3 was not mined"):
        scope.dashboard(tiny_model, sae, 3, TEXTS, tmp_path / "p.html", mined=mined)


def test_index_links_every_page(tiny_model, sae, tmp_path):
    index = dashboards(tiny_model, sae, [0, 5, 7], TEXTS, tmp_path / "pages", k=3, progress=False)
    text = index.read_text()
    for feature in (0, 5, 7):
        assert f"href='feature_{feature}.html'" in text
        assert (tmp_path / "pages" / f"feature_{feature}.html").is_file()
    assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == [
        "feature_0.html",
        "feature_5.html",
        "feature_7.html",
        "index.html",
    ]


# ----------------------------------------------------------------------------- a real browser


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("SCOPE_REQUIRE_BROWSER"):
        pytest.fail("Chromium is required here (SCOPE_REQUIRE_BROWSER): apt-get install chromium")
    pytest.skip("no Chromium on this machine (apt-get install chromium); .ci/run installs it")


def _headless(chromium: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_chromium_renders_the_examples_and_the_figure(tiny_model, sae, tmp_path):
    """The DOM after scripts ran holds the plotly SVG and the shaded tokens, and the screenshot
    shows orange token shading and the histogram's bars."""
    from PIL import Image

    chromium = _chromium()
    feature = _firing_feature(tiny_model, sae)
    page = scope.dashboard(tiny_model, sae, feature, TEXTS, tmp_path / "page.html", k=5, progress=False)
    dom = _headless(chromium, "--dump-dom", page.as_uri()).stdout
    assert "main-svg" in dom  # plotly drew the histogram: its SVG exists only after plotly.js ran
    assert dom.count('class="example"') == len(
        scope.top_examples(tiny_model, sae, TEXTS, features=[feature], k=5, progress=False)
    )
    assert re.search(r'class="point"|class="bars"', dom)  # the bar trace was drawn
    shot = tmp_path / "page.png"
    _headless(chromium, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    image = Image.open(shot).convert("RGB")
    pixels = list(image.getdata())
    orange = sum(1 for r, g, b in pixels if r > 200 and 100 < g < 200 and b < 90)
    assert orange > 500, orange  # shaded tokens and histogram bars are visible
    assert len(set(pixels)) > 50  # not a blank page
