"""Where the GPU slow paths of ``gpu_check.py`` spend their time (a diagnostic, run on the device).

gpu_check.py found generation at ~0.5x transformers and ``mine`` at 0.15x of a bare forward on an
H200 (Gemma 2 2B, bf16), where the same code runs at 0.9-1.0x on 2 CPU cores. This script builds
the same random Gemma 2 2B (gpu_check's sections), then runs torch.profiler over:

1. 16 greedy tokens of ``scope.generate_tokens`` and of transformers ``generate``;
2. ``scope.mine`` over 16 texts with a 16k Gemma Scope-shaped SAE;

and prints, for each, wall time and the top operators by self CPU and self CUDA time: a GPU
that waits on Python shows CPU-bound rows and small CUDA totals.

    bash scripts/gpu_run.sh  # installs the wheels; then: python3 scripts/gpu_profile.py --out $OUT
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", HERE / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def profiled(name: str, fn, device: str, out: list[str], rows: int = 18) -> None:
    fn()  # warm-up
    torch.cuda.synchronize() if device.startswith("cuda") else None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        fn()
        torch.cuda.synchronize() if device.startswith("cuda") else None
    wall = time.perf_counter() - started
    table = prof.key_averages()
    out.append(f"\n## {name}: {wall:.3f} s wall (profiled)\n")
    out.append(table.table(sort_by="self_cpu_time_total", row_limit=rows))
    if device.startswith("cuda"):
        out.append(table.table(sort_by="self_cuda_time_total", row_limit=rows // 2))
    print("\n".join(out[-3:]), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="the tiny config (a CPU smoke run)")
    parser.add_argument("--out", type=Path, default=Path("gpu_profile_out"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-profile"))
    args = parser.parse_args()
    gc = _gpu_check()
    import scope

    shape = (gc.TINY if args.tiny else gc.FULL)[0]
    report = gc.Report(out=args.out, device=args.device, deadline=time.monotonic() + 600)
    state = gc.State(shape=shape, device=args.device, work=args.work)
    for name, fn in [
        ("checkpoint", gc.make_checkpoint),
        ("reference fp32", gc.reference),
        ("load transformers", gc.load_transformers),
        ("load scope", gc.load_scope),
        ("sae", gc.make_sae),
    ]:
        fn(state, gc.Section(report, shape.label, name, time.monotonic() + 300))
    model, hf, n = state.model, state.hf, 16
    tokens = scope.to_tokens(model, gc.PROMPT)
    out: list[str] = []
    profiled(
        "scope.generate_tokens, 16 greedy tokens",
        lambda: scope.generate_tokens(model, tokens, max_new_tokens=n, stop_at_eos=False),
        args.device,
        out,
    )
    profiled("transformers generate, 16 greedy tokens", lambda: gc.hf_generate(hf, tokens, n), args.device, out)
    gen = torch.Generator().manual_seed(3)
    vocab = len(model.tokenizer)
    texts = [model.tokenizer.decode(torch.randint(3, vocab, (256,), generator=gen).tolist()) for _ in range(16)]
    profiled(
        f"scope.mine, 16 texts, {shape.d_sae}-feature SAE",
        lambda: scope.mine(model, state.sae, texts, window=128, batch_size=16, progress=False),
        args.device,
        out,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_profile.txt").write_text("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
