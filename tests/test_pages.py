"""Feature pages (scope/pages.py): their content, and what a real browser (headless Chromium) shows of them.

How the interval groups below the top examples are sampled is tested in test_interval_examples.py."""

import os
import re
import shutil
import subprocess

import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

import scope
from scope.pages import dashboards, shown_token

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
    assert page.count("data-rank=") == len(top)
    # every example's peak activation is printed, with its document and position
    for row in top.itertuples():
        assert f">{row.activation:.2f}</span><span class='where'>doc {row.text_id} · pos {row.position}<" in page
    assert re.search(r"title='activation \d+\.\d{3}'", page)
    assert "<b>four" not in page  # text is escaped, never parsed as markup
    # plotly.js is beside the page, not inlined: the page is small and still works offline
    assert "Plotly.newPlot" in page and "<script src='plotly.min.js'" in page
    assert (tmp_path / "plotly.min.js").read_text() == get_plotlyjs()
    assert len(page) < 200_000
    lens = scope.feature_logits(tiny_model, sae, feature, k=10)
    assert f"<code class='token'>{shown_token(lens.token.iloc[0])}</code>" in page
    assert "Neuronpedia" not in page  # a local params.npz has no Neuronpedia id
    norm = float(sae.W_dec[feature].detach().norm())
    assert f"decoder row has norm <b>{norm:.3g}</b>" in page  # the activation unit is stated


def test_tokens_are_shown_as_text():
    assert shown_token("\n") == "↵"
    assert shown_token(" if") == "&nbsp;if"
    assert shown_token("        return") == "&nbsp;&nbsp;return"  # indentation runs shortened
    assert shown_token("<b>") == "&lt;b&gt;"


def test_unmined_feature_is_refused(tiny_model, sae, tmp_path):
    mined = scope.examples.mine(tiny_model, sae, TEXTS, features=[1, 2], k=2, progress=False)
    with pytest.raises(ValueError, match="Feature 3 was not mined"):
        scope.dashboard(tiny_model, sae, 3, TEXTS, tmp_path / "p.html", mined=mined)


def test_index_links_every_page_and_pages_share_plotly(tiny_model, sae, tmp_path):
    index = dashboards(tiny_model, sae, [0, 5, 7], TEXTS, tmp_path / "pages", k=3, progress=False)
    text = index.read_text()
    for feature in (0, 5, 7):
        assert f"href='feature_{feature}.html'" in text
        page = (tmp_path / "pages" / f"feature_{feature}.html").read_text()
        assert "<script src='plotly.min.js'" in page
    assert sorted(p.name for p in (tmp_path / "pages").iterdir()) == [
        "feature_0.html",
        "feature_5.html",
        "feature_7.html",
        "index.html",
        "plotly.min.js",
    ]


def test_page_shows_label_explanation_and_detection_score(tiny_model, sae, tmp_path):
    feature = _firing_feature(tiny_model, sae)
    labels = pd.DataFrame({"feature": [feature], "label": ["'fox' 60% <x>"]})
    explanations = pd.DataFrame({"feature": [feature], "explanation": ["Animals & <tags>"], "explainer": ["m-x"]})
    scores = pd.DataFrame(
        {
            "feature": [feature],
            "balanced_accuracy": [0.75],
            "precision": [0.8],
            "recall": [0.6],
            "n_activating": [5],
            "n_non_activating": [5],
            "scorer": ["m-x"],
        }
    )
    path = scope.dashboard(
        tiny_model,
        sae,
        feature,
        TEXTS,
        tmp_path / "p.html",
        k=3,
        labels=labels,
        explanations=explanations,
        scores=scores,
        progress=False,
    )
    page = path.read_text()
    assert "Label: <b>&#x27;fox&#x27; 60% &lt;x&gt;</b>" in page
    assert "Explanation: <b>Animals &amp; &lt;tags&gt;</b>" in page and "(m-x)" in page
    assert "balanced accuracy <b>0.75</b> (precision 0.80, recall 0.60" in page
    bare = scope.dashboard(tiny_model, sae, feature, TEXTS, tmp_path / "q.html", k=3, progress=False).read_text()
    assert "No label or explanation yet" in bare


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


def test_a_mining_result_of_another_sae_or_corpus_is_refused(tiny_model, sae, make_sae, tmp_path):
    feature = _firing_feature(tiny_model, sae)
    options = dict(k=5, progress=False)
    own = scope.mine(tiny_model, sae, TEXTS, **options)
    scope.dashboard(tiny_model, sae, feature, TEXTS, tmp_path / "own.html", mined=own, groups=0, progress=False)
    other_sae, _ = make_sae(hook=HOOK, d_sae=40, seed=11)  # same width and hook, other weights
    wider, _ = make_sae(hook=HOOK, d_sae=64, seed=3)
    cases = [
        (scope.mine(tiny_model, other_sae, TEXTS, **options), r"mined does not match this SAE and texts"),
        (scope.mine(tiny_model, sae, TEXTS[1:] + TEXTS[:1], **options), r"mined does not match this SAE and texts"),
        (scope.mine(tiny_model, sae, TEXTS, window=6, **options), r"mined does not match this SAE and texts"),
        (scope.mine(tiny_model, wider, TEXTS, features=[50, feature], **options), r"feature\(s\) \[50\], beyond"),
    ]
    for n, (mined, message) in enumerate(cases):
        with pytest.raises(ValueError, match=message):
            scope.dashboard(tiny_model, sae, feature, TEXTS, tmp_path / f"p{n}.html", mined=mined, progress=False)
        assert not (tmp_path / f"p{n}.html").exists()
