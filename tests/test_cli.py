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
    assert "Greedy continuation" in out and "norm at BOS" in out
