import argparse
import json
import re

import pandas as pd
import pytest

from scope.cli import build_parser, main
from scope.cli.demo import golden_gate_file
from scope.saes import DEMO_SAES

HOOK = "blocks.1.hook_resid_post"
TEXTS = [
    "Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b): return a + b",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
]


def _one_line(capsys, pattern: str, prefix: str = "scope: error: ") -> str:
    """stderr is one line starting with ``prefix`` and matching ``pattern``; no traceback anywhere."""
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out
    assert err.count("\n") == 1 and err.startswith(prefix), err
    assert re.search(pattern, err), err
    return err


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
    # the general demo SAE: labelled features per token, then what the Golden Gate search found
    assert "Top demo-SAE features per token (blocks.9.hook_resid_post)" in out
    result = json.loads(golden_gate_file().read_text())
    if result["meets_target"]:
        assert f"The Golden Gate moment: feature {result['feature']} (" in out
    else:  # never a missed pick presented as the moment
        assert "Golden Gate: no SAE feature reached the target yet" in out and "moment" not in out


def _gate(folder, meets: bool, mention: float):
    folder.mkdir(parents=True)
    result = {"meets_target": meets, "target": {"mention_fraction": 0.5, "max_perplexity_ratio": 2.0}}
    result["heldout"] = {"mention_fraction": mention, "perplexity_ratio": 1.5}
    (folder / "golden_gate.json").write_text(json.dumps(result))


def test_demo_shows_the_first_bundled_sae_whose_feature_reaches_the_golden_gate_target(tmp_path, monkeypatch):
    import dataclasses

    names = ["demo", "demo-docs", "demo-modern"]
    entries = {n: dataclasses.replace(DEMO_SAES[n], folder=tmp_path / n) for n in names}
    monkeypatch.setattr("scope.cli.demo.DEMO_SAES", entries)
    _gate(tmp_path / "demo", meets=False, mention=0.0)
    _gate(tmp_path / "demo-docs", meets=True, mention=0.4)  # claims the target, its figures do not reach it
    _gate(tmp_path / "demo-modern", meets=True, mention=0.6)
    assert golden_gate_file() == tmp_path / "demo-modern" / "golden_gate.json"
    (tmp_path / "demo-modern" / "golden_gate.json").unlink()  # none reaches it: the general SAE's honest figure
    assert golden_gate_file() == tmp_path / "demo" / "golden_gate.json"


def test_steer_prints_unsteered_and_steered(capsys, tmp_path, tiny_dir, monkeypatch):
    import scope
    from tests.sae_util import random_params, write_params

    path = write_params(tmp_path / "params.npz", random_params(64, 16, seed=1))
    original = scope.load_model
    monkeypatch.setattr(scope, "load_model", lambda name, **kw: original("shieldgemma-2b", weights=tiny_dir, **kw))
    code = main(
        [
            "steer",
            "Paris is the capital",
            "--feature",
            "3",
            "--value",
            "40",
            "--mode",
            "add",
            "--sae",
            str(path),
            "--hook",
            "blocks.1.hook_resid_post",
            "--max-new-tokens",
            "6",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "unsteered" in out and "Add(f=3, 40)" in out
    assert (
        main(
            ["steer", "x", "--feature", "99", "--value", "1", "--sae", str(path), "--hook", "blocks.1.hook_resid_post"]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "feature 99 is out of range" in err and "valid indices 0..15" in err


def test_examples_and_dashboard_refuse_a_bad_out_or_corpus_before_loading_a_model(capsys, tmp_path, monkeypatch):
    import scope

    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "Paris is the capital of France."}\n')
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("")
    for argv, code, message in [
        (["examples", "--corpus", str(corpus), "--out", str(tmp_path)], 1, f"--out='{tmp_path}' is a directory"),
        (
            ["examples", "--corpus", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "top.parquet")],
            1,
            f"No corpus file at {tmp_path / 'missing.jsonl'}",
        ),
        (
            ["examples", "--corpus", str(tmp_path / "corpus.csv"), "--out", str(tmp_path / "top.parquet")],
            2,
            "Unknown corpus file type '.csv'",
        ),
        (
            ["dashboard", "--corpus", str(corpus), "--features", "1", "--out", str(a_file)],
            1,
            f"--out='{a_file}' is a file",
        ),
    ]:
        assert main(argv) == code, argv
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
    assert (
        main(
            [
                "examples",
                "--corpus",
                str(corpus),
                "--sae",
                str(path),
                "--hook",
                hook,
                "--out",
                str(out),
                "--k",
                "2",
                "--context",
                "3",
            ]
        )
        == 0
    )
    expected = scope.top_examples(
        tiny_model, scope.load_sae(path, hook=hook, device="cpu"), texts, k=2, context=3, progress=False
    )
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    assert f"written to {out}" in capsys.readouterr().out
    pages = tmp_path / "pages"
    assert (
        main(
            [
                "dashboard",
                "--corpus",
                str(corpus),
                "--sae",
                str(path),
                "--hook",
                hook,
                "--features",
                "3,5",
                "--out",
                str(pages),
                "--k",
                "2",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in pages.iterdir()) == [
        "feature_3.html",
        "feature_5.html",
        "index.html",
        "plotly.min.js",
    ]


@pytest.fixture
def no_model(monkeypatch):
    import scope

    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: pytest.fail("a model was loaded"))


@pytest.fixture
def files(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(t + "\n" for t in TEXTS))
    from tests.sae_util import random_params, write_params

    sae = write_params(tmp_path / "sae" / "params.npz", random_params(64, 16, seed=1))
    return corpus, sae, tmp_path / "top.parquet"


USAGE_ERRORS = [  # argv (with {corpus}, {sae}, {out}), regex; all exit 2 before any model loads
    ([], r"the following arguments are required: command"),
    (["nope"], r"invalid choice: 'nope'"),
    (["features"], r"the following arguments are required: text"),
    (["features", "hi", "--k", "x"], r"argument --k: must be a positive integer, got 'x'"),
    (["features", "hi", "--k", "0"], r"argument --k: must be a positive integer, got '0'"),
    (["generate", "hi", "--temperature", "-1"], r"argument --temperature: must be a finite number >= 0, got '-1'"),
    (["generate", "hi", "--temperature", "nan"], r"argument --temperature: must be a finite number >= 0, got 'nan'"),
    (["generate", "hi", "--top-p", "1.5"], r"argument --top-p: must be a number in \(0, 1\], got '1.5'"),
    (["generate", "hi", "--max-new-tokens", "0"], r"argument --max-new-tokens: must be a positive integer"),
    (["generate", "hi", "--model", "gemma-2-3b"], r"scope: error: Unknown model 'gemma-2-3b'"),
    (["steer", "hi", "--feature", "-1", "--value", "1"], r"argument --feature: must be a non-negative integer"),
    (["steer", "hi", "--feature", "1", "--value", "inf"], r"argument --value: must be a finite number, got 'inf'"),
    (["shield", "hi", "--policy", "nope"], r"Unknown policy 'nope'"),
    (
        ["features", "hi", "--sae", "gemma-scope-2b-pt-res-canonical/nope"],
        r"SAE id 'nope' is not in release 'gemma-scope-2b-pt-res-canonical'",
    ),
    (
        ["examples", "--corpus", "{corpus}", "--out", "{out}", "--features", "1,x"],
        r"argument --features: must be comma-separated integers like 1,2,3, got '1,x'",
    ),
    (
        ["examples", "--corpus", "{corpus}", "--out", "{out}", "--checkpoint-every", "0"],
        r"argument --checkpoint-every: must be a positive integer, got '0'",
    ),
    (
        ["examples", "--corpus", "{corpus}", "--out", "{out}", "--context", "-1"],
        r"argument --context: must be a non-negative integer, got '-1'",
    ),
    (["examples", "--out", "{out}"], r"the following arguments are required: --corpus"),
]


@pytest.mark.parametrize("argv, pattern", USAGE_ERRORS, ids=[" ".join(a) or "nothing" for a, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line_and_exit_2_before_a_model_loads(capsys, no_model, files, argv, pattern):
    corpus, sae, out = files
    argv = [a.format(corpus=corpus, sae=sae, out=out) for a in argv]
    assert main(argv) == 2
    _one_line(capsys, pattern)
    assert not out.exists()


def test_a_missing_sae_is_found_before_a_model_loads(capsys, no_model, tmp_path):
    assert main(["features", "hi", "--sae", str(tmp_path / "nope" / "params.npz"), "--hook", HOOK]) == 1
    _one_line(capsys, f"No such SAE file or folder: {re.escape(str(tmp_path))}/nope/params.npz")


@pytest.mark.parametrize(
    "error, code",
    [("ModelUnavailableError", 1), ("RuntimeError", 1), ("OSError", 1), ("ValueError", 2), ("TypeError", 2)],
)
def test_errors_map_to_exit_codes_on_one_line(capsys, monkeypatch, error, code):
    import scope

    kind = (
        getattr(scope, error)
        if error == "ModelUnavailableError"
        else {"RuntimeError": RuntimeError, "OSError": OSError, "ValueError": ValueError, "TypeError": TypeError}[error]
    )

    def fail(*args, **kwargs):
        raise kind("Cannot download google/gemma-2-2b:\nyou are offline.")

    monkeypatch.setattr(scope, "load_model", fail)
    assert main(["generate", "hi", "--model", "gemma-2-2b"]) == code
    _one_line(capsys, r"^scope: error: Cannot download google/gemma-2-2b: you are offline\.$")


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    import scope

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scope, "load_model", interrupt)
    assert main(["generate", "hi"]) == 130
    _one_line(capsys, r"^scope: interrupted$", prefix="scope: interrupted")


def test_ctrl_c_while_mining_keeps_the_checkpoint_and_the_same_command_resumes(capsys, monkeypatch, tiny_model, files):
    import scope
    import scope.examples

    corpus, sae_path, out = files
    corpus.write_text("".join(t + "\n" for t in TEXTS * 9))
    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: tiny_model)
    read = scope.examples.iter_texts

    def interrupted(texts):
        for i, text in enumerate(read(texts)):
            if i == 20:
                raise KeyboardInterrupt
            yield text

    monkeypatch.setattr(scope.examples, "iter_texts", interrupted)
    argv = [
        "examples",
        "--corpus",
        str(corpus),
        "--sae",
        str(sae_path),
        "--hook",
        HOOK,
        "--out",
        str(out),
        "--k",
        "3",
        "--checkpoint-every",
        "1",
    ]
    assert main(argv) == 130
    checkpoint = out.with_name(f".{out.name}.checkpoint")
    _one_line(capsys, f"^scope: interrupted; {re.escape(str(checkpoint))} keeps the work done", prefix="scope: ")
    assert checkpoint.is_file() and not out.exists()
    monkeypatch.setattr(scope.examples, "iter_texts", read)
    assert main(argv) == 0
    sae = scope.load_sae(sae_path, hook=HOOK, device="cpu")
    pd.testing.assert_frame_equal(
        pd.read_parquet(out), scope.top_examples(tiny_model, sae, TEXTS * 9, k=3, progress=False)
    )
    assert not checkpoint.exists()


def test_a_checkpoint_of_another_run_names_the_file_and_overwrite_restarts(capsys, monkeypatch, tiny_model, files):
    import torch

    import scope

    corpus, sae_path, out = files
    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: tiny_model)
    checkpoint = out.with_name(f".{out.name}.checkpoint")
    torch.save({"weight": torch.zeros(3)}, checkpoint)
    argv = ["examples", "--corpus", str(corpus), "--sae", str(sae_path), "--hook", HOOK, "--out", str(out), "--k", "2"]
    assert main(argv) == 2
    _one_line(capsys, f"^scope: error: {re.escape(str(checkpoint))} is not a checkpoint .*--overwrite")
    assert main([*argv, "--overwrite"]) == 0
    assert out.is_file() and not checkpoint.exists()


def _parsers():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [parser, *subparsers.choices.values()]


def test_every_option_has_help_and_shows_its_default():
    for parser in _parsers():
        assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), parser.prog
        formatter = parser.formatter_class(parser.prog)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, (parser.prog, action.dest)
            if action.option_strings and not action.required:
                assert "default" in formatter._get_help_string(action), (parser.prog, action.dest)


def test_help_shows_defaults(capsys):
    assert main(["examples", "--help"]) == 0
    out = capsys.readouterr().out
    assert "examples per feature (default: 20)" in " ".join(out.split())
    assert "--checkpoint-every" in out and "--overwrite" in out


# ----------------------------------------------------------------------------- issue 24: the command


def test_steer_refuses_a_unit_with_mode_add_before_a_model_loads(capsys, no_model, files):
    _, sae, _ = files
    argv = ["steer", "x", "--feature", "1", "--value", "4", "--mode", "add", "--sae", str(sae), "--hook", HOOK]
    assert main([*argv, "--unit", "max"]) == 2
    _one_line(capsys, r"--unit max applies to --mode clamp only.*Drop --unit, or use --mode clamp")
    assert main([*argv, "--unit", "act"]) == 2
    _one_line(capsys, r"--unit act applies to --mode clamp only")


def test_serve_checks_its_port_and_address_before_a_model_loads(capsys, no_model):
    import socket

    assert main(["serve", "--sae", "demo-docs", "--port", "99999"]) == 2
    _one_line(capsys, r"argument --port: must be a port number in 1\.\.65535, got '99999'")
    assert main(["serve", "--sae", "demo-docs", "--request-timeout", "0"]) == 2
    _one_line(capsys, r"argument --request-timeout: must be a number of seconds > 0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--sae", "demo-docs", "--port", str(port)]) == 1
        _one_line(capsys, rf"cannot listen on 127\.0\.0\.1:{port}: .*in use")
    assert main(["serve", "--sae", "demo-docs", "--host", "127.0.0.1", "--api-key", ""]) == 2
    _one_line(capsys, r"--api-key is empty")


def test_help_imports_neither_the_library_nor_pandas():
    """`scope --help` reads the parser alone: each command's module (and torch, pandas, the library)
    is imported only when that command runs."""
    import subprocess
    import sys

    code = (
        "import sys; from scope.cli import main; code = main(['--help']); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pandas', 'transformer_lens', 'sae_lens') "
        "or (m.startswith('scope.') and not m.startswith('scope.cli'))); print(code, heavy, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stderr.strip() == "0 []"
    assert "serve" in done.stdout and "steer" in done.stdout


def test_examples_overlap_reaches_the_library_and_is_checked_before_a_model_loads(
    capsys, tmp_path, tiny_model, monkeypatch
):
    """A text of two 128-token windows or more: --overlap 40 gives what scope.top_examples(overlap=40)
    gives, not what its default overlap (16) gives."""
    import scope
    from tests.sae_util import random_params, write_params

    path = write_params(tmp_path / "params.npz", random_params(64, 16, seed=1))
    corpus = tmp_path / "corpus.txt"
    text = " ".join(TEXTS[:3] * 6)
    corpus.write_text(text + "\n")
    assert len(tiny_model.tokenizer.encode(text)) > 128 + 40  # two windows at least
    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    argv = ["examples", "--corpus", str(corpus), "--sae", str(path), "--hook", HOOK, "--k", "3"]
    assert main([*argv, "--out", str(tmp_path / "x.parquet"), "--overlap", "127"]) == 2
    _one_line(capsys, r"argument --overlap: must be an integer from 0 to 126 \(windows are 128 tokens")
    monkeypatch.setattr(scope, "load_model", lambda *args, **kwargs: tiny_model)
    out = tmp_path / "top.parquet"
    assert main([*argv, "--out", str(out), "--overlap", "40"]) == 0
    sae = scope.load_sae(path, hook=HOOK, device="cpu")
    expected = scope.top_examples(tiny_model, sae, [text], k=3, overlap=40, progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    default = scope.top_examples(tiny_model, sae, [text], k=3, progress=False)
    assert not default["activation"].equals(expected["activation"])
