"""bfloat16 autocast against fp32 for the two halves of demo-SAE training (``train_demo_sae.py --bf16``).

1. The activation pass: the bundled Gemma 3 270M to ``--layer`` (``stop_at_layer``), one batch of
   ``--batch`` x ``--context`` tokens, fp32 against ``torch.autocast(bfloat16)`` (what sae-lens'
   ``autocast_lm`` does), with the residual's relative error against fp32.
2. One training step of sae-lens' Matryoshka BatchTopK SAE (``--width`` features, k 50) on
   ``--sae-batch`` random tokens, fp32 against autocast (sae-lens' ``autocast``).

Each pair alternates ``--repeats`` times and prints tokens/s and the ratio (median); a CPU with AMX
(``amx_bf16`` in /proc/cpuinfo) runs bf16 matrix products several times faster than fp32.

    PYTHONPATH=$PWD python scripts/bench_bf16.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import torch


def autocast(enabled: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def forward_rates(args: argparse.Namespace) -> None:
    import scope

    model = scope.load_model("gemma-3-270m")
    hook = f"blocks.{args.layer}.hook_resid_post"
    tokens = torch.randint(10, 200_000, (args.batch, args.context), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = model.tokenizer.bos_token_id

    def run(bf16: bool) -> tuple[float, torch.Tensor]:
        with torch.no_grad(), autocast(bf16):
            start = time.perf_counter()
            _, cache = model.run_with_cache(tokens, stop_at_layer=args.layer + 1, names_filter=hook)
            return tokens.numel() / (time.perf_counter() - start), cache[hook].float()

    run(False), run(True)  # warm-up
    rates: dict[bool, list[float]] = {False: [], True: []}
    outputs: dict[bool, torch.Tensor] = {}
    for _ in range(args.repeats):
        for bf16 in (False, True):
            rate, outputs[bf16] = run(bf16)
            rates[bf16].append(rate)
    reference = outputs[False]
    error = ((outputs[True] - reference).norm(dim=-1) / reference.norm(dim=-1))[:, 1:]
    fp32, bf16 = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"activation pass to {hook}, {args.batch}x{args.context} tokens:")
    print(f"  fp32 {fp32:,.0f} tokens/s, bf16 autocast {bf16:,.0f} tokens/s: {bf16 / fp32:.2f}x")
    print(f"  residual relative error of bf16 (BOS skipped): median {error.median():.4f}, max {error.max():.4f}")


def training_rates(args: argparse.Namespace) -> None:
    from sae_lens import MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    width = args.width
    cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=640, d_sae=width, k=50, matryoshka_widths=[width // 16, width // 4, width], dtype="float32", device="cpu"
    )
    sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(args.sae_batch, 640, generator=torch.Generator().manual_seed(1))

    def step(bf16: bool, i: int) -> float:
        start = time.perf_counter()
        with autocast(bf16):
            out = sae.training_forward_pass(
                TrainStepInput(
                    sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=i, is_logging_step=False
                )
            )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return args.sae_batch / (time.perf_counter() - start)

    step(False, 0), step(True, 1)  # warm-up
    rates: dict[bool, list[float]] = {False: [], True: []}
    for i in range(args.repeats):
        for bf16 in (False, True):
            rates[bf16].append(step(bf16, i + 2))
    fp32, bf16 = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"Matryoshka BatchTopK training step, {width:,} features, batch {args.sae_batch}:")
    print(f"  fp32 {fp32:,.0f} tokens/s, bf16 autocast {bf16:,.0f} tokens/s: {bf16 / fp32:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--width", type=int, default=16384)
    parser.add_argument("--sae-batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpuinfo = Path("/proc/cpuinfo")
    amx = cpuinfo.is_file() and "amx_bf16" in cpuinfo.read_text()
    print(f"load {os.getloadavg()}, torch {torch.__version__}, {args.threads} threads, AMX bf16: {amx}")
    forward_rates(args)
    training_rates(args)
    print(f"load after {os.getloadavg()}")


if __name__ == "__main__":
    main()
