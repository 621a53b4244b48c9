"""The bundled demo transcoders (data/demo_transcoders, scripts/train_demo_transcoders.py):
they load as Gemma Scope 2 folders for gemma-3-270m, load to the function the trainer trained,
and their quality JSON agrees with a recomputation."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import scope
from scope.sae_formats import read_config, read_params, tl_hook
from scope.transcoders import DEMO_FOLDER

LAYERS = range(18)


def folders() -> list[Path]:
    return sorted(DEMO_FOLDER.glob("layer_*"), key=lambda p: int(p.name.split("_")[1]))


def test_shipped_folders_are_gemma_scope_2_transcoders_for_every_layer():
    found = {}
    for folder in folders():
        config = read_config(folder)
        params = read_params(folder)  # checks keys and shapes
        layer = tl_hook(config["hf_hook_point_in"])[0]
        found[layer] = folder.name
        assert tl_hook(config["hf_hook_point_out"]) == (layer, f"blocks.{layer}.hook_mlp_out")
        assert params["w_enc"].shape == (640, 512) and params["affine_skip_connection"].shape == (640, 640)
    assert sorted(found) == list(LAYERS)
    total = sum(f.stat().st_size for f in DEMO_FOLDER.rglob("*") if f.is_file())
    assert total < 41e6, f"the shipped set is {total / 1e6:.1f} MB"


def test_demo_without_a_model_is_refused_before_loading():
    with pytest.raises(ValueError, match="pass model="):
        scope.load_transcoders("demo")


@pytest.fixture(scope="module")
def demo(bundled_model):
    return scope.load_transcoders("demo", model=bundled_model)


@pytest.mark.slow
def test_demo_loads_for_the_bundled_model(bundled_model, demo):
    assert sorted(demo) == list(LAYERS)
    for layer in (0, 17):
        tc = demo[layer]
        assert type(tc).__name__ == "JumpReLUSkipTranscoder"
        assert tc.cfg.metadata.hook_name == f"blocks.{layer}.ln2.hook_normalized"
        assert tc.cfg.metadata.hook_name_out == f"blocks.{layer}.hook_mlp_out"
        assert (tc.cfg.d_in, tc.cfg.d_sae, tc.cfg.d_out) == (bundled_model.cfg.d_model, 512, bundled_model.cfg.d_model)


def gemma_scope_2_formula(folder: Path, x_hf: torch.Tensor) -> torch.Tensor:
    """Gemma Scope 2's published definition, on the raw file: x is the MLP input after the norm's gain."""
    p = {k: v.float() for k, v in load_file(str(folder / "params.safetensors")).items()}
    pre = x_hf @ p["w_enc"] + p["b_enc"]
    acts = torch.relu(pre) * (pre > p["threshold"])
    return acts @ p["w_dec"] + p["b_dec"] + x_hf @ p["affine_skip_connection"]


@pytest.mark.slow
def test_loaded_transcoders_are_the_trained_ones(bundled_model, demo):
    """The round trip: on the trainer's sample text, each loaded transcoder (reading
    ln2.hook_normalized, the gain folded in at load) gives the trainer's float32 reconstruction up to
    the float16 rounding of the shipped weights, and exactly the file's Gemma Scope 2 formula."""
    sample = load_file(str(DEMO_FOLDER / "roundtrip.safetensors"))
    names = [f"blocks.{n}.ln2.hook_normalized" for n in LAYERS]
    _, cache = bundled_model.run_with_cache(sample["tokens"][None], names_filter=names)
    for layer, folder in zip(LAYERS, folders(), strict=True):
        x = cache[names[layer]][0, 1:]  # BOS left out, as in training
        loaded = demo[layer](x).detach()
        trained = sample["out"][:, layer]
        assert ((loaded - trained).norm(dim=-1) / trained.norm(dim=-1)).max() < 1e-2, layer
        by_formula = gemma_scope_2_formula(folder, x * bundled_model.blocks[layer].ln2.w.detach())
        torch.testing.assert_close(loaded, by_formula, rtol=1e-4, atol=1e-4 * float(by_formula.abs().max()))


@pytest.mark.slow
def test_quality_json_agrees_with_a_recomputation(bundled_model, demo):
    """The JSON's "sample" figures (the first modern text), recomputed here with plain hooks."""
    quality = json.loads((DEMO_FOLDER / "quality.json").read_text())["sample"]
    text = (Path(__file__).parent / "data" / "modern_english.txt").read_text().split("\n\n")[0].strip()
    tokens = bundled_model.to_tokens(text)[:, :128]
    ins = [f"blocks.{n}.ln2.hook_normalized" for n in LAYERS]
    outs = [f"blocks.{n}.hook_mlp_out" for n in LAYERS]
    with torch.no_grad():
        clean, cache = bundled_model.run_with_cache(tokens, names_filter=ins + outs)
        for n in LAYERS:
            x, y = cache[ins[n]][0, 1:], cache[outs[n]][0, 1:]
            acts = demo[n].encode(x)
            fve = 1 - (y - demo[n](x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
            assert float(fve) == pytest.approx(quality["layers"][str(n)]["fve"], abs=2e-3), n
            assert float((acts > 0).sum(-1).float().mean()) == pytest.approx(quality["layers"][str(n)]["l0"], abs=0.02)
        zero = bundled_model.run_with_hooks(tokens, fwd_hooks=[(name, lambda t, hook: torch.zeros_like(t)) for name in outs])  # fmt: skip
        held: dict[int, torch.Tensor] = {}
        hooks = []
        for n in LAYERS:
            hooks.append((ins[n], lambda t, hook, n=n: held.__setitem__(n, t)))
            hooks.append((outs[n], lambda t, hook, n=n: demo[n](held[n])))
        replaced = bundled_model.run_with_hooks(tokens, fwd_hooks=hooks)
    ce = {name: torch.nn.functional.cross_entropy(logits[0, :-1], tokens[0, 1:]).item()
          for name, logits in (("clean", clean), ("zero", zero), ("replaced", replaced))}  # fmt: skip
    expected = quality["replacement"]
    assert ce["clean"] == pytest.approx(expected["ce_clean"], abs=1e-3)
    assert ce["replaced"] == pytest.approx(expected["ce_replaced"], abs=1e-3)
    score = (ce["zero"] - ce["replaced"]) / (ce["zero"] - ce["clean"])
    assert score == pytest.approx(expected["ce_loss_score"], abs=1e-3)
    log_p, log_q = clean[0, :-1].log_softmax(-1), replaced[0, :-1].log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()
    assert kl == pytest.approx(expected["kl"], abs=1e-3)
