"""Top-activating examples checked against a brute-force search written here."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import scope
from scope.labels import PEAK_CLOSE, PEAK_OPEN
from scope.mining import checkpoint_path
from tests.sae_util import jumprelu, random_params, write_params

HOOK = "blocks.1.hook_resid_post"
TEXTS = [
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog, again and again and again.",
    "def add(a, b): return a + b",
    "Rome",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "One two three four five six seven eight nine ten eleven twelve thirteen.",
]


@pytest.fixture
def sae_and_params(make_sae):
    return make_sae(hook=HOOK, d_sae=40, seed=3)


@pytest.fixture
def forwards(tiny_model, monkeypatch):
    """Counts the model's forward passes (every run, hooked or cached, goes through ``forward``)."""
    calls = []
    cls = type(tiny_model)
    original = cls.forward

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "forward", counting)
    return calls


def _windows(model, texts, window):
    """(text_id, start, ids) cut independently of the library."""
    for text_id, text in enumerate(texts):
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        for offset in range(0, len(ids), window - 1):
            yield text_id, 1 + offset, ids[offset : offset + window - 1]


def brute_force(model, params, texts, k, window, hook=HOOK):
    """Every window run alone (no batching, no padding); each feature's maximum per window."""
    rows = []
    for text_id, start, ids in _windows(model, texts, window):
        tokens = torch.tensor([[model.tokenizer.bos_token_id] + ids])
        _, cache = model.run_with_cache(tokens, names_filter=hook)
        acts, _ = jumprelu(cache[hook][0, 1:], params)  # BOS dropped
        values, peak = acts.max(dim=0)
        for feature in range(acts.shape[1]):
            rows.append((feature, float(values[feature]), text_id, start + int(peak[feature]), ids[int(peak[feature])]))
    frame = pd.DataFrame(rows, columns=["feature", "activation", "text_id", "position", "token_id"])
    frame = frame[frame.activation > 0]
    frame = frame.sort_values(["feature", "activation"], ascending=[True, False], kind="stable")
    frame = frame.groupby("feature").head(k)
    frame["rank"] = frame.groupby("feature").cumcount() + 1
    return frame.reset_index(drop=True)


@pytest.mark.parametrize("window, batch_size", [(128, 3), (6, 4), (6, 1)])
def test_top_examples_equal_brute_force(tiny_model, sae_and_params, window, batch_size):
    sae, params = sae_and_params
    k = 3
    got = scope.top_examples(tiny_model, sae, TEXTS, k=k, window=window, batch_size=batch_size, progress=False)
    expected = brute_force(tiny_model, params, TEXTS, k, window)
    assert len(expected) > 40  # the random SAE fires on plenty of examples
    assert (
        got[["feature", "rank", "text_id", "position"]].values.tolist()
        == expected[["feature", "rank", "text_id", "position"]].values.tolist()
    )
    torch.testing.assert_close(
        torch.tensor(got.activation.values), torch.tensor(expected.activation.values), rtol=1e-4, atol=1e-4
    )
    tokens = tiny_model.tokenizer.batch_decode([[t] for t in expected.token_id])
    assert got.token.tolist() == tokens


def test_a_repeated_text_is_two_distinct_examples(tiny_model, sae_and_params):
    sae, _ = sae_and_params
    got = scope.top_examples(tiny_model, sae, [TEXTS[0], TEXTS[0]], k=5, progress=False)
    for _, rows in got.groupby("feature"):
        assert rows.text_id.tolist() in ([0, 1], [1, 0])
        assert rows.position.nunique() == 1
        assert rows.activation.iloc[0] == pytest.approx(rows.activation.iloc[1], rel=1e-5)


def test_positions_match_encode_on_whole_text(tiny_model, sae_and_params):
    """Positions count like scope.encode's tokens (BOS = 0), so a peak can be looked up there."""
    sae, _ = sae_and_params
    got = scope.top_examples(tiny_model, sae, TEXTS[:2], k=2, progress=False)
    for row in got.itertuples():
        acts = scope.encode(tiny_model, sae, TEXTS[row.text_id])
        assert acts.tokens[row.position] == row.token
        assert float(acts.values[row.position, row.feature]) == pytest.approx(row.activation, rel=1e-4, abs=1e-4)


def test_padding_and_bos_never_appear(tiny_model, sae_and_params):
    sae, _ = sae_and_params
    got = scope.top_examples(
        tiny_model, sae, ["a", "a much longer text " * 4], k=5, batch_size=2, context=20, progress=False
    )
    bos, pad = tiny_model.tokenizer.bos_token, tiny_model.tokenizer.pad_token
    assert (got.position >= 1).all()
    assert not got.token.isin([bos, pad]).any()
    assert not got.context.str.contains(bos, regex=False).any()
    assert not got.context.str.contains(pad, regex=False).any()


def test_context_marks_the_peak_and_stays_inside_the_window(tiny_model, sae_and_params):
    sae, _ = sae_and_params
    got = scope.top_examples(tiny_model, sae, TEXTS, k=1, context=2, progress=False)
    for row in got.itertuples():
        ids = tiny_model.tokenizer.encode(TEXTS[row.text_id], add_special_tokens=False)
        i = row.position - 1
        decode = tiny_model.tokenizer.decode
        expected = (
            decode(ids[max(0, i - 2) : i])
            + PEAK_OPEN
            + decode(ids[i : i + 1])
            + PEAK_CLOSE
            + decode(ids[i + 1 : i + 3])
        )
        assert row.context == expected


def test_features_subset_in_given_order_and_file_inputs(tiny_model, sae_and_params, tmp_path):
    sae, _ = sae_and_params
    everything = scope.top_examples(tiny_model, sae, TEXTS, k=2, progress=False)
    jsonl = tmp_path / "corpus.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    subset = scope.top_examples(tiny_model, sae, jsonl, features=[7, 2], k=2, progress=False)
    assert subset.feature.unique().tolist() == [f for f in [7, 2] if f in set(everything.feature)]
    expected = everything[everything.feature.isin([7, 2])].sort_values(
        "feature", key=lambda s: s.map({7: 0, 2: 1}), kind="stable"
    )
    assert subset.drop(columns="activation").values.tolist() == expected.drop(columns="activation").values.tolist()
    pd.DataFrame({"text": TEXTS}).to_parquet(tmp_path / "corpus.parquet")
    from_parquet = scope.top_examples(tiny_model, sae, tmp_path / "corpus.parquet", k=2, progress=False)
    assert from_parquet.drop(columns="activation").equals(everything.drop(columns="activation"))


def test_out_writes_the_same_table(tiny_model, sae_and_params, tmp_path):
    sae, _ = sae_and_params
    path = tmp_path / "results" / "top.parquet"
    got = scope.top_examples(tiny_model, sae, TEXTS, k=2, out=path, progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(path), got)
    assert [p.name for p in path.parent.iterdir()] == ["top.parquet"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"features": [40]}, "40"),
        ({"features": [1, 1]}, "twice"),
        ({"k": 0}, "k"),
        ({"context": -1}, "context"),
        ({"window": 1}, "window"),
        ({"checkpoint_every": 0}, "checkpoint_every must be a positive integer, got 0"),
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ],
)
def test_bad_arguments_name_the_value(tiny_model, sae_and_params, kwargs, message, forwards):
    sae, _ = sae_and_params
    with pytest.raises(ValueError, match=message):
        scope.top_examples(tiny_model, sae, TEXTS, progress=False, **kwargs)
    assert forwards == []  # refused before any work


def test_an_unwritable_out_fails_before_any_forward_pass(tiny_model, sae_and_params, tmp_path, forwards, monkeypatch):
    sae, _ = sae_and_params
    work = tmp_path / "work"
    folder = work / "results"
    folder.mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match=f"out='{folder}' is a directory"):
        scope.mine(tiny_model, sae, TEXTS, out=folder, progress=False)
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: answer as for anyone else
            access = os.access
            monkeypatch.setattr(
                os,
                "access",
                lambda path, mode, *args, **kwargs: (
                    (not mode & os.W_OK and access(path, mode, *args, **kwargs))
                    if Path(path) == locked
                    else access(path, mode, *args, **kwargs)
                ),
            )
        for out in (locked / "top.parquet", locked / "new" / "top.parquet"):
            with pytest.raises(PermissionError, match=f"the folder '{locked}' is not writable"):
                scope.mine(tiny_model, sae, TEXTS, out=out, progress=False)
    finally:
        locked.chmod(0o755)
    assert forwards == []
    assert sorted(p.name for p in work.iterdir()) == ["locked", "results"]
    assert not any(folder.iterdir()) and not any(locked.iterdir())  # no checkpoint, no result
    scope.mine(tiny_model, sae, TEXTS, out=work / "top.parquet", progress=False)
    assert forwards  # the counter sees the forward passes of a run that goes ahead


def test_bad_corpus_inputs(tiny_model, sae_and_params, tmp_path):
    sae, _ = sae_and_params
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        scope.top_examples(tiny_model, sae, tmp_path / "missing.jsonl", progress=False)
    with pytest.raises(TypeError, match="item 1"):
        scope.top_examples(tiny_model, sae, ["fine", 3], progress=False)


def _alone(error: BaseException) -> bool:
    """One error: no other exception chained to it in its traceback."""
    return error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


BAD_CORPORA = [  # name, content, where, what
    ("no_text.jsonl", b'{"text": "fine"}\n{"body": "no text here"}\n', "line 2", "no 'text' field"),
    ("not_an_object.jsonl", b'{"text": "fine"}\n["text"]\n', "line 2", "no 'text' field"),
    ("malformed.jsonl", b'{"text": "fine"}\n\n{"text": "unterminated\n', "line 3", "malformed JSON"),
    ("latin1.jsonl", '{"text": "fine"}\n{"text": "caf\u00e9"}\n'.encode("latin-1"), "line 2", "not UTF-8"),
    ("latin1.txt", "fine\ncaf\u00e9\n".encode("latin-1"), "line 2", "not UTF-8"),
    ("null.jsonl", b'{"text": "fine"}\n{"text": null}\n', "line 2", "'text' is None, not a string"),
    ("number.jsonl", b'{"text": "fine"}\n{"text": 3}\n', "line 2", "'text' is 3, not a string"),
]


@pytest.mark.parametrize("name, content, where, what", BAD_CORPORA, ids=[c[0] for c in BAD_CORPORA])
def test_a_bad_corpus_record_is_one_error_naming_file_and_line(
    tiny_model, sae_and_params, tmp_path, name, content, where, what
):
    sae, _ = sae_and_params
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        scope.top_examples(tiny_model, sae, path, progress=False)
    message = str(info.value)
    assert message.startswith(f"{path}, {where}: ") and what in message, message
    assert _alone(info.value)


def test_a_bad_parquet_corpus_is_one_error_naming_file_and_row(tiny_model, sae_and_params, tmp_path):
    sae, _ = sae_and_params
    path = tmp_path / "body.parquet"
    pd.DataFrame({"body": TEXTS}).to_parquet(path)
    with pytest.raises(ValueError) as info:
        scope.top_examples(tiny_model, sae, path, progress=False)
    assert str(info.value).startswith(f"{path} has no 'text' column; its columns are ['body']")
    assert _alone(info.value)
    path = tmp_path / "null.parquet"
    pd.DataFrame({"text": ["fine", None, "fine"]}).to_parquet(path)
    with pytest.raises(ValueError) as info:
        scope.top_examples(tiny_model, sae, path, progress=False)
    assert str(info.value).startswith(f"{path}, row 1: 'text' is None, not a string")  # rows count from 0
    assert _alone(info.value)
    path = tmp_path / "not_parquet.parquet"
    path.write_text("just text")
    with pytest.raises(ValueError, match=f"{path} is not a readable Parquet file"):
        scope.top_examples(tiny_model, sae, path, progress=False)


@pytest.mark.parametrize("window", [128, 6])
def test_context_activations_equal_the_window_run_alone(tiny_model, sae_and_params, window):
    """Each row's context tokens and the feature's activations on them, as the page shades them."""
    sae, params = sae_and_params
    c = 3
    mined = scope.mine(tiny_model, sae, TEXTS, k=2, context=c, window=window, batch_size=4, progress=False)
    windows = {(text_id, start): ids for text_id, start, ids in _windows(tiny_model, TEXTS, window)}
    assert len(mined.examples) > 40
    for i, row in enumerate(mined.examples.itertuples()):
        start = 1 + (row.position - 1) // (window - 1) * (window - 1)
        ids = windows[(row.text_id, start)]
        _, cache = tiny_model.run_with_cache(
            torch.tensor([[tiny_model.tokenizer.bos_token_id] + ids]), names_filter=HOOK
        )
        acts = jumprelu(cache[HOOK][0, 1:], params)[0][:, row.feature]  # [window tokens], BOS dropped
        peak = row.position - start
        lo, hi = max(0, peak - c), min(len(ids), peak + c + 1)  # never beyond the window
        tokens, values = mined.span(i)
        assert tokens == tiny_model.tokenizer.batch_decode([[t] for t in ids[lo:hi]])
        torch.testing.assert_close(torch.tensor(values, dtype=acts.dtype), acts[lo:hi], rtol=1e-4, atol=1e-4)
        assert float(acts[peak]) == pytest.approx(row.activation, rel=1e-4, abs=1e-4)


def test_a_datasets_dataset_reads_like_a_list(tiny_model, sae_and_params):
    datasets = pytest.importorskip("datasets")
    sae, _ = sae_and_params
    expected = scope.top_examples(tiny_model, sae, TEXTS, k=2, progress=False)
    got = scope.top_examples(tiny_model, sae, datasets.Dataset.from_dict({"text": TEXTS}), k=2, progress=False)
    pd.testing.assert_frame_equal(got, expected)
    with pytest.raises(ValueError, match="'body'"):
        scope.top_examples(tiny_model, sae, datasets.Dataset.from_dict({"body": TEXTS}), progress=False)


def test_batched_decoding_equals_the_tokenizers_own(tiny_model):
    """Contexts are decoded in the tokenizer's Rust backend; the strings must be decode()'s."""
    from scope.mining.results import decode_many as _decode_many

    tokenizer = tiny_model.tokenizer
    generator = torch.Generator().manual_seed(0)
    sequences = [torch.randint(0, len(tokenizer), (n,), generator=generator).tolist() for n in [0, 1, 3, 8] * 25]
    sequences.append(tokenizer.encode("naïve café — 東京 🙂", add_special_tokens=False))  # byte-fallback pieces
    assert _decode_many(tokenizer, sequences) == [tokenizer.decode(s) for s in sequences]


# ----------------------------------------------------------------------------- densities and histograms


def test_density_and_histogram_equal_a_direct_count(tiny_model, sae_and_params):
    sae, params = sae_and_params
    mined = scope.mine(tiny_model, sae, TEXTS, k=2, window=6, batch_size=3, progress=False)
    values = []
    for _, _, ids in _windows(tiny_model, TEXTS, 6):
        tokens = torch.tensor([[tiny_model.tokenizer.bos_token_id] + ids])
        _, cache = tiny_model.run_with_cache(tokens, names_filter=HOOK)
        values.append(jumprelu(cache[HOOK][0, 1:], params)[0])
    acts = torch.cat(values)  # [text tokens, features], BOS excluded
    assert mined.n_tokens == acts.shape[0]
    torch.testing.assert_close(mined.density, (acts > 0).double().mean(0))
    edges = mined.histogram_edges.double()
    for feature in range(acts.shape[1]):
        active = acts[:, feature][acts[:, feature] > 0]
        expected = torch.histc(
            torch.bucketize(active, edges[1:-1]).double(), bins=len(edges) - 1, min=0, max=len(edges) - 2
        )
        assert mined.histogram[feature].tolist() == expected.long().tolist()
    assert mined.histogram.sum() == (acts > 0).sum()


# ----------------------------------------------------------------------------- resuming


class Interrupt(Exception):
    pass


def _interrupting(texts, after):
    for i, text in enumerate(texts):
        if i == after:
            raise Interrupt
        yield text


def test_interrupted_run_resumes_to_the_same_result(tiny_model, sae_and_params, tmp_path):
    sae, _ = sae_and_params
    texts = TEXTS * 6
    kwargs = dict(k=3, window=6, batch_size=2, checkpoint_every=2, progress=False)
    expected = scope.top_examples(tiny_model, sae, texts, out=tmp_path / "whole.parquet", **kwargs)
    out = tmp_path / "resumed.parquet"
    with pytest.raises(Interrupt):
        scope.top_examples(tiny_model, sae, _interrupting(texts, 20), out=out, **kwargs)
    checkpoint = tmp_path / ".resumed.parquet.checkpoint"
    assert checkpoint.is_file() and not out.exists()  # a checkpoint, never a half-written result
    assert torch.load(checkpoint, weights_only=True)["windows_done"] > 0  # tensors, ints, strings: no pickle
    resumed = scope.top_examples(tiny_model, sae, texts, out=out, **kwargs)
    pd.testing.assert_frame_equal(resumed, expected)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    assert not checkpoint.exists()


def test_a_checkpoint_of_another_run_is_refused(tiny_model, sae_and_params, tmp_path):
    sae, _ = sae_and_params
    out = tmp_path / "run.parquet"
    with pytest.raises(Interrupt):
        scope.top_examples(
            tiny_model,
            sae,
            _interrupting(TEXTS * 6, 20),
            out=out,
            k=3,
            window=6,
            batch_size=2,
            checkpoint_every=1,
            progress=False,
        )
    with pytest.raises(ValueError, match="different run"):
        scope.top_examples(tiny_model, sae, TEXTS * 6, out=out, k=4, window=6, batch_size=2, progress=False)


def _interrupted(model, sae, texts, out, after=20, **kwargs):
    """Leave the checkpoint of a run over ``texts`` cut short after ``after`` texts."""
    kwargs = dict(k=3, window=6, batch_size=2, checkpoint_every=1, progress=False) | kwargs
    with pytest.raises(Interrupt):
        scope.top_examples(model, sae, _interrupting(texts, after), out=out, **kwargs)
    checkpoint = out.with_name(f".{out.name}.checkpoint")
    assert checkpoint.is_file()
    return checkpoint


OTHER_TEXTS = [t[::-1] for t in TEXTS]  # the same lengths, other tokens


def test_a_resume_checks_the_corpus_whatever_its_source(tiny_model, sae_and_params, tmp_path, forwards):
    """The checkpoint holds a running hash of the windows it read: a resume re-reads (and hashes)
    them before any forward pass, so another corpus, or one now shorter than the part already
    read, is refused whether it comes from a list, a file or a dataset."""
    sae, _ = sae_and_params
    kwargs = dict(k=3, window=6, batch_size=2, checkpoint_every=1, progress=False)
    corpus = TEXTS * 6
    out = tmp_path / "run.parquet"
    checkpoint = _interrupted(tiny_model, sae, corpus, out)
    jsonl = tmp_path / "other.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in OTHER_TEXTS * 6))
    forwards.clear()
    for other, what in [
        (OTHER_TEXTS * 6, "different corpus"),
        (jsonl, "different corpus"),
        (corpus[:3], "has only \\d+ windows"),
        ([], "has only 0 windows"),
    ]:
        with pytest.raises(ValueError, match=what) as info:
            scope.top_examples(tiny_model, sae, other, out=out, **kwargs)
        message = str(info.value)
        assert str(checkpoint) in message and "overwrite=True" in message, message
        assert checkpoint.is_file() and not out.exists()  # the work done is kept for the right corpus
    assert forwards == []  # refused before any work
    # The same corpus from a file resumes: the fingerprint is of token ids, not of where they came from.
    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus))
    resumed = scope.top_examples(tiny_model, sae, same, out=out, **kwargs)
    pd.testing.assert_frame_equal(resumed, scope.top_examples(tiny_model, sae, corpus, **kwargs))
    assert not checkpoint.exists()


def test_overwrite_restarts_and_a_changed_tail_is_a_new_corpus(tiny_model, sae_and_params, tmp_path):
    sae, _ = sae_and_params
    kwargs = dict(k=3, window=6, batch_size=2, checkpoint_every=1, progress=False)
    out = tmp_path / "run.parquet"
    checkpoint = _interrupted(tiny_model, sae, TEXTS * 6, out)
    other = OTHER_TEXTS * 6
    restarted = scope.top_examples(tiny_model, sae, other, out=out, overwrite=True, **kwargs)
    pd.testing.assert_frame_equal(restarted, scope.top_examples(tiny_model, sae, other, **kwargs))
    assert not checkpoint.exists()
    # The part read before the interruption matches; what follows it is simply read: the result is
    # the uninterrupted run's over the corpus given now, never rows of texts not in it.
    _interrupted(tiny_model, sae, TEXTS * 6, out)
    changed = TEXTS * 4 + OTHER_TEXTS * 2
    resumed = scope.top_examples(tiny_model, sae, changed, out=out, **kwargs)
    pd.testing.assert_frame_equal(resumed, scope.top_examples(tiny_model, sae, changed, **kwargs))
    with pytest.raises(TypeError, match="overwrite must be True or False"):
        scope.top_examples(tiny_model, sae, TEXTS, out=out, overwrite="yes", progress=False)


@pytest.mark.parametrize(
    "change", ["features", "k", "context", "window", "batch_size", "sae weights", "sae hook", "model"]
)
def test_every_option_that_changes_the_result_keys_the_checkpoint(
    tiny_model, tiny_dir, make_sae, sae_and_params, tmp_path, change
):
    sae, params = sae_and_params
    kwargs = dict(k=3, window=6, batch_size=2, checkpoint_every=1, progress=False)
    out = tmp_path / "run.parquet"
    checkpoint = _interrupted(tiny_model, sae, TEXTS * 6, out, features=list(range(30)))
    model, kwargs["features"] = tiny_model, list(range(30))
    if change == "features":
        kwargs["features"] = list(range(29))
    elif change in ("k", "context"):
        kwargs[change] = 2
    elif change == "window":
        kwargs["window"] = 7
    elif change == "batch_size":
        kwargs["batch_size"] = 3
    elif change == "sae weights":  # same hook, same width, one threshold nudged
        nudged = dict(params, threshold=params["threshold"] * np.float32(1.0001))
        sae = scope.load_sae(write_params(tmp_path / "nudged" / "params.npz", nudged), hook=HOOK, device="cpu")
    elif change == "sae hook":
        sae = scope.load_sae(
            write_params(tmp_path / "moved" / "params.npz", params), hook="blocks.2.hook_resid_post", device="cpu"
        )
    elif change == "model":  # same name, same shapes, other weights
        from tests.tiny import save_tiny_gemma2

        model = scope.load_model("shieldgemma-2b", weights=save_tiny_gemma2(tmp_path / "other", seed=1), device="cpu")
    with pytest.raises(ValueError, match="different run") as info:
        scope.top_examples(model, sae, TEXTS * 6, out=out, **kwargs)
    assert str(checkpoint) in str(info.value) and "overwrite=True" in str(info.value)
    assert checkpoint.is_file()


class Planted:
    """A pickle that creates ``marker`` when it is loaded (any code could run there instead)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _truncated_checkpoint(tiny_model, sae, tmp_path):
    source = _interrupted(tiny_model, sae, TEXTS * 6, tmp_path / "source" / "run.parquet")
    return source.read_bytes()[: source.stat().st_size // 2]


FOREIGN_CHECKPOINTS = {  # name -> writes the file planted as the checkpoint
    "pickle (torch.save)": lambda path, marker: torch.save({"key": Planted(marker), "windows_done": 3}, path),
    "pickle (plain)": lambda path, marker: path.write_bytes(__import__("pickle").dumps(Planted(marker))),
    "tensors of something else": lambda path, marker: torch.save({"weight": torch.zeros(3)}, path),
    "a lone tensor": lambda path, marker: torch.save(torch.zeros(3), path),
    "text": lambda path, marker: path.write_text("not a checkpoint"),
    "empty": lambda path, marker: path.write_bytes(b""),
}


@pytest.mark.parametrize("name", [*FOREIGN_CHECKPOINTS, "truncated"])
def test_a_foreign_or_truncated_checkpoint_is_refused_naming_it(tiny_model, sae_and_params, tmp_path, forwards, name):
    """Loaded without unpickling code (``torch.load(weights_only=True)``): a planted pickle never
    runs, and anything that is not one of scope's checkpoints is a ValueError naming the file."""
    sae, _ = sae_and_params
    out = tmp_path / "run.parquet"
    checkpoint = tmp_path / ".run.parquet.checkpoint"
    marker = tmp_path / "pwned"
    if name == "truncated":
        truncated = _truncated_checkpoint(tiny_model, sae, tmp_path)
        checkpoint.write_bytes(truncated)
    else:
        FOREIGN_CHECKPOINTS[name](checkpoint, marker)
    forwards.clear()
    with pytest.raises(ValueError) as info:
        scope.top_examples(tiny_model, sae, TEXTS * 6, out=out, k=3, window=6, batch_size=2, progress=False)
    message = str(info.value)
    assert not marker.exists(), "the planted pickle ran"
    assert message.startswith(f"{checkpoint} is not a checkpoint scope.mine can resume") and "overwrite=True" in message
    assert forwards == [] and not out.exists() and checkpoint.is_file()
    got = scope.top_examples(
        tiny_model, sae, TEXTS * 6, out=out, k=3, window=6, batch_size=2, overwrite=True, progress=False
    )
    pd.testing.assert_frame_equal(
        got, scope.top_examples(tiny_model, sae, TEXTS * 6, k=3, window=6, batch_size=2, progress=False)
    )
    assert not marker.exists() and not checkpoint.exists()


KILLED_RUN = """
import os, signal, sys
import scope
from tests.tiny import tiny_model_and_sae
model, sae = tiny_model_and_sae(sys.argv[1], sys.argv[2])
texts = {texts!r}

def killing(texts):
    for i, text in enumerate(texts):
        if i == 20:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind runs
        yield text

scope.top_examples(model, sae, killing(texts), out=sys.argv[3], k=3, window=6, batch_size=2,
                   checkpoint_every=2, progress=False)
"""


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tiny_model, tiny_dir, sae_and_params, tmp_path):
    import subprocess
    import sys

    sae, params = sae_and_params
    texts = TEXTS * 6
    sae_path = write_params(tmp_path / "killed_sae" / "params.npz", params)  # the same SAE, for the child
    out = tmp_path / "killed.parquet"
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", KILLED_RUN.format(texts=texts), str(tiny_dir), str(sae_path), str(out)],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert run.returncode == -9, run.stderr
    assert not out.exists() and (tmp_path / ".killed.parquet.checkpoint").is_file()
    kwargs = dict(k=3, window=6, batch_size=2, checkpoint_every=2, progress=False)
    resumed = scope.top_examples(tiny_model, sae, texts, out=out, **kwargs)
    pd.testing.assert_frame_equal(resumed, scope.top_examples(tiny_model, sae, texts, **kwargs))


# ----------------------------------------------------------------------------- bounded memory


MEMORY_RUN = """
import resource, sys
import scope
from tests.tiny import tiny_model_and_sae
model, sae = tiny_model_and_sae(sys.argv[1], sys.argv[2])
n = int(sys.argv[3])
texts = (f"text number {{i}}: " + "the quick brown fox jumps over the lazy dog " * 12 for i in range(n))
scope.mine(model, sae, texts, k=20, batch_size=16, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.mark.slow
@pytest.mark.heavy
def test_memory_does_not_grow_with_corpus_length(tiny_dir, tmp_path):
    """Peak RSS for 4N texts stays within a few MB of N texts. Keeping one row of maxima per
    example instead of running buffers would cost 3N x 4 windows x 4096 features x 4 bytes more
    (~49 MB here), so the 25 MB bound would catch it.

    Under glibc's default policy freed blocks stay in a heap that later allocations fragment, and
    peak RSS then creeps up with the number of batches whatever the code keeps: a bare forward
    pass of the tiny model alone grew 90 MB from 500 to 4000 texts. The children therefore take
    large blocks straight from the OS (``MALLOC_MMAP_THRESHOLD_``), so that peak RSS counts
    memory that is live, which is what this test is about. The SAE fires on ~5% of its features
    per token (like a real one: memory does not depend on it, and a denser one only makes each
    batch's histogram slower)."""
    import subprocess
    import sys

    params = random_params(64, 4096, seed=1, threshold_scale=8.0)
    sae_path = write_params(tmp_path / "wide" / "params.npz", params)
    root = Path(__file__).resolve().parent.parent

    def peak_kb(n):
        run = subprocess.run(
            [sys.executable, "-c", MEMORY_RUN, str(tiny_dir), str(sae_path), str(n)],
            cwd=root,
            capture_output=True,
            text=True,
            env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
        )
        assert run.returncode == 0, run.stderr
        return int(run.stdout.split()[-1])

    small, large = peak_kb(250), peak_kb(1000)
    assert large - small < 25_000, (small, large)  # KB


# ----------------------------------------------------------------------------- many SAEs in one pass


@pytest.fixture
def three_saes(make_sae):
    """SAEs at three hooks, two of them at the same one (so a dict names them)."""
    return {
        "early": make_sae(hook="blocks.0.hook_resid_post", d_sae=24, seed=5)[0],
        "mid": make_sae(hook=HOOK, d_sae=40, seed=3)[0],
        "mid_b": make_sae(hook=HOOK, d_sae=16, seed=7)[0],
        "late": make_sae(hook="blocks.2.hook_mlp_out", d_sae=32, seed=9)[0],
    }


def _assert_mined_equal(got, expected):
    pd.testing.assert_frame_equal(got.examples, expected.examples)
    assert got.features == expected.features and got.n_tokens == expected.n_tokens
    for name in ("density", "histogram", "context_ids", "context_acts"):
        assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert got.token_strings == expected.token_strings


def test_many_saes_in_one_pass_equal_separate_runs(tiny_model, three_saes, monkeypatch):
    kwargs = dict(k=3, window=6, batch_size=4, progress=False)
    separate = {name: scope.mine(tiny_model, sae, TEXTS, **kwargs) for name, sae in three_saes.items()}
    stops = []
    original = type(tiny_model).forward

    def recording(self, *args, **kw):
        stops.append(kw.get("stop_at_layer"))
        return original(self, *args, **kw)

    monkeypatch.setattr(type(tiny_model), "forward", recording)
    together = scope.mine(tiny_model, three_saes, TEXTS, **kwargs)
    windows = sum(-(-len(tiny_model.tokenizer.encode(t, add_special_tokens=False)) // 5) for t in TEXTS)
    assert stops == [3] * -(-windows // 4)  # one forward per batch, to block 2 and no further
    assert list(together) == list(three_saes)
    for name in three_saes:
        assert len(separate[name].examples) > 10
        _assert_mined_equal(together[name], separate[name])


def test_many_saes_features_and_lists(tiny_model, three_saes):
    kwargs = dict(k=2, window=6, batch_size=3, progress=False)
    saes = [three_saes["early"], three_saes["mid"], three_saes["late"]]
    got = scope.mine(tiny_model, saes, TEXTS, features={HOOK: [5, 1]} | {"blocks.0.hook_resid_post": [2]}, **kwargs)
    assert list(got) == ["blocks.0.hook_resid_post", HOOK, "blocks.2.hook_mlp_out"]  # named by hook
    _assert_mined_equal(got[HOOK], scope.mine(tiny_model, saes[1], TEXTS, features=[5, 1], **kwargs))
    assert got["blocks.0.hook_resid_post"].features == [2] and got["blocks.2.hook_mlp_out"].features == list(range(32))
    with pytest.raises(ValueError, match="Two SAEs of the list read blocks.1.hook_resid_post"):
        scope.mine(tiny_model, [three_saes["mid"], three_saes["mid_b"]], TEXTS, progress=False)
    with pytest.raises(ValueError, match="SAE name 'a/b' cannot name a folder"):
        scope.mine(tiny_model, {"a/b": saes[0]}, TEXTS, progress=False)
    with pytest.raises(ValueError, match="saes is empty"):
        scope.mine(tiny_model, {}, TEXTS, progress=False)
    with pytest.raises(TypeError, match=r"saes\[1\] is a str"):
        scope.mine(tiny_model, [saes[0], "demo"], TEXTS, progress=False)


def test_many_saes_write_a_hive_dataset_that_resumes(tiny_model, three_saes, tmp_path):
    kwargs = dict(k=3, window=6, batch_size=2, checkpoint_every=2, progress=False)
    texts = TEXTS * 5
    singles = {}
    for name, sae in three_saes.items():
        scope.mine(tiny_model, sae, texts, out=tmp_path / f"{name}.parquet", **kwargs)
        singles[name] = pd.read_parquet(tmp_path / f"{name}.parquet")
    out = tmp_path / "many"
    with pytest.raises(Interrupt):
        scope.mine(tiny_model, three_saes, _interrupting(texts, 17), out=out, **kwargs)
    checkpoint = tmp_path / ".many.checkpoint"
    assert checkpoint.is_file() and not out.exists()
    state = torch.load(checkpoint, weights_only=True)
    assert state["windows_done"] > 0 and sorted(state["top"]) == sorted(three_saes)
    resumed = scope.mine(tiny_model, three_saes, texts, out=out, **kwargs)
    assert not checkpoint.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"sae={name}" for name in three_saes)
    for name in three_saes:  # each partition is what a single-SAE run writes
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"sae={name}" / "part-0.parquet"), singles[name])
        pd.testing.assert_frame_equal(resumed[name].examples, singles[name])
    whole = pd.read_parquet(out)
    assert len(whole) == sum(len(f) for f in singles.values())
    pd.testing.assert_frame_equal(
        whole[whole.sae == "late"].drop(columns="sae").reset_index(drop=True), singles["late"]
    )
    # A checkpoint of these SAEs refuses another set, and a rerun replaces the dataset whole.
    with pytest.raises(Interrupt):
        scope.mine(tiny_model, three_saes, _interrupting(texts, 17), out=out, **kwargs)
    fewer = {name: three_saes[name] for name in ("early", "late")}
    with pytest.raises(ValueError, match="different run"):
        scope.mine(tiny_model, fewer, texts, out=out, **kwargs)
    scope.mine(tiny_model, fewer, texts, out=out, overwrite=True, **kwargs)
    assert sorted(p.name for p in out.iterdir()) == ["sae=early", "sae=late"]
    assert not list(tmp_path.glob(".many.*"))  # no temporary folder or checkpoint left behind


def test_cli_hooks_must_pair_with_saes(tmp_path, capsys):
    from scope.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("hello\n")
    argv = ["examples", "--corpus", str(corpus), "--out", str(tmp_path / "o"), "--sae", "demo", "--sae", "demo"]
    assert main([*argv, "--hook", "blocks.1.hook_resid_post"]) == 2
    assert "--hook is given 1 times for 2 --sae" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_mines_several_saes_into_one_dataset(bundled_model, tmp_path, capsys):
    from scope.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "mined"
    hooks = ["blocks.3.hook_resid_post", "blocks.6.hook_resid_post"]
    argv = ["examples", "--corpus", str(corpus), "--out", str(out), "--k", "2", "--features", "1,2,3"]
    assert main([*argv, "--sae", "demo-docs", "--hook", hooks[0], "--sae", "demo-docs", "--hook", hooks[1]]) == 0
    assert f"written to {out}" in capsys.readouterr().out
    for hook in hooks:
        sae = scope.load_sae("demo-docs", hook=hook)
        expected = scope.top_examples(bundled_model, sae, TEXTS, k=2, features=[1, 2, 3], progress=False)
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"sae={hook}" / "part-0.parquet"), expected)


# ----------------------------------------------------------------------------- the pass on the device, with ties

# An SAE on the embeddings: a token's activations are the same wherever it stands (up to float32
# rounding, which can differ with a batch's shape), so windows sharing a peak token tie. Every
# entry must be the brute force's, rank by rank, up to the order of tied values (exact ties'
# reading order is checked on the buffers themselves, in tests/test_mining_buffers.py).
EMBED = "blocks.0.hook_resid_pre"
TIED = [TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[3], TEXTS[1], TEXTS[3]]


def _every_window(model, params, texts, window, hook):
    """Brute force without the cut to k: every (feature, window) maximum, in reading order."""
    return brute_force(model, params, texts, 10**9, window, hook=hook)


def _assert_top_equal_up_to_ties(got, windows, k, features):
    tol = 1e-4
    for feature in features:
        mine = got[got.feature == feature]
        every = windows[windows.feature == feature]
        best = every.activation.sort_values(ascending=False).values[:k]
        assert mine["rank"].tolist() == list(range(1, len(best) + 1))
        assert np.allclose(mine.activation.values, best, rtol=tol, atol=tol)
        by_window = {(row.text_id, row.position): row.activation for row in every.itertuples()}
        assert len(set(zip(mine.text_id, mine.position))) == len(mine)  # distinct examples
        for row in mine.itertuples():  # each entry is a window with that maximum, peaking there
            assert by_window[(row.text_id, row.position)] == pytest.approx(row.activation, rel=tol, abs=tol)


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("mode", ["all", "features", "many", "resume"])
def test_the_device_pass_equals_brute_force_with_ties(tiny_model, make_sae, tmp_path, mode, batch_size):
    saes = {"a": make_sae(hook=EMBED, d_sae=40, seed=3), "b": make_sae(hook=EMBED, d_sae=24, seed=4)}
    k, window = 3, 6
    kwargs = dict(k=k, window=window, batch_size=batch_size, progress=False)
    sae, params = saes["a"]
    features = {"a": range(40), "b": range(24)}
    if mode == "all":
        got = {"a": scope.mine(tiny_model, sae, TIED, **kwargs).examples}
    elif mode == "features":
        features["a"] = [9, 0, 31]
        got = {"a": scope.mine(tiny_model, sae, TIED, features=features["a"], **kwargs).examples}
        assert got["a"].feature.unique().tolist() == [9, 0, 31]  # in the order asked
    elif mode == "many":
        mined = scope.mine(tiny_model, {name: each for name, (each, _) in saes.items()}, TIED, **kwargs)
        got = {name: m.examples for name, m in mined.items()}
    else:
        out = tmp_path / "top.parquet"
        with pytest.raises(Interrupt):
            scope.mine(tiny_model, sae, _interrupting(TIED, 4), out=out, checkpoint_every=1, **kwargs)
        assert checkpoint_path(out).is_file()
        got = {"a": scope.mine(tiny_model, sae, TIED, out=out, checkpoint_every=1, **kwargs).examples}
    for name, frame in got.items():
        windows = _every_window(tiny_model, saes[name][1], TIED, window, EMBED)
        assert (windows.groupby(["feature", "activation"]).size() > 1).sum() > 20  # many exact ties
        _assert_top_equal_up_to_ties(frame, windows, k, features[name])


# ----------------------------------------------------------------------------- bad inputs refused before any work


class Touched(dict):
    """A dict of SAEs that records every SAE taken out of it (a lazy set loads each there)."""

    taken: list

    def __getitem__(self, key):
        self.taken.append(key)
        return super().__getitem__(key)

    def items(self):
        self.taken.append("items")
        return super().items()

    def values(self):
        self.taken.append("values")
        return super().values()


@pytest.mark.parametrize(
    "names, message",
    [
        ((1, "1"), "SAE names 1 and '1' would both write the folder sae=1"),
        (("Mid", "mid"), "SAE names 'Mid' and 'mid' would both write the folder sae=mid"),
        (("caf\u00e9", "cafe\u0301"), "SAE names 'caf.+' and 'caf.+' would both write"),  # NFC, NFD
        (("a/b", "c"), "SAE name 'a/b' cannot name a folder"),
        (("a=b", "c"), "SAE name 'a=b' cannot name a folder"),
        (("a%2Fb", "c"), "SAE name 'a%2Fb' cannot name a folder"),
        (("..", "c"), r"SAE name '\.\.' cannot name a folder"),
        (("a\nb", "c"), r"SAE name 'a\\nb' cannot name a folder"),
        (("a\0b", "c"), r"SAE name 'a\\x00b' cannot name a folder"),
    ],
)
def test_sae_names_one_folder_cannot_hold_are_refused_before_any_work(
    tiny_model, three_saes, tmp_path, forwards, names, message
):
    saes = Touched(zip(names, [three_saes["early"], three_saes["late"]]))
    saes.taken = []
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ValueError, match=message):
        scope.mine(tiny_model, saes, TEXTS, out=work / "many", progress=False)
    assert forwards == [] and saes.taken == [] and not list(work.iterdir())


def test_features_for_no_sae_is_an_error_naming_the_saes(tiny_model, three_saes, forwards):
    with pytest.raises(
        ValueError,
        match=r"features has an entry for 'middle', which names no SAE here; the SAEs are 'early', 'mid', 'mid_b', 'late'",
    ):
        scope.mine(tiny_model, three_saes, TEXTS, features={"mid": [1], "middle": [2]}, progress=False)
    assert forwards == []
    # Keys given as the names' text reach SAEs named by other keys (here ints), as on Ray.
    by_layer = {0: three_saes["early"], 2: three_saes["late"]}
    got = scope.mine(tiny_model, by_layer, TEXTS, features={"2": [5, 1]}, k=2, progress=False)
    assert got[2].features == [5, 1] and got[0].features == list(range(24))


def test_an_out_under_a_file_fails_before_any_sae_is_touched(
    tiny_model, sae_and_params, three_saes, tmp_path, forwards
):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    sae, _ = sae_and_params
    with pytest.raises(NotADirectoryError, match=f"out='{blocker / 'top.parquet'}': '{blocker}' is a file"):
        scope.mine(tiny_model, sae, TEXTS, out=blocker / "top.parquet", progress=False)
    saes = Touched(three_saes)
    saes.taken = []
    with pytest.raises(NotADirectoryError, match=f"'{blocker}' is a file, not a folder"):
        scope.mine(tiny_model, saes, TEXTS, out=blocker / "many", progress=False)
    assert forwards == [] and saes.taken == []  # a lazy set would have loaded nothing
    assert blocker.read_text() == "not a folder"


def test_temps_of_killed_writers_are_removed_and_a_live_writers_kept(tiny_model, sae_and_params, tmp_path):
    import subprocess
    import sys
    import time

    sae, _ = sae_and_params
    (tmp_path / "work").mkdir()
    out = tmp_path / "work" / "top.parquet"
    checkpoint = checkpoint_path(out)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        time.sleep(0.05)
        dead = [
            checkpoint.with_name(f".{checkpoint.name}.tmp-{gone.pid}"),
            out.with_name(f".{out.name}.tmp-{gone.pid}"),
        ]
        reused = checkpoint.with_name(f".{checkpoint.name}.tmp-{os.getpid()}")  # written before this process began
        live = checkpoint.with_name(f".{checkpoint.name}.tmp-{writer.pid}")  # being written now
        for path in [*dead, reused, live]:
            path.write_bytes(b"half a checkpoint")
        os.utime(reused, (time.time() - 30 * 86400,) * 2)
        got = scope.top_examples(tiny_model, sae, TEXTS, k=2, out=out, progress=False)
        pd.testing.assert_frame_equal(pd.read_parquet(out), got)
        assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, live.name])
    finally:
        writer.kill()
        writer.wait()
