"""Where a residual SAE's dense features come from: a dense subspace of the residual stream.

For each ``--sae`` (a bundled name or an SAE folder; all must read the same hook) on the held-out
text of each ``--heldout NAME=PATH`` (the windows of ``scripts/eval_demo_sae.py``: [BOS] + 127
tokens, BOS skipped), one row with:

- ``ev``: explained variance of the SAE's reconstruction (about the residual's mean),
- ``dense``: features firing on more than ``--threshold`` of the tokens (``5%``/``20%``: other cuts),
- ``dense_mass``: the dense features' share of all activation mass,
- ``dense_ev``: the explained variance of the dense features' part of the reconstruction alone,
- ``paired``: dense features with an antipodal partner among them (``scope.antipodal_pairs``,
  decoder cosine <= -0.9): a pair is one direction read with either sign, a linear coordinate,
- ``dims_90``: how many dimensions the dense features' unit decoder rows span (90% of their energy),
- ``pca_share``: the share of the residual's centred variance in its top ``dims_90`` principal
  components (the same for every SAE: a property of the residual, not of the SAE).

An SAE with many paired dense features whose ``dense_ev`` is near ``pca_share`` spends those
features on a linear code of the residual's top principal subspace (Sun et al. 2025, "Dense SAE
latents are features, not bugs"); capping density then costs explained variance.

Usage::

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/dense_subspace.py --sae demo \
        --heldout english=data/corpus_sample/english/heldout.jsonl --tokens 20000
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd
import torch
from eval_demo_sae import heldout_sequences, heldout_split  # a sibling script (run as a script)

import scope

CUTS = (0.05, 0.2)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sae", nargs="+", required=True, help="bundled SAE names or SAE folders, one hook")
    p.add_argument("--heldout", type=heldout_split, nargs="+", metavar="NAME=PATH", required=True)
    p.add_argument("--tokens", type=int, default=20_000, help="held-out tokens per split")
    p.add_argument("--threshold", type=float, default=0.1, help="density above which a feature is dense")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    return p.parse_args(argv)


@torch.no_grad()
def residuals(model, hook: str, seqs: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """The hook's activations at every non-BOS position of ``seqs``, as rows."""
    layer = int(hook.split(".")[1])
    rows = []
    for chunk in seqs.split(batch):
        _, cache = model.run_with_cache(chunk, names_filter=[hook], stop_at_layer=layer + 1)
        rows.append(cache[hook][:, 1:].reshape(-1, model.cfg.d_model).float())
    return torch.cat(rows)


def principal_energy(x: torch.Tensor) -> torch.Tensor:
    """The centred variance of ``x`` along each principal component, largest first."""
    return torch.linalg.svdvals((x - x.mean(0)).double()) ** 2


def spanned_dims(rows: torch.Tensor, share: float = 0.9) -> int:
    """How many dimensions hold ``share`` of the energy of the unit-normalised ``rows``."""
    if len(rows) == 0:
        return 0
    unit = rows.double() / rows.double().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    energy = torch.linalg.svdvals(unit) ** 2
    return int((energy.cumsum(0) / energy.sum() < share).sum()) + 1


@torch.no_grad()
def measure(sae, x: torch.Tensor, threshold: float, energy: torch.Tensor | None = None) -> dict:
    """One row of the table; ``energy`` is :func:`principal_energy` of ``x`` (computed when not
    given: it is the same for every SAE on the same residuals)."""
    energy = principal_energy(x) if energy is None else energy
    acts = torch.cat([sae.encode(chunk) for chunk in x.split(4096)])
    density = (acts > 0).double().mean(0)
    dense = torch.nonzero(density > threshold).flatten()
    total = (x - x.mean(0)).double().pow(2).sum()
    recon = sae.decode(acts).double()
    dense_part = acts[:, dense].double() @ sae.W_dec[dense].double() + sae.b_dec.double()
    pairs = scope.antipodal_pairs(sae, dense.tolist())
    dims = spanned_dims(sae.W_dec[dense].detach())
    return {
        "ev": float(1 - (x - recon).pow(2).sum() / total),
        "l0": float((acts > 0).sum(-1).double().mean()),
        "dense": len(dense),
        **{f"over_{cut:.0%}": int((density > cut).sum()) for cut in CUTS},
        "dense_mass": float(acts[:, dense].sum() / acts.sum().clamp_min(1e-12)),
        "dense_ev": float(1 - (x - dense_part).pow(2).sum() / total),
        "paired": 2 * len(pairs),
        "dims_90": dims,
        "pca_share": float(energy[:dims].sum() / energy.sum()),
    }


def short_name(spec: str) -> str:
    """A bundled name as it is, a folder by its last two parts (``runs/bt4k/sae`` -> ``bt4k/sae``)."""
    return spec if os.sep not in spec else "/".join(Path(spec).parts[-2:])


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    saes = {spec: scope.load_sae(spec, device="cpu") for spec in args.sae}
    hooks = {sae.cfg.metadata.hook_name for sae in saes.values()}
    if len(hooks) != 1:
        sys.exit(f"every --sae must read the same hook, these read {sorted(hooks)}")
    (hook,) = hooks
    model = scope.load_model("gemma-3-270m")
    rows = []
    for name, path in dict(args.heldout).items():
        x = residuals(model, hook, heldout_sequences(model, Path(path), args.context, args.tokens))
        energy = principal_energy(x)
        for spec, sae in saes.items():
            figures = measure(sae, x, args.threshold, energy)
            rows.append({"split": name, "sae": short_name(spec), "tokens": len(x), **figures})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.precision", 3):
        print(table.to_string(index=False))
    return table


if __name__ == "__main__":
    main()
