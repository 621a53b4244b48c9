"""scripts/train_demo_sae.py's recipe pieces: BatchTopK / Matryoshka SAEs saved as JumpReLU and
loaded by scope, the corpus mix, checkpoints to resume from, argument checks. No model, no training."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import scope

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_demo_sae.py"


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("train_demo_sae", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def random_topk_sae(architecture: str, d_in: int = 16, d_sae: int = 64):
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    common = dict(d_in=d_in, d_sae=d_sae, k=4, dtype="float32", device="cpu", normalize_activations="none")
    if architecture == "matryoshka":
        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(matryoshka_widths=[16, 64], **common))
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator) / 4)
        # decoder rows of very different norms, so that folding them matters
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=generator) * torch.rand(d_sae, 1, generator=generator) * 3)
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) / 10)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator))
        sae.topk_threshold.fill_(0.4)
    return sae


@pytest.mark.parametrize("architecture", ["batchtopk", "matryoshka"])
def test_topk_sae_saved_as_jumprelu_loads_in_scope_and_matches_the_formula(recipe, architecture, tmp_path):
    sae = random_topk_sae(architecture)
    sae.save_inference_model(tmp_path / "run")  # what sae-lens' runner writes at the end
    (tmp_path / "run" / "runner_cfg.json").write_text("{}")
    recipe.ship(tmp_path / "run", tmp_path / "out", {}, fold=True, dtype=torch.float32)
    loaded = scope.load_sae(str(tmp_path / "out"), hook="blocks.0.hook_resid_post", device="cpu")
    assert type(loaded).__name__ == "JumpReLUSAE"

    # Independent: BatchTopK at inference keeps a feature when its decoder-norm-scaled activation
    # passes the learned threshold; its contribution is that activation times the unit decoder row.
    W_enc, W_dec, b_enc, b_dec = (p.detach() for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec))
    norms = W_dec.norm(dim=1)
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(1)) * 2
    scaled = ((x - b_dec) @ W_enc + b_enc).relu() * norms
    expected = scaled * (scaled > 0.4)
    assert 0 < (expected > 0).float().mean() < 0.9  # the threshold bites
    torch.testing.assert_close(loaded.encode(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loaded.decode(expected), expected @ (W_dec / norms[:, None]) + b_dec)
    torch.testing.assert_close(loaded.W_dec.norm(dim=1), torch.ones(64))


def write_corpus(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_corpus_mix_equal_by_default_and_weighted_shares_repeat_the_small_one(recipe, tmp_path):
    big = write_corpus(tmp_path / "big.jsonl", [f"b{i:03d}" + "x" * 96 for i in range(100)])  # 10,000 chars
    small = write_corpus(tmp_path / "small.jsonl", [f"s{i:03d}" + "y" * 96 for i in range(10)])  # 1,000 chars

    def chars(texts, prefix):
        return sum(len(t) for t in texts if t.startswith(prefix))

    equal = recipe.load_texts([big, small], seed=0)
    assert chars(equal, "b") == chars(equal, "s") == 1_000  # today's mix: the largest cut to the smallest
    weighted = recipe.load_texts([big, small], seed=0, weights=[1, 1])
    assert chars(weighted, "b") == chars(weighted, "s") == 5_500  # all 11,000 chars, half each
    assert len({t for t in weighted if t.startswith("s")}) == 10  # the small corpus repeated whole


def test_latest_checkpoint_of_any_run_ignores_interrupted_saves(recipe, tmp_path):
    assert recipe.latest_checkpoint(tmp_path / "missing") is None
    complete = ["sae_weights.safetensors", "trainer_state.pt"]
    # sae-lens writes FOLDER/RUN_ID/SAMPLES; each run (each resume) has a new RUN_ID
    for name, files in {"run1/1024": complete, "run2/4096": ["sae_weights.safetensors"], "run2/2048": complete,
                        "run2/final": complete}.items():  # fmt: skip
        (tmp_path / name).mkdir(parents=True)
        for f in files:
            (tmp_path / name / f).write_text("")
    assert recipe.latest_checkpoint(tmp_path) == tmp_path / "run2" / "2048"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--corpus-weights", "1"], "one weight per --corpus file"),
        (["--corpus-weights", "1", "0"], "must be positive"),
        (["--online"], "--online needs --tokens"),
        (
            ["--architecture", "matryoshka", "--width", "64", "--matryoshka-widths", "32", "16", "64"],
            "increase strictly",
        ),
        (["--checkpoints", "3"], "--checkpoints needs --checkpoint-dir"),
    ],
)
def test_bad_arguments_stop_before_any_work(recipe, argv, message, capsys):
    with pytest.raises(SystemExit):
        recipe.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_run_resumes_its_cache_parts_and_its_training(recipe, tiny_model, tmp_path, monkeypatch, capsys):
    """The cache is built in parts that survive a kill; training resumes from the newest checkpoint."""
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "while",
        "sparse",
        "features",
        "fire",
    ]
    corpus = write_corpus(tmp_path / "train.jsonl", [" ".join(words[i % 7 :] + words) * 6 for i in range(40)])
    argv = ["--layer", "1", "--width", "64", "--context", "16", "--batch", "64", "--target-l0", "4", "--epochs", "2"]
    argv += ["--cache-tokens", "1024", "--cache-shards", "2", "--cache-dir", str(tmp_path / "cache")]
    argv += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoints", "3", "--corpus", str(corpus)]
    argv += ["--out", str(tmp_path / "out"), "--device", "cpu", "--threads", "1"]
    real_part, built = recipe.cache_part, []

    def part_then_killed(args, model, dataset, tokens, target):
        if built:  # killed while caching the second part
            raise KeyboardInterrupt
        built.append(target.name)
        real_part(args, model, dataset, tokens, target)

    monkeypatch.setattr(recipe, "cache_part", part_then_killed)
    with pytest.raises(KeyboardInterrupt):
        recipe.main(argv, model=tiny_model)
    assert built == ["shard_00000"] and not (tmp_path / "cache").exists()  # no half-written cache

    def part(args, model, dataset, tokens, target):
        built.append(target.name)
        real_part(args, model, dataset, tokens, target)

    monkeypatch.setattr(recipe, "cache_part", part)
    recipe.main(argv, model=tiny_model)  # the same command again
    assert built == ["shard_00000", "shard_00001"]  # the first part was kept, not rebuilt
    assert recipe.cached_tokens(tmp_path / "cache") >= 1024
    kept = recipe.checkpoints(tmp_path / "ckpt")
    assert len(kept) == 1  # only the newest checkpoint stays

    # a run killed after its last checkpoint: the same command resumes from it and finishes
    first = json.loads((tmp_path / "out" / "training_config.json").read_text())
    shutil.rmtree(tmp_path / "out")
    capsys.readouterr()
    recipe.main(argv, model=tiny_model)
    assert f"resuming from {kept[0]}" in capsys.readouterr().out
    assert (
        json.loads((tmp_path / "out" / "training_config.json").read_text())["training_tokens"]
        == first["training_tokens"]
    )
    assert scope.load_sae(str(tmp_path / "out"), device="cpu").cfg.d_sae == 64


@pytest.mark.slow
def test_bf16_caches_the_models_bf16_activations_and_trains(recipe, tiny_model, tmp_path):
    """--bf16 really runs the model's matmuls in bfloat16 (sae-lens' own autocast_lm: an outer
    autocast would be switched off inside it) and trains under autocast, while the cache stays fp32."""
    import datasets

    words = ["the", "river", "ran", "past", "the", "old", "mill", "while", "rain", "fell", "on", "the", "quiet", "town"]
    corpus = write_corpus(tmp_path / "train.jsonl", [" ".join(words[i % 5 :] + words) * 4 for i in range(24)])
    common = ["--layer", "1", "--width", "64", "--context", "16", "--batch", "64", "--cache-tokens", "512"]
    common += ["--corpus", str(corpus), "--device", "cpu", "--threads", "1", "--cache-only"]
    recipe.main([*common, "--cache-dir", str(tmp_path / "fp32")], model=tiny_model)
    recipe.main([*common, "--cache-dir", str(tmp_path / "bf16"), "--bf16"], model=tiny_model)
    hook = "blocks.1.hook_resid_post"
    fp32, bf16 = (datasets.load_from_disk(str(tmp_path / n)).with_format("torch")[:][hook] for n in ("fp32", "bf16"))
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    relative = (bf16 - fp32).norm(dim=-1) / fp32.norm(dim=-1)
    assert relative.max() > 1e-4  # an fp32 forward would match to ~1e-7
    assert relative.median() < 0.05  # bf16 rounding, not a different computation

    out = tmp_path / "out"
    argv = [a for a in common if a != "--cache-only"] + ["--cache-dir", str(tmp_path / "bf16"), "--bf16"]
    recipe.main([*argv, "--epochs", "1", "--target-l0", "4", "--out", str(out)], model=tiny_model)
    record = json.loads((out / "training_config.json").read_text())
    assert record["autocast"] is True and record["autocast_lm"] is True
    assert scope.load_sae(str(out), device="cpu").W_dec.dtype == torch.float32
