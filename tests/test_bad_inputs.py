"""A careless or hostile user's inputs, walked through the API and the CLI.

Every row must end in ONE exception of the expected type whose message names the bad value and
what would be valid; afterwards the model carries no hook and no SAE, and no file was written.
The CLI rows must exit non-zero with one line on stderr and no traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import scope
from scope import shield

TEXT = "The quick brown fox jumps over the lazy dog."
LONG = "word " * 400  # past the tiny model's context of 256 tokens


def _corpus(tmp: Path, name: str, content: bytes) -> Path:
    path = tmp / name
    path.write_bytes(content)
    return path


# Checkpoints: a run over CORPUS cut short leaves .planted.parquet.checkpoint (an input of the case).
CORPUS = [TEXT, "Paris is the capital of France.", "def add(a, b): return a + b"] * 3
MINE = dict(k=3, window=6, batch_size=2, checkpoint_every=1, progress=False)


class _CutShortError(Exception):
    pass


class _Planted:
    """A pickle that creates the file ``marker`` when it is loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _resume(model, sae, tmp: Path, texts, **changes):
    out = tmp / "planted.parquet"

    def cut_short():
        yield from CORPUS[:5]
        raise _CutShortError

    with pytest.raises(_CutShortError):
        scope.mine(model, sae, cut_short(), out=out, **MINE)
    return scope.mine(model, sae, texts, out=out, **(MINE | changes))


def _plant(model, sae, tmp: Path, write):
    write(tmp / ".planted.parquet.checkpoint", tmp / "pwned")  # "pwned" would be left behind: the test sees it
    return scope.mine(model, sae, CORPUS, out=tmp / "planted.parquet", **MINE)


def _pickle(path: Path, marker: Path) -> None:
    import torch

    torch.save({"format": "scope.mine checkpoint", "key": _Planted(marker)}, path)


def _truncated(path: Path, marker: Path) -> None:
    import torch

    torch.save({"format": "scope.mine checkpoint", "windows": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])


# (id, call(model, sae, tmp), exception type, regex the message must match)
API_CASES = [
    # models and SAEs
    (
        "unknown model",
        lambda m, s, t: scope.load_model("gemma-2-3b"),
        ValueError,
        r"gemma-2-3b.*Valid names.*gemma-2-2b",
    ),
    ("model name not a string", lambda m, s, t: scope.load_model(2), TypeError, r"model name must be a string"),
    (
        "cuda without cuda",
        lambda m, s, t: scope.load_model("gemma-2-2b", device="cuda"),
        ValueError,
        r"cuda.*no CUDA.*device='cpu'",
    ),
    ("bad dtype", lambda m, s, t: scope.load_model("gemma-2-2b", dtype="float33"), ValueError, r"float33.*float32"),
    ("layer out of range", lambda m, s, t: scope.gemma_scope_id("gemma-2-2b", 26), ValueError, r"layer 26.*0-25"),
    (
        "layer not an int",
        lambda m, s, t: scope.gemma_scope_id("gemma-2-2b", "20"),
        TypeError,
        r"layer must be an integer",
    ),
    ("unknown width", lambda m, s, t: scope.gemma_scope_id("gemma-2-2b", 20, width="17k"), ValueError, r"17k.*16k"),
    ("unknown site", lambda m, s, t: scope.gemma_scope_id("gemma-2-2b", 20, site="resid"), ValueError, r"resid.*'res'"),
    (
        "no such SAE file",
        lambda m, s, t: scope.load_sae(str(t / "nope" / "params.npz"), hook="blocks.1.hook_resid_post"),
        FileNotFoundError,
        r"nope/params\.npz",
    ),
    (
        "malformed params.npz",
        lambda m, s, t: scope.load_sae(_corpus(t, "params.npz", b"not a zip"), hook="blocks.1.hook_resid_post"),
        ValueError,
        r"params\.npz is not a readable params\.npz",
    ),
    (
        "NaN in an SAE weight",
        lambda m, s, t: scope.load_sae(_npz(t, nan_at="W_dec"), hook="blocks.1.hook_resid_post"),
        ValueError,
        r"bare/params\.npz: the SAE tensor W_dec holds 1 non-finite values",
    ),
    (
        "truncated sae_weights.safetensors",
        lambda m, s, t: scope.load_sae(_sae_lens_folder(t, s, truncate=True)),
        ValueError,
        r"folder/sae_weights\.safetensors is not a readable safetensors file",
    ),
    (
        "cfg.json without d_sae",
        lambda m, s, t: scope.load_sae(_sae_lens_folder(t, s, drop="d_sae")),
        ValueError,
        r"folder/cfg\.json lacks d_sae: .*needs d_in, d_sae",
    ),
    ("params.npz without hook", lambda m, s, t: scope.load_sae(_npz(t)), ValueError, r"hook= is required"),
    ("SAE spec of a wrong type", lambda m, s, t: scope.load_sae(3), TypeError, r"spec must be"),
    (
        "SAE too wide for the model",
        lambda m, s, t: scope.encode(m, _wide_sae(t), TEXT),
        ValueError,
        r"d_in is 128 but .* width 64 at blocks\.1\.hook_resid_post",
    ),
    (
        "SAE at a hook the model lacks",
        lambda m, s, t: scope.feature_logits(m, _sae_at(t, "blocks.9.hook_resid_post"), 1),
        ValueError,
        r"no hook 'blocks\.9\.hook_resid_post'.*Blocks are 0\.\.3",
    ),
    # features
    (
        "feature past the width",
        lambda m, s, t: scope.feature_logits(m, s, 48),
        ValueError,
        r"feature 48 is out of range.*0\.\.47",
    ),
    ("negative feature", lambda m, s, t: scope.feature_logits(m, s, -1), ValueError, r"feature -1 is out of range"),
    ("float feature", lambda m, s, t: scope.feature_logits(m, s, 1.5), TypeError, r"feature must be an integer"),
    ("k zero", lambda m, s, t: scope.top_features(m, s, TEXT, k=0), ValueError, r"k must be a positive integer, got 0"),
    ("k bool", lambda m, s, t: scope.top_features(m, s, TEXT, k=True), TypeError, r"k must be an integer"),
    ("text not a string", lambda m, s, t: scope.top_features(m, s, 42), TypeError, r"text must be a string"),
    (
        "text past the context (encode)",
        lambda m, s, t: scope.encode(m, s, LONG),
        ValueError,
        r"\d+ tokens.*context of 256",
    ),
    (
        "text past the context (trace)",
        lambda m, s, t: scope.trace(m, [s], LONG),
        ValueError,
        r"\d+ tokens.*context of 256",
    ),
    (
        "text past the context (generate)",
        lambda m, s, t: scope.generate(m, LONG),
        ValueError,
        r"\d+ tokens.*max_new_tokens=64.*context of 256",
    ),
    # steering
    (
        "clamp past the width",
        lambda m, s, t: scope.generate(m, TEXT, sae=s, steering=[scope.Clamp(4095, 5)]),
        ValueError,
        r"Clamp feature 4095 is out of range.*0\.\.47",
    ),
    ("NaN strength", lambda m, s, t: scope.Add(3, float("nan")), ValueError, r"Add value must be a finite number"),
    ("strength as a string", lambda m, s, t: scope.Clamp(3, "5"), TypeError, r"Clamp value must be a number"),
    (
        "unknown clamp unit",
        lambda m, s, t: scope.Clamp(3, 5, unit="percent"),
        ValueError,
        r"'act', 'max', got 'percent'",
    ),
    (
        "clamp in max units without stats",
        lambda m, s, t: scope.generate(m, TEXT, sae=s, steering=[scope.Clamp(3, 2, unit="max")]),
        ValueError,
        r"max activations.*set_max_activations",
    ),
    (
        "steering without an SAE",
        lambda m, s, t: scope.generate(m, TEXT, steering=[scope.Add(3, 5)]),
        ValueError,
        r"has no SAE",
    ),
    (
        "not an intervention",
        lambda m, s, t: scope.generate(m, TEXT, sae=s, steering=["Add(3, 5)"]),
        TypeError,
        r"Expected scope\.Add",
    ),
    (
        "BOS position",
        lambda m, s, t: scope.generate(m, TEXT, sae=s, steering=[scope.Add(3, 5)], positions=[0]),
        ValueError,
        r"includes 0, the BOS token",
    ),
    (
        "position past the generation",
        lambda m, s, t: scope.generate(m, TEXT, sae=s, steering=[scope.Add(3, 5)], positions=[500], max_new_tokens=4),
        ValueError,
        r"positions \[500\]",
    ),
    (
        "unknown position mode",
        lambda m, s, t: scope.generate(m, TEXT, sae=s, steering=[scope.Add(3, 5)], positions="every"),
        ValueError,
        r"'all', 'prompt', 'generated', got 'every'",
    ),
    (
        "overflowing strength",
        lambda m, s, t: scope.generate(m, TEXT, sae=s, steering=[scope.Add(3, 1e30)], max_new_tokens=2),
        ValueError,
        r"non-finite",
    ),
    (
        "one feature clamped twice",
        lambda m, s, t: scope.generate(m, TEXT, sae=s, steering=[scope.Clamp(3, 1.0), scope.Clamp(3, 2.0)]),
        ValueError,
        r"Clamp\(feature=3, value=1\.0.*Clamp\(feature=3, value=2\.0.*both set feature 3.*at most one Clamp",
    ),
    (
        "steering after the last block",
        lambda m, s, t: scope.generate(m, TEXT, sae=_sae_at(t, "ln_final.hook_normalized"), steering=[scope.Add(3, 5)]),
        ValueError,
        r"Cannot steer at ln_final\.hook_normalized.*Steer blocks\.3\.hook_resid_post",
    ),
    (
        "steering attention patterns",
        lambda m, s, t: scope.generate(
            m, TEXT, sae=_sae_at(t, "blocks.1.attn.hook_pattern", d_in=11), steering=[scope.Add(3, 5)]
        ),
        ValueError,
        r"Cannot steer at blocks\.1\.attn\.hook_pattern.*not one activation per token",
    ),
    (
        "a hook that never runs",
        lambda m, s, t: scope.encode(m, _sae_at(t, "blocks.1.attn.hook_result"), TEXT),
        ValueError,
        r"blocks\.1\.attn\.hook_result never runs.*cfg\.use_attn_result.*set_use_attn_result\(True\)",
    ),
    (
        "infinite temperature",
        lambda m, s, t: scope.generate(m, TEXT, temperature=float("inf")),
        ValueError,
        r"temperature must be a finite number",
    ),
    (
        "negative temperature",
        lambda m, s, t: scope.generate(m, TEXT, temperature=-1),
        ValueError,
        r"temperature must be >= 0",
    ),
    (
        "max_new_tokens bool",
        lambda m, s, t: scope.generate(m, TEXT, max_new_tokens=True),
        TypeError,
        r"max_new_tokens must be an integer",
    ),
    (
        "top_p out of range",
        lambda m, s, t: scope.generate(m, TEXT, top_p=1.5),
        ValueError,
        r"top_p must be in \(0, 1\]",
    ),
    (
        "seed past what torch takes",
        lambda m, s, t: scope.generate(m, TEXT, temperature=1.0, seed=2**70, sae=s, steering=[scope.Add(3, 1.0)]),
        ValueError,
        r"seed must be an integer in 0\.\.2\*\*64 - 1 \(18446744073709551615\), got 1180591620717411303424",
    ),
    (
        "one of the seeds past what torch takes",
        lambda m, s, t: scope.generate(m, [TEXT, TEXT], temperature=1.0, seed=[1, 2**64]),
        ValueError,
        r"seed must be an integer in 0\.\.2\*\*64 - 1.*got 18446744073709551616",
    ),
    (
        "a judge's table of several methods",
        lambda m, s, t: scope.recommend_strength(
            __import__("pandas").DataFrame(
                {
                    "method": ["SAE add", "prompting"],
                    "instruction": ["a", "b"],
                    "value": [1.0, 1.0],
                    "harmonic_mean": 1.0,
                }
            )
        ),
        ValueError,
        r"2 steering methods \('SAE add', 'prompting'\).*pass method=",
    ),
    (
        "labels with a fractional feature",
        lambda m, s, t: scope.labels.set_labels(s, {1.7: "a label"}),
        ValueError,
        r"labels name feature 1\.7, which is not a feature index",
    ),
    (
        "labels with a feature as a string",
        lambda m, s, t: scope.labels.set_labels(s, {"141": "a label"}),
        TypeError,
        r"a labels feature must be an integer, got '141'",
    ),
    (
        "out= where no file can be created",
        lambda m, s, t: scope.mine(m, s, [TEXT], out="/proc/scope/top.parquet", progress=False),
        PermissionError,
        r"out='/proc/scope/top\.parquet'.*(cannot create a file in|is not writable)",
    ),
    (
        "chat with a bad role",
        lambda m, s, t: scope.generate(m, [{"role": "robot", "content": "hi"}]),
        ValueError,
        r"unknown role 'robot'",
    ),
    # corpora and outputs
    (
        "corpus without a text field",
        lambda m, s, t: scope.mine(m, s, _corpus(t, "c.jsonl", b'{"body": "x"}\n'), progress=False),
        ValueError,
        r"c\.jsonl, line 1: no 'text' field",
    ),
    (
        "malformed JSON line",
        lambda m, s, t: scope.mine(m, s, _corpus(t, "c.jsonl", b'{"text": "a"}\n{"text": \n'), progress=False),
        ValueError,
        r"c\.jsonl, line 2: malformed JSON",
    ),
    (
        "non-UTF-8 corpus",
        lambda m, s, t: scope.mine(m, s, _corpus(t, "c.txt", b"ok\n\xff\xfe bad\n"), progress=False),
        ValueError,
        r"c\.txt, line 2: not UTF-8",
    ),
    (
        "null text",
        lambda m, s, t: scope.mine(m, s, _corpus(t, "c.jsonl", b'{"text": null}\n'), progress=False),
        ValueError,
        r"line 1: 'text' is None",
    ),
    (
        "corpus of an unknown type",
        lambda m, s, t: scope.mine(m, s, _corpus(t, "c.csv", b"text\nx\n"), progress=False),
        ValueError,
        r"\.csv.*\.txt, \.jsonl or \.parquet",
    ),
    (
        "out= is a directory",
        lambda m, s, t: scope.mine(m, s, [TEXT], out=t, progress=False),
        IsADirectoryError,
        r"is a directory",
    ),
    (
        "checkpoint_every zero",
        lambda m, s, t: scope.mine(m, s, [TEXT], checkpoint_every=0, progress=False),
        ValueError,
        r"checkpoint_every must be a positive integer",
    ),
    (
        "features listed twice",
        lambda m, s, t: scope.mine(m, s, [TEXT], features=[3, 3], progress=False),
        ValueError,
        r"lists a feature twice",
    ),
    (
        "two SAE names that write one folder",
        lambda m, s, t: scope.mine(m, {1: s, "1": s}, [TEXT], out=t / "mined", progress=False),
        ValueError,
        r"SAE names 1 and '1' would both write the folder sae=1",
    ),
    (
        "SAE name a folder cannot hold",
        lambda m, s, t: scope.mine(m, {"a/b": s}, [TEXT], out=t / "mined", progress=False),
        ValueError,
        r"SAE name 'a/b' cannot name a folder",
    ),
    (
        "features for a name that is no SAE",
        lambda m, s, t: scope.mine(m, {"a": s, "b": s}, [TEXT], features={"c": [1]}, progress=False),
        ValueError,
        r"features has an entry for 'c', which names no SAE here; the SAEs are",
    ),
    (
        "resume on another corpus",
        lambda m, s, t: _resume(m, s, t, [x[::-1] for x in CORPUS]),
        ValueError,
        r"\.planted\.parquet\.checkpoint is the checkpoint of a run over a different corpus.*overwrite=True",
    ),
    (
        "resume on a shortened corpus",
        lambda m, s, t: _resume(m, s, t, CORPUS[:2]),
        ValueError,
        r"\.planted\.parquet\.checkpoint is the checkpoint of a run over a different corpus: it has read \d+ windows, "
        r"but the corpus given now has only \d+.*overwrite=True",
    ),
    (
        "resume with other options",
        lambda m, s, t: _resume(m, s, t, CORPUS, k=2),
        ValueError,
        r"\.planted\.parquet\.checkpoint is the checkpoint of a different run \(k 3 then, 2 now\).*overwrite=True",
    ),
    (
        "a pickle planted as the checkpoint",
        lambda m, s, t: _plant(m, s, t, _pickle),
        ValueError,
        r"\.planted\.parquet\.checkpoint is not a checkpoint scope\.mine can resume.*overwrite=True",
    ),
    (
        "a truncated checkpoint",
        lambda m, s, t: _plant(m, s, t, _truncated),
        ValueError,
        r"\.planted\.parquet\.checkpoint is not a checkpoint scope\.mine can resume.*overwrite=True",
    ),
    (
        "overwrite not a bool",
        lambda m, s, t: scope.mine(m, s, [TEXT], out=t / "r.parquet", overwrite="yes", progress=False),
        TypeError,
        r"overwrite must be True or False",
    ),
    (
        "dashboard of a feature past the width",
        lambda m, s, t: scope.dashboard(m, s, 99, [TEXT], t / "f.html"),
        ValueError,
        r"feature 99 is out of range",
    ),
    (
        "dashboard of another SAE's mining result",
        lambda m, s, t: scope.dashboard(
            m,
            s,
            3,
            [TEXT],
            t / "f.html",
            mined=scope.mine(
                m, _sae_at(t, "blocks.1.hook_resid_post", d_sae=60), [TEXT], features=[3, 55], progress=False
            ),
        ),
        ValueError,
        r"mined holds feature\(s\) \[55\], beyond this SAE's 48 features",
    ),
    # ShieldGemma
    (
        "unknown policy",
        lambda m, s, t: shield.score(m, [TEXT], "dangerous"),
        ValueError,
        r"dangerous.*dangerous_content",
    ),
    (
        "responses of another length",
        lambda m, s, t: shield.score(m, [TEXT, TEXT], "harassment", responses=["a"]),
        ValueError,
        r"2 texts but 1 responses",
    ),
    (
        "ShieldGemma prompt past the context",
        lambda m, s, t: shield.score(m, [TEXT], "harassment"),
        ValueError,
        r"ShieldGemma prompt has \d+ tokens.*context of 256",
    ),
    ("labels not 0/1", lambda m, s, t: shield.evaluate([0.1, 0.9], [0, 2]), ValueError, r"labels must be 0/1"),
    (
        "attribution by an unknown unit",
        lambda m, s, t: shield.attribute(m, s, TEXT, "harassment", by="token"),
        ValueError,
        r"by must be one of 'feature', 'position'",
    ),
]


def _npz(tmp: Path, nan_at: str | None = None) -> Path:
    from tests.sae_util import random_params, write_params

    params = random_params(64, 8)
    if nan_at is not None:
        params[nan_at].flat[0] = np.nan
    return write_params(tmp / "bare" / "params.npz", params)


def _sae_lens_folder(tmp: Path, sae, truncate: bool = False, drop: str | None = None) -> Path:
    import json

    folder = tmp / "folder"
    sae.save_model(folder)
    weights, cfg = folder / "sae_weights.safetensors", folder / "cfg.json"
    if truncate:
        weights.write_bytes(weights.read_bytes()[:1000])
    if drop is not None:
        cfg.write_text(json.dumps({k: v for k, v in json.loads(cfg.read_text()).items() if k != drop}))
    return folder


def _sae_at(tmp: Path, hook: str, d_in: int = 64, d_sae: int = 8):
    from tests.sae_util import random_params, write_params

    path = write_params(tmp / hook.replace(".", "_") / "params.npz", random_params(d_in, d_sae))
    return scope.load_sae(path, hook=hook, device="cpu")


def _wide_sae(tmp: Path):
    return _sae_at(tmp, "blocks.1.hook_resid_post", d_in=128)


@pytest.fixture
def sae(make_sae):
    return make_sae(hook="blocks.1.hook_resid_post", d_sae=48)[0]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(case, tiny_model, sae, tmp_path):
    _, call, error, pattern = case
    work = tmp_path / "work"
    work.mkdir()
    before = sorted(work.rglob("*"))
    with pytest.raises(error, match=pattern):
        call(tiny_model, sae, work)
    assert not any(hp._forward_hooks or hp._backward_hooks for hp in tiny_model.hook_dict.values())
    assert (
        not tiny_model._forward_pre_hooks
        and not tiny_model.embed._forward_pre_hooks
        and not getattr(tiny_model, "acts_to_saes", {})
    )
    written = [p for p in sorted(work.rglob("*")) if p not in before and not _made_by_the_case(p)]
    assert not written, f"left behind: {written}"


def _made_by_the_case(path: Path) -> bool:
    """Inputs a case writes itself (corpora, SAE files, a planted checkpoint), as opposed to results."""
    return (
        path.suffix in (".jsonl", ".txt", ".csv", ".npz")
        or path.is_dir()
        or path.name.startswith(".planted.")
        or path.parent.name == "folder"  # an SAE folder the case wrote
    )


def test_numpy_and_torch_scalars_are_accepted_everywhere(tiny_model, sae):
    import torch

    feature = scope.top_features(tiny_model, sae, TEXT, k=1).feature.iloc[0]
    assert isinstance(feature, np.integer)
    plain = scope.generate(
        tiny_model,
        TEXT,
        max_new_tokens=np.int64(4),
        sae=sae,
        steering=[scope.Clamp(int(feature), 5.0)],
        positions=[2, 3],
    )
    same = scope.generate(
        tiny_model,
        TEXT,
        max_new_tokens=torch.tensor(4),
        sae=sae,
        steering=[scope.Clamp(feature, np.float32(5.0))],
        positions=[np.int64(2), torch.tensor(3)],
    )
    assert plain == same
    table = scope.top_features(tiny_model, sae, TEXT, k=np.int64(2))
    assert table["rank"].max() == 2


# ----------------------------------------------------------------------------- the CLI

HOOK = "blocks.1.hook_resid_post"
FOREIGN_CHECKPOINT = "{work}/planted.parquet"  # beside it, .planted.parquet.checkpoint is a file of something else
# (id, argv with {corpus} {bad_corpus} {sae} {out} {work}, exit code, regex the one line on stderr must match)
CLI_CASES = [
    # argparse's own, and arguments checked as they are parsed
    ("no command", [], 2, r"scope: error: the following arguments are required: command \(see scope --help\)$"),
    ("unknown command", ["mine"], 2, r"scope: error: argument command: invalid choice: 'mine'"),
    ("unknown option", ["features", TEXT, "--width", "16k"], 2, r"scope: error: unrecognized arguments: --width 16k"),
    (
        "required option missing",
        ["examples", "--out", "{out}"],
        2,
        r"scope: error: the following arguments are required: --corpus \(see scope examples --help\)$",
    ),
    (
        "--k not a number",
        ["features", TEXT, "--k", "x"],
        2,
        r"scope: error: argument --k: must be a positive integer, got 'x'",
    ),
    ("--k zero", ["features", TEXT, "--k", "0"], 2, r"scope: error: argument --k: must be a positive integer, got '0'"),
    (
        "negative temperature",
        ["generate", TEXT, "--temperature", "-1"],
        2,
        r"scope: error: argument --temperature: must be a finite number >= 0, got '-1'",
    ),
    (
        "top-p past 1",
        ["generate", TEXT, "--top-p", "1.5"],
        2,
        r"scope: error: argument --top-p: must be a number in \(0, 1\]",
    ),
    (
        "--max-new-tokens zero",
        ["generate", TEXT, "--max-new-tokens", "0"],
        2,
        r"scope: error: argument --max-new-tokens: must be a positive integer, got '0'",
    ),
    (
        "infinite steering value",
        ["steer", TEXT, "--feature", "3", "--value", "inf"],
        2,
        r"scope: error: argument --value: must be a finite number, got 'inf'",
    ),
    (
        "--features with a word",
        ["examples", "--corpus", "{corpus}", "--out", "{out}", "--features", "1,x"],
        2,
        r"scope: error: argument --features: must be comma-separated integers like 1,2,3, got '1,x'",
    ),
    (
        "--checkpoint-every zero",
        ["examples", "--corpus", "{corpus}", "--out", "{out}", "--checkpoint-every", "0"],
        2,
        r"scope: error: argument --checkpoint-every: must be a positive integer, got '0'",
    ),
    (
        "unknown mode",
        ["steer", TEXT, "--feature", "3", "--value", "1", "--mode", "set"],
        2,
        r"scope: error: argument --mode: invalid choice: 'set'",
    ),
    # checked before any model loads
    (
        "unknown model",
        ["generate", TEXT, "--model", "gemma-2-3b"],
        2,
        r"scope: error: Unknown model 'gemma-2-3b'\. Valid names",
    ),
    ("unknown policy", ["shield", TEXT, "--policy", "nope"], 2, r"scope: error: Unknown policy 'nope'\. Valid keys"),
    (
        "SAE file missing",
        ["features", TEXT, "--sae", "{work}/nope/params.npz", "--hook", HOOK],
        1,
        r"scope: error: No such SAE file or folder: .*/nope/params\.npz$",
    ),
    (
        "params.npz without --hook",
        ["features", TEXT, "--sae", "{sae}"],
        2,
        r"scope: error: --sae .*params\.npz is a Gemma Scope params\.npz, which does not record the hook.*--hook",
    ),
    (
        "unknown SAE id",
        ["features", TEXT, "--sae", "gemma-scope-2b-pt-res-canonical/nope"],
        2,
        r"scope: error: SAE id 'nope' is not in release 'gemma-scope-2b-pt-res-canonical'",
    ),
    (
        "--out is a folder",
        ["examples", "--corpus", "{corpus}", "--out", "{work}"],
        1,
        r"scope: error: --out='.*' is a directory",
    ),
    (
        "corpus missing",
        ["examples", "--corpus", "{work}/missing.jsonl", "--out", "{out}"],
        1,
        r"scope: error: No corpus file at .*missing\.jsonl",
    ),
    (
        "corpus of an unknown type",
        ["examples", "--corpus", "{work}/c.csv", "--out", "{out}"],
        2,
        r"scope: error: Unknown corpus file type '\.csv'",
    ),
    (
        "dashboard --out is a file",
        ["dashboard", "--corpus", "{corpus}", "--features", "1", "--out", "{corpus}"],
        1,
        r"scope: error: --out='.*' is a file",
    ),
    (
        "--unit with --mode add",
        [
            "steer",
            TEXT,
            "--feature",
            "1",
            "--value",
            "1",
            "--mode",
            "add",
            "--unit",
            "max",
            "--sae",
            "{sae}",
            "--hook",
            HOOK,
        ],
        2,
        r"scope: error: .*--unit max applies to --mode clamp only",
    ),
    (
        "serve on a port out of range",
        ["serve", "--sae", "{sae}", "--hook", HOOK, "--port", "99999"],
        2,
        r"scope: error: argument --port: must be a port number in 1\.\.65535, got '99999'",
    ),
    # found once the model is loaded
    (
        "SAE at a hook the model lacks",
        ["features", TEXT, "--sae", "{sae}", "--hook", "blocks.9.hook_resid_post"],
        2,
        r"scope: error: .*no hook 'blocks\.9\.hook_resid_post'",
    ),
    (
        "feature past the width",
        ["steer", TEXT, "--feature", "99", "--value", "1", "--sae", "{sae}", "--hook", HOOK],
        2,
        r"scope: error: .*feature 99 is out of range.*0\.\.47",
    ),
    (
        "malformed corpus record",
        ["examples", "--corpus", "{bad_corpus}", "--sae", "{sae}", "--hook", HOOK, "--out", "{out}"],
        2,
        r"scope: error: .*bad\.jsonl, line 2: malformed JSON",
    ),
    (
        "checkpoint of something else beside --out",
        ["examples", "--corpus", "{corpus}", "--sae", "{sae}", "--hook", HOOK, "--out", FOREIGN_CHECKPOINT],
        2,
        r"scope: error: .*\.planted\.parquet\.checkpoint is not a checkpoint scope\.mine can resume.*--overwrite",
    ),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_invocation(case, tiny_model, monkeypatch, tmp_path, capsys):
    import re

    import torch

    from scope.cli import main
    from tests.sae_util import random_params, write_params

    _, argv, code, pattern = case
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    corpus = _corpus(inputs, "corpus.txt", f"{TEXT}\nParis is the capital of France.\n".encode())
    bad_corpus = _corpus(inputs, "bad.jsonl", b'{"text": "a"}\n{"text": \n')
    sae = write_params(inputs / "sae" / "params.npz", random_params(64, 48))
    work = tmp_path / "work"
    work.mkdir()
    torch.save({"weight": torch.zeros(3)}, work / ".planted.parquet.checkpoint")
    before = sorted(work.rglob("*"))
    monkeypatch.setattr(scope, "load_model", lambda name, **kwargs: tiny_model)  # after the CLI's own name check
    names = dict(corpus=corpus, bad_corpus=bad_corpus, sae=sae, out=work / "top.parquet", work=work)
    assert main([arg.format(**names) for arg in argv]) == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert captured.err.count("\n") == 1 and re.match(pattern, captured.err), captured.err
    assert sorted(work.rglob("*")) == before, "a file was left behind"
    assert not any(hp._forward_hooks or hp._backward_hooks for hp in tiny_model.hook_dict.values())


# ---- transcoders (issue 27 item 4): each case writes its Gemma Scope 2 folder under work/folder


def _transcoder(model, work: Path, layer: int = 1, d_in: int = 64, d_out: int = 64):
    from tests.test_sae_formats import random_tensors, sae_config, write_folder

    config = sae_config(
        f"model.layers.{layer}.pre_feedforward_layernorm.output",
        32,
        f"model.layers.{layer}.post_feedforward_layernorm.output",
        model="google/gemma-2-2b",
    )
    write_folder(work / "folder", random_tensors(d_in, 32, d_out=d_out), config)
    return scope.load_transcoders(work / "folder", model=model)


def _enter(context) -> None:
    with context:
        pass


TRANSCODER_CASES = [
    (
        "transcoder feature past its width",
        lambda m, s, w: scope.generate(m, TEXT, sae=_transcoder(m, w)[1], steering=scope.Add(32, 1.0)),
        ValueError,
        r"Add feature.*32",
    ),
    (
        "transcoder reading another model's width",
        lambda m, s, w: _enter(scope.steer(m, _transcoder(m, w, d_in=32)[1], scope.Add(1, 1.0))),
        ValueError,
        r"folder reads 32 dimensions; the model's layer 1 has 64",
    ),
    (
        "transcoder writing another model's width",
        lambda m, s, w: _enter(scope.splice(m, _transcoder(m, w, d_out=48)[1])),
        ValueError,
        r"writes 48 dimensions to blocks.1.hook_mlp_out.*width 64",
    ),
    (
        "transcoder for a layer the model lacks",
        lambda m, s, w: _transcoder(m, w, layer=7),
        ValueError,
        r"layer\(s\) \[7\], but the model has layers 0-3",
    ),
    (
        "an SAE where a transcoder is needed",
        lambda m, s, w: _enter(scope.splice(m, s)),
        ValueError,
        r"splice takes transcoders .*got an SAE at",
    ),
    (
        "a transcoder where an SAE is needed",
        lambda m, s, w: scope.attribute(m, _transcoder(m, w)[1], TEXT, metric=lambda r: r.sum()),
        ValueError,
        r"attribute\(\) takes an SAE; this is a transcoder.*scope.splice",
    ),
    (
        "all the transcoders as the steered one",
        lambda m, s, w: _enter(scope.steer(m, _transcoder(m, w), scope.Add(1, 1.0))),
        TypeError,
        r"one SAE or transcoder to act on, got a Transcoders",
    ),
]


@pytest.mark.parametrize("case", TRANSCODER_CASES, ids=[c[0] for c in TRANSCODER_CASES])
def test_transcoder_bad_input(case, tiny_model, sae, tmp_path):
    test_api_bad_input(case, tiny_model, sae, tmp_path)
