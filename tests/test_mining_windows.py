"""Overlapping windows: no token is scored without context (issue 26, item 2)."""

import numpy as np
import pandas as pd
import pytest
import torch

import scope
from scope.mining.windows import iter_windows
from tests.sae_util import jumprelu, random_params, write_params
from tests.test_mining import HOOK, TEXTS


class _Tokenizer:
    """Token ids given as text: "5 6 7" -> [5, 6, 7]."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(t) for t in text.split()]}


class _Model:
    tokenizer = _Tokenizer()


@pytest.mark.parametrize("window, overlap", [(8, 0), (8, 2), (8, 6), (5, 1), (128, None)])
def test_every_token_is_scored_once_and_after_its_context(window, overlap):
    lengths = [0, 1, 6, 7, 8, 12, 13, 50, 300]
    texts = [" ".join(str(1000 * n + i) for i in range(n)) for n in lengths]
    want = 16 if overlap is None else overlap  # the default for 128 tokens
    scored = {n: [] for n in lengths}
    for w in iter_windows(_Model(), texts, window, overlap=overlap):
        n = lengths[w.text_id]
        assert 1 <= len(w.tokens) <= window - 1 and w.context_only < len(w.tokens)
        assert w.tokens == [1000 * n + i for i in range(w.start - 1, w.start - 1 + len(w.tokens))]
        for i in range(w.context_only, len(w.tokens)):
            position = w.start + i  # BOS = 0
            assert i >= min(want, position - 1)  # at least `overlap` tokens before it, or the whole text
            scored[n].append(position)
    assert all(sorted(scored[n]) == list(range(1, n + 1)) for n in lengths)  # each token exactly once


def _windows(model, texts, window, overlap):
    """(text_id, start, ids, context-only) cut here: windows of window - 1 tokens, each after the
    first starting window - 1 - overlap tokens after the one before."""
    size = window - 1
    for text_id, text in enumerate(texts):
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        offset = 0
        while True:
            yield text_id, 1 + offset, ids[offset : offset + size], overlap if offset else 0
            if offset + size >= len(ids):
                break
            offset += size - overlap


def _brute_force(model, params, texts, window, overlap, k):
    """Each window run alone; each feature's maximum over the window's scored tokens only; the
    scored tokens' activations."""
    rows, scored = [], []
    for text_id, start, ids, skip in _windows(model, texts, window, overlap):
        tokens = torch.tensor([[model.tokenizer.bos_token_id, *ids]])
        _, cache = model.run_with_cache(tokens, names_filter=HOOK, stop_at_layer=2)  # HOOK ends block 1
        acts = jumprelu(cache[HOOK][0, 1 + skip :], params)[0]  # BOS and context-only tokens dropped
        scored.append(acts)
        values, peak = acts.max(dim=0)
        rows += [(f, float(values[f]), text_id, start + skip + int(peak[f])) for f in range(acts.shape[1])]
    frame = pd.DataFrame(rows, columns=["feature", "activation", "text_id", "position"])
    frame = frame[frame.activation > 0].sort_values(["feature", "activation"], ascending=[True, False], kind="stable")
    frame = frame.groupby("feature").head(k)
    frame["rank"] = frame.groupby("feature").cumcount() + 1
    return frame.reset_index(drop=True), torch.cat(scored)


@pytest.mark.parametrize("overlap, batch_size", [(3, 3), (6, 1)])  # steps 8 and 5: no window repeats another
def test_overlapping_windows_equal_a_brute_force(tiny_model, make_sae, overlap, batch_size):
    sae, params = make_sae(hook=HOOK, d_sae=40, seed=3)
    window, k = 12, 3
    mined = scope.mine(
        tiny_model, sae, TEXTS, k=k, window=window, overlap=overlap, batch_size=batch_size, progress=False
    )
    expected, acts = _brute_force(tiny_model, params, TEXTS, window, overlap, k)
    assert len(expected) > 40
    got = mined.examples
    assert got[["feature", "rank", "text_id", "position"]].values.tolist() == (
        expected[["feature", "rank", "text_id", "position"]].values.tolist()
    )
    np.testing.assert_allclose(got.activation.values, expected.activation.values, rtol=1e-4, atol=1e-4)
    n_tokens = sum(len(tiny_model.tokenizer.encode(t, add_special_tokens=False)) for t in TEXTS)
    assert mined.n_tokens == acts.shape[0] == n_tokens  # every token counted once
    torch.testing.assert_close(mined.density, (acts > 0).double().mean(0))
    assert mined.histogram.sum() == (acts > 0).sum()


def _first_token_feature(model, token: int, d_sae: int = 4):
    """A feature planted to fire on ``token`` only right after BOS: its encoder is that residual's
    direction, its threshold 90% of the residual's projection (other features random)."""
    _, cache = model.run_with_cache(torch.tensor([[model.tokenizer.bos_token_id, token]]), names_filter=HOOK)
    first = cache[HOOK][0, 1].double()
    params = random_params(first.shape[0], d_sae, seed=0)
    params["W_enc"][:, 0] = (first / first.norm()).numpy()
    params["b_enc"][0] = 0.0
    params["threshold"][0] = 0.9 * float(first.norm())
    return params


def test_a_window_start_artifact_is_gone(tiny_model, tmp_path):
    """Feature 0 fires on " " right after BOS, nowhere else: cut without overlap, its top examples
    are all the first token of some window past a text's start (the artifact); with overlap,
    those tokens are context only and the feature has no example left."""
    space = tiny_model.tokenizer.encode(" ", add_special_tokens=False)[0]
    params = _first_token_feature(tiny_model, space)
    sae = scope.load_sae(write_params(tmp_path / "planted" / "params.npz", params), hook=HOOK, device="cpu")
    window, size = 8, 7
    kwargs = dict(features=[0], k=50, window=window, progress=False)
    cut = scope.top_examples(tiny_model, sae, TEXTS, overlap=0, **kwargs)
    assert len(cut) >= 3
    assert ((cut.position > 1) & ((cut.position - 1) % size == 0)).all()  # every one at a cut
    assert (cut.token == " ").all() and cut.activation.nunique() == 1  # the same value wherever the cut fell
    overlapped = scope.top_examples(tiny_model, sae, TEXTS, overlap=2, **kwargs)
    assert overlapped.empty
    # Windows of that cut do start on " ": the token was read there, as context only.
    windows = iter_windows(tiny_model, TEXTS, window, overlap=2)
    assert any(w.context_only and w.tokens[0] == space for w in windows)


@pytest.mark.parametrize(
    "overlap, error, message",
    [
        (7, ValueError, "overlap must be an integer from 0 to 6 .* got 7"),
        (-1, ValueError, "overlap must be an integer from 0 to 6 .* got -1"),
        (1.5, TypeError, "overlap must be an integer, got 1.5"),
    ],
)
def test_a_bad_overlap_is_refused_before_any_forward(tiny_model, make_sae, overlap, error, message):
    sae, _ = make_sae(hook=HOOK, d_sae=8)
    with pytest.raises(error, match=message):
        scope.mine(tiny_model, sae, TEXTS, window=8, overlap=overlap, progress=False)
