"""The explorer in a real browser: headless Chromium (Debian's binary) driven by Playwright.

Type a prompt, see the tokens shaded and the features' labels, open a feature page (logit lens,
histogram, label), steer a feature and see the default and steered texts stream side by side;
each text equals ``scope.generate`` for the same request. The slow variant runs the bundled
model with the demo SAE and saves the README's screenshot (docs/explorer.png).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import scope
from scope.density import dense_filter
from scope.feature_stats import set_max_activations
from scope.serve import create_app, serving
from tests.sae_util import random_params, write_params

DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "explorer.png"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return str(shutil.which(name))
    if os.environ.get("SCOPE_REQUIRE_BROWSER"):
        pytest.fail("Chromium is required here (SCOPE_REQUIRE_BROWSER): apt-get install chromium")
    pytest.skip("no Chromium on this machine (apt-get install chromium); .ci/run installs it")


@pytest.fixture
def browser():
    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("SCOPE_REQUIRE_BROWSER"):
            pytest.fail("playwright is required here (SCOPE_REQUIRE_BROWSER): pip install playwright")
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"], headless=True)
        try:
            yield browser
        finally:
            browser.close()


def explore(browser, base: str, model, saes: dict, prompt: str, *, value: float, max_tokens: int, screenshot: Path):
    """Drive the explorer through the issue's steps; returns what the page showed."""
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(base + "/")
    page.wait_for_selector("#sae option", state="attached")

    # 1. Type a prompt; tokens appear shaded by their strongest feature, with labels listed.
    page.fill("#prompt", prompt)
    page.click("#show")
    page.wait_for_selector("#tokens .tok")
    name = page.eval_on_selector("#sae", "e => e.value")
    sae = saes[name]
    acts = scope.encode(model, sae, prompt)
    shown = page.eval_on_selector_all(
        ".tok", "els => els.map(e => [e.textContent, parseFloat(e.dataset.act), e.style.background])"
    )
    assert len(shown) == len(acts.tokens)
    values = acts.values[1:].clone()
    values[:, sorted(dense_filter(sae).dense)] = 0.0  # the explorer hides dense features by default
    strongest = values.max(dim=-1).values
    assert [v for _, v, _ in shown[1:]] == pytest.approx(strongest.clamp(min=0).tolist(), abs=1e-3)
    assert any(re.search(r"rgba\(255, 127, 14, 0\.[1-9]", bg) for _, _, bg in shown)  # shaded orange
    labels = page.eval_on_selector_all("#token-features .feat .label", "els => els.map(e => e.textContent)")
    assert labels, "no feature label shown"

    # 2. Click a token: its own top features.
    page.click(".tok[data-position='1']")
    page.wait_for_selector("#token-features h2:has-text('Token 1')")

    # 3. Open a feature page (in a second tab, the explorer keeps its state).
    href = page.eval_on_selector("#token-features .feature-link", "e => e.getAttribute('href')")
    feature = int(href.rsplit("/", 1)[1])
    feature_page = browser.new_page()
    feature_page.goto(base + href)
    feature_page.wait_for_selector("body[data-loaded='true']", timeout=120_000)
    lens = scope.feature_logits(model, sae, feature, k=10)
    lens_cells = feature_page.eval_on_selector_all(
        ".lens td:first-child", "els => els.map(e => JSON.parse(e.textContent))"
    )
    assert lens_cells == lens.token.tolist()
    assert feature_page.locator("#histogram .main-svg").count() > 0  # plotly drew the figure
    assert f"Feature {feature}" in feature_page.inner_text("#title")
    assert "Label:" in feature_page.inner_text("#label")
    feature_page.close()

    # 4. Steer that feature: default and steered texts side by side.
    page.click(f"#token-features .add-steer[data-feature='{feature}']")
    page.fill(".steer-item .value", str(value))
    page.fill("#max-tokens", str(max_tokens))
    page.click("#generate")
    page.wait_for_selector("#default-output[data-done='true']")
    page.wait_for_selector("#steered-output[data-done='true']")
    assert not page.inner_text("#generate-error")
    default = page.eval_on_selector("#default-output", "e => e.textContent")
    steered = page.eval_on_selector("#steered-output", "e => e.textContent")
    assert default == scope.generate(model, prompt, max_new_tokens=max_tokens)
    assert steered == scope.generate(
        model, prompt, max_new_tokens=max_tokens, sae=sae, steering=[scope.Add(feature, value)]
    )
    assert default != steered
    page.click(f".tok[data-position='{len(acts.tokens) - 1}']")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    assert not errors, errors
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    return {"feature": feature, "default": default, "steered": steered}


def test_explorer_in_chromium(browser, tiny_model, tmp_path):
    sae = scope.load_sae(
        write_params(tmp_path / "sae" / "params.npz", random_params(64, 48, seed=1)),
        hook="blocks.1.hook_resid_post",
        device="cpu",
    )
    set_max_activations(sae, torch.full((48,), 4.0))
    labels = {"early": {f: f"tiny label {f}" for f in range(48)}}
    mined = {
        "early": scope.mine(tiny_model, sae, ["The quick brown fox jumps.", "Golden Gate Bridge"], k=3, progress=False)
    }
    with serving(create_app(tiny_model, {"early": sae}, labels=labels, mined=mined)) as base:
        shot = tmp_path / "explorer.png"
        explore(
            browser, base, tiny_model, {"early": sae}, "The quick brown fox", value=12.0, max_tokens=8, screenshot=shot
        )
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
def test_explorer_on_the_bundled_model_saves_the_readme_screenshot(browser, bundled_model):
    sae = scope.load_sae("demo-docs")
    with serving(create_app(bundled_model, {"demo-docs": sae})) as base:
        explore(
            browser,
            base,
            bundled_model,
            {"demo-docs": sae},
            "The Golden Gate Bridge spans the strait",
            value=60.0,
            max_tokens=16,
            screenshot=DOCS_SCREENSHOT,
        )
    assert DOCS_SCREENSHOT.stat().st_size > 20_000


def test_explorer_with_an_api_key(browser, tiny_model, tmp_path):
    """Without the key the page says why nothing loads; with it typed in, the SAEs are listed."""
    sae = scope.load_sae(
        write_params(tmp_path / "sae" / "params.npz", random_params(64, 48, seed=1)),
        hook="blocks.1.hook_resid_post",
        device="cpu",
    )
    with serving(create_app(tiny_model, {"early": sae}, api_key="s3cret")) as base:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(base + "/")
        page.wait_for_selector("#features-error:has-text('API key')")
        page.fill("#api-key", "s3cret")
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("#sae option[value='early']", state="attached")
        page.fill("#prompt", "The quick brown fox")
        page.click("#show")
        page.wait_for_selector("#tokens .tok")
        assert page.locator("#tokens .tok").count() == len(scope.encode(tiny_model, sae, "The quick brown fox").tokens)
