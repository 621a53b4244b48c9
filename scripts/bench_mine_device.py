"""Mining speed against forward + encode: the CPU proxy of the H200 check (issue 25, part 2).

The proxy: the 26-layer width-64 tiny Gemma 2 (tests/tiny.py) and a Gemma Scope-shaped JumpReLU
SAE at layer 20 (random encoder, each threshold set at its feature's 99th percentile of
pre-activations on a sample batch, so about 1% of features fire per token), one torch thread.
Over the same windows (128 tokens) and batches (16):

- **baseline**: tokenize, batch, run the model to layer 20 and ``sae.encode`` the batch's
  activations, nothing else;
- **floor** (``--floor``): the same, but the SAE's pre-activations only (``scope.mining.scores``,
  what mining reads of a JumpReLU SAE instead of ``encode``'s dense activations): the ratio to it
  is what mining's own bookkeeping costs;
- **now**: ``scope.mine`` (all features: top-k buffers, densities, histograms, contexts);
- **before**: the same call on the code of main 7951ce6 (``git show 7951ce6:scope/examples.py``,
  imported as a module), unless ``--no-before``.

Runs alternate (baseline, now, before, ...) and each figure is the median of ``--repeats``, in CPU
seconds of this process (with one torch thread, what a loaded shared machine disturbs least);
prints each ratio to the baseline (1.0x: mining costs nothing beyond forward + encode) and
checks that both codes give the same table.

Usage::

    PYTHONPATH=. python scripts/bench_mine_device.py                  # 131,072 and 16,384 features
    PYTHONPATH=. python scripts/bench_mine_device.py --widths 16384 --batches 2 8 --repeats 3
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "7951ce6"
LAYER = 20
WINDOW = 128


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[16384, 131072])
    p.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[2, 8, 32],
        help="batches of full windows mined per run, one measurement each (the table is a fixed cost per run)",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-before", action="store_true", help="skip the code of main 7951ce6")
    p.add_argument("--floor", action="store_true", help="also time forward + pre-activations (no dense activations)")
    return p.parse_args(argv)


def proxy_model(folder: Path):
    """The 26-layer width-64 tiny Gemma 2, as the tests load it."""
    import scope
    from tests.tiny import save_tiny_gemma2

    save_tiny_gemma2(folder, num_hidden_layers=26)
    return scope.load_model("shieldgemma-2b", weights=folder, device="cpu")


def corpus(model, n_windows: int) -> list[str]:
    """Texts of random words, one full window each (seeded)."""
    rng = np.random.default_rng(0)
    words = [w for w in model.tokenizer.get_vocab() if w.isalpha() and len(w) > 2]
    texts = []
    for _ in range(n_windows):
        text = ""
        while len(model.tokenizer.encode(text, add_special_tokens=False)) < WINDOW - 1:
            text += " ".join(rng.choice(words, 16)) + " "
        ids = model.tokenizer.encode(text, add_special_tokens=False)[: WINDOW - 1]
        texts.append(model.tokenizer.decode(ids))
    return texts


def proxy_sae(model, width: int, texts: list[str], folder: Path):
    """A Gemma Scope-shaped JumpReLU SAE at layer 20 where ~1% of features fire per token."""
    from scope.hooks import run_to_hooks
    from scope.saes import load_gemma_scope_npz

    hook = f"blocks.{LAYER}.hook_resid_post"
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(width)
    w_enc = torch.randn(d, width, generator=g) / d**0.5
    b_enc = 0.1 * torch.randn(width, generator=g)
    tokens = model.to_tokens(texts[:8])
    act = run_to_hooks(model, tokens, [hook])[hook][:, 1:].reshape(-1, d)
    pre = act @ w_enc + b_enc
    threshold = torch.quantile(pre[:, : min(width, 16384)], 0.99, dim=0)  # quantile's size limit: tile
    threshold = threshold.repeat(-(-width // len(threshold)))[:width].clamp_min(1e-3)
    params = {
        "W_enc": w_enc,
        "W_dec": torch.randn(width, d, generator=g),
        "b_enc": b_enc,
        "b_dec": torch.zeros(d),
        "threshold": threshold,
    }
    path = folder / f"sae_{width}.npz"
    np.savez(path, **{name: value.numpy() for name, value in params.items()})
    return load_gemma_scope_npz(path, hook=hook, device="cpu")


def before_module():
    """scope.examples as it was on main 7951ce6."""
    source = subprocess.run(
        ["git", "show", f"{BEFORE}:scope/examples.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "examples_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("examples_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def forward_and_encode(model, sae, texts: list[str], batch_size: int, scores: bool = False) -> None:
    """The baseline: the same windows and batches, forward to the hook and encode, nothing else
    (``scores``: the pre-activations mining reads instead of ``encode``)."""
    from scope._io import batched
    from scope.hooks import run_to_hooks, sae_hook
    from scope.mining.scores import scores_of
    from scope.mining.windows import batch_tokens, iter_windows

    hook = sae_hook(sae)
    with torch.no_grad():
        for batch in batched(iter_windows(model, texts, WINDOW), batch_size):
            tokens, _ = batch_tokens(model, batch)
            act = run_to_hooks(model, tokens, [hook])[hook]
            scores_of(sae, act.flatten(0, 1)) if scores else sae.encode(act)


def timed(fn) -> float:
    """CPU seconds of this process (one torch thread): what other processes on a shared machine
    change least."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def measure(model, sae, texts, args, before) -> dict[str, float]:
    import scope

    def mine_with(module):
        return lambda: module.mine(model, sae, texts, k=args.k, batch_size=args.batch, progress=False)

    runs = {"baseline": lambda: forward_and_encode(model, sae, texts, args.batch), "now": mine_with(scope)}
    if args.floor:
        runs["floor"] = lambda: forward_and_encode(model, sae, texts, args.batch, scores=True)
    if before is not None:
        runs["before"] = mine_with(before)
    for run in runs.values():  # warm-up
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            seconds[name].append(timed(run))
    return {name: statistics.median(times) for name, times in seconds.items()}


def check_equal(model, sae, texts, args, before) -> None:
    import pandas as pd

    import scope

    now = scope.mine(model, sae, texts, k=args.k, batch_size=args.batch, progress=False)
    old = before.mine(model, sae, texts, k=args.k, batch_size=args.batch, progress=False)
    pd.testing.assert_frame_equal(now.examples, old.examples)
    assert torch.equal(now.histogram, old.histogram) and torch.equal(now.density, old.density)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    before = None if args.no_before else before_module()
    with tempfile.TemporaryDirectory() as tmp:
        model = proxy_model(Path(tmp) / "model")
        texts = corpus(model, max(args.batches) * args.batch)
        print(
            f"proxy: 26-layer width-64 tiny Gemma 2, SAE at layer {LAYER}, windows of {WINDOW} "
            f"tokens in batches of {args.batch}, k={args.k}, {torch.get_num_threads()} torch thread(s); "
            f"load {os.getloadavg()[0]:.2f}"
        )
        for width in args.widths:
            sae = proxy_sae(model, width, texts, Path(tmp))
            for batches in args.batches:
                part = texts[: batches * args.batch]
                if before is not None:
                    check_equal(model, sae, part, args, before)
                median = measure(model, sae, part, args, before)
                line = (
                    f"width {width:>7,}, {batches:>3} batches: forward+encode {median['baseline']:.2f} s; "
                    f"mine now {median['now']:.2f} s = {median['baseline'] / median['now']:.2f}x"
                )
                if args.floor:
                    floor = median["floor"]
                    line += f"; forward+pre-activations {floor:.2f} s: mine = {floor / median['now']:.2f}x of it"
                if before is not None:
                    line += (
                        f"; before ({BEFORE}) {median['before']:.2f} s = {median['baseline'] / median['before']:.2f}x"
                    )
                print(line + (" (same table)" if before is not None else ""), flush=True)
    print(f"(CPU seconds of this process; load average after: {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
