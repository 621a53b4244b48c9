"""Measure the demo SAE on held-out text, like Gemma Scope, and save per-feature statistics.

Prints, over held-out documents never used in training (``heldout.jsonl`` of the corpus, or the
shipped ``data/corpus_sample/heldout.jsonl``):

- explained variance of the hooked residual (1 - SSE / total variance about the mean),
- CE-loss score: (loss_zero - loss_sae) / (loss_zero - loss_clean), where ``loss_zero`` zero-ablates
  the hooked residual and ``loss_sae`` splices in the SAE reconstruction; BOS (position 0) is left
  untouched in all three runs,
- mean L0 and the fraction of dead features (never active on the evaluated tokens).

Every figure skips the BOS position. With ``--save-stats`` it writes
``data/demo_sae/feature_stats.safetensors`` (max activation, density, quantiles of the non-zero
activations per feature), which ``scope.load_sae("demo")`` uses for ``Clamp(..., unit="max")``.

Usage::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/eval_demo_sae.py --save-stats
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = Path(os.environ.get("SCOPE_CACHE", Path.home() / ".cache" / "scope")) / "corpus"
QUANTILES = (0.5, 0.9, 0.99)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", type=Path, default=DEFAULT_CORPUS / "heldout.jsonl")
    p.add_argument("--sae", default="demo", help="scope.load_sae spec (default: the shipped demo SAE)")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=16, help="sequences per forward")
    p.add_argument("--tokens", type=int, default=100_000, help="held-out tokens for EV, L0, dead, stats")
    p.add_argument("--ce-tokens", type=int, default=16_384, help="held-out tokens for the CE-loss score")
    p.add_argument("--save-stats", action="store_true", help="write feature_stats.safetensors next to the SAE")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p.parse_args(argv)


def heldout_sequences(model, path: Path, context: int, max_tokens: int) -> torch.Tensor:
    """Each document cut into [BOS] + (context - 1) token windows (documents never straddle)."""
    bos = model.tokenizer.bos_token_id
    body = context - 1
    rows: list[torch.Tensor] = []
    with path.open() as f:
        for line in f:
            ids = model.tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
            for start in range(0, len(ids) - body + 1, body):
                rows.append(torch.tensor([bos] + ids[start:start + body]))
                if len(rows) * context >= max_tokens:
                    return torch.stack(rows)
    if not rows:
        raise ValueError(f"{path} has no document of at least {context} tokens")
    return torch.stack(rows)


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

    def add(self, x: torch.Tensor, acts: torch.Tensor, recon: torch.Tensor) -> None:
        x, acts, recon = x.double(), acts.float(), recon.double()
        self.n += x.shape[0]
        self.sse += float(((x - recon) ** 2).sum())
        self.sum_x = x.sum(0) if self.sum_x is None else self.sum_x + x.sum(0)
        self.sum_x2 += float((x ** 2).sum())
        active = acts > 0
        self.l0 += float(active.sum())
        self.count += active.sum(0)
        self.max_act = torch.maximum(self.max_act, acts.max(0).values)
        rows, cols = active.nonzero(as_tuple=True)
        self.nonzero.append(acts[rows, cols])
        self.nonzero_idx.append(cols)

    def explained_variance(self) -> float:
        total = self.sum_x2 - float((self.sum_x ** 2).sum()) / self.n
        return 1.0 - self.sse / total

    def stats(self) -> dict[str, torch.Tensor]:
        """Per-feature max activation, density and quantiles of the non-zero activations."""
        values, idx = torch.cat(self.nonzero), torch.cat(self.nonzero_idx)
        order = torch.argsort(idx, stable=True)
        values, idx = values[order], idx[order]
        bounds = torch.searchsorted(idx, torch.arange(self.d_sae + 1))
        out = {"max_activation": self.max_act.clone(), "density": self.count.float() / self.n,
               "n_tokens": torch.tensor([self.n])}
        qs = torch.zeros(len(QUANTILES), self.d_sae)
        for f in range(self.d_sae):
            chunk = values[bounds[f]:bounds[f + 1]]
            if chunk.numel():
                qs[:, f] = torch.quantile(chunk, torch.tensor(QUANTILES))
        for q, row in zip(QUANTILES, qs):
            out[f"quantile_{q:g}"] = row
        return out


def token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Summed next-token loss over the batch (positions 0..n-2 predict 1..n-1)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return -logp.gather(-1, tokens[:, 1:, None]).sum()


@torch.no_grad()
def ce_losses(model, sae, hook: str, tokens: torch.Tensor) -> tuple[float, float, float]:
    """Summed loss clean / SAE-spliced / zero-ablated: the first layers run once, the rest from
    the (edited) residual with start_at_layer; position 0 (BOS) is never edited."""
    layer = int(hook.split(".")[1])
    resid = model(tokens, stop_at_layer=layer + 1) if hook.endswith("hook_resid_post") else None
    if resid is None:
        raise ValueError("the CE-loss score here supports blocks.L.hook_resid_post hooks only")
    spliced = resid.clone()
    spliced[:, 1:] = sae.decode(sae.encode(resid[:, 1:]))
    zeroed = resid.clone()
    zeroed[:, 1:] = 0.0
    out = []
    for r in (resid, spliced, zeroed):
        logits = model(r, start_at_layer=layer + 1, tokens=tokens)
        out.append(float(token_loss(logits, tokens)))
    return out[0], out[1], out[2]


@torch.no_grad()
def evaluate(model, sae, seqs: torch.Tensor, ce_seqs: torch.Tensor, batch: int) -> tuple[dict, Totals]:
    """All metrics; returns (figures, running totals with the per-feature statistics)."""
    hook = sae.cfg.metadata.hook_name
    layer = int(hook.split(".")[1])
    totals = Totals(sae.cfg.d_sae)
    for i in range(0, len(seqs), batch):
        toks = seqs[i:i + batch]
        _, cache = model.run_with_cache(toks, names_filter=[hook], stop_at_layer=layer + 1)
        x = cache[hook][:, 1:].reshape(-1, sae.cfg.d_in)
        acts = sae.encode(x)
        totals.add(x, acts, sae.decode(acts))
    clean = spliced = zero = 0.0
    for i in range(0, len(ce_seqs), batch):
        c, s, z = ce_losses(model, sae, hook, ce_seqs[i:i + batch])
        clean, spliced, zero = clean + c, spliced + s, zero + z
    n_pred = ce_seqs.shape[0] * (ce_seqs.shape[1] - 1)
    figures = {
        "explained_variance": totals.explained_variance(),
        "ce_loss_score": (zero - spliced) / (zero - clean),
        "ce_loss_clean": clean / n_pred,
        "ce_loss_sae": spliced / n_pred,
        "ce_loss_zero_ablation": zero / n_pred,
        "mean_l0": totals.l0 / totals.n,
        "dead_fraction": float((totals.count == 0).float().mean()),
        "tokens": totals.n,
        "ce_tokens": n_pred,
    }
    return figures, totals


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import scope

    if not args.heldout.is_file():
        sys.exit(f"{args.heldout} is missing: build the corpus (scripts/build_corpus.py) or pass "
                 "--heldout data/corpus_sample/heldout.jsonl")
    t0 = time.time()
    model = scope.load_model("gemma-3-270m")
    model.eval()
    sae = scope.load_sae(args.sae)
    seqs = heldout_sequences(model, args.heldout, args.context, args.tokens)
    ce_seqs = seqs[: max(1, args.ce_tokens // args.context)]
    figures, totals = evaluate(model, sae, seqs, ce_seqs, args.batch)
    figures["seconds"] = round(time.time() - t0, 1)
    figures["heldout"] = str(args.heldout)
    for key, value in figures.items():
        print(f"{key:>24}: {value:.4f}" if isinstance(value, float) else f"{key:>24}: {value}")
    if args.save_stats:
        from safetensors.torch import save_file

        out = scope.saes.DEMO_SAE_DIR if args.sae == "demo" else Path(args.sae)
        save_file(totals.stats(), str(out / "feature_stats.safetensors"))
        (out / "eval.json").write_text(json.dumps(figures, indent=2) + "\n")
        print(f"saved feature statistics and eval.json to {out}")
    return figures


if __name__ == "__main__":
    main()
