"""Measure a demo SAE on held-out text, like Gemma Scope, per split, and save per-feature statistics.

``--sae`` is a bundled SAE's name (``demo`` or ``demo-docs``, see ``scope.saes.DEMO_SAES``) or an
SAE folder. ``--heldout NAME=PATH ...`` names the held-out splits it is measured on, each on its
own (default: ``english`` = ``$SCOPE_CACHE/corpus-english/heldout.jsonl`` and ``docs`` =
``$SCOPE_CACHE/corpus/heldout.jsonl``, the held-out documents of the two corpora
``scripts/build_corpus.py`` builds, never used in training; the shipped samples
``data/corpus_sample/english/heldout.jsonl`` and ``data/corpus_sample/heldout.jsonl`` are small
stand-ins). Over each split's documents, each cut into [BOS] + (``--context`` - 1)-token windows,
the headline figures come from sae-lens' ``sae_lens.evals.run_evals`` (an ``ActivationsStore``
over exactly those windows, BOS passed as the one token to exclude):

- explained variance of the hooked residual (1 - SSE / total variance about the mean),
- CE-loss score: (loss_zero - loss_sae) / (loss_zero - loss_clean), where ``loss_zero``
  zero-ablates the hooked residual and ``loss_sae`` splices in the SAE reconstruction; sae-lens
  keeps BOS in the SAE run but zeroes it too in the zero-ablation run,
- mean L0, and the fraction of dead features (zero density in sae-lens' per-feature densities).

Beside them: the delta LM loss (SAE-spliced minus clean loss, in nats) and the number of dense
features (firing on more than 10% of the split's tokens).

scope's own computation runs beside it over the same windows and is printed next to sae-lens'
figures with the difference: explained variance, L0 and dead fraction must agree to float
rounding, and so must the clean and SAE-spliced losses; what sae-lens does not measure is the
CE run with BOS (position 0) left untouched in all three runs (``*_bos_untouched``: only the
zero-ablation loss and hence the score differ). Every figure skips the BOS position (for the
losses: the prediction made at BOS, the same in all of scope's runs). ``--tokens`` and
``--ce-tokens`` are rounded down to whole batches of ``--batch`` windows, so that sae-lens'
batches hold exactly the windows scope evaluates.

With ``--save-stats`` it writes, next to the SAE, ``feature_stats.safetensors`` (max activation,
density, quantiles of the non-zero activations per feature, which sae-lens does not compute,
over the tokens of all splits together), which ``scope.load_sae`` attaches for
``Clamp(..., unit="max")``, and ``eval.json``: the printed figures, one entry per split
(``{"english": {...}, "docs": {...}}``).

Usage::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/eval_demo_sae.py --save-stats
    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/eval_demo_sae.py --sae demo-docs --save-stats
    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/eval_demo_sae.py --sae demo-docs \\
        --heldout docs=data/corpus_sample/heldout.jsonl --skip-sae-lens
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SCOPE_CACHE", Path.home() / ".cache" / "scope"))
# split -> its held-out documents; each split is named after the scripts/build_corpus.py --corpus that builds it
DEFAULT_HELDOUT = {"english": CACHE / "corpus-english" / "heldout.jsonl", "docs": CACHE / "corpus" / "heldout.jsonl"}
QUANTILES = (0.5, 0.9, 0.99)
DENSE = 0.1  # a feature firing on more than this fraction of tokens counts as dense


def heldout_split(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` of ``--heldout``."""
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(
            f"expected NAME=PATH, e.g. docs=data/corpus_sample/heldout.jsonl, got {value!r}"
        )
    return name, Path(path).expanduser()


def sae_folder(spec: str) -> Path:
    """The folder of a bundled SAE's name, or ``spec`` itself as a folder."""
    from scope.saes import DEMO_SAES

    return DEMO_SAES[spec].folder if spec in DEMO_SAES else Path(spec)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--heldout",
        type=heldout_split,
        nargs="+",
        metavar="NAME=PATH",
        help="held-out splits, each measured on its own (default: english and docs under $SCOPE_CACHE)",
    )
    p.add_argument(
        "--sae",
        default="demo",
        help="a bundled SAE's name (scope.saes.DEMO_SAES) or an SAE folder (default: %(default)s)",
    )
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="sequences per forward")
    p.add_argument("--tokens", type=int, default=100_000, help="held-out tokens per split for EV, L0, dead, stats")
    p.add_argument("--ce-tokens", type=int, default=16_384, help="held-out tokens per split for the CE-loss score")
    p.add_argument(
        "--skip-sae-lens",
        action="store_true",
        help="report scope's own figures only (about 3x faster; the quality-floor test uses this)",
    )
    p.add_argument("--save-stats", action="store_true", help="write feature_stats.safetensors next to the SAE")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    splits = args.heldout or list(DEFAULT_HELDOUT.items())
    args.heldout = dict(splits)
    if len(args.heldout) < len(splits):
        p.error(f"--heldout names a split twice: {[name for name, _ in splits]}")
    return args


def heldout_sequences(model, path: Path, context: int, max_tokens: int, seed: int = 0) -> torch.Tensor:
    """Each document cut into [BOS] + (context - 1) token windows (documents never straddle), then a
    seeded random sample of the windows of every document: a prefix of the file would be one or two
    sources only (the held-out files are in hash order within each source)."""
    bos = model.tokenizer.bos_token_id
    body = context - 1
    rows: list[torch.Tensor] = []
    with path.open() as f:
        for line in f:
            ids = model.tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
            for start in range(0, len(ids) - body + 1, body):
                rows.append(torch.tensor([bos] + ids[start : start + body]))
    if not rows:
        raise ValueError(f"{path} has no document of at least {context} tokens")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    return torch.stack([rows[i] for i in order[: max(1, max_tokens // context)].tolist()])


@dataclass
class Totals:
    """Running sums over non-BOS positions."""

    d_sae: int
    n: int = 0
    sse: float = 0.0
    sum_x: torch.Tensor | None = None
    sum_x2: float = 0.0
    l0: float = 0.0
    count: torch.Tensor = field(init=False)
    max_act: torch.Tensor = field(init=False)
    nonzero: list[torch.Tensor] = field(default_factory=list)
    nonzero_idx: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.count = torch.zeros(self.d_sae, dtype=torch.long)
        self.max_act = torch.zeros(self.d_sae)

    def absorb(self, other: Totals) -> None:
        """Add the sums of ``other`` (the same SAE over other tokens) to these."""
        self.n += other.n
        self.sse += other.sse
        self.sum_x = other.sum_x if self.sum_x is None else self.sum_x + other.sum_x
        self.sum_x2 += other.sum_x2
        self.l0 += other.l0
        self.count += other.count
        self.max_act = torch.maximum(self.max_act, other.max_act)
        self.nonzero += other.nonzero
        self.nonzero_idx += other.nonzero_idx

    def add(self, x: torch.Tensor, acts: torch.Tensor, recon: torch.Tensor) -> None:
        x, acts, recon = x.double(), acts.float(), recon.double()
        self.n += x.shape[0]
        self.sse += float(((x - recon) ** 2).sum())
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.sum_x2 += float((x**2).sum())
        active = acts > 0
        self.l0 += float(active.sum())
        self.count += active.sum(0)
        self.max_act = torch.maximum(self.max_act, acts.max(0).values)
        rows, cols = active.nonzero(as_tuple=True)
        self.nonzero.append(acts[rows, cols])
        self.nonzero_idx.append(cols)

    def explained_variance(self) -> float:
        total = self.sum_x2 - float((self.sum_x**2).sum()) / self.n
        return 1.0 - self.sse / total

    def stats(self) -> dict[str, torch.Tensor]:
        """Per-feature max activation, density and quantiles of the non-zero activations."""
        values, idx = torch.cat(self.nonzero), torch.cat(self.nonzero_idx)
        order = torch.argsort(idx, stable=True)
        values, idx = values[order], idx[order]
        bounds = torch.searchsorted(idx, torch.arange(self.d_sae + 1))
        out = {
            "max_activation": self.max_act.clone(),
            "density": self.count.float() / self.n,
            "n_tokens": torch.tensor([self.n]),
        }
        qs = torch.zeros(len(QUANTILES), self.d_sae)
        for f in range(self.d_sae):
            chunk = values[bounds[f] : bounds[f + 1]]
            if chunk.numel():
                qs[:, f] = torch.quantile(chunk, torch.tensor(QUANTILES))
        for q, row in zip(QUANTILES, qs):
            out[f"quantile_{q:g}"] = row
        return out


def token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token loss per prediction, [batch, n - 1] (positions 0..n-2 predict 1..n-1)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None])[..., 0]


def token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss over the batch (positions 0..n-2 predict 1..n-1)."""
    return token_losses(logits, tokens).sum()


@torch.no_grad()
def ce_position_losses(model, sae, hook: str, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-prediction loss [batch, n - 1] clean / SAE-spliced / zero-ablated: the first layers run
    once, the rest from the (edited) residual with start_at_layer; position 0 (BOS) is never
    edited, so the prediction made at BOS is the same in all three."""
    layer = int(hook.split(".")[1])
    if not hook.endswith("hook_resid_post"):
        raise ValueError("the CE-loss score here supports blocks.L.hook_resid_post hooks only")
    resid = model(tokens, stop_at_layer=layer + 1)
    spliced = resid.clone()
    spliced[:, 1:] = sae.decode(sae.encode(resid[:, 1:]))
    zeroed = resid.clone()
    zeroed[:, 1:] = 0.0
    return tuple(
        token_losses(model(r, start_at_layer=layer + 1, tokens=tokens), tokens) for r in (resid, spliced, zeroed)
    )


@torch.no_grad()
def ce_losses(model, sae, hook: str, tokens: torch.Tensor) -> tuple[float, float, float]:
    """Summed loss over all predictions clean / SAE-spliced / zero-ablated (BOS never edited)."""
    clean, spliced, zero = ce_position_losses(model, sae, hook, tokens)
    return float(clean.sum()), float(spliced.sum()), float(zero.sum())


@torch.no_grad()
def evaluate(model, sae, seqs: torch.Tensor, ce_seqs: torch.Tensor, batch: int) -> tuple[dict, Totals]:
    """scope's own figures; returns (figures, running totals with the per-feature statistics).

    The losses are averaged over the predictions after BOS (the one made at BOS is the same in
    all three runs, so the score does not depend on it), the predictions sae-lens averages."""
    hook = sae.cfg.metadata.hook_name
    layer = int(hook.split(".")[1])
    totals = Totals(sae.cfg.d_sae)
    for i in range(0, len(seqs), batch):
        toks = seqs[i : i + batch]
        _, cache = model.run_with_cache(toks, names_filter=[hook], stop_at_layer=layer + 1)
        x = cache[hook][:, 1:].reshape(-1, sae.cfg.d_in)
        acts = sae.encode(x)
        totals.add(x, acts, sae.decode(acts))
    clean = spliced = zero = 0.0
    for i in range(0, len(ce_seqs), batch):
        c, s, z = ce_position_losses(model, sae, hook, ce_seqs[i : i + batch])
        clean, spliced, zero = (
            clean + float(c[:, 1:].sum()),
            spliced + float(s[:, 1:].sum()),
            zero + float(z[:, 1:].sum()),
        )
    n_pred = ce_seqs.shape[0] * (ce_seqs.shape[1] - 2)
    figures = {
        "explained_variance": totals.explained_variance(),
        "ce_loss_score": (zero - spliced) / (zero - clean),
        "ce_loss_clean": clean / n_pred,
        "ce_loss_sae": spliced / n_pred,
        "ce_loss_zero_ablation": zero / n_pred,
        "mean_l0": totals.l0 / totals.n,
        "dead_fraction": float((totals.count == 0).float().mean()),
        "dense_features": int((totals.count > DENSE * totals.n).sum()),
        "tokens": totals.n,
        "ce_tokens": n_pred,
    }
    return figures, totals


@torch.no_grad()
def sae_lens_evaluate(model, sae, seqs: torch.Tensor, ce_seqs: torch.Tensor, batch: int) -> dict:
    """The same figures by ``sae_lens.evals.run_evals`` over exactly ``seqs`` (explained variance,
    L0, feature densities) and ``ce_seqs`` (CE losses), BOS the one token excluded.

    Each window set gets its own ActivationsStore and run_evals call: ``reset_input_dataset``
    (called by run_evals between the CE and the sparsity passes) does not rewind the store's
    window iterator in sae-lens 6.54, so one store would not give both passes the same windows.
    Batches are ``batch`` windows (fewer if there are fewer), which must divide the window count:
    a partial batch would wrap to the first windows."""
    from datasets import Dataset
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler
    from sae_lens.training.activations_store import ActivationsStore

    def run(windows: torch.Tensor, **metrics: bool) -> tuple[dict, dict]:
        size = min(batch, len(windows))
        n_batches, rest = divmod(len(windows), size)
        if rest:
            raise ValueError(f"{len(windows)} windows are not whole batches of {size}")
        store = ActivationsStore.from_sae(
            model,
            sae,
            dataset=Dataset.from_dict({"tokens": windows.tolist()}),
            context_size=windows.shape[1],
            streaming=False,
            store_batch_size_prompts=size,
            total_tokens=len(windows),
        )
        config = EvalConfig(
            batch_size_prompts=size,
            n_eval_reconstruction_batches=n_batches,
            n_eval_sparsity_variance_batches=n_batches,
            **metrics,
        )
        with warnings.catch_warnings():  # sae-lens copies each torch-formatted row with torch.tensor
            warnings.filterwarnings("ignore", "To copy construct from a tensor", UserWarning)
            return run_evals(
                sae, store, model, ActivationScaler(), config, exclude_special_tokens=[model.tokenizer.bos_token_id]
            )

    metrics, features = run(
        seqs, compute_variance_metrics=True, compute_sparsity_metrics=True, compute_featurewise_density_statistics=True
    )
    ce, _ = run(ce_seqs, compute_ce_loss=True)
    ce = ce["model_performance_preservation"]
    density = torch.tensor(features["feature_density"])
    return {
        "explained_variance": metrics["reconstruction_quality"]["explained_variance"],
        "ce_loss_score": ce["ce_loss_score"],
        "ce_loss_clean": ce["ce_loss_without_sae"],
        "ce_loss_sae": ce["ce_loss_with_sae"],
        "ce_loss_zero_ablation": ce["ce_loss_with_ablation"],
        "mean_l0": metrics["sparsity"]["l0"],
        "dead_fraction": float((density == 0).float().mean()),
    }


# (figure, sae-lens key, scope key): the comparison table; None where one side does not measure it
COMPARED = (
    ("explained variance", "explained_variance", "explained_variance"),
    ("mean L0", "mean_l0", "mean_l0"),
    ("dead fraction", "dead_fraction", "dead_fraction"),
    ("CE loss clean", "ce_loss_clean", "ce_loss_clean"),
    ("CE loss SAE", "ce_loss_sae", "ce_loss_sae"),
    ("CE loss zero (BOS zeroed)", "ce_loss_zero_ablation", None),
    ("CE-loss score (BOS zeroed)", "ce_loss_score", None),
    ("CE loss zero (BOS kept)", None, "ce_loss_zero_ablation"),
    ("CE-loss score (BOS kept)", None, "ce_loss_score"),
)


def comparison_table(sae_lens: dict, ours: dict) -> str:
    """sae-lens' and scope's figures side by side with their difference."""
    lines = [f"{'figure':<28}{'sae-lens':>12}{'scope':>12}{'sae-lens - scope':>18}"]
    for label, theirs_key, ours_key in COMPARED:
        theirs = sae_lens[theirs_key] if theirs_key else None
        mine = ours[ours_key] if ours_key else None
        diff = f"{theirs - mine:+.2e}" if theirs is not None and mine is not None else "-"
        lines.append(
            f"{label:<28}{'-' if theirs is None else f'{theirs:.6f}':>12}"
            f"{'-' if mine is None else f'{mine:.6f}':>12}{diff:>18}"
        )
    return "\n".join(lines)


def evaluate_split(model, sae, path: Path, args: argparse.Namespace) -> tuple[dict, Totals]:
    """The figures of one held-out split (sae-lens' headline figures unless ``--skip-sae-lens``,
    scope's own under ``"scope"``) and scope's running totals over its tokens."""
    t0 = time.time()
    seqs = heldout_sequences(model, path, args.context, args.tokens)
    batch = min(args.batch, len(seqs))
    seqs = seqs[: len(seqs) // batch * batch]  # whole batches: sae-lens' batches are these windows
    n_ce = min(len(seqs), max(1, args.ce_tokens // args.context))
    ce_seqs = seqs[: n_ce // min(batch, n_ce) * min(batch, n_ce)]
    ours, totals = evaluate(model, sae, seqs, ce_seqs, batch)
    if args.skip_sae_lens:
        theirs = {}
        figures = {k: v for k, v in ours.items() if k not in ("tokens", "ce_tokens", "dense_features")}
    else:
        theirs = sae_lens_evaluate(model, sae, seqs, ce_seqs, batch)
        figures = dict(theirs)  # the headline figures are sae-lens'
    figures["delta_lm_loss"] = figures["ce_loss_sae"] - figures["ce_loss_clean"]
    figures["dense_features"] = ours["dense_features"]
    figures["ce_loss_score_bos_untouched"] = ours["ce_loss_score"]
    figures["ce_loss_zero_ablation_bos_untouched"] = ours["ce_loss_zero_ablation"]
    figures["tokens"], figures["ce_tokens"] = ours["tokens"], ours["ce_tokens"]
    figures["scope"] = ours  # scope's own computation of every figure, for the comparison
    figures["seconds"] = round(time.time() - t0, 1)
    figures["heldout"] = str(path)
    if theirs:
        print(comparison_table(theirs, ours))
    else:
        print("\n".join(f"{k}: {v}" for k, v in ours.items()))
    print(
        f"over {ours['tokens']} tokens ({len(seqs)} windows of {args.context}) and "
        f"{ours['ce_tokens']} predicted tokens for the CE figures; {figures['seconds']} s"
    )
    return figures, totals


def check_files(args: argparse.Namespace) -> Path | None:
    """Every held-out file there, and a folder for --save-stats, before the model loads; the
    folder the statistics go to (None without --save-stats)."""
    for name, path in args.heldout.items():
        if not path.is_file():
            corpus = f" --corpus {name}" if name in DEFAULT_HELDOUT else ""
            sys.exit(
                f"--heldout {name}={path} is missing: build the corpus (scripts/build_corpus.py{corpus}) "
                "or pass the shipped samples, --heldout english=data/corpus_sample/english/heldout.jsonl "
                "docs=data/corpus_sample/heldout.jsonl"
            )
    if not args.save_stats:
        return None
    out = sae_folder(args.sae)
    if not out.is_dir():
        sys.exit(f"--save-stats writes next to the SAE, but --sae {args.sae} is not a folder here")
    return out


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Evaluate; returns ``{split: figures}``, the content of ``eval.json``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = check_files(args)
    import scope

    model = scope.load_model("gemma-3-270m")
    model.eval()
    sae = scope.load_sae(args.sae)
    results: dict[str, dict] = {}
    together = Totals(sae.cfg.d_sae)  # every split's tokens, for the per-feature statistics
    for name, path in args.heldout.items():
        print(f"\n== {name}: {path}")
        results[name], totals = evaluate_split(model, sae, path, args)
        together.absorb(totals)
    print("\nsae-lens zero-ablates BOS too; scope leaves BOS untouched in all three CE runs")
    if out is not None:
        from safetensors.torch import save_file

        save_file(together.stats(), str(out / "feature_stats.safetensors"))
        (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"saved feature statistics ({together.n} tokens of {', '.join(results)}) and eval.json to {out}")
    return results


if __name__ == "__main__":
    main()
