import pytest

from scope.cli import main


def test_models_lists_every_subject(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ["gemma-2-2b-it", "shieldgemma-27b", "gemma-3-270m", "gemma-scope-2b-pt-res-canonical"]:
        assert name in out


def test_user_errors_are_one_line_and_exit_2(capsys):
    assert main(["generate", "hello", "--model", "gemma-2-3b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scope: error: Unknown model 'gemma-2-3b'") and err.count("\n") == 1


@pytest.mark.slow
def test_demo_runs_on_the_bundled_model(capsys):
    assert main(["demo", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "Greedy continuation" in out
    assert "norm at BOS" in out or "Top demo-SAE features per token" in out


def test_steer_prints_unsteered_and_steered(capsys, tmp_path, tiny_dir, monkeypatch):
    import scope
    from tests.sae_util import random_params, write_params

    path = write_params(tmp_path / "params.npz", random_params(64, 16, seed=1))
    original = scope.load_model
    monkeypatch.setattr(scope, "load_model", lambda name, **kw: original("shieldgemma-2b", weights=tiny_dir, **kw))
    code = main(["steer", "Paris is the capital", "--feature", "3", "--value", "40", "--mode", "add",
                 "--sae", str(path), "--hook", "blocks.1.hook_resid_post", "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    assert code == 0 and "unsteered" in out and "Add(f=3, 40)" in out
    assert main(["steer", "x", "--feature", "99", "--value", "1", "--sae", str(path),
                 "--hook", "blocks.1.hook_resid_post"]) == 2
    err = capsys.readouterr().err
    assert "feature 99 is out of range" in err and "valid indices 0..15" in err


def test_examples_and_dashboard_refuse_a_bad_out_or_corpus_before_loading_a_model(capsys, tmp_path, monkeypatch):
    import scope

    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "Paris is the capital of France."}\n')
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("")
    for argv, message in [
        (["examples", "--corpus", str(corpus), "--out", str(tmp_path)], f"--out='{tmp_path}' is a directory"),
        (["examples", "--corpus", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "top.parquet")],
         f"No corpus file at {tmp_path / 'missing.jsonl'}"),
        (["examples", "--corpus", str(tmp_path / "corpus.csv"), "--out", str(tmp_path / "top.parquet")],
         "Unknown corpus file type '.csv'"),
        (["dashboard", "--corpus", str(corpus), "--features", "1", "--out", str(a_file)],
         f"--out='{a_file}' is a file"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"scope: error: {message}") and err.count("\n") == 1, err


def test_examples_and_dashboard_write_what_the_library_gives(capsys, tmp_path, tiny_dir, tiny_model, monkeypatch):
    import pandas as pd

    import scope
    from tests.sae_util import random_params, write_params

    hook = "blocks.1.hook_resid_post"
    path = write_params(tmp_path / "params.npz", random_params(64, 16, seed=1))
    texts = ["Paris is the capital of France.", "The quick brown fox jumps over the lazy dog."]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(t + "\n" for t in texts))
    original = scope.load_model
    monkeypatch.setattr(scope, "load_model", lambda name, **kw: original("shieldgemma-2b", weights=tiny_dir, **kw))
    out = tmp_path / "top.parquet"
    assert main(["examples", "--corpus", str(corpus), "--sae", str(path), "--hook", hook, "--out", str(out),
                 "--k", "2", "--context", "3"]) == 0
    expected = scope.top_examples(tiny_model, scope.load_sae(path, hook=hook, device="cpu"), texts, k=2, context=3,
                                  progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    assert f"written to {out}" in capsys.readouterr().out
    pages = tmp_path / "pages"
    assert main(["dashboard", "--corpus", str(corpus), "--sae", str(path), "--hook", hook, "--features", "3,5",
                 "--out", str(pages), "--k", "2"]) == 0
    assert sorted(p.name for p in pages.iterdir()) == ["feature_3.html", "feature_5.html", "index.html"]
