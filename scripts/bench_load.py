"""Loading a full-size Gemma 2 2B: scope.load_model against transformers' from_pretrained.

    python scripts/bench_load.py                      # CPU, bf16, 3 alternating rounds
    python scripts/bench_load.py --device cuda        # on a GPU (peak = device memory)
    python scripts/bench_load.py --before             # also the path before scope.loading

The checkpoint has the real shapes and random weights (loading does not depend on values), saved
once in bf16 under the scope cache (~5.2 GB, written shard by shard). Each load runs in its own
process, so that each peak is its own: transformers (the baseline), scope (``scope.load_model``,
:mod:`scope.loading`) and, with ``--before``, the path scope took before (transformers' model
converted by transformer-lens, then re-laid; on the CPU it peaked at 18 GiB resident: not on a
shared 24 GB machine). Sides alternate round by round; medians are printed,
with ratios against transformers measured in the same run.

Peak: on cuda, ``torch.cuda.max_memory_allocated`` over the load; on the CPU, the process's peak
resident memory (VmHWM, reset after the imports) above its resident memory before the load, and
again through the first forward ("ready"): on the CPU transformers maps the checkpoint and reads
each weight when first used, so only the first forward shows what its load costs.

``measure_load(side, folder, device, dtype)`` is the measurement itself (scripts/gpu_check.py can
import it).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scope  # noqa: E402
import scope.models  # noqa: E402

SIDES = ("transformers", "scope", "before")
SHARD_BYTES = 2 << 30


def gemma2_2b_config():
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=256000,
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        query_pre_attn_scalar=256,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        max_position_embeddings=8192,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        dtype="bfloat16",
    )


def random_checkpoint() -> Path:
    """The full-size 2B with random bf16 weights, written tensor by tensor (memory: one shard)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, Gemma2ForCausalLM

    from scope.bundled import cache_root, ensure_bundled_checkpoint

    folder = cache_root() / "bench" / "gemma-2-2b-random-bf16"
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    config = gemma2_2b_config()
    with torch.device("meta"):  # names and shapes only
        shapes = {name: p.shape for name, p in Gemma2ForCausalLM(config).named_parameters()}
    generator = torch.Generator().manual_seed(0)
    shards: list[dict[str, torch.Tensor]] = [{}]
    for name, shape in shapes.items():
        if sum(t.numel() * 2 for t in shards[-1].values()) > SHARD_BYTES:
            shards.append({})
        shards[-1][name] = (torch.randn(shape, generator=generator) * (0.3 if "norm" in name else 0.02)).bfloat16()
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, folder / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
        shard.clear()
    config.save_pretrained(folder)
    # Any Gemma tokenizer will do for timing: the bundled one.
    AutoTokenizer.from_pretrained(str(ensure_bundled_checkpoint())).save_pretrained(folder)
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))  # last: marks it complete
    return folder


def _kib(field: str) -> int:
    return int(re.search(field + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _load(side: str, folder: Path, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if side == "transformers":
        AutoTokenizer.from_pretrained(folder)  # a usable model needs one, as load_model's does
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=device)
    if side == "scope":
        return scope.load_model("gemma-2-2b", weights=folder, device=device, dtype=dtype)
    spec = scope.models.SUBJECTS["gemma-2-2b"]
    tokenizer, hf_model = scope.models._load_hf(spec, folder, dtype)
    return scope.models.hooked_from_hf(
        spec.tl_template, hf_model, tokenizer, dtype=dtype, device=device, consume_hf=True
    )


def measure_load(side: str, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.bfloat16) -> dict:
    """Load ``folder`` one way (``"transformers"``: tokenizer and model, ``"scope"``, or ``"before"``) and return
    ``{"seconds", "peak_gib", "model"}``: wall time, peak memory of the load (device memory on
    cuda, resident memory above the start on the CPU), and the loaded model."""
    import sae_lens  # noqa: F401  imports are not the load
    import transformer_lens  # noqa: F401
    import transformers  # noqa: F401

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = _kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM counts from here
    started = time.perf_counter()
    model = _load(side, folder, device, dtype)
    _sync(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if cuda else _kib("VmHWM") * 1024
    return {"seconds": seconds, "peak_gib": (peak - before) / 2**30, "start_bytes": before, "model": model}


def run_side(side: str, folder: Path, device: str) -> None:
    result = measure_load(side, folder, device)
    model, start = result.pop("model"), result.pop("start_bytes")
    # transformers maps the file and reads a weight when first used (on the CPU): the first forward
    # is where every side has read every weight.
    tokens = torch.tensor([[2, 651, 4281, 576, 573, 11344, 20936, 6343]], device=device)
    started = time.perf_counter()
    with torch.no_grad():
        model(tokens)
    _sync(device)
    result["first_forward_s"] = time.perf_counter() - started
    if not device.startswith("cuda"):
        result["ready_peak_gib"] = (_kib("VmHWM") * 1024 - start) / 2**30
    result["model_gib"] = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**30
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", action="store_true", help="also the path before scope.loading (18 GiB on CPU)")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = random_checkpoint()
    if args.side:
        return run_side(args.side, folder, args.device)
    sides = [s for s in SIDES if args.before or s != "before"]
    results: dict[str, list[dict]] = {s: [] for s in sides}
    for round_ in range(args.rounds):
        for side in sides:
            command = [sys.executable, __file__, "--side", side, "--device", args.device]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[side].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {round_ + 1} {side}: {results[side][-1]}", flush=True)

    def median(key: str, side: str) -> float:
        return statistics.median(r.get(key, float("nan")) for r in results[side])

    columns = {
        "load s": "seconds",
        "first forward s": "first_forward_s",
        "load peak GiB": "peak_gib",
        "ready peak GiB": "ready_peak_gib",
        "model GiB": "model_gib",
    }
    print(f"\nGemma 2 2B (full size, random bf16 weights, {folder}), bf16 on {args.device}, median of {args.rounds}")
    print("(load: tokenizer + weights; ready: through the first forward of 8 tokens; (x): over transformers)")
    print(f"{'side':13s}" + "".join(f"{c:>24s}" for c in columns))
    for side in sides:
        cells = []
        for key in columns.values():
            value, base = median(key, side), median(key, "transformers")
            ratio = f"({value / base:.2f}x)" if key != "model_gib" and base > 0 else ""
            cells.append(f"{value:15.2f} {ratio:>8s}")
        print(f"{side:13s}" + "".join(cells))
    ready = {s: median("seconds", s) + median("first_forward_s", s) for s in sides}
    print("load + first forward, s:", {s: f"{v:.1f} ({v / ready['transformers']:.2f}x)" for s, v in ready.items()})


if __name__ == "__main__":
    main()
