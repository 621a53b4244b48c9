"""scope.loading against the reference path: transformers' model converted by transformer-lens."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import scope
import scope.loading
import scope.models
from scope.layout import is_relaid
from scope.subjects import SUBJECTS
from tests.tiny import make_tokenizer

TEXT = "Paris is the capital of France, and the quick brown fox jumps over the lazy dog."


def save_tiny_gemma3(path: Path, seed: int = 0, **overrides) -> Path:
    """A random tiny ``Gemma3ForCausalLM`` with every Gemma 3 feature on (qk-norm, local and
    global layers with their own rope bases, pre/post norms) and norms that are not zero."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        initializer_range=0.1,
    )
    model = Gemma3ForCausalLM(Gemma3TextConfig(**(settings | overrides))).eval()
    with torch.no_grad():  # HF starts Gemma norms at zero (used as 1 + w): make them matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_gemma2(path: Path, **overrides) -> Path:
    from tests.tiny import save_tiny_gemma2 as save

    return save(path, **overrides)


CHECKPOINTS = {
    # name -> (scope subject, writer, config overrides)
    "gemma2": ("shieldgemma-2b", save_tiny_gemma2, {}),
    "gemma2-untied": ("gemma-2-2b", save_tiny_gemma2, {"tie_word_embeddings": False}),
    "gemma3": ("gemma-3-270m", save_tiny_gemma3, {}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: writer(root / name, **overrides) for name, (_, writer, overrides) in CHECKPOINTS.items()}


def reference(name: str, folder: Path, dtype: torch.dtype):
    """The path scope took before: transformers' model, transformer-lens' conversion, re-laid."""
    spec = SUBJECTS[CHECKPOINTS[name][0]]
    tokenizer, hf_model = scope.models._load_hf(spec, folder, dtype)
    return scope.models.hooked_from_hf(spec.tl_template, hf_model, tokenizer, dtype=dtype, device="cpu")


def load(name: str, folder: Path, **kwargs):
    return scope.load_model(CHECKPOINTS[name][0], weights=folder, device=kwargs.pop("device", "cpu"), **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_every_parameter_equals_the_transformers_path(name, dtype, checkpoints):
    model = load(name, checkpoints[name], dtype=dtype)
    expected = reference(name, checkpoints[name], dtype)
    state, expected_state = model.state_dict(), expected.state_dict()
    assert state.keys() == expected_state.keys()
    for key, value in expected_state.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert is_relaid(model)
    params, expected_params = dict(model.named_parameters()), dict(expected.named_parameters())
    assert all(params[n].stride() == p.stride() for n, p in expected_params.items())
    assert all(p.requires_grad == expected_params[n].requires_grad for n, p in params.items())
    assert model.cfg.to_dict() == expected.cfg.to_dict()
    assert model.to_tokens(TEXT).tolist() == expected.to_tokens(TEXT).tolist()
    assert model.tokenizer.add_bos_token and model.tokenizer.padding_side == expected.tokenizer.padding_side


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_logits_equal_transformers(name, checkpoints):
    from transformers import AutoModelForCausalLM

    model = load(name, checkpoints[name], dtype=torch.float32)
    hf_model = AutoModelForCausalLM.from_pretrained(checkpoints[name], dtype=torch.float32).eval()
    tokens = model.to_tokens(TEXT)
    assert tokens.shape[1] > 2 * model.cfg.window_size  # local attention is exercised
    with torch.no_grad():
        expected, actual = hf_model(tokens).logits, model(tokens)
    assert torch.allclose(actual, expected, atol=1e-4), (actual - expected).abs().max()


def test_the_transformers_model_is_never_built(checkpoints, monkeypatch):
    from transformers import PreTrainedModel

    def refuse(*args, **kwargs):
        raise AssertionError("a transformers model was built: a second copy of the weights")

    monkeypatch.setattr(PreTrainedModel, "__init__", refuse)
    monkeypatch.setattr(scope.models, "_load_hf", refuse)
    for name in CHECKPOINTS:
        model = load(name, checkpoints[name], dtype=torch.bfloat16)
        assert model.W_U.dtype == torch.bfloat16


def test_a_device_load_puts_every_tensor_there_in_the_dtype(checkpoints, monkeypatch):
    """The path a cuda load takes (load_model has no per-device branch), on the meta device: every
    checkpoint tensor is read into the device in the final dtype, and the parameters are those."""
    read = []
    real_read = scope.loading._read

    def recording_read(*args):
        tensor = real_read(*args)
        read.append(tensor)
        return tensor

    monkeypatch.setattr(scope.models, "_load_hf", lambda *a, **k: pytest.fail("took the transformers path"))
    monkeypatch.setattr(scope.loading, "_read", recording_read)
    model = load("gemma2", checkpoints["gemma2"], device="meta", dtype=torch.bfloat16)
    assert {(t.device.type, t.dtype) for t in read} == {("meta", torch.bfloat16)}
    assert len(read) == 1 + model.cfg.n_layers * 11 + 1  # each tensor once: embedding, 11 per layer, final norm
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}
    assert is_relaid(model)
    # Every weight matrix is the tensor as read (a view), not a copy of it.
    storages = {t.untyped_storage().data_ptr() for t in read}
    matrices = [p for p in model.parameters() if p.dim() >= 2 and p is not model.W_E]
    assert all(p.untyped_storage().data_ptr() in storages for p in matrices)


MEMORY_CHILD = textwrap.dedent(
    """
    import gc, json, re, sys, warnings
    warnings.simplefilter("ignore")
    import torch, scope, scope.models
    from pathlib import Path
    folder, warm_folder = Path(sys.argv[1]), Path(sys.argv[2])
    def load(weights):
        return scope.load_model("gemma-2-2b", weights=weights, device="cpu", dtype=torch.float32)
    def kib(field):
        return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
    def peak_over_model(keep_a_copy):
        gc.collect()
        before = kib("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")  # peak resident memory (VmHWM) starts again here
        model = load(folder)
        copy = [p.detach().clone() for p in model.parameters()] if keep_a_copy else []
        size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        del model, copy
        return (kib("VmHWM") - before) * 1024 / size
    load(warm_folder)  # lazy imports and first-call set-up are not the load
    print(json.dumps({"new": peak_over_model(False), "copy": peak_over_model(True)}))
    """
)


@pytest.fixture(scope="module")
def mid_checkpoint(tmp_path_factory):
    """A Gemma 2 of ~200 MB: big enough that the process's own allocations are noise."""
    return save_tiny_gemma2(tmp_path_factory.mktemp("mid"), hidden_size=1024, intermediate_size=4096, head_dim=128)


def test_the_load_holds_one_copy_of_the_weights(mid_checkpoint, tmp_path):
    # Peak resident memory of the load over the loaded model's own bytes: one copy plus slices.
    # A fixed mmap threshold makes freed tensors go back to the system, so one process can measure
    # twice without the second load reusing the first one's pages unseen.
    warm = save_tiny_gemma2(tmp_path / "warm")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    command = [sys.executable, "-c", MEMORY_CHILD, str(mid_checkpoint), str(warm)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    peaks = json.loads(out.strip().splitlines()[-1])
    assert peaks["new"] < 1.2
    # A check on the measure itself: a load that keeps a second copy must read as two copies.
    # (transformers' path is no reference here: its peak depends on whether the file is mmapped.)
    assert peaks["copy"] > 1.8


# ----------------------------------------------------------------------------- broken checkpoints


def rewrite(folder: Path, edit) -> None:
    file = folder / "model.safetensors"
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


@pytest.fixture
def broken(checkpoints, tmp_path, monkeypatch):
    """A copy of the tiny Gemma 2; building the model fails the test (errors come before)."""
    folder = Path(shutil.copytree(checkpoints["gemma2"], tmp_path / "ckpt"))
    monkeypatch.setattr(scope.loading, "_empty_model", lambda *a: pytest.fail("built the model before checking"))
    return folder


def test_a_missing_tensor_names_it_and_the_files(broken):
    rewrite(broken, lambda t: t.pop("model.layers.2.mlp.down_proj.weight"))
    with pytest.raises(scope.loading.CheckpointError) as info:
        load("gemma2", broken)
    message = str(info.value)
    assert "'model.layers.2.mlp.down_proj.weight'" in message and "layer 2" in message
    assert "model.safetensors" in message and str(broken) in message


def test_a_wrong_shape_names_the_tensor_the_file_and_both_shapes(broken):
    def shrink(tensors):
        tensors["model.layers.1.self_attn.k_proj.weight"] = tensors["model.layers.1.self_attn.k_proj.weight"][:16]

    rewrite(broken, shrink)
    with pytest.raises(ValueError) as info:
        load("gemma2", broken)
    message = str(info.value)
    assert "'model.layers.1.self_attn.k_proj.weight'" in message
    assert str(broken / "model.safetensors") in message and "[16, 64]" in message and "[32, 64]" in message


def test_an_index_naming_a_missing_shard_says_which(broken):
    index = {"metadata": {}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}
    (broken / scope.loading.INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(scope.loading.CheckpointError, match="model-00002-of-00002.safetensors is missing"):
        load("gemma2", broken)


def test_sharded_and_multimodal_names_load_the_same(checkpoints, tmp_path):
    """Shards with an index, and the text model's tensors under a multimodal checkpoint's prefix."""
    folder = Path(shutil.copytree(checkpoints["gemma3"], tmp_path / "ckpt"))
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    renamed = {name.replace("model.", "model.language_model.", 1): t for name, t in tensors.items()}
    names = sorted(renamed)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: renamed[n] for n in part}, folder / file, metadata={"format": "pt"})
    weight_map = {n: file for file, part in shards.items() for n in part}
    (folder / scope.loading.INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = load("gemma3", folder, dtype=torch.float32)
    expected = load("gemma3", checkpoints["gemma3"], dtype=torch.float32)
    assert all(torch.equal(p, expected.get_parameter(n)) for n, p in model.named_parameters())


def test_a_checkpoint_without_safetensors_loads_through_transformers(checkpoints, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = Path(shutil.copytree(checkpoints["gemma2"], tmp_path / "bin"))
    (folder / "model.safetensors").unlink()
    hf_model = AutoModelForCausalLM.from_pretrained(checkpoints["gemma2"], dtype=torch.float32)
    torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")  # the format before safetensors
    assert not scope.loading.has_safetensors(folder)
    model = load("gemma2", folder, dtype=torch.float32)
    expected = load("gemma2", checkpoints["gemma2"], dtype=torch.float32)
    assert all(torch.equal(p, expected.get_parameter(n)) for n, p in model.named_parameters())


def test_the_tokenizer_is_read_once(checkpoints, monkeypatch):
    from transformers import AutoTokenizer

    calls = []
    real = AutoTokenizer.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(counting))
    load("gemma2", checkpoints["gemma2"])
    assert len(calls) == 1  # transformer-lens reads it again unless it already adds BOS
