"""Train the demo transcoders for the bundled Gemma 3 270M: one per layer, all 18, on CPU.

``scope.load_transcoders("demo", model=model)`` loads what this writes to ``data/demo_transcoders``.

Each transcoder reads the MLP's input after its RMSNorm, gain included (transformers'
``pre_feedforward_layernorm.output``, which is ``blocks.L.ln2.hook_normalized * blocks.L.ln2.w`` in
transformer-lens) and reconstructs the MLP's output after its post-norm (``blocks.L.hook_mlp_out``):
the input Gemma Scope 2's transcoders read, so the shipped folders are in Gemma Scope 2's format
(``layer_{L}_width_{W}_l0_medium[_affine]/params.safetensors`` + ``config.json``) and load through
the same code, which folds the model's ``ln2.w`` into ``w_enc`` to read ``ln2.hook_normalized``.

Streamed, never holding a corpus' worth of activations: each buffer of ``--buffer-tokens`` tokens
is one model pass with all 36 hooks captured together (every layer's MLP input and output; the
unembedding is skipped), and trains all 18 transcoders (batched, one ``bmm`` per layer stack) for
``--passes`` shuffled passes before the next buffer is computed. BOS positions are dropped
(Gemma's BOS activations are huge and carry no text).

The recipe, JumpReLU as Gemma Scope (Rajamanoharan et al. 2024) through sae-lens' ``JumpReLU`` and
``Step`` straight-through functions, with the choices that made the demo SAE train on CPU
(``scripts/train_demo_sae.py``): Gemma Scope 2's quadratic L0 penalty around ``--target-l0``,
the L0 gradient reaching the encoder (``ste_to_input``), Anthropic's pre-activation loss on dead
features, decoder rows of norm 0.1 with ``W_enc = W_dec.T`` as sae-lens initialises them, and
``b_enc`` set from the first buffer so that every feature starts firing on target_l0 / width of
tokens. Inputs and outputs are scaled per layer to mean norm sqrt(d_model) while training (the
scales are folded into the shipped weights). With ``--skip`` (Gemma Scope 2's affine
skip-transcoders), ``W_skip`` starts at the least-squares linear map from input to output on the
first buffer, so the features learn what a linear map misses.

Resumable: a checkpoint (weights, Adam, position in the corpus) is written atomically every
``--checkpoint-every`` buffers to ``--checkpoint``; rerunning the same command continues from it.
The shipped weights are float16 (computed in float32 after loading).

Throughput on the 2-core machine: ~200 tokens/s when quiet, ~10-20 under load average 5-14
(the model's forward about half of it); the shipped set saw 644,349 tokens in 110 minutes (4,858
steps; data/README.md). ``--max-minutes`` bounds a run; a rerun continues from the checkpoint.

Usage (from the repository root)::

    nohup nice -n 10 env PYTHONPATH=. python scripts/train_demo_transcoders.py --max-minutes 52 > train_tc.log 2>&1 &
    PYTHONPATH=. python scripts/train_demo_transcoders.py --export-only   # from the checkpoint
    PYTHONPATH=. python scripts/eval_demo_transcoders.py          # the quality table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SCOPE_CACHE", Path.home() / ".cache" / "scope"))
SAMPLE = ROOT / "data" / "corpus_sample"
DEFAULT_CORPORA = [SAMPLE / "train.jsonl", SAMPLE / "english" / "train.jsonl"]
OUT = ROOT / "data" / "demo_transcoders"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=512, help="features per layer")
    p.add_argument("--tokens", type=int, default=400_000, help="corpus tokens run through the model (at most)")
    p.add_argument(
        "--max-minutes",
        type=float,
        help="stop and export after this long even if --tokens are not used up (a shared CPU); the "
        "learning rate decays over the last 20%% of whichever budget runs out first",
    )
    p.add_argument("--passes", type=int, default=2, help="training passes over each activation buffer")
    p.add_argument("--buffer-tokens", type=int, default=4096, help="tokens per model pass (all 18 layers kept)")
    p.add_argument("--batch", type=int, default=256, help="training batch, in tokens")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--target-l0", type=float, default=60.0, help="Gemma Scope 2's 'medium' L0 for 270M")
    p.add_argument("--l0-coeff", type=float, default=1.0)
    p.add_argument("--l0-warm-up", type=float, default=0.05, help="fraction of steps to warm up the L0 penalty")
    p.add_argument("--bandwidth", type=float, default=0.05)
    p.add_argument("--init-threshold", type=float, default=0.1)
    p.add_argument("--pre-act-coeff", type=float, default=1.0)
    p.add_argument("--dead-window", type=int, default=100, help="steps without firing before a feature is dead")
    p.add_argument("--skip", action=argparse.BooleanOptionalAction, default=True, help="affine skip-transcoders")
    p.add_argument("--layers", type=int, nargs="+", help="train these layers only (default all)")
    p.add_argument("--corpus", type=Path, nargs="+", default=DEFAULT_CORPORA, help="train.jsonl files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--checkpoint", type=Path, default=CACHE / "demo_transcoders.ckpt")
    p.add_argument("--checkpoint-every", type=int, default=3, help="buffers between checkpoints")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--export-only", action="store_true", help="write --out from the checkpoint and stop")
    return p.parse_args(argv)


# ---------------------------------------------------------------- corpus and activations


def corpus_rows(paths: list[Path], tokenizer, context: int, seed: int) -> Iterator[list[int]]:
    """Rows of ``context`` token ids, each BOS + a window of one document, in a seeded order."""
    texts = []
    for path in paths:
        if not path.is_file():
            sys.exit(f"{path} is missing: build the corpus with scripts/build_corpus.py")
        with path.open() as f:
            texts += [json.loads(line)["text"] for line in f]
    random.Random(seed).shuffle(texts)
    bos = tokenizer.bos_token_id
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - context // 4, context - 1):  # drop very short tails
            window = ids[start : start + context - 1]
            yield [bos, *window] + [tokenizer.pad_token_id] * (context - 1 - len(window))


def hook_names(layers: list[int]) -> tuple[list[str], list[str]]:
    return [f"blocks.{n}.ln2.hook_normalized" for n in layers], [f"blocks.{n}.hook_mlp_out" for n in layers]


@torch.no_grad()
def mlp_activations(model, tokens: torch.Tensor, layers: list[int], keep: torch.Tensor):
    """Every layer's transcoder input (``ln2.hook_normalized * ln2.w``, Gemma Scope 2's input) and
    MLP output, from one forward pass that stops before the unembedding: ``[tokens, layers, d]`` each,
    only the positions in ``keep``."""
    ins, outs = hook_names(layers)
    cache: dict[str, torch.Tensor] = {}

    def store(tensor: torch.Tensor, hook) -> None:
        cache[hook.name] = tensor[keep]

    model.run_with_hooks(
        tokens, fwd_hooks=[(name, store) for name in ins + outs], stop_at_layer=max(layers) + 1, return_type=None
    )
    gains = torch.stack([model.blocks[n].ln2.w.float() for n in layers])  # [L, d]
    x = torch.stack([cache[name].float() for name in ins], dim=1) * gains
    y = torch.stack([cache[name].float() for name in outs], dim=1)
    return x, y


def buffers(model, rows: Iterator[list[int]], buffer_tokens: int, context: int, layers: list[int], skip_rows: int):
    """(x, y, rows used so far) per buffer; the first ``skip_rows`` rows are passed over (resuming)."""
    tokenizer = model.tokenizer
    for _ in range(skip_rows):
        next(rows, None)
    used = skip_rows
    per_buffer = max(1, buffer_tokens // context)
    while True:
        chunk = [row for _, row in zip(range(per_buffer), rows, strict=False)]
        if not chunk:
            return
        used += len(chunk)
        tokens = torch.tensor(chunk)
        keep = (tokens != tokenizer.bos_token_id) & (tokens != tokenizer.pad_token_id)
        xs, ys = [], []
        for i in range(0, len(tokens), 16):  # forward batches of 16 rows
            x, y = mlp_activations(model, tokens[i : i + 16], layers, keep[i : i + 16])
            xs.append(x)
            ys.append(y)
        yield torch.cat(xs), torch.cat(ys), used


# ---------------------------------------------------------------- the batched transcoders


class LayerTranscoders(nn.Module):
    """One JumpReLU (skip-)transcoder per layer, batched: inputs ``[batch, layers, d_in]``.

    The layout keeps the batch first so that sae-lens' ``JumpReLU`` / ``Step`` functions (which sum
    the threshold gradient over dim 0) see a ``[layers, width]`` threshold.
    """

    def __init__(self, n_layers: int, d_in: int, d_out: int, width: int, skip: bool, init_threshold: float):
        super().__init__()
        w_dec = torch.randn(n_layers, width, d_out)
        w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True) * 0.1  # sae-lens' decoder_init_norm
        self.W_dec = nn.Parameter(w_dec)
        w_enc = w_dec.transpose(1, 2).clone() if d_in == d_out else torch.randn(n_layers, d_in, width) * 0.1 / d_in**0.5
        self.W_enc = nn.Parameter(w_enc)
        self.b_enc = nn.Parameter(torch.zeros(n_layers, width))
        self.b_dec = nn.Parameter(torch.zeros(n_layers, d_out))
        self.threshold = nn.Parameter(torch.full((n_layers, width), init_threshold))
        self.W_skip = nn.Parameter(torch.zeros(n_layers, d_in, d_out)) if skip else None

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x.transpose(0, 1), self.W_enc).transpose(0, 1) + self.b_enc  # [B, L, W]

    def decode(self, acts: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = torch.bmm(acts.transpose(0, 1), self.W_dec).transpose(0, 1) + self.b_dec
        if self.W_skip is not None:
            out = out + torch.bmm(x.transpose(0, 1), self.W_skip).transpose(0, 1)
        return out

    def forward(self, x: torch.Tensor, bandwidth: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from sae_lens.saes.jumprelu_sae import JumpReLU

        pre = self.pre(x)
        acts = JumpReLU.apply(pre, self.threshold, bandwidth, True)
        return acts, pre, self.decode(acts, x)

    @torch.no_grad()
    def initialise_from(self, x: torch.Tensor, y: torch.Tensor, target_l0: float) -> None:
        """b_dec (and W_skip: least squares) from data; b_enc so each feature fires on target_l0 / width."""
        y_mean = y.mean(0)
        if self.W_skip is not None:
            x_mean = x.mean(0)
            for i in range(x.shape[1]):  # per layer, in float64 (MKL's batched solve failed here)
                xc, yc = (x[:, i] - x_mean[i]).double(), (y[:, i] - y_mean[i]).double()
                gram = xc.T @ xc
                gram += 1e-3 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)  # ridge
                self.W_skip[i] = torch.linalg.solve(gram, xc.T @ yc).float()
            y_mean = y_mean - torch.einsum("ld,ldo->lo", x_mean, self.W_skip)
        self.b_dec.copy_(y_mean)
        pre = self.pre(x)  # b_enc is zero here
        fire = target_l0 / self.threshold.shape[-1]
        cut = pre.kthvalue(max(1, int(len(pre) * (1 - fire))), dim=0).values  # [L, W]
        self.b_enc.copy_(self.threshold - cut)


def losses(
    tc: LayerTranscoders,
    x: torch.Tensor,
    y: torch.Tensor,
    args: argparse.Namespace,
    l0_coeff: float,
    dead: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over layers of: squared error (summed over d), the quadratic L0 penalty, the pre-act loss."""
    from sae_lens.saes.jumprelu_sae import Step

    acts, pre, out = tc(x, args.bandwidth)
    mse = (out - y).pow(2).sum(-1).mean(0)  # [L]
    l0 = Step.apply(pre, tc.threshold, args.bandwidth, True).sum(-1)  # [B, L]
    l0_loss = l0_coeff * (2 / args.target_l0 * (l0 - args.target_l0) ** 2).mean(0)
    loss = (mse + l0_loss).sum()
    if args.pre_act_coeff and dead.any():
        dec_norm = tc.W_dec.norm(dim=-1)  # [L, W]
        loss = loss + args.pre_act_coeff * ((tc.threshold - pre).relu() * dead * dec_norm).sum(-1).mean(0).sum()
    with torch.no_grad():
        stats = {"mse": mse.detach(), "l0": (acts > 0).float().sum(-1).mean(0), "fired": (acts > 0).any(0)}
    return loss, stats


# ---------------------------------------------------------------- training state, export


def checkpoint(tc: LayerTranscoders, optim: torch.optim.Optimizer, state: dict, args: argparse.Namespace) -> dict:
    return {"model": tc.state_dict(), "optim": optim.state_dict(), "state": state, "args": vars(args)}


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def shipped_params(tc: LayerTranscoders, i: int, x_scale: torch.Tensor, y_scale: torch.Tensor) -> dict:
    """Layer ``i``'s weights in Gemma Scope 2's names and units (the training scales folded in):
    trained on ``x * sx`` -> ``y * sy``, so w_enc = W_enc * sx, w_dec = W_dec / sy, skip = W_skip * sx / sy."""
    sx, sy = float(x_scale[i]), float(y_scale[i])
    params = {
        "w_enc": tc.W_enc[i] * sx,
        "b_enc": tc.b_enc[i],
        "threshold": tc.threshold[i].clamp(min=0),
        "w_dec": tc.W_dec[i] / sy,
        "b_dec": tc.b_dec[i] / sy,
    }
    if tc.W_skip is not None:
        params["affine_skip_connection"] = tc.W_skip[i] * sx / sy
    return {k: v.detach().to(torch.float16).contiguous() for k, v in params.items()}


def folder_name(layer: int, width: int, skip: bool) -> str:
    label = f"{width // 1024}k" if width % 1024 == 0 else str(width)
    return f"layer_{layer}_width_{label}_l0_medium{'_affine' if skip else ''}"


ROUNDTRIP_TEXT = "The river froze early that winter, and the children skated to school."


@torch.no_grad()
def roundtrip_sample(model, tc: LayerTranscoders, state: dict, layers: list[int]) -> dict[str, torch.Tensor]:
    """The trainer's own reconstruction (float32 weights, training units scaled back) of every layer's
    MLP output on a short text, for the test that the shipped folders load to the same function."""
    tokens = model.to_tokens(ROUNDTRIP_TEXT)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[:, 0] = False  # BOS
    x, _ = mlp_activations(model, tokens, layers, keep)
    _, _, out = tc(x * state["x_scale"][:, None], bandwidth=0.05)
    return {"tokens": tokens[0].contiguous(), "out": (out / state["y_scale"][:, None]).contiguous()}


def export(model, tc, state: dict, args: argparse.Namespace, layers: list[int], train_stats: dict) -> None:
    """Write the folders atomically: into ``OUT.partial``, then swapped in."""
    from safetensors.torch import save_file

    tmp = args.out.with_name(args.out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, layer in enumerate(layers):
        folder = tmp / folder_name(layer, args.width, args.skip)
        folder.mkdir()
        save_file(shipped_params(tc, i, state["x_scale"], state["y_scale"]), str(folder / "params.safetensors"))
        config = {
            "hf_hook_point_in": f"model.layers.{layer}.pre_feedforward_layernorm.output",
            "hf_hook_point_out": f"model.layers.{layer}.post_feedforward_layernorm.output",
            "width": args.width,
            "model_name": "google/gemma-3-270m",
            "architecture": "jump_relu",
            "l0": args.target_l0,
            "affine_connection": bool(args.skip),
            "type": "transcoder",
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(roundtrip_sample(model, tc, state, layers), str(tmp / "roundtrip.safetensors"))
    record = json.loads(json.dumps(vars(args), default=str))  # paths as text
    record.update(command="scripts/train_demo_transcoders.py", **train_stats)
    (tmp / "training_config.json").write_text(json.dumps(record, indent=2) + "\n")
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)


def train(args: argparse.Namespace) -> None:
    import scope

    if args.export_only and not args.checkpoint.is_file():
        sys.exit(f"--export-only: no checkpoint at {args.checkpoint}")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = scope.load_model("gemma-3-270m", device="cpu", dtype="float32")
    model.eval()
    layers = args.layers or list(range(model.cfg.n_layers))
    d = model.cfg.d_model
    started = time.time()
    tc = LayerTranscoders(len(layers), d, d, args.width, args.skip, args.init_threshold)
    optim = torch.optim.Adam(tc.parameters(), lr=args.lr, betas=(0.9, 0.999))
    state: dict = {"step": 0, "tokens": 0, "rows": 0, "since_fired": torch.zeros(len(layers), args.width)}
    if args.checkpoint.is_file():
        saved = torch.load(args.checkpoint, weights_only=False)
        if saved["args"]["width"] != args.width or saved["args"]["skip"] != args.skip:
            sys.exit(f"{args.checkpoint} is for another --width/--skip; delete it to start afresh.")
        tc.load_state_dict(saved["model"])
        optim.load_state_dict(saved["optim"])
        state = saved["state"]
        print(f"resumed at step {state['step']}, {state['tokens']:,} tokens", flush=True)
    if args.export_only:  # the record keeps the training run's arguments
        args = argparse.Namespace(**{**saved["args"], "out": args.out, "export_only": True})
        export(model, tc, state, args, layers, summary(state.get("recent", []), state))
        print(f"wrote {args.out} from {args.checkpoint}", flush=True)
        return
    state["minutes_before"] = state.get("minutes_used", 0.0)

    def progress() -> float:
        """Fraction of the budget used: tokens, or minutes (summed over resumed runs) when limited."""
        state["minutes_used"] = state["minutes_before"] + (time.time() - started) / 60
        by_time = state["minutes_used"] / args.max_minutes if args.max_minutes else 0.0
        return max(state["tokens"] / args.tokens, by_time)

    rows = corpus_rows(args.corpus, model.tokenizer, args.context, args.seed)
    bar = tqdm(total=args.tokens, initial=state["tokens"], unit="tok", mininterval=30, file=sys.stdout)
    recent: list[dict] = []
    stream = buffers(model, rows, args.buffer_tokens, args.context, layers, state["rows"])
    for n_buffer, (x, y, used) in enumerate(stream):
        if "x_scale" not in state:  # first buffer: scales and data-driven start
            state["x_scale"] = math.sqrt(d) / x.norm(dim=-1).mean(0)  # [L]
            state["y_scale"] = math.sqrt(d) / y.norm(dim=-1).mean(0)
            tc.initialise_from(x * state["x_scale"][:, None], y * state["y_scale"][:, None], args.target_l0)
        x, y = x * state["x_scale"][:, None], y * state["y_scale"][:, None]
        recent = [train_buffer(tc, optim, x, y, args, state, progress)] + recent[:9]
        state["recent"] = recent
        state["rows"] = used
        state["tokens"] += len(x)
        bar.update(len(x))
        bar.set_postfix_str(progress_line(recent[0], state), refresh=False)
        if (n_buffer + 1) % args.checkpoint_every == 0:
            save_checkpoint(args.checkpoint, checkpoint(tc, optim, state, args))
        if progress() >= 1:
            break
    bar.close()
    save_checkpoint(args.checkpoint, checkpoint(tc, optim, state, args))
    export(model, tc, state, args, layers, summary(recent, state))
    print(f"wrote {args.out} ({state['tokens']:,} tokens, {state['step']} steps)", flush=True)


def train_buffer(tc, optim, x, y, args, state, progress) -> dict:
    """``--passes`` shuffled passes of ``--batch`` tokens over one buffer; returns its mean stats."""
    sums: dict[str, torch.Tensor] = {}
    var = (y - y.mean(0)).pow(2).sum(-1).mean(0)  # [L], for the fraction of variance explained
    n = 0
    for _ in range(args.passes):
        order = torch.randperm(len(x))
        for start in range(0, len(x) - args.batch + 1, args.batch):
            idx = order[start : start + args.batch]
            step = state["step"]
            warm = min(1.0, progress() / args.l0_warm_up)
            lr = args.lr * min(1.0, step / 50, 5 * max(0.0, 1 - progress()) + 0.02)  # warm-up, last-20% decay
            for group in optim.param_groups:
                group["lr"] = lr
            dead = state["since_fired"] > args.dead_window
            loss, stats = losses(tc, x[idx], y[idx], args, args.l0_coeff * warm, dead.float())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            with torch.no_grad():
                tc.threshold.clamp_(min=0)
            state["since_fired"] = torch.where(stats["fired"], 0, state["since_fired"] + 1)
            state["step"] = step + 1
            sums["fve"] = sums.get("fve", 0) + (1 - stats["mse"] / var)
            sums["l0"] = sums.get("l0", 0) + stats["l0"]
            n += 1
    out = {k: v / max(n, 1) for k, v in sums.items()}
    out["dead"] = (state["since_fired"] > args.dead_window).float().mean(-1)
    return out


def progress_line(last: dict, state: dict) -> str:
    return (
        f"step {state['step']} FVE {float(last['fve'].mean()):.3f} (min {float(last['fve'].min()):.3f}) "
        f"L0 {float(last['l0'].mean()):.1f} dead {float(last['dead'].mean()):.1%}"
    )


def summary(recent: list[dict], state: dict) -> dict:
    """Training-time figures per layer, averaged over the last buffers (the eval script measures anew)."""
    if not recent:
        return {"trained_tokens": state["tokens"], "steps": state["step"]}
    fve = torch.stack([r["fve"] for r in recent]).mean(0)
    l0 = torch.stack([r["l0"] for r in recent]).mean(0)
    return {
        "trained_tokens": state["tokens"],
        "steps": state["step"],
        "minutes": round(state.get("minutes_used", 0.0), 1),
        "train_fve_last_buffers": [round(float(v), 4) for v in fve],
        "train_l0_last_buffers": [round(float(v), 2) for v in l0],
        "train_dead_last_buffer": [round(float(v), 4) for v in recent[0]["dead"]],
        "x_scale": [float(v) for v in state["x_scale"]],
        "y_scale": [float(v) for v in state["y_scale"]],
    }


if __name__ == "__main__":
    train(parse_args())
