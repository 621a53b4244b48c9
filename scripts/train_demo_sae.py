"""Train a demo JumpReLU SAE for the bundled Gemma 3 270M with sae-lens' own training runner.

Defaults train the general demo SAE (issue: demo SAEs that read general English): the residual
after block 9 of 18 (``--layer 9``), 8,192 features, on an equal-character mix of the general-English
and documentation corpora (``scripts/build_corpus.py --corpus english`` and ``--corpus docs``),
decoder rows folded to unit norm at the end (``--fold-decoder-norm``, thresholds rescaled with them,
as Gemma Scope ships its SAEs), with a penalty on features firing on more than 10% of tokens
(``--frequency-cap``, ``--frequency-coeff``), on ``--device`` (cuda when there is one), into
``data/demo_sae`` (``scope.load_sae("demo")``). The layer-6 documentation SAE in
``data/demo_sae_docs`` (``scope.load_sae("demo-docs")``) was trained by the first version of this
script; its ``training_config.json`` records that command (``--layer 6 --width 4096``, docs
corpus only, no folding, no frequency penalty).

Offline and on CPU, in two stages:

1. **Cache activations** (once, ~57 min on 2 cores; reused when ``--cache-dir`` exists): sae-lens'
   ``CacheActivationsRunner`` runs ``scope.load_model("gemma-3-270m")`` over the train split
   that ``scripts/build_corpus.py`` writes (passed as ``override_dataset``; the runner's model
   loader is handed the loaded model, so nothing is downloaded) and stores the residual at
   ``blocks.6.hook_resid_post`` for ~2.5M tokens, with their token ids. The model runs with
   ``stop_at_layer`` = 7 (``ActivationsStore.get_activations``): blocks 7..17 are never computed.
2. **Train** with ``LanguageModelSAETrainingRunner`` over the cache for ``--epochs`` passes
   (``use_cached_activations``). BOS positions are dropped with
   ``exclude_special_tokens=[bos_id]``: Gemma's BOS residual is huge and carries no text.

The recipe: JumpReLU like Gemma Scope, with Gemma Scope 2's quadratic L0 penalty around a target
L0 of 50; Anthropic's variant where the L0 straight-through gradient reaches the encoder
(``--ste-to-input``; with thresholds alone, L0 stayed in the hundreds to thousands within the
few thousand CPU steps) and their pre-activation loss on dead features (``--pre-act-coeff``); and
a data-driven start (:func:`initial_sae`) in which every feature fires on 1.2% of tokens. Trials
on one 195k-token shard (586 steps) showed what each piece does (dead = never fired in the last
200 steps):

==========================================  ======  =====
trial                                       L0      dead
==========================================  ======  =====
first run, 1.4M tokens, no data init        52.6    95%
quadratic, encoder STE, pre-act 1e-2        52.8    78%
+ data-driven b_enc / b_dec start           50.9    58%
+ pre-act 1.0 (shipped recipe)              51.1    0%
thresholds-only STE, data start             ~570    -
==========================================  ======  =====

The result goes to ``data/demo_sae/`` in sae-lens' folder format (cfg.json +
sae_weights.safetensors, weights stored in fp16, about 10 MB), with the full runner config in
``training_config.json`` beside it. Training runs at about 3,800 tokens/s from the cache.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONPATH=. python scripts/train_demo_sae.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SCOPE_CACHE", Path.home() / ".cache" / "scope"))
DEFAULT_CORPUS = CACHE / "corpus"
DEFAULT_CORPORA = [CACHE / "corpus-english" / "train.jsonl", DEFAULT_CORPUS / "train.jsonl"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cache-tokens",
        type=int,
        default=2_400_000,
        help="activations computed once from the corpus and cached on disk",
    )
    p.add_argument("--epochs", type=float, default=3.0, help="passes over the cached activations")
    p.add_argument("--cache-only", action="store_true", help="build the activation cache and stop")
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="where the cached activations live (reused when present); default under $SCOPE_CACHE/activations",
    )
    p.add_argument("--width", type=int, default=8192)
    p.add_argument("--layer", type=int, default=9, help="train on blocks.LAYER.hook_resid_post")
    p.add_argument("--hook", help="any hook name instead of --layer's residual")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--fold-decoder-norm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ship unit-norm decoder rows (activations scaled up, thresholds with them)",
    )
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=1024, help="SAE training batch, in tokens")
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--target-l0", type=float, default=50.0)
    p.add_argument("--init-threshold", type=float, default=0.1)
    p.add_argument("--l0-coeff", type=float, default=1.0)
    p.add_argument("--sparsity-loss", choices=["step", "tanh", "quadratic"], default="quadratic")
    p.add_argument("--bandwidth", type=float, default=0.05)
    p.add_argument(
        "--ste-to-input",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="let the L0 gradient reach the encoder too (Anthropic) or only the thresholds",
    )
    p.add_argument(
        "--pre-act-coeff", type=float, default=1.0, help="Anthropic's pre-activation loss on dead features (None: off)"
    )
    p.add_argument("--l0-warm-up", type=float, default=0.05, help="fraction of steps to warm up the L0 penalty")
    p.add_argument("--dead-window", type=int, default=100, help="steps without firing before a feature counts dead")
    p.add_argument(
        "--frequency-cap",
        type=float,
        default=0.10,
        help="features firing on more than this fraction of a batch's tokens pay --frequency-coeff",
    )
    p.add_argument(
        "--frequency-coeff",
        type=float,
        default=1.0,
        help="weight of the penalty on dense features (0: off); warms up with the L0 penalty",
    )
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--corpus",
        type=Path,
        nargs="+",
        default=DEFAULT_CORPORA,
        help="train.jsonl files, mixed in equal characters (the largest are cut, in seeded order)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "data" / "demo_sae")
    args = p.parse_args()
    args.hook = args.hook or f"blocks.{args.layer}.hook_resid_post"
    args.cache_dir = args.cache_dir or CACHE / "activations" / f"{args.hook}-{len(args.corpus)}corpora"
    return args


def load_texts(paths: list[Path], seed: int) -> list[str]:
    """Train documents of every corpus in equal characters, shuffled by seed so every source shows
    up early (each file is ordered by source)."""
    corpora = []
    for path in paths:
        if not path.is_file():
            sys.exit(f"{path} is missing: build the corpus first with scripts/build_corpus.py")
        with path.open() as f:
            texts = [json.loads(line)["text"] for line in f]
        random.Random(seed).shuffle(texts)
        corpora.append(texts)
    budget = min(sum(map(len, texts)) for texts in corpora)
    mixed = []
    for texts in corpora:
        used = 0
        for text in texts:
            if used >= budget:
                break
            mixed.append(text)
            used += len(text)
    random.Random(seed).shuffle(mixed)
    return mixed


def cache_activations(args: argparse.Namespace, model, dataset) -> None:
    """Run the model once over ``--cache-tokens`` of corpus and store the hook's activations
    (with their token ids, so BOS can still be excluded) with sae-lens' CacheActivationsRunner.

    The SAE then trains for several epochs over the cache: a forward to layer 6 costs ~2.5x an
    SAE step on this CPU, so re-running the model every epoch would dominate. The runner loads its
    model by name; it is handed the already loaded bundled model instead (no hub here).
    """
    import sae_lens.cache_activations_runner as car
    from sae_lens import CacheActivationsRunnerConfig

    cfg = CacheActivationsRunnerConfig(
        dataset_path="scope-corpus/train.jsonl",  # informational: passed in as override_dataset
        model_name="gemma-3-270m",
        model_class_name="HookedSAETransformer",
        model_batch_size=16,
        hook_name=args.hook,
        d_in=model.cfg.d_model,
        training_tokens=args.cache_tokens,
        context_size=args.context,
        new_cached_activations_path=str(args.cache_dir) + ".partial",
        shuffle=True,
        seed=args.seed,
        dtype="float32",
        device=args.device,
        buffer_size_gb=0.5,
        prepend_bos=True,
        streaming=False,
    )
    partial = Path(cfg.new_cached_activations_path)
    shutil.rmtree(partial, ignore_errors=True)
    original_load_model = car.load_model
    car.load_model = lambda **_: model
    try:
        car.CacheActivationsRunner(cfg, override_dataset=dataset).run()
    finally:
        car.load_model = original_load_model
    # An interrupted run leaves only the .partial folder, never a half-written cache.
    partial.rename(args.cache_dir)


def cached_tokens(cache_dir: Path) -> int:
    """Token positions in the cache (the runner fills whole buffers, so a little over asked)."""
    import datasets

    cache = datasets.load_from_disk(str(cache_dir))
    return len(cache) * len(cache[0]["token_ids"])


def runner_config(args: argparse.Namespace, bos_id: int, out_dir: str):
    """The sae-lens runner config: JumpReLU like Gemma Scope, with Gemma Scope 2's quadratic L0
    penalty around a target L0 (it lands in the wanted L0 range in a short CPU run)."""
    from sae_lens import JumpReLUTrainingSAEConfig, LanguageModelSAERunnerConfig, LoggingConfig

    total_steps = int(args.tokens // args.batch)
    sae_cfg = JumpReLUTrainingSAEConfig(
        d_in=args.d_in,
        d_sae=args.width,
        dtype="float32",
        device=args.device,
        apply_b_dec_to_input=True,
        normalize_activations="expected_average_only_in",  # folded into the weights at the end
        jumprelu_init_threshold=args.init_threshold,
        jumprelu_bandwidth=args.bandwidth,
        jumprelu_sparsity_loss_mode=args.sparsity_loss,
        target_l0=args.target_l0,
        l0_coefficient=args.l0_coeff,
        l0_warm_up_steps=max(1, int(total_steps * args.l0_warm_up)),
        jumprelu_ste_to_input=args.ste_to_input,
        pre_act_loss_coefficient=args.pre_act_coeff,
        decoder_init_norm=0.1,
    )
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name="gemma-3-270m",  # informational: the model is passed in as override_model
        model_class_name="HookedSAETransformer",
        hook_name=args.hook,
        dataset_path="scope-corpus/train.jsonl",  # informational: passed in as override_dataset
        is_dataset_tokenized=False,
        streaming=False,
        context_size=args.context,
        prepend_bos=True,
        exclude_special_tokens=[bos_id],
        training_tokens=int(args.tokens),
        use_cached_activations=True,
        cached_activations_path=str(args.cache_dir),
        train_batch_size_tokens=args.batch,
        store_batch_size_prompts=16,
        n_batches_in_buffer=16,
        activations_mixing_fraction=0.5,
        n_batches_for_norm_estimate=20,
        lr=args.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=max(1, total_steps // 20),
        lr_decay_steps=max(1, total_steps // 5),
        device=args.device,
        seed=args.seed,
        dtype="float32",
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        dead_feature_window=args.dead_window,
        feature_sampling_window=max(args.dead_window, 200),
        checkpoint_path=None,
        output_path=out_dir,
        verbose=True,
    )


def frequency_capped_sae_class(cap: float, coefficient: float):
    """sae-lens' JumpReLU training SAE plus a penalty on dense features.

    Gemma Scope 2 penalised features that fire on many tokens; sae-lens has no such option, so
    this adds ``coefficient * sum_i relu(f_i - cap)`` to the loss, where ``f_i`` is the fraction
    of the batch's tokens on which feature ``i`` fires, differentiated with the same
    straight-through estimator as the L0 penalty (so it moves thresholds, and the encoder with
    ``--ste-to-input``). Features under the cap are untouched; the L0 target still sets the
    overall sparsity. It warms up with the L0 coefficient.
    """
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, Step

    class FrequencyCappedJumpReLU(JumpReLUTrainingSAE):
        def calculate_aux_loss(self, step_input, feature_acts, hidden_pre, sae_out):
            losses = super().calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)
            if coefficient > 0:
                fired = Step.apply(
                    hidden_pre, self.threshold.to(hidden_pre.dtype), self.bandwidth, self.cfg.jumprelu_ste_to_input
                )
                warm_up = step_input.coefficients["l0"] / self.cfg.l0_coefficient
                excess = (fired.mean(0) - cap).relu().sum()
                losses["frequency_loss"] = coefficient * warm_up * excess
            return losses

    return FrequencyCappedJumpReLU


@torch.no_grad()
def initial_sae(cfg, cache_dir: Path, bos_id: int, sae_class, n_rows: int = 400):
    """The runner's JumpReLU SAE, initialised from data so that no feature starts dead.

    Random decoder directions (norm 0.1) with W_enc = W_dec.T, as sae-lens does; then b_dec at
    the mean activation, and each feature's b_enc set so that it fires on target_l0 / d_sae of
    a sample of cached tokens (Anthropic's January 2025 update initialises b_enc from data the
    same way). Without this the residual's mean direction makes some random features fire on
    nearly every token and leaves most never firing; in trials 78-95% of features ended dead.
    """
    import datasets
    from sae_lens.saes.sae import TrainingSAEConfig

    sae = sae_class(TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()))
    rows = datasets.load_from_disk(str(cache_dir)).with_format("torch")[:n_rows]
    x = rows[cfg.hook_name].reshape(-1, cfg.sae.d_in).float()
    x = x[rows["token_ids"].reshape(-1) != bos_id]
    x = x * (cfg.sae.d_in**0.5) / x.norm(dim=-1).mean()  # the runner's expected_average_only_in scaling
    sae.b_dec.data = x.mean(0)
    pre = (x - sae.b_dec) @ sae.W_enc
    fire_fraction = cfg.sae.target_l0 / cfg.sae.d_sae
    cut = pre.kthvalue(int(len(pre) * (1 - fire_fraction)), dim=0).values  # quantile() is size-limited
    sae.b_enc.data = sae.threshold.detach() - cut
    return sae


def print_density(path: Path) -> None:
    """Dense and dead features over the runner's last sampling window (log10 densities)."""
    if not path.is_file():
        return
    density = 10 ** load_file(str(path))["sparsity"].float()  # log10(density + 1e-10)
    silent = density < 1e-9
    print(
        f"last window: {int((density > 0.1).sum())} features fire on > 10% of tokens, "
        f"{int(silent.sum())} never fire ({float(silent.float().mean()):.1%})",
        flush=True,
    )


def fold_decoder_norm(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unit-norm decoder rows, as sae-lens' ``fold_W_dec_norm`` does for JumpReLU: W_dec / n,
    W_enc * n, b_enc * n and threshold * n, so the same features fire and the reconstruction is
    unchanged while each activation becomes its contribution's norm in the residual."""
    norms = weights["W_dec"].float().norm(dim=-1).clamp(min=1e-8)
    folded = dict(weights)
    folded["W_dec"] = weights["W_dec"] / norms[:, None]
    folded["W_enc"] = weights["W_enc"] * norms[None, :]
    folded["b_enc"] = weights["b_enc"] * norms
    folded["threshold"] = weights["threshold"] * norms
    return folded


def ship(tmp: Path, out: Path, extra: dict, fold: bool) -> None:
    """Copy the runner's output into ``out``: fp16 weights (decoder rows unit-norm when ``fold``),
    cfg.json (fp32 compute), full config."""
    out.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(tmp / "sae_weights.safetensors"))
    if fold:
        weights = fold_decoder_norm(weights)
    save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()}, str(out / "sae_weights.safetensors"))
    cfg = json.loads((tmp / "cfg.json").read_text())
    cfg["dtype"] = "float32"  # stored fp16, computed in fp32 (load_from_disk casts)
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    runner_cfg = json.loads((tmp / "runner_cfg.json").read_text())
    runner_cfg.update(extra)
    (out / "training_config.json").write_text(json.dumps(runner_cfg, indent=2, default=str) + "\n")
    if (tmp / "sparsity.safetensors").is_file():
        shutil.copy(tmp / "sparsity.safetensors", out / "train_sparsity.safetensors")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    import datasets
    from sae_lens import LanguageModelSAETrainingRunner

    import scope

    t0 = time.time()
    model = scope.load_model("gemma-3-270m", device=args.device, dtype="float32")  # fp32 activations on GPU too
    model.eval()
    args.d_in = model.cfg.d_model
    texts = load_texts(args.corpus, args.seed)
    dataset = datasets.Dataset.from_dict({"text": texts})
    print(f"model + {len(texts)} documents loaded in {time.time() - t0:.1f}s", flush=True)
    if not args.cache_dir.is_dir():
        t0 = time.time()
        cache_activations(args, model, dataset)
        print(f"cached {cached_tokens(args.cache_dir):,} activations in {time.time() - t0:.0f}s", flush=True)
    if args.cache_only:
        return
    args.tokens = int(args.epochs * cached_tokens(args.cache_dir))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = runner_config(args, model.tokenizer.bos_token_id, tmp)
        sae_class = frequency_capped_sae_class(args.frequency_cap, args.frequency_coeff)
        sae = initial_sae(cfg, args.cache_dir, model.tokenizer.bos_token_id, sae_class)
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model, override_sae=sae)
        t1 = time.time()
        runner.run()
        seconds = time.time() - t1
        print(f"trained on {args.tokens:,} tokens in {seconds:.0f}s: {args.tokens / seconds:.0f} tokens/s", flush=True)
        print_density(Path(tmp) / "sparsity.safetensors")
        extra = {
            "scope_corpus": [str(p) for p in args.corpus],
            "scope_corpus_mix": "equal characters per corpus (largest cut in seeded order)",
            "scope_decoder_norm": "unit (folded after training)" if args.fold_decoder_norm else "as trained",
            "scope_device": args.device,
            "scope_train_seconds": round(seconds, 1),
            "scope_tokens_per_second": round(args.tokens / seconds, 1),
            "scope_threads": args.threads,
            "scope_torch": torch.__version__,
            "scope_command": " ".join(sys.argv),
            "scope_cache_dir": str(args.cache_dir),
            "scope_cached_tokens": cached_tokens(args.cache_dir),
            "scope_epochs": args.epochs,
            "scope_frequency_penalty": {"cap": args.frequency_cap, "coefficient": args.frequency_coeff},
            "scope_init": "initial_sae(): b_dec = mean activation; b_enc so each feature fires on "
            "target_l0 / d_sae of 51k cached tokens; W_enc = W_dec.T, decoder norm 0.1",
        }
        ship(Path(tmp), args.out, extra, args.fold_decoder_norm)
    print(f"saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
