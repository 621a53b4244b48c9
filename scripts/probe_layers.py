"""Which layer of the bundled Gemma 3 270M carries concepts most cleanly? One forward per text,
every layer's residual (``blocks.L.hook_resid_post``) captured at once.

    PYTHONPATH=. python scripts/probe_layers.py [--windows 32] [--out layers.json]

Per layer, two kinds of figures:

- **Concepts** (the matched pairs of ``scripts/find_concept_feature.py``: ten concepts of ten
  pairs, a sentence with the concept and the same sentence without it; plus the Python ``if``
  statement against code without one from ``tests/concept_texts.py``). Leave one pair out: the
  DiffMean direction (mean of the positive texts' token-mean residuals minus the negatives') from
  the other pairs scores the held-out pair's two texts by their largest projection over tokens
  (BOS skipped), as an SAE feature's activation would. ``auroc``: AUROC of the held-out scores,
  positives against negatives, averaged over concepts (``auroc_min``: the worst concept);
  ``d_prime``: the held-out score difference over its pooled standard deviation (it keeps ranking
  layers where AUROC saturates at 1); ``cos_mean``: |cosine| between the direction and the
  residual's mean, i.e. how much of the DiffMean direction is the shared component.
- **The shared component** (``--windows`` windows of 128 tokens of the modern and general-English
  corpus samples, BOS skipped): ``mean_share`` = ||mean||^2 / mean ||x||^2, the part of the
  residual's second moment that is one constant vector (what dense features and uncentred
  directions pick up); ``pc1_share``: the top principal component's share of the variance about
  the mean; ``norm``: the mean residual norm.

The table is printed (a DataFrame) and written as JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from find_concept_feature import CONCEPTS  # the sibling script (run as a script)
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

import scope

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.concept_texts import IF_STATEMENTS, NO_IF  # noqa: E402

SAMPLES = [ROOT / "data/corpus_sample/modern/train.jsonl", ROOT / "data/corpus_sample/english/train.jsonl"]


def concept_pairs() -> dict[str, list[tuple[str, str]]]:
    """Every concept's (positive, negative) pairs; the ``if`` texts pair by template and names."""
    return {**CONCEPTS, "python-if": list(zip(IF_STATEMENTS, NO_IF))}


@torch.no_grad()
def residuals(model, texts: list[str], hooks: list[str]) -> list[torch.Tensor]:
    """[layers, positions, d_model] per text, BOS dropped: one forward for all of them, padded on the
    right (causal attention: a text's positions never see the padding after it)."""
    ids = [model.to_tokens(text)[0] for text in texts]
    batch = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=model.tokenizer.pad_token_id or 0)
    _, cache = model.run_with_cache(batch, names_filter=hooks, stop_at_layer=len(hooks))
    stacked = torch.stack([cache[h] for h in hooks]).float()  # [layers, texts, positions, d]
    return [stacked[:, i, 1 : len(t)] for i, t in enumerate(ids)]


def concept_scores(per_text: list[torch.Tensor], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-pair-out scores: held-out texts' max projection on the DiffMean direction of the
    other pairs, per layer -> (scores [layers, texts], directions [pairs, layers, d])."""
    means = torch.stack([r.mean(1) for r in per_text])  # [texts, layers, d]
    pairs = len(per_text) // 2
    scores = np.zeros((means.shape[1], len(per_text)))
    directions = []
    for held in range(pairs):
        train = [i for i in range(len(per_text)) if i // 2 != held]
        pos = [i for i in train if labels[i]]
        neg = [i for i in train if not labels[i]]
        direction = means[pos].mean(0) - means[neg].mean(0)  # [layers, d]
        directions.append(direction)
        for i in (2 * held, 2 * held + 1):
            scores[:, i] = torch.einsum("lpd,ld->lp", per_text[i], direction).amax(1).numpy()
    return scores, torch.stack(directions).numpy()


@torch.no_grad()
def shared_component(model, hooks: list[str], windows: int, context: int = 128) -> pd.DataFrame:
    """mean_share, pc1_share and norm per layer over corpus windows (BOS skipped)."""
    texts = [json.loads(line)["text"] for path in SAMPLES for line in path.open()]
    rows, body = [], context - 1
    for text in texts:
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        rows += [ids[s : s + body] for s in range(0, len(ids) - body + 1, body)]
        if len(rows) >= windows * 4:
            break
    order = np.random.default_rng(0).permutation(len(rows))[:windows]
    bos = model.tokenizer.bos_token_id
    d = model.cfg.d_model
    n, total = 0, torch.zeros(len(hooks), d, dtype=torch.float64)
    second = torch.zeros(len(hooks), d, d, dtype=torch.float64)
    sq_norm = torch.zeros(len(hooks), dtype=torch.float64)
    norm = torch.zeros(len(hooks), dtype=torch.float64)
    for start in tqdm(range(0, len(order), 8), desc="corpus windows"):
        tokens = torch.tensor([[bos] + rows[i] for i in order[start : start + 8]])
        _, cache = model.run_with_cache(tokens, names_filter=hooks, stop_at_layer=len(hooks))
        x = torch.stack([cache[h][:, 1:].reshape(-1, d) for h in hooks]).double()  # [layers, tokens, d]
        n += x.shape[1]
        total += x.sum(1)
        second += torch.einsum("ltd,lte->lde", x, x)
        sq_norm += (x**2).sum((1, 2))
        norm += x.norm(dim=-1).sum(1)
    mean = total / n
    covariance = second / n - torch.einsum("ld,le->lde", mean, mean)
    top = torch.linalg.eigvalsh(covariance)[:, -1]
    return pd.DataFrame(
        {
            "mean_share": ((mean**2).sum(1) / (sq_norm / n)).numpy(),
            "pc1_share": (top / covariance.diagonal(dim1=1, dim2=2).sum(1)).numpy(),
            "norm": (norm / n).numpy(),
        }
    ), mean.numpy()


def layer_table(model, windows: int) -> pd.DataFrame:
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    shared, mean = shared_component(model, hooks, windows)
    aurocs, d_primes, cosines = [], [], []
    for pairs in tqdm(concept_pairs().values(), desc="concepts"):
        texts = [t for pair in pairs for t in pair]
        labels = np.array([1, 0] * len(pairs))
        per_text = residuals(model, texts, hooks)
        scores, directions = concept_scores(per_text, labels)
        aurocs.append([roc_auc_score(labels, s) for s in scores])
        pos, neg = scores[:, labels == 1], scores[:, labels == 0]
        pooled = np.sqrt((pos.var(1) + neg.var(1)) / 2)
        d_primes.append((pos.mean(1) - neg.mean(1)) / pooled)
        unit_mean = mean / np.linalg.norm(mean, axis=1, keepdims=True)
        unit_dir = directions / np.linalg.norm(directions, axis=2, keepdims=True)
        cosines.append(np.abs(np.einsum("pld,ld->pl", unit_dir, unit_mean)).mean(0))
    aurocs_ = np.array(aurocs)  # [concepts, layers]
    table = pd.DataFrame(
        {
            "layer": range(model.cfg.n_layers),
            "auroc": aurocs_.mean(0),
            "auroc_min": aurocs_.min(0),
            "d_prime": np.array(d_primes).mean(0),
            "cos_mean": np.array(cosines).mean(0),
        }
    )
    return pd.concat([table, shared], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=32, help="corpus windows of 128 tokens for the shared component")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the table as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = scope.load_model("gemma-3-270m", device="cpu")
    table = layer_table(model, args.windows)
    with pd.option_context("display.width", 200, "display.precision", 3):
        print(table.to_string(index=False))
    best = table.sort_values(["d_prime"], ascending=False).iloc[0]
    print(f"\nlargest held-out separation (d'): layer {int(best.layer)}")
    if args.out:
        args.out.write_text(json.dumps(table.to_dict("records"), indent=1) + "\n")


if __name__ == "__main__":
    main()
