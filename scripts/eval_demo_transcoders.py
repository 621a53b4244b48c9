"""The quality table of the demo transcoders (``data/demo_transcoders``), on text they were not trained on.

Per layer, each transcoder given the real model's MLP input: the fraction of MLP-output variance
explained (``1 - sum |y - y_hat|^2 / sum |y - mean y|^2`` over the set's tokens), L0 (features
firing per token) and the dead fraction (features that never fire on the set). Then the
replacement model, all 18 MLPs replaced by their transcoders at once (each reading the replaced
model's own MLP input; no error terms kept): next-token cross-entropy, the CE-loss score
``(CE_zero_ablation - CE_replaced) / (CE_zero_ablation - CE_clean)`` (zero ablation: all 18 MLP
outputs zero) and KL(real || replaced) per token. BOS positions are left out everywhere.

Sets: the held-out split of the documentation and general-English corpus samples
(``data/corpus_sample``: documents hashed out of training, same sources) and
``tests/data/modern_english.txt`` (modern prose written for this, from no training source: news,
a letter, instructions, sport, science...). ``sample`` in the JSON holds the same figures on the
first modern text alone, which ``tests/test_demo_transcoders.py`` recomputes.

    PYTHONPATH=. python scripts/eval_demo_transcoders.py            # -> data/demo_transcoders/quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRANSCODERS = ROOT / "data" / "demo_transcoders"
SAMPLE = ROOT / "data" / "corpus_sample"
MODERN = ROOT / "tests" / "data" / "modern_english.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transcoders", type=Path, default=TRANSCODERS)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per set at most (the modern texts are ~1,100)")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, help="default: quality.json in --transcoders")
    return p.parse_args(argv)


def modern_texts(path: Path = MODERN) -> list[str]:
    """The modern English texts: paragraphs separated by blank lines."""
    return [block.strip() for block in path.read_text().split("\n\n") if block.strip()]


def heldout_texts(path: Path) -> list[str]:
    with path.open() as f:
        return [json.loads(line)["text"] for line in f]


def token_rows(tokenizer, texts: list[str], context: int, budget: int | None) -> torch.Tensor:
    """BOS + up to ``context - 1`` tokens of each text in turn (long texts cut into windows), padded."""
    rows, used = [], 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), context - 1):
            window = ids[start : start + context - 1]
            rows.append([tokenizer.bos_token_id, *window] + [tokenizer.pad_token_id] * (context - 1 - len(window)))
            used += len(window)
            if budget is not None and used >= budget:
                return torch.tensor(rows)
    return torch.tensor(rows)


class Totals:
    """Sums over batches of one set, per layer and for the replacement model."""

    def __init__(self, n_layers: int, width: int):
        self.err = torch.zeros(n_layers, dtype=torch.float64)
        self.err_skip = torch.zeros(n_layers, dtype=torch.float64)  # the affine part alone (no features)
        self.sum_y = torch.zeros(n_layers, 0, dtype=torch.float64)
        self.sum_y2 = torch.zeros(n_layers, dtype=torch.float64)
        self.active = torch.zeros(n_layers, dtype=torch.float64)
        self.fired = torch.zeros(n_layers, width, dtype=torch.bool)
        self.ce = {"clean": 0.0, "zero": 0.0, "replaced": 0.0}
        self.kl = 0.0
        self.tokens = 0  # positions with a transcoder input (not BOS, not padding)
        self.predictions = 0  # positions predicting a next real token

    def figures(self, layers: list[int]) -> dict:
        mean_y2 = (self.sum_y.pow(2).sum(-1) / self.tokens) if self.tokens else self.sum_y2 * 0
        var = self.sum_y2 - mean_y2  # sum |y - mean y|^2
        fve = 1 - self.err / var
        fve_skip = 1 - self.err_skip / var
        ce = {k: v / self.predictions for k, v in self.ce.items()}
        return {
            "tokens": self.tokens,
            "layers": {
                str(layer): {
                    "fve": round(float(fve[i]), 4),
                    "fve_skip_only": round(float(fve_skip[i]), 4),
                    "l0": round(float(self.active[i] / self.tokens), 2),
                    "dead": round(float(1 - self.fired[i].float().mean()), 4),
                }
                for i, layer in enumerate(layers)
            },
            "replacement": {
                "ce_clean": round(ce["clean"], 4),
                "ce_zero_ablation": round(ce["zero"], 4),
                "ce_replaced": round(ce["replaced"], 4),
                "ce_loss_score": round((ce["zero"] - ce["replaced"]) / (ce["zero"] - ce["clean"]), 4),
                "kl": round(self.kl / self.predictions, 4),
            },
        }


@torch.no_grad()
def evaluate(model, transcoders, tokens: torch.Tensor, batch: int = 2, progress: bool = True) -> dict:
    """The quality figures of ``transcoders`` (layer -> loaded transcoder) on ``tokens`` [rows, context]."""
    layers = sorted(transcoders)
    totals = Totals(len(layers), transcoders[layers[0]].cfg.d_sae)
    for start in tqdm(range(0, len(tokens), batch), desc="batches", disable=not progress, file=sys.stdout):
        add_batch(model, transcoders, layers, tokens[start : start + batch], totals)
    return totals.figures(layers)


def add_batch(model, transcoders, layers: list[int], tokens: torch.Tensor, totals: Totals) -> None:
    tok = model.tokenizer
    keep = (tokens != tok.bos_token_id) & (tokens != tok.pad_token_id)
    # clean run: every layer's MLP input and output, and the logits
    cache: dict[str, torch.Tensor] = {}
    names = [f"blocks.{n}.ln2.hook_normalized" for n in layers] + [f"blocks.{n}.hook_mlp_out" for n in layers]
    clean = model.run_with_hooks(
        tokens, fwd_hooks=[(n, lambda t, hook: cache.__setitem__(hook.name, t)) for n in names]
    )
    for i, layer in enumerate(layers):
        x = cache[f"blocks.{layer}.ln2.hook_normalized"][keep]
        y = cache[f"blocks.{layer}.hook_mlp_out"][keep].double()
        y_hat, acts = transcoders[layer].forward_with_activations(x)
        totals.err[i] += (y - y_hat.double()).pow(2).sum()
        tc = transcoders[layer]
        skip_only = tc.b_dec + (x @ tc.W_skip.T if hasattr(tc, "W_skip") else 0)
        totals.err_skip[i] += (y - skip_only.double()).pow(2).sum()
        if totals.sum_y.shape[1] == 0:
            totals.sum_y = torch.zeros(len(layers), y.shape[-1], dtype=torch.float64)
        totals.sum_y[i] += y.sum(0)
        totals.sum_y2[i] += y.pow(2).sum()
        totals.active[i] += (acts > 0).sum()
        totals.fired[i] |= (acts > 0).any(0)
    totals.tokens += int(keep.sum())
    zero = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{n}.hook_mlp_out", lambda t, hook: t * 0) for n in layers])
    replaced = model.run_with_hooks(tokens, fwd_hooks=replacement_hooks(transcoders, layers))
    # next-token predictions: position p predicts token p + 1 when that token is real text
    target = tokens[:, 1:]
    valid = keep[:, 1:]
    for name, logits in (("clean", clean), ("zero", zero), ("replaced", replaced)):
        logp = logits[:, :-1].log_softmax(-1)
        totals.ce[name] += float(-logp.gather(-1, target[..., None])[..., 0][valid].sum())
    p_clean = clean[:, :-1].log_softmax(-1)
    p_repl = replaced[:, :-1].log_softmax(-1)
    totals.kl += float((p_clean.exp() * (p_clean - p_repl)).sum(-1)[valid].sum())
    totals.predictions += int(valid.sum())


def replacement_hooks(transcoders, layers: list[int]) -> list:
    """Hooks that replace every MLP's output by its transcoder's reading of the (replaced) MLP input."""
    inputs: dict[int, torch.Tensor] = {}
    hooks = []
    for layer in layers:

        def keep_input(t: torch.Tensor, hook, layer: int = layer) -> None:
            inputs[layer] = t

        def replace(t: torch.Tensor, hook, layer: int = layer) -> torch.Tensor:
            return transcoders[layer](inputs.pop(layer))

        hooks += [(f"blocks.{layer}.ln2.hook_normalized", keep_input), (f"blocks.{layer}.hook_mlp_out", replace)]
    return hooks


def markdown(quality: dict) -> str:
    """The README tables: per layer FVE (and the affine skip path's alone), L0 and dead fraction for
    each set; then the replacement model per set."""
    sets = list(quality["sets"])
    columns = [("fve", "FVE"), ("fve_skip_only", "FVE affine only"), ("l0", "L0"), ("dead", "dead")]
    head = "| layer | " + " | ".join(f"{label} {s}" for key, label in columns for s in sets) + " |"
    lines = [head, "|" + "---|" * (1 + len(columns) * len(sets))]
    for layer in quality["sets"][sets[0]]["layers"]:
        cells = []
        for key, _ in columns:
            for s in sets:
                v = quality["sets"][s]["layers"][layer][key]
                cells.append(f"{v:.1%}" if key == "dead" else f"{v:.1f}" if key == "l0" else f"{v:.3f}")
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "| set | tokens | CE clean | CE zero-ablated | CE replaced | CE-loss score | KL |"]
    lines.append("|---|---|---|---|---|---|---|")
    for s in sets:
        r = quality["sets"][s]["replacement"]
        lines.append(
            f"| {s} | {quality['sets'][s]['tokens']:,} | {r['ce_clean']:.3f} | {r['ce_zero_ablation']:.3f} | "
            f"{r['ce_replaced']:.3f} | {r['ce_loss_score']:.3f} | {r['kl']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    import scope

    args = parse_args()
    torch.set_num_threads(args.threads)
    model = scope.load_model("gemma-3-270m", device="cpu", dtype="float32")
    transcoders = scope.load_transcoders(args.transcoders, model=model, **folder_filter(args.transcoders))
    transcoders = {layer: transcoders[layer] for layer in transcoders}
    tok = model.tokenizer
    texts = modern_texts()
    sets = {
        "heldout-docs": token_rows(tok, heldout_texts(SAMPLE / "heldout.jsonl"), args.context, args.tokens),
        "heldout-english": token_rows(
            tok, heldout_texts(SAMPLE / "english" / "heldout.jsonl"), args.context, args.tokens
        ),  # fmt: skip
        "modern": token_rows(tok, texts, args.context, args.tokens),
    }
    quality: dict = {"transcoders": args.transcoders.name, "sets": {}}
    for name, tokens in sets.items():
        print(f"{name}: {len(tokens)} rows", flush=True)
        quality["sets"][name] = evaluate(model, transcoders, tokens)
    quality["sample"] = {"text": 0, **evaluate(model, transcoders, token_rows(tok, texts[:1], args.context, None))}
    out = args.out or args.transcoders / "quality.json"
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(quality, indent=2) + "\n")
    partial.replace(out)
    print(markdown(quality))
    print(f"wrote {out}")


def folder_filter(folder: Path) -> dict:
    """width= and affine= that pick the folders in ``folder`` (named as Gemma Scope 2's)."""
    config = json.loads(next(folder.glob("layer_*/config.json")).read_text())
    width = config["width"]
    return {"width": f"{width // 1024}k" if width % 1024 == 0 else str(width), "affine": config["affine_connection"]}


if __name__ == "__main__":
    main()
