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
    assert "Feature index 99" in capsys.readouterr().err
