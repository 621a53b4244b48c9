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

The modern recipe (issue 26 item 3; ``data/README.md``, "The modern demo SAE run"): Matryoshka
BatchTopK (``--architecture matryoshka``, saved as JumpReLU by sae-lens), 16,384 features, k 50, at
layer 12 (``scripts/probe_layers.py``), general English : modern English : documentation = 2 : 2 : 1
(``--corpus-weights``), a cache built in parts (``--cache-shards``) and checkpoints
(``--checkpoint-dir``), so that rerunning the same command resumes a killed run.
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    p.add_argument(
        "--cache-shards",
        type=int,
        default=1,
        help="build the cache in this many parts, each kept when done: a killed run resumes at the next part",
    )
    p.add_argument(
        "--online",
        action="store_true",
        help="no activation cache: the model runs for every batch (a GPU's way; --tokens sets the length)",
    )
    p.add_argument("--tokens", type=int, help="training tokens (default: --epochs passes over the cache)")
    p.add_argument(
        "--architecture",
        choices=["jumprelu", "batchtopk", "matryoshka"],
        default="jumprelu",
        help="jumprelu (Gemma Scope's; L0 penalty), batchtopk or matryoshka (Matryoshka BatchTopK, Gemma Scope 2's); "
        "the last two are saved as JumpReLU SAEs (one threshold for all features), as sae-lens does",
    )
    p.add_argument("--k", type=float, default=50.0, help="BatchTopK: mean features per token")
    p.add_argument(
        "--matryoshka-widths",
        type=int,
        nargs="+",
        help="nested prefix widths (default: width/16, width/4, width)",
    )
    p.add_argument(
        "--normalize",
        choices=["expected_average_only_in", "none"],
        default="expected_average_only_in",
        help="sae-lens' activation normalisation (mean norm scaled to sqrt(d_in), folded into the weights at the "
        "end); b_dec always starts at the data mean and is subtracted before encoding (the shared component)",
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
        "--bf16",
        action="store_true",
        help="run the model and the SAE's matmuls in bfloat16 (torch.autocast; weights, optimiser and the cache "
        "stay fp32): on these CPUs' AMX the activation pass ran 1.9x and a 16k Matryoshka step 1.4x faster "
        "(scripts/bench_bf16.py)",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        nargs="+",
        default=DEFAULT_CORPORA,
        help="train.jsonl files, mixed in equal characters (the largest are cut, in seeded order)",
    )
    p.add_argument(
        "--corpus-weights",
        type=float,
        nargs="+",
        help="shares of the text per --corpus file, all text used: smaller shares are cut, larger ones repeated "
        "(default: equal characters, the largest cut)",
    )
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        help="keep the latest training checkpoint here and resume from it when the run starts again",
    )
    p.add_argument("--checkpoints", type=int, default=0, help="checkpoints over the run (with --checkpoint-dir)")
    p.add_argument("--out", type=Path, default=ROOT / "data" / "demo_sae")
    args = p.parse_args(argv)
    if args.corpus_weights is not None and len(args.corpus_weights) != len(args.corpus):
        p.error(f"--corpus-weights needs one weight per --corpus file ({len(args.corpus)}), got {args.corpus_weights}")
    if args.corpus_weights is not None and min(args.corpus_weights) <= 0:
        p.error(f"--corpus-weights must be positive, got {args.corpus_weights}")
    if args.online and args.tokens is None:
        p.error("--online needs --tokens (there is no cache to count epochs over)")
    if args.architecture == "matryoshka":
        widths = args.matryoshka_widths or [args.width // 16, args.width // 4, args.width]
        if widths != sorted(set(widths)) or widths[-1] != args.width or widths[0] <= 0:
            p.error(f"--matryoshka-widths must increase strictly and end at --width {args.width}, got {widths}")
        args.matryoshka_widths = widths
    if args.checkpoints and args.checkpoint_dir is None:
        p.error("--checkpoints needs --checkpoint-dir")
    args.hook = args.hook or f"blocks.{args.layer}.hook_resid_post"
    args.cache_dir = args.cache_dir or CACHE / "activations" / f"{args.hook}-{len(args.corpus)}corpora"
    return args


def load_texts(paths: list[Path], seed: int, weights: list[float] | None = None) -> list[str]:
    """Train documents of every corpus in equal characters, shuffled by seed so every source shows
    up early (each file is ordered by source). With ``weights``, every corpus' characters are the
    weight's share of all the text: a corpus over its share is cut, one under it repeated (each
    pass in a new seeded order)."""
    corpora = []
    for path in paths:
        if not path.is_file():
            sys.exit(f"{path} is missing: build the corpus first with scripts/build_corpus.py")
        with path.open() as f:
            texts = [json.loads(line)["text"] for line in f]
        random.Random(seed).shuffle(texts)
        corpora.append(texts)
    sizes = [sum(map(len, texts)) for texts in corpora]
    budgets = [min(sizes)] * len(corpora)
    if weights is not None:
        budgets = [sum(sizes) * w / sum(weights) for w in weights]
    mixed = []
    for texts, budget in zip(corpora, budgets):
        used, passes = 0, 0
        while used < budget:
            order = list(texts)
            if passes:
                random.Random(seed + passes).shuffle(order)
            for text in order:
                if used >= budget:
                    break
                mixed.append(text)
                used += len(text)
            passes += 1
    random.Random(seed).shuffle(mixed)
    return mixed


def cache_activations(args: argparse.Namespace, model, dataset) -> None:
    """The activation cache, built in ``--cache-shards`` parts that each survive a killed run.

    One part (the default) is today's single pass. With more, part ``i`` caches
    ``--cache-tokens / parts`` tokens of the ``i``-th contiguous slice of the (shuffled) texts into
    ``CACHE_DIR.shards/shard_{i:05d}``; parts already there are skipped, so a rerun of the same
    command resumes; at the end sae-lens' own shard consolidation moves the parts' files into
    ``CACHE_DIR`` (no copy).
    """
    if args.cache_shards <= 1:
        cache_part(args, model, dataset, args.cache_tokens, args.cache_dir)
        return
    from sae_lens.cache_activations_runner import CacheActivationsRunner
    from tqdm.auto import tqdm

    shards = Path(str(args.cache_dir) + ".shards")
    shards.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(args.cache_shards), desc="cache parts"):
        part = shards / f"shard_{i:05d}"
        if part.is_dir():
            continue
        texts = dataset.shard(args.cache_shards, i, contiguous=True)
        cache_part(args, model, texts, args.cache_tokens // args.cache_shards, part)
    staging = Path(str(args.cache_dir) + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    CacheActivationsRunner._consolidate_shards(shards, staging, copy_files=False)
    staging.rename(args.cache_dir)
    shutil.rmtree(shards, ignore_errors=True)  # sae-lens moved the parts out already


def cache_part(args: argparse.Namespace, model, dataset, tokens: int, target: Path) -> None:
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
        training_tokens=tokens,
        context_size=args.context,
        new_cached_activations_path=str(target) + ".partial",
        shuffle=True,
        seed=args.seed,
        dtype="float32",  # the cache: bf16 is only the model's matmuls (sae-lens' autocast_lm)
        autocast_lm=args.bf16,
        device=args.device,
        buffer_size_gb=min(0.5, tokens * model.cfg.d_model * 4 / 1e9),  # a small part is one small buffer
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
    partial.rename(target)


def cached_tokens(cache_dir: Path) -> int:
    """Token positions in the cache (the runner fills whole buffers, so a little over asked)."""
    import datasets

    cache = datasets.load_from_disk(str(cache_dir))
    return len(cache) * len(cache[0]["token_ids"])


def sae_config(args: argparse.Namespace, total_steps: int):
    """The training SAE's config for ``--architecture``.

    jumprelu: like Gemma Scope, with Gemma Scope 2's quadratic L0 penalty around a target L0 (it
    lands in the wanted L0 range in a short CPU run). batchtopk / matryoshka: the k largest
    pre-activations of the batch (k per token on average), decoder norms treated as folded
    (``rescale_acts_by_decoder_norm``), saved by sae-lens as JumpReLU with one threshold (the
    running minimum kept activation); Matryoshka adds nested reconstruction losses over
    ``--matryoshka-widths`` prefixes (Gemma Scope 2's recipe).
    """
    from sae_lens import BatchTopKTrainingSAEConfig, JumpReLUTrainingSAEConfig, MatryoshkaBatchTopKTrainingSAEConfig

    common = dict(
        d_in=args.d_in,
        d_sae=args.width,
        dtype="float32",
        device=args.device,
        apply_b_dec_to_input=True,
        normalize_activations=args.normalize,  # folded into the weights at the end
        decoder_init_norm=0.1,
    )
    if args.architecture == "batchtopk":
        return BatchTopKTrainingSAEConfig(k=args.k, **common)
    if args.architecture == "matryoshka":
        return MatryoshkaBatchTopKTrainingSAEConfig(k=args.k, matryoshka_widths=list(args.matryoshka_widths), **common)
    return JumpReLUTrainingSAEConfig(
        **common,
        jumprelu_init_threshold=args.init_threshold,
        jumprelu_bandwidth=args.bandwidth,
        jumprelu_sparsity_loss_mode=args.sparsity_loss,
        target_l0=args.target_l0,
        l0_coefficient=args.l0_coeff,
        l0_warm_up_steps=max(1, int(total_steps * args.l0_warm_up)),
        jumprelu_ste_to_input=args.ste_to_input,
        pre_act_loss_coefficient=args.pre_act_coeff,
    )


def runner_config(args: argparse.Namespace, bos_id: int, out_dir: str):
    """The sae-lens runner config over the cache (or the model, ``--online``)."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    total_steps = int(args.tokens // args.batch)
    sae_cfg = sae_config(args, total_steps)
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
        use_cached_activations=not args.online,
        cached_activations_path=None if args.online else str(args.cache_dir),
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
        autocast=args.bf16,
        autocast_lm=args.bf16,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=args.checkpoints,
        dead_feature_window=args.dead_window,
        feature_sampling_window=max(args.dead_window, 200),
        checkpoint_path=str(args.checkpoint_dir) if args.checkpoint_dir else None,
        resume_from_checkpoint=str(resume) if (resume := latest_checkpoint(args.checkpoint_dir)) else None,
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


def checkpoints(folder: Path | None) -> list[Path]:
    """Complete sae-lens checkpoints under ``folder``: sae-lens writes them to ``folder/RUN_ID/SAMPLES``
    (a new RUN_ID per run); an interrupted save (no weights or no trainer state) does not count."""
    from sae_lens.constants import SAE_WEIGHTS_FILENAME, TRAINER_STATE_FILENAME

    if folder is None or not folder.is_dir():
        return []
    return [
        c
        for c in folder.glob("*/*")
        if c.name.isdigit() and (c / SAE_WEIGHTS_FILENAME).is_file() and (c / TRAINER_STATE_FILENAME).is_file()
    ]


def latest_checkpoint(folder: Path | None) -> Path | None:
    """The newest complete checkpoint (most training samples seen) of any run under ``folder``."""
    return max(checkpoints(folder), key=lambda c: int(c.name), default=None)


def training_runner_class():
    """sae-lens' runner, keeping only the newest complete checkpoint (a 16k SAE's is ~250 MB)."""
    from sae_lens import LanguageModelSAETrainingRunner

    class KeepLatestCheckpoint(LanguageModelSAETrainingRunner):
        def save_checkpoint(self, checkpoint_path: Path | None) -> None:
            super().save_checkpoint(checkpoint_path)
            if checkpoint_path is None:
                return
            base = Path(checkpoint_path).parent.parent
            newest = latest_checkpoint(base)
            for old in checkpoints(base):
                if old != newest:
                    shutil.rmtree(old, ignore_errors=True)

    return KeepLatestCheckpoint


def training_sae_class(args: argparse.Namespace):
    if args.architecture == "batchtopk":
        from sae_lens import BatchTopKTrainingSAE

        return BatchTopKTrainingSAE
    if args.architecture == "matryoshka":
        from sae_lens import MatryoshkaBatchTopKTrainingSAE

        return MatryoshkaBatchTopKTrainingSAE
    return frequency_capped_sae_class(args.frequency_cap, args.frequency_coeff)


@torch.no_grad()
def sample_activations(args: argparse.Namespace, model, texts: list[str], n_tokens: int = 51_200) -> torch.Tensor:
    """Hook activations of about ``n_tokens`` tokens of the first texts (BOS dropped), for the
    data-driven start when there is no cache (``--online``)."""
    bos = model.tokenizer.bos_token_id
    body, rows = args.context - 1, []
    for text in texts:
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        rows += [[bos] + ids[s : s + body] for s in range(0, len(ids) - body + 1, body)]
        if len(rows) * body >= n_tokens:
            break
    layer = int(args.hook.split(".")[1])
    out = []
    for start in range(0, len(rows), 16):
        tokens = torch.tensor(rows[start : start + 16], device=args.device)
        _, cache = model.run_with_cache(tokens, names_filter=[args.hook], stop_at_layer=layer + 1)
        out.append(cache[args.hook][:, 1:].reshape(-1, args.d_in).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def initial_sae(cfg, cache_dir: Path | None, bos_id: int, sae_class, n_rows: int = 400, x: torch.Tensor | None = None):
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
    if x is None:
        rows = datasets.load_from_disk(str(cache_dir)).with_format("torch")[:n_rows]
        x = rows[cfg.hook_name].reshape(-1, cfg.sae.d_in).float()
        x = x[rows["token_ids"].reshape(-1) != bos_id]
    if cfg.sae.normalize_activations == "expected_average_only_in":
        x = x * (cfg.sae.d_in**0.5) / x.norm(dim=-1).mean()  # the runner's scaling
    sae.b_dec.data = x.mean(0).to(sae.b_dec.device)  # the shared component, subtracted before encoding
    if not hasattr(sae, "threshold"):  # BatchTopK: the batch's k largest fire, no threshold to start
        return sae
    x = x.to(sae.W_enc.device)
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


def ship(tmp: Path, out: Path, extra: dict, fold: bool, dtype: torch.dtype = torch.float16) -> None:
    """Copy the runner's output (sae-lens' inference format: a BatchTopK SAE is already a JumpReLU
    one there) into ``out``: ``dtype`` weights (decoder rows unit-norm when ``fold``), cfg.json (fp32
    compute), full config."""
    out.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(tmp / "sae_weights.safetensors"))
    if fold:
        weights = fold_decoder_norm(weights)
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(out / "sae_weights.safetensors"))
    cfg = json.loads((tmp / "cfg.json").read_text())
    cfg["dtype"] = "float32"  # stored fp16, computed in fp32 (load_from_disk casts)
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    runner_cfg = json.loads((tmp / "runner_cfg.json").read_text())
    runner_cfg.update(extra)
    (out / "training_config.json").write_text(json.dumps(runner_cfg, indent=2, default=str) + "\n")
    if (tmp / "sparsity.safetensors").is_file():
        shutil.copy(tmp / "sparsity.safetensors", out / "train_sparsity.safetensors")


def main(argv: list[str] | None = None, model=None) -> None:
    """Parse, load the model (unless one is passed: the trials share one), cache, train, ship."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    import datasets

    import scope

    t0 = time.time()
    if model is None:
        model = scope.load_model("gemma-3-270m", device=args.device, dtype="float32")  # fp32 on GPU too
    model.eval()
    args.d_in = model.cfg.d_model
    texts = load_texts(args.corpus, args.seed, args.corpus_weights)
    dataset = datasets.Dataset.from_dict({"text": texts})
    print(f"model + {len(texts)} documents loaded in {time.time() - t0:.1f}s", flush=True)
    if not args.online and not args.cache_dir.is_dir():
        t0 = time.time()
        cache_activations(args, model, dataset)
        print(f"cached {cached_tokens(args.cache_dir):,} activations in {time.time() - t0:.0f}s", flush=True)
    if args.cache_only:
        return
    if args.tokens is None:
        args.tokens = int(args.epochs * cached_tokens(args.cache_dir))

    with tempfile.TemporaryDirectory() as tmp:
        bos = model.tokenizer.bos_token_id
        cfg = runner_config(args, bos, tmp)
        start = sample_activations(args, model, texts) if args.online else None
        sae = initial_sae(cfg, None if args.online else args.cache_dir, bos, training_sae_class(args), x=start)
        if cfg.resume_from_checkpoint:
            print(f"resuming from {cfg.resume_from_checkpoint}", flush=True)
        runner = training_runner_class()(cfg, override_dataset=dataset, override_model=model, override_sae=sae)
        t1 = time.time()
        runner.run()
        seconds = time.time() - t1
        print(f"trained on {args.tokens:,} tokens in {seconds:.0f}s: {args.tokens / seconds:.0f} tokens/s", flush=True)
        print_density(Path(tmp) / "sparsity.safetensors")
        ship(Path(tmp), args.out, run_record(args, seconds), args.fold_decoder_norm)
    print(f"saved to {args.out}", flush=True)


def run_record(args: argparse.Namespace, seconds: float) -> dict:
    """scope's additions to training_config.json."""
    record = {
        "scope_corpus": [str(p) for p in args.corpus],
        "scope_corpus_mix": "equal characters per corpus (largest cut in seeded order)"
        if args.corpus_weights is None
        else f"character shares {args.corpus_weights} of all the text (cut or repeated)",
        "scope_decoder_norm": "unit (folded after training)" if args.fold_decoder_norm else "as trained",
        "scope_device": args.device,
        "scope_train_seconds": round(seconds, 1),
        "scope_tokens_per_second": round(args.tokens / seconds, 1),
        "scope_threads": args.threads,
        "scope_torch": torch.__version__,
        "scope_command": " ".join(sys.argv),
        "scope_cache_dir": None if args.online else str(args.cache_dir),
        "scope_cached_tokens": None if args.online else cached_tokens(args.cache_dir),
        "scope_epochs": None if args.online else args.epochs,
        "scope_architecture": args.architecture,
        "scope_init": "initial_sae(): b_dec = mean activation; b_enc so each feature fires on "
        "target_l0 / d_sae of 51k cached tokens; W_enc = W_dec.T, decoder norm 0.1",
    }
    if args.architecture == "jumprelu":
        record["scope_frequency_penalty"] = {"cap": args.frequency_cap, "coefficient": args.frequency_coeff}
    else:
        record["scope_init"] = "b_dec = mean activation; W_enc = W_dec.T, decoder norm 0.1 (sae-lens)"
        record["scope_inference"] = "saved as JumpReLU by sae-lens: one threshold, the running min kept activation"
    return record


if __name__ == "__main__":
    main()
