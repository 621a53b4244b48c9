"""The shipped demo SAEs (``"demo"`` and ``"demo-docs"``): their files, their config, and the
quality floor on held-out text.

The evaluation code of ``scripts/eval_demo_sae.py`` is first checked against computations
written here on the tiny model, then run on the shipped held-out sample for the floor.
"""

import importlib.util
import json
import os
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import scope
from scope.saes import DEMO_SAES

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_SAMPLE = ROOT / "data" / "corpus_sample" / "heldout.jsonl"
ENGLISH_SAMPLE = ROOT / "data" / "corpus_sample" / "english" / "heldout.jsonl"
# issue 16's targets for the general SAE on English it never saw
EV_FLOOR, CE_FLOOR, DELTA_CEILING = 0.90, 0.93, 0.6


def _eval_script():
    spec = importlib.util.spec_from_file_location("eval_demo_sae", ROOT / "scripts" / "eval_demo_sae.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the files


def _shipped(name: str) -> Path:
    """The folder of a bundled SAE (a missing one fails the test that asks for it)."""
    return DEMO_SAES[name].folder


@pytest.mark.parametrize("name", list(DEMO_SAES))
def test_demo_sae_files_are_small_and_consistent(name):
    entry = DEMO_SAES[name]
    files = {p.name: p for p in _shipped(name).iterdir()}
    shipped = {"cfg.json", "sae_weights.safetensors", "training_config.json", "feature_stats.safetensors"}
    assert shipped | {"labels.parquet", "eval.json"} <= set(files)
    cfg = json.loads(files["cfg.json"].read_text())
    training = json.loads(files["training_config.json"].read_text())
    assert cfg["architecture"] == "jumprelu"
    assert cfg["metadata"]["hook_name"] == training["hook_name"] == entry.hook
    weights = load_file(str(files["sae_weights.safetensors"]))
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    assert d_sae == entry.width
    # fp16 weights (2 bytes each of W_enc and W_dec) plus a few MiB of statistics, labels and configs
    # (the shipped examples have their own size check: tests/test_shipped_examples.py)
    examples = {"examples.parquet", "activity.parquet"}
    assert sum(p.stat().st_size for n, p in files.items() if n not in examples) < 2 * 2 * d_in * d_sae + 4 * 2**20
    assert weights["W_enc"].shape == (d_in, d_sae) and weights["W_dec"].shape == (d_sae, d_in)
    assert weights["threshold"].shape == (d_sae,) and (weights["threshold"] >= 0).all()
    if name == "demo":  # unit-norm decoder rows, as Gemma Scope ships them
        norms = weights["W_dec"].float().norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones(d_sae), rtol=0, atol=1e-2)
    stats = load_file(str(files["feature_stats.safetensors"]))
    for column in ("max_activation", "density", "quantile_0.5", "quantile_0.9", "quantile_0.99"):
        assert stats[column].shape == (d_sae,)
    alive = stats["density"] > 0
    # a live feature's quantiles are ordered and never above its max activation
    assert (stats["quantile_0.5"][alive] <= stats["quantile_0.99"][alive] + 1e-6).all()
    assert (stats["quantile_0.99"][alive] <= stats["max_activation"][alive] + 1e-6).all()
    labels = pd.read_parquet(files["labels.parquet"])
    assert labels["feature"].tolist() == list(range(d_sae))
    # eval.json: one entry per held-out split, each with the figures of scripts/eval_demo_sae.py
    for split, figures in json.loads(files["eval.json"].read_text()).items():
        assert {"explained_variance", "mean_l0", "dead_fraction", "tokens", "heldout"} <= set(figures), split


def test_the_docs_sae_command_rebuilds_what_its_folder_records(monkeypatch):
    """DEMO_SAES["demo-docs"].command, read by today's scripts/train_demo_sae.py, asks for the
    settings that trained the shipped layer-6 SAE (its training_config.json)."""
    entry = DEMO_SAES["demo-docs"]
    training = json.loads((entry.folder / "training_config.json").read_text())
    monkeypatch.setattr(sys, "argv", [os.path.expanduser(arg) for arg in shlex.split(entry.command)])
    args = _train_script().parse_args()
    assert args.hook == training["hook_name"] == entry.hook
    assert args.width == training["sae"]["d_sae"] == entry.width
    assert [p.parts[-2:] for p in args.corpus] == [Path(training["scope_corpus"]).parts[-2:]]  # docs only
    assert args.out == Path("data/demo_sae_docs") and ROOT / args.out == entry.folder
    assert args.fold_decoder_norm is False and args.frequency_coeff == 0  # both came later
    sae = training["sae"]
    assert (args.lr, args.batch, args.context, args.seed) == (
        training["lr"],
        training["train_batch_size_tokens"],
        training["context_size"],
        training["seed"],
    )
    assert (args.target_l0, args.init_threshold, args.bandwidth, args.sparsity_loss) == (
        sae["target_l0"],
        sae["jumprelu_init_threshold"],
        sae["jumprelu_bandwidth"],
        sae["jumprelu_sparsity_loss_mode"],
    )
    assert (args.ste_to_input, args.pre_act_coeff) == (sae["jumprelu_ste_to_input"], sae["pre_act_loss_coefficient"])
    assert args.epochs == training["scope_epochs"]


def test_the_modern_sae_command_rebuilds_what_its_folder_records(monkeypatch):
    """DEMO_SAES["demo-modern"].command asks for the recipe its training_config.json records: the
    BatchTopK SAE at layer 12 on the 2 : 2 : 1 mix, one epoch over the cache, bf16."""
    entry = DEMO_SAES["demo-modern"]
    training = json.loads((entry.folder / "training_config.json").read_text())
    monkeypatch.setattr(sys, "argv", [os.path.expanduser(arg) for arg in shlex.split(entry.command)])
    args = _train_script().parse_args()
    sae = training["sae"]
    assert args.hook == training["hook_name"] == entry.hook
    assert args.width == sae["d_sae"] == entry.width and args.k == sae["k"]
    assert sae["metadata"]["training_architecture"] == "batchtopk" == args.architecture
    assert [p.parts[-2:] for p in args.corpus] == [Path(c).parts[-2:] for c in training["scope_corpus"]]
    assert f"shares {[float(w) for w in args.corpus_weights]}" in training["scope_corpus_mix"]
    assert args.bf16 is training["autocast"] is training["autocast_lm"] is True
    assert (args.lr, args.batch, args.context, args.seed, args.epochs) == (
        training["lr"],
        training["train_batch_size_tokens"],
        training["context_size"],
        training["seed"],
        training["scope_epochs"],
    )
    assert args.out == Path("data/demo_sae_modern") and ROOT / args.out == entry.folder


@pytest.mark.parametrize("name", list(DEMO_SAES))
def test_the_shipped_demo_sae_loads_with_its_statistics_and_labels(name):
    # no model needed: this broke unnoticed once, behind the slow tests (n_tokens is not per feature)
    from scope.feature_stats import feature_stats, max_activations
    from scope.labels import feature_labels

    folder = _shipped(name)
    sae = scope.load_sae(name, device="cpu")
    stats = load_file(str(folder / "feature_stats.safetensors"))
    assert sae.cfg.metadata.hook_name == DEMO_SAES[name].hook
    assert torch.equal(max_activations(sae), stats["max_activation"])
    assert set(feature_stats(sae)) == set(stats) - {"n_tokens"}
    assert sae.cfg.metadata.scope_feature_stats_tokens == int(stats["n_tokens"].sum()) > 0
    pd.testing.assert_frame_equal(feature_labels(sae), pd.read_parquet(folder / "labels.parquet"), check_dtype=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DEMO_SAES))
def test_demo_sae_fits_the_bundled_model(bundled_model, name):
    _shipped(name)
    sae = scope.load_sae(name)
    scope.check_compatible(bundled_model, sae)
    assert sae.cfg.metadata.hook_name == DEMO_SAES[name].hook
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


def test_statistics_over_several_splits_equal_one_pass_over_all_their_tokens(tiny_model, tiny_sae):
    script = _eval_script()
    seqs = tiny_model.to_tokens(
        ["One two three four five six seven eight.", "A b c d e f g h i.", "The cat sat on the mat, then slept."]
    )
    _, first = script.evaluate(tiny_model, tiny_sae, seqs[:1], seqs[:1], batch=1)
    _, second = script.evaluate(tiny_model, tiny_sae, seqs[1:], seqs[1:], batch=1)
    _, whole = script.evaluate(tiny_model, tiny_sae, seqs, seqs, batch=1)
    first.absorb(second)
    assert first.n == whole.n > second.n
    assert first.explained_variance() == pytest.approx(whole.explained_variance(), rel=1e-9)
    merged, expected = first.stats(), whole.stats()
    assert set(merged) == set(expected)
    for column in expected:
        torch.testing.assert_close(merged[column], expected[column], msg=column)


def test_eval_splits_are_named_and_checked_before_the_model_loads(tmp_path, monkeypatch, capsys):
    script = _eval_script()
    args = script.parse_args([])
    assert list(args.heldout) == ["english", "docs"]  # the two corpora's held-out splits by default
    assert args.heldout["english"].parts[-2:] == ("corpus-english", "heldout.jsonl")
    assert args.heldout["docs"].parts[-2:] == ("corpus", "heldout.jsonl")
    args = script.parse_args(["--heldout", f"docs={HELDOUT_SAMPLE}", f"english={ENGLISH_SAMPLE}", "--sae", "demo-docs"])
    assert args.heldout == {"docs": HELDOUT_SAMPLE, "english": ENGLISH_SAMPLE}
    for bad in ([str(HELDOUT_SAMPLE)], [f"a={HELDOUT_SAMPLE}", f"a={ENGLISH_SAMPLE}"]):
        with pytest.raises(SystemExit):
            script.parse_args(["--heldout", *bad])
    assert "expected NAME=PATH" in capsys.readouterr().err
    monkeypatch.setattr(scope, "load_model", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit, match=r"english=.*missing\.jsonl is missing.*build_corpus\.py --corpus english"):
        script.main(["--heldout", f"english={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(SystemExit, match=r"--save-stats writes next to the SAE, but --sae nowhere is not a folder"):
        script.main(["--heldout", f"docs={HELDOUT_SAMPLE}", "--sae", "nowhere", "--save-stats"])
    assert script.sae_folder("demo-docs") == DEMO_SAES["demo-docs"].folder
    assert script.sae_folder("some/folder") == Path("some/folder")


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
@pytest.mark.heavy
def test_docs_demo_sae_reaches_the_quality_floor_on_held_out_text(bundled_model):
    """The documentation SAE ("demo-docs"): EV >= 0.75, CE-loss score >= 0.85, 20 <= L0 <= 100, dead
    < 15% of 50k tokens of the shipped held-out sample, which no training step saw (documents are
    split by hash before training). scope's own figures only: the sae-lens pass doubles the cost
    and is compared with them on the tiny model."""
    args = ["--sae", "demo-docs", "--heldout", f"docs={HELDOUT_SAMPLE}", "--tokens", "50000", "--ce-tokens", "8192"]
    result = _eval_script().main([*args, "--skip-sae-lens"])
    assert list(result) == ["docs"]  # one entry per --heldout split
    figures = result["docs"]
    assert figures["heldout"] == str(HELDOUT_SAMPLE)
    assert figures["tokens"] > 40_000
    assert figures["explained_variance"] >= 0.75
    assert figures["ce_loss_score"] >= 0.85
    assert 20 <= figures["mean_l0"] <= 100
    # "dead" = silent on every evaluated token, so it grows as the token count shrinks: 12.8% on
    # these 50k tokens sampled across all sources (data/demo_sae_docs/eval.json: over 427k held-out tokens)
    assert figures["dead_fraction"] < 0.15


@pytest.mark.slow
@pytest.mark.heavy
def test_general_demo_sae_reaches_the_quality_floor_on_english_it_never_saw(bundled_model):
    """The general SAE ("demo") on the shipped general-English held-out sample (documents split off
    before training): issue 16's targets CE-loss score >= CE_FLOOR, delta LM loss <= DELTA_CEILING,
    EV >= EV_FLOOR, 20 <= L0 <= 100, over 25k tokens. scope's own figures (BOS-kept CE score), as above."""
    args = ["--sae", "demo", "--heldout", f"english={ENGLISH_SAMPLE}", "--tokens", "25000", "--ce-tokens", "8192"]
    figures = _eval_script().main([*args, "--skip-sae-lens"])["english"]
    assert figures["tokens"] > 20_000
    assert figures["explained_variance"] >= EV_FLOOR
    assert figures["ce_loss_score_bos_untouched"] >= CE_FLOOR
    assert figures["delta_lm_loss"] <= DELTA_CEILING
    assert 20 <= figures["mean_l0"] <= 100


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


def test_frequency_penalty_charges_only_features_over_the_cap_and_lowers_their_threshold():
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    cap, coefficient = 0.25, 2.0
    cls = _train_script().frequency_capped_sae_class(cap, coefficient)
    cfg = JumpReLUTrainingSAEConfig(
        d_in=8, d_sae=4, jumprelu_sparsity_loss_mode="quadratic", target_l0=2.0, jumprelu_bandwidth=0.5
    )
    sae = cls(cfg)
    # pre-activations chosen by hand: feature 0 fires on every token, 1 on half, 2 on 1/8, 3 never
    hidden_pre = torch.full((8, 4), -1.0)
    hidden_pre[:, 0] = 1.0
    hidden_pre[:4, 1] = 1.0
    hidden_pre[0, 2] = 1.0
    with torch.no_grad():
        sae.threshold.fill_(0.9)  # within the bandwidth of 1.0, so the estimator has a gradient
    step = TrainStepInput(
        sae_in=torch.zeros(8, 8),
        coefficients={"l0": 1.0},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )
    acts = torch.zeros(8, 4)
    losses = sae.calculate_aux_loss(step, acts, hidden_pre, torch.zeros(8, 8))
    # independent: fraction fired per feature, hinge over the cap
    expected = coefficient * ((1.0 - cap) + (0.5 - cap))
    assert losses["frequency_loss"].item() == pytest.approx(expected)
    sae.threshold.grad = None
    losses["frequency_loss"].backward()
    grad = sae.threshold.grad
    assert grad[0] < 0 and grad[1] < 0  # raising the threshold of a dense feature lowers the loss
    assert grad[2] == 0 and grad[3] == 0  # features under the cap pay nothing
    # at half the L0 warm-up the penalty is half as strong
    half = sae.calculate_aux_loss(replace(step, coefficients={"l0": 0.5}), acts, hidden_pre, torch.zeros(8, 8))
    assert half["frequency_loss"].item() == pytest.approx(expected / 2)
