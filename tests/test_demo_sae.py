"""The shipped demo SAE: its files, its config, and the quality floor on held-out text.

The evaluation code of ``scripts/eval_demo_sae.py`` is first checked against computations
written here on the tiny model, then run on the shipped held-out sample for the floor.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import scope
from scope.saes import DEMO_SAE_DIR

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_SAMPLE = ROOT / "data" / "corpus_sample" / "heldout.jsonl"


def _eval_script():
    spec = importlib.util.spec_from_file_location("eval_demo_sae", ROOT / "scripts" / "eval_demo_sae.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the files


def test_demo_sae_files_are_small_and_consistent():
    files = {p.name: p for p in DEMO_SAE_DIR.iterdir()}
    assert {"cfg.json", "sae_weights.safetensors", "training_config.json", "feature_stats.safetensors"} <= set(files)
    assert sum(p.stat().st_size for p in files.values()) < 20 * 2**20
    cfg = json.loads(files["cfg.json"].read_text())
    training = json.loads(files["training_config.json"].read_text())
    assert cfg["architecture"] == "jumprelu"
    assert cfg["metadata"]["hook_name"] == training["hook_name"] == "blocks.6.hook_resid_post"
    weights = load_file(str(files["sae_weights.safetensors"]))
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    assert d_sae >= 4096
    assert weights["W_enc"].shape == (d_in, d_sae) and weights["W_dec"].shape == (d_sae, d_in)
    assert weights["threshold"].shape == (d_sae,) and (weights["threshold"] >= 0).all()
    stats = load_file(str(files["feature_stats.safetensors"]))
    for name in ("max_activation", "density", "quantile_0.5", "quantile_0.9", "quantile_0.99"):
        assert stats[name].shape == (d_sae,)
    alive = stats["density"] > 0
    # a live feature's quantiles are ordered and never above its max activation
    assert (stats["quantile_0.5"][alive] <= stats["quantile_0.99"][alive] + 1e-6).all()
    assert (stats["quantile_0.99"][alive] <= stats["max_activation"][alive] + 1e-6).all()


def test_the_shipped_demo_sae_loads_with_its_statistics():
    # no model needed: this broke unnoticed once, behind the slow tests (n_tokens is not per feature)
    from scope import saes

    sae = scope.load_sae("demo", device="cpu")
    stats = load_file(str(DEMO_SAE_DIR / "feature_stats.safetensors"))
    assert sae.cfg.metadata.hook_name == "blocks.6.hook_resid_post"
    assert torch.equal(saes.max_activations(sae), stats["max_activation"])
    assert set(saes.feature_stats(sae)) == set(stats) - {"n_tokens"}
    assert sae.cfg.metadata.scope_feature_stats_tokens == int(stats["n_tokens"].sum()) > 0


@pytest.mark.slow
def test_demo_sae_fits_the_bundled_model(bundled_model):
    sae = scope.load_sae("demo")
    scope.check_compatible(bundled_model, sae)
    assert sae.cfg.metadata.hook_name == "blocks.6.hook_resid_post"
    assert sae.cfg.d_in == bundled_model.cfg.d_model


# ----------------------------------------------------------------------------- the evaluation code


@pytest.fixture
def tiny_sae(make_sae):
    sae, _ = make_sae(hook="blocks.1.hook_resid_post", d_in=64, d_sae=40, seed=5, threshold_scale=0.2)
    with torch.no_grad():
        sae.threshold[:4] = 1e6  # four features that can never fire: dead
    return sae


def test_ce_losses_equal_a_splice_written_with_hooks(tiny_model, tiny_sae):
    script = _eval_script()
    tokens = tiny_model.to_tokens(
        ["The cat sat on the mat and looked at the dog.", "Paris is the capital of France, not of Spain."]
    )
    hook = "blocks.1.hook_resid_post"

    def loss_with(edit):
        def replace(act, hook):
            act = act.clone()
            act[:, 1:] = edit(act[:, 1:])
            return act

        with torch.no_grad():
            logits = tiny_model.run_with_hooks(tokens, fwd_hooks=[(hook, replace)])
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        return float(-logp.gather(-1, tokens[:, 1:, None]).sum())

    clean, spliced, zero = script.ce_losses(tiny_model, tiny_sae, hook, tokens)
    assert clean == pytest.approx(loss_with(lambda a: a), rel=1e-5)
    assert spliced == pytest.approx(loss_with(lambda a: tiny_sae.decode(tiny_sae.encode(a))), rel=1e-5)
    assert zero == pytest.approx(loss_with(torch.zeros_like), rel=1e-5)
    assert zero > spliced != clean  # the three runs really differ


def test_explained_variance_l0_and_dead_equal_direct_formulas(tiny_model, tiny_sae):
    script = _eval_script()
    seqs = tiny_model.to_tokens(["One two three four five six seven eight.", "A b c d e f g h i."])
    figures, totals = script.evaluate(tiny_model, tiny_sae, seqs, seqs[:1], batch=1)
    _, cache = tiny_model.run_with_cache(seqs, names_filter="blocks.1.hook_resid_post")
    x = cache["blocks.1.hook_resid_post"][:, 1:].reshape(-1, 64).double()
    with torch.no_grad():
        acts = tiny_sae.encode(x.float()).double()
        recon = tiny_sae.decode(acts.float()).double()
    ev = 1 - ((x - recon) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert figures["explained_variance"] == pytest.approx(float(ev), rel=1e-6)
    assert figures["mean_l0"] == pytest.approx(float((acts > 0).sum(-1).double().mean()))
    assert figures["dead_fraction"] == pytest.approx(float(((acts > 0).sum(0) == 0).double().mean()))
    assert 0 < figures["dead_fraction"] < 1
    torch.testing.assert_close(totals.stats()["max_activation"], acts.max(0).values.float())


def test_sae_lens_run_evals_agrees_with_scope_figures(tiny_model, tiny_sae):
    # the slow floor test uses scope's figures alone; this keeps them tied to sae-lens' run_evals
    script = _eval_script()
    texts = [f"Item {i}: one two three four five six seven eight nine ten eleven." for i in range(4)]
    seqs = tiny_model.to_tokens(texts)[:, :12]
    ours, _ = script.evaluate(tiny_model, tiny_sae, seqs, seqs, batch=2)
    theirs = script.sae_lens_evaluate(tiny_model, tiny_sae, seqs, seqs, batch=2)
    for key in ("explained_variance", "mean_l0", "dead_fraction", "ce_loss_clean", "ce_loss_sae"):
        assert theirs[key] == pytest.approx(ours[key], rel=1e-3, abs=1e-4), key


# ----------------------------------------------------------------------------- the quality floor


@pytest.mark.slow
def test_demo_sae_reaches_the_quality_floor_on_held_out_text(bundled_model):
    """EV >= 0.75, CE-loss score >= 0.85, 20 <= L0 <= 100, dead < 15% of 50k tokens of the shipped held-out
    sample, which no training step saw (documents are split by hash before training). scope's own
    figures only: the sae-lens pass doubles the cost and is compared with them on the tiny model."""
    args = ["--heldout", str(HELDOUT_SAMPLE), "--tokens", "50000", "--ce-tokens", "8192", "--skip-sae-lens"]
    figures = _eval_script().main(args)
    assert figures["tokens"] > 40_000
    assert figures["explained_variance"] >= 0.75
    assert figures["ce_loss_score"] >= 0.85
    assert 20 <= figures["mean_l0"] <= 100
    # "dead" = silent on every evaluated token, so it grows as the token count shrinks: 12.8% on
    # these 50k tokens sampled across all sources (eval.json: over 427k held-out tokens)
    assert figures["dead_fraction"] < 0.15


def _train_script():
    spec = importlib.util.spec_from_file_location("train_demo_sae", ROOT / "scripts" / "train_demo_sae.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_folding_decoder_norms_equals_sae_lens_and_keeps_the_sae_exact(make_sae):
    sae, params = make_sae(d_in=64, d_sae=48)
    weights = {k: torch.from_numpy(v) for k, v in params.items()}
    folded = _train_script().fold_decoder_norm(weights)
    sae.fold_W_dec_norm()  # sae-lens' own JumpReLU folding, the independent computation
    for name in ("W_enc", "W_dec", "b_enc", "threshold"):
        torch.testing.assert_close(folded[name], getattr(sae, name).detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(folded["W_dec"].norm(dim=-1), torch.ones(48))
    x = torch.randn(32, 64) * 3
    pre = x @ weights["W_enc"] + weights["b_enc"]
    acts = torch.relu(pre) * (pre > weights["threshold"])
    pre_f = x @ folded["W_enc"] + folded["b_enc"]
    acts_f = torch.relu(pre_f) * (pre_f > folded["threshold"])
    assert torch.equal(acts > 0, acts_f > 0) and (acts > 0).any()
    torch.testing.assert_close(acts_f @ folded["W_dec"], acts @ weights["W_dec"], rtol=1e-4, atol=1e-4)
