"""Full-size Gemma 2 in bfloat16 on a GPU: loading, numerics, SAEs, steering and throughput, in one run.

    python scripts/gpu_check.py --device cuda --out results/   # Gemma 2 2B and 9B shapes, random weights
    python scripts/gpu_check.py --tiny --device cpu --out /tmp/check   # the same code paths, tiny, seconds

Prints one table row per figure as it is measured and rewrites ``gpu_check.json`` and
``gpu_check.md`` in ``--out`` after every section, so a run cut short still leaves its figures.

Steps, for each model (2B, then 9B):
1. checkpoint: a random checkpoint of the real shapes (transformers' own init, std 0.02), saved
   in bf16 with a small stand-in tokenizer (ids 0-2 are Gemma's pad/eos/bos; token ids beyond
   it are still drawn from the full vocabulary where the check feeds ids directly).
2. reference: transformers loads it in fp32: logits of a fixed token batch and the residual at the
   SAE layer (the fp32 reference); freed.
3. transformers load: bf16 on the device: load time and peak device memory (the baseline), logits.
4. scope load: ``scope.load_model(name, weights=folder)`` in bf16: load time, peak memory; logits
   against transformers bf16 and fp32, beside transformers' own bf16-vs-fp32 error (the bound
   that bf16 itself sets). Random weights give near-tied logits, so top-1 agreement here is a
   harsher test than with real weights.
5. sae: a random Gemma Scope-shaped JumpReLU SAE (params.npz, fp32; thresholds scaled to this
   model's residual so that about 100-1000 features fire) at layer 20 through ``scope.load_sae``.
6. encode: ``encode``/``top_features`` (bf16 model, fp32 SAE) against a float64 JumpReLU of the
   fp32 reference residual (active-set agreement), and against a float64 JumpReLU of scope's own
   bf16 residual (plumbing: must agree to fp32 rounding).
7. steer: a steered forward (Clamp at 10x the feature's activation) against the edit computed by
   hand in a plain hook: residual and logits.
8. throughput, each against a baseline measured in the same run: greedy and steered generation
   vs transformers ``generate`` (batch 1, and 8/32 when ``scope.generate`` takes a list); the fast
   decode step vs transformer-lens' own forward (``decode="plain"``) and transformers, batch 1 and 32;
   transformers with a static cache (compiled on CUDA) as the next anchor; assisted generation
   (a 2B-shape draft for the 9B shape; random weights, so acceptance is at chance level),
   ``encode`` vs a bare forward to the SAE layer, ``mine`` tokens/s vs bare forwards of the same
   batches, ``shield.score`` vs the ShieldGemma model card's one-prompt-at-a-time loop.

Every section has a time budget: one that would not fit what is left of ``--budget`` is
reported as "skipped: budget", repetitions stop at the section's budget, and a section that
raises is recorded as an error while the next one runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import inspect
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's tests.tiny tokenizer

import scope
from tests.tiny import make_tokenizer

GEMMA2_SHARED = dict(
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    max_position_embeddings=8192,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    hidden_activation="gelu_pytorch_tanh",
    initializer_range=0.02,
)


@dataclass(frozen=True)
class Shape:
    """One model of the run: its scope name, HF config sizes, SAE layer and width, workload sizes."""

    label: str
    subject: str
    config: dict
    layer: int
    d_sae: int
    logit_batch: tuple[int, int] = (4, 128)  # [rows, positions] for the logits comparison
    new_tokens: int = 32
    batch_sizes: tuple[int, ...] = (8, 32)
    mine_texts: int = 64
    shield_prompts: int = 16
    reps: int = 3  # timing repetitions (at most; the section's budget may stop them sooner)
    warmup: bool = True  # one untimed call of each timed function first
    draft: dict = field(default_factory=lambda: dict(num_hidden_layers=4))  # the assistant's config over `config`
    draft_label: str = "the same shape, 4 layers"


FULL = (
    Shape(
        "Gemma 2 2B",
        "gemma-2-2b",
        dict(
            vocab_size=256000,
            hidden_size=2304,
            intermediate_size=9216,
            num_hidden_layers=26,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            query_pre_attn_scalar=256,
        ),
        layer=20,
        d_sae=16384,
    ),
    Shape(
        "Gemma 2 9B",
        "gemma-2-9b",
        dict(
            vocab_size=256000,
            hidden_size=3584,
            intermediate_size=14336,
            num_hidden_layers=42,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=256,
            query_pre_attn_scalar=256,
        ),
        layer=20,
        d_sae=131072,
        draft=dict(
            hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4
        ),
        draft_label="Gemma 2 2B shape",
    ),
)
_TINY_COMMON = dict(
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=8,
    max_position_embeddings=2048,
)
TINY = (
    Shape(
        "tiny 2B-like",
        "gemma-2-2b",
        dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=4, **_TINY_COMMON),
        layer=2,
        d_sae=256,
        draft=dict(num_hidden_layers=2),
        draft_label="the same shape, 2 layers",
        logit_batch=(2, 32),
        new_tokens=4,
        batch_sizes=(4,),
        mine_texts=4,
        shield_prompts=2,
        reps=1,
        warmup=False,
    ),
    Shape(
        "tiny 9B-like",
        "gemma-2-9b",
        dict(vocab_size=1024, hidden_size=96, intermediate_size=192, num_hidden_layers=5, **_TINY_COMMON),
        layer=2,
        d_sae=1024,
        draft=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4),
        draft_label="tiny 2B-like shape",
        logit_batch=(2, 32),
        new_tokens=4,
        batch_sizes=(4,),
        mine_texts=4,
        shield_prompts=2,
        reps=1,
        warmup=False,
    ),
)

PROMPT = "The history of the Roman Empire began when"
ENCODE_TEXT = (
    "Sparse autoencoders find interpretable features in language models. The quick brown fox jumps "
    "over the lazy dog. Paris is the capital of France, and Rome is the capital of Italy. "
) * 3
USER_PROMPTS = [
    "How do I bake sourdough bread?",
    "Write a poem about the sea.",
    "What is the capital of France?",
    "Explain how vaccines work.",
]


# ----------------------------------------------------------------------------- the table


@dataclass
class Report:
    """The rows measured so far, printed as they come and saved after every section."""

    out: Path
    device: str
    deadline: float
    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def add(self, model: str, section: str, check: str, value: Any, baseline: Any = None, unit: str = "", **extra):
        ratio = None
        if isinstance(value, (int, float)) and isinstance(baseline, (int, float)) and baseline:
            ratio = value / baseline
        row = dict(model=model, section=section, check=check, value=value, baseline=baseline, ratio=ratio, unit=unit)
        row.update(status=extra.pop("status", "ok"), note=extra.pop("note", ""), **extra)
        self.rows.append(row)
        print(_markdown_row(row), flush=True)

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        payload = {"meta": self.meta, "rows": self.rows}
        _write(self.out / "gpu_check.json", json.dumps(payload, indent=1, default=str))
        _write(self.out / "gpu_check.md", self.markdown())

    def markdown(self) -> str:
        head = "| model | section | check | value | baseline | ratio | unit | status | note |\n" + "|---" * 9 + "|\n"
        meta = "\n".join(f"- {k}: {v}" for k, v in self.meta.items())
        return f"{meta}\n\n{head}" + "\n".join(_markdown_row(r) for r in self.rows) + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _markdown_row(r: dict) -> str:
    cells = [r["model"], r["section"], r["check"], r["value"], r["baseline"], r["ratio"], r["unit"], r["status"]]
    return "| " + " | ".join(_fmt(c) for c in cells) + f" | {r['note']} |"


class SectionSkippedError(Exception):
    """A section that cannot run (what it needs is missing); recorded, not an error."""


@dataclass
class Section:
    report: Report
    model: str
    name: str
    deadline: float

    def add(self, check: str, value: Any, baseline: Any = None, unit: str = "", **extra) -> None:
        self.report.add(self.model, self.name, check, value, baseline, unit, **extra)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run_section(report: Report, model: str, name: str, budget_s: float, fn: Callable[[Section], None]) -> None:
    """Run ``fn`` if ``budget_s`` fits what is left; record a skip or an error instead of raising."""
    if report.remaining() < budget_s:
        report.add(model, name, "-", None, status="skipped: budget", note=f"needs ~{budget_s:.0f} s")
        return
    section = Section(report, model, name, time.monotonic() + budget_s)
    started = time.monotonic()
    try:
        fn(section)
    except SectionSkippedError as why:
        report.add(model, name, "-", None, status="skipped", note=str(why))
    except Exception as err:  # fail soft: the table records it, the next section runs
        report.add(model, name, "-", None, status="error", note=f"{type(err).__name__}: {err}"[:400])
        traceback.print_exc()
    finally:
        report.meta.setdefault("section_seconds", {})[f"{model}/{name}"] = round(time.monotonic() - started, 1)
        report.save()


# ----------------------------------------------------------------------------- device helpers


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def repeat_timed(
    fns: Mapping[str, Callable[[], Any]], device: str, section: Section, reps: int = 3, warmup: bool = True
) -> dict[str, float]:
    """Median seconds of each function, alternated so that machine noise hits all alike; stops
    repeating at the section's budget (each runs at least once, after a warm-up call if ``warmup``)."""
    for fn in fns.values() if warmup else ():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
        if section.left() < sum(t[-1] for t in times.values()):
            break
    return {name: statistics.median(t) for name, t in times.items()}


@contextlib.contextmanager
def peak_memory(device: str):
    """Yields a dict that gets ``gib``: the peak device memory allocated above what was held at entry."""
    result: dict[str, float | None] = {"gib": None}
    if not device.startswith("cuda"):
        yield result
        return
    gc.collect()
    torch.cuda.empty_cache()
    sync(device)
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    yield result
    sync(device)
    result["gib"] = (torch.cuda.max_memory_allocated() - before) / 2**30


def free() -> None:
    """Return device memory that nothing references any more (callers drop their references first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compare_logits(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Max/mean abs difference and top-1 agreement of two [batch, pos, vocab] logits, BOS left out."""
    a, b = a[:, 1:].float(), b[:, 1:].to(a.device).float()
    diff = (a - b).abs()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean()
    return {"max": diff.max().item(), "mean": diff.mean().item(), "top1": agree.item()}


def jumprelu64(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Gemma Scope's JumpReLU in float64: relu(pre) * (pre > threshold), pre = x W_enc + b_enc."""
    pre = x.double() @ params["W_enc"].double() + params["b_enc"].double()
    return torch.relu(pre) * (pre > params["threshold"].double())


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over positions of |A & B| / |A | B| for the active sets of [pos, d_sae] activations."""
    a, b = a > 0, b > 0
    inter = (a & b).sum(-1).double()
    union = (a | b).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0).mean().item()  # both empty: they agree


# ----------------------------------------------------------------------------- one model


@dataclass
class State:
    """What the sections of one model hand on to each other (None until a section fills it in)."""

    shape: Shape
    device: str
    work: Path
    folder: Any = None  # the HF checkpoint (Path)
    logit_tokens: Any = None
    encode_tokens: Any = None
    ref_logits: Any = None  # fp32 transformers, on the CPU
    ref_resid: Any = None  # fp32 transformers residual at the SAE layer, encode text
    hf_logits: Any = None  # bf16 transformers, on the CPU
    hf: Any = None
    model: Any = None
    sae: Any = None
    params: Any = None  # the SAE's tensors, fp32, on the device
    hf_load_s: Any = None
    hf_peak: Any = None  # GiB

    def need(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise SectionSkippedError(f"needs {', '.join(missing)}, which an earlier section did not produce")

    @property
    def hook(self) -> str:
        return f"blocks.{self.shape.layer}.hook_resid_post"


def make_checkpoint(state: State, sec: Section) -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    shape, device = state.shape, state.device
    tokenizer = make_tokenizer()
    config = Gemma2Config(**{**GEMMA2_SHARED, **shape.config})
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):  # transformers' own init (std 0.02), on the device: seconds, not minutes
        model = Gemma2ForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    init_s = time.perf_counter() - started
    folder = state.work / shape.subject
    started = time.perf_counter()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_s = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())
    del model
    free()
    state.folder = folder
    gen = torch.Generator().manual_seed(1)
    rows, positions = shape.logit_batch
    ids = torch.randint(3, config.vocab_size, (rows, positions), generator=gen)
    ids[:, 0] = 2  # <bos>, as GEMMA2_SHARED says
    state.logit_tokens = ids
    sec.add("parameters", n_params, unit="count", note=f"init {init_s:.1f} s, save {save_s:.1f} s (bf16)")


def reference(state: State, sec: Section) -> None:
    """transformers in fp32: the reference logits and residual, then freed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    state.need("folder")
    hf = AutoModelForCausalLM.from_pretrained(state.folder, dtype=torch.float32, device_map=state.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(state.folder)
    state.encode_tokens = tokenizer(ENCODE_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        state.ref_logits = hf(state.logit_tokens.to(state.device)).logits.float().cpu()
        hidden = hf(state.encode_tokens.to(state.device), output_hidden_states=True).hidden_states
        state.ref_resid = hidden[state.shape.layer + 1][0].float().cpu()  # resid_post of the layer
    logits = state.ref_logits[:, 1:]
    top2 = logits.topk(2, dim=-1).values
    sec.add(
        "fp32 logits: std, median top-1 margin",
        logits.std().item(),
        (top2[..., 0] - top2[..., 1]).median().item(),
        note="random weights: small margins make top-1 agreement a harsh test",
    )
    del hf, hidden
    free()


def load_transformers(state: State, sec: Section) -> None:
    from transformers import AutoModelForCausalLM

    state.need("folder")
    with peak_memory(state.device) as peak:
        started = time.perf_counter()
        hf = AutoModelForCausalLM.from_pretrained(state.folder, dtype=torch.bfloat16, device_map=state.device)
        sync(state.device)
        state.hf_load_s = time.perf_counter() - started
    state.hf, state.hf_peak = hf.eval(), peak["gib"]
    with torch.no_grad():
        state.hf_logits = state.hf(state.logit_tokens.to(state.device)).logits.float().cpu()


def load_scope(state: State, sec: Section) -> None:
    state.need("folder")
    with peak_memory(state.device) as peak:
        started = time.perf_counter()
        # cuda: load_model's own default (bf16); elsewhere bf16 asked for, so the CPU run takes the same path
        dtype = None if state.device.startswith("cuda") else torch.bfloat16
        state.model = scope.load_model(state.shape.subject, weights=state.folder, device=state.device, dtype=dtype)
        sync(state.device)
        load_s = time.perf_counter() - started
    sec.add("load time", load_s, state.hf_load_s, "s", note="baseline: transformers from_pretrained, bf16")
    sec.add("peak device memory of the load", peak["gib"], state.hf_peak, "GiB")
    dtype = state.model.cfg.dtype
    if dtype != torch.bfloat16:
        sec.add("default dtype", str(dtype), "torch.bfloat16", status="error", note="load_model's default on cuda")
    with torch.no_grad():
        logits = state.model(state.logit_tokens.to(state.device)).float().cpu()
    n = logits[:, 1:, 0].numel()
    if state.hf_logits is not None:
        vs = compare_logits(logits, state.hf_logits)
        sec.add("logits vs transformers bf16: max abs diff", vs["max"], unit="logit", note=f"{n} positions")
        sec.add("logits vs transformers bf16: mean abs diff", vs["mean"], unit="logit")
        sec.add("logits vs transformers bf16: top-1 agreement", vs["top1"], unit="fraction")
    if state.ref_logits is not None:
        ours = compare_logits(logits, state.ref_logits)
        theirs = compare_logits(state.hf_logits, state.ref_logits) if state.hf_logits is not None else {}
        note = "baseline: transformers bf16 vs the same fp32 reference (what bf16 itself costs)"
        sec.add("logits bf16 vs fp32: max abs diff", ours["max"], theirs.get("max"), "logit", note=note)
        sec.add("logits bf16 vs fp32: mean abs diff", ours["mean"], theirs.get("mean"), "logit")
        sec.add("logits bf16 vs fp32: top-1 agreement", ours["top1"], theirs.get("top1"), "fraction")


def make_sae(state: State, sec: Section) -> None:
    """A Gemma Scope-shaped JumpReLU SAE in params.npz, scaled to this model's residual."""
    state.need("ref_resid", "model")
    d_in, d_sae = state.shape.config["hidden_size"], state.shape.d_sae
    gen = torch.Generator(device=state.device).manual_seed(2)
    x = state.ref_resid[1:]  # BOS is not what SAEs are fitted on
    rms = x.pow(2).mean().sqrt().item()

    def normal(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen, device=state.device)

    W_dec = normal(d_sae, d_in)
    params = {
        "W_enc": normal(d_in, d_sae) / (math.sqrt(d_in) * rms),  # pre-activations ~ N(0, 1)
        "W_dec": W_dec / W_dec.norm(dim=1, keepdim=True),  # unit rows, as Gemma Scope's
        "b_enc": 0.1 * normal(d_sae),
        "b_dec": 0.01 * rms * normal(d_in),
        "threshold": 2.0 + torch.rand(d_sae, generator=gen, device=state.device),  # ~0.5-2% fire
    }
    path = state.work / f"sae-{d_sae}" / "params.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    np.savez(path, **{k: v.float().cpu().numpy() for k, v in params.items()})
    save_s = time.perf_counter() - started
    started = time.perf_counter()
    state.sae = scope.load_sae(path, hook=state.hook, device=state.device)
    load_s = time.perf_counter() - started
    state.params = {k: v.float() for k, v in params.items()}
    sec.add("SAE width", d_sae, unit="features", note=f"npz save {save_s:.1f} s, scope.load_sae {load_s:.1f} s")
    sec.add("SAE dtype", str(state.sae.W_dec.dtype), "torch.float32", note="SAEs stay fp32 under a bf16 model")


def check_encode(state: State, sec: Section) -> None:
    from scope.hooks import run_to_hooks

    state.need("model", "sae", "ref_resid", "params")
    model, sae = state.model, state.sae
    tokens = scope.to_tokens(model, ENCODE_TEXT)
    if not torch.equal(tokens.cpu(), state.encode_tokens):
        raise RuntimeError("scope and transformers tokenized the encode text differently")
    acts = scope.encode(model, sae, ENCODE_TEXT).values[1:].double()
    ref = jumprelu64(state.ref_resid[1:].to(state.device), state.params)
    own = run_to_hooks(model, tokens, [state.hook])[state.hook][0, 1:]
    plumbing = jumprelu64(own.float(), state.params)
    l0 = (ref > 0).sum(-1).double().mean().item()
    sec.add("active-set Jaccard vs fp32 reference", jaccard(acts, ref), unit="fraction", note=f"reference L0 {l0:.0f}")
    sec.add("L0 (mean active features)", (acts > 0).sum(-1).double().mean().item(), l0, "features")
    sec.add("active-set Jaccard vs JumpReLU of its own bf16 residual", jaccard(acts, plumbing), unit="fraction")
    sec.add(
        "max abs diff vs JumpReLU of its own bf16 residual",
        (acts - plumbing).abs().max().item(),
        unit="activation",
        note="fp32 SAE on the bf16 residual: fp32 rounding only",
    )
    frame = scope.top_features(model, sae, ENCODE_TEXT, k=5)
    frame = frame[frame["activation"] > 0]
    top, index = ref.topk(5, dim=-1)
    overlaps = []
    for pos in range(1, tokens.shape[1]):  # sets of active top-5 features; both empty counts as agreement
        ours = set(frame.loc[frame["position"] == pos, "feature"].tolist())
        theirs = {int(f) for f, a in zip(index[pos - 1].tolist(), top[pos - 1].tolist()) if a > 0}
        overlaps.append(len(ours & theirs) / len(ours | theirs) if ours | theirs else 1.0)
    sec.add("top_features: active top-5 Jaccard vs fp32 reference", float(np.mean(overlaps)), unit="fraction")


def check_steer(state: State, sec: Section) -> None:
    state.need("model", "sae", "params")
    model, sae, params = state.model, state.sae, state.params
    tokens = scope.to_tokens(model, ENCODE_TEXT)
    clean = {}

    def capture(act, hook):
        clean["h"] = act.detach().clone()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[(state.hook, capture)])
    h = clean["h"]
    acts = jumprelu64(h.float(), params)[0]
    feature = int(acts[1:].max(0).values.argmax())  # the feature most active anywhere but BOS
    value = 10.0 * acts[1:, feature].max().item()

    def by_hand(act, hook):  # h + (v - a_f(h)) W_dec[f] at every position but BOS, in the activation's dtype
        a_f = sae.encode(act.float())[..., feature]
        delta = (value - a_f)[..., None] * params["W_dec"][feature]
        delta[:, 0] = 0.0
        return act + delta.to(act.dtype)

    seen = {}

    def capture_steered(act, hook):
        seen["h"] = act.detach().clone()

    # model(...) inside model.hooks(...), not run_with_hooks: transformer-lens' run_with_hooks calls
    # forward() directly, which skips the pre-hook through which scope.steer sees its input.
    with torch.no_grad():
        with model.hooks(fwd_hooks=[(state.hook, by_hand), (state.hook, capture_steered)]):
            expected = model(tokens)
        expected_h = seen["h"]
        with scope.steer(model, sae, scope.Clamp(feature, value)), model.hooks([(state.hook, capture_steered)]):
            steered = model(tokens)
    got_h = seen["h"]
    note = f"feature {feature} clamped to {value:.3g} (10x its largest activation) at every position but BOS"
    sec.add(
        "steered residual vs hand-computed: max abs diff",
        (got_h - expected_h).abs().max().item(),
        unit="value",
        note=note,
    )
    sec.add("steered logits vs hand-computed: max abs diff", (steered - expected).abs().max().item(), unit="logit")
    sec.add(
        "residual changed by steering: max abs",
        (got_h - h).abs().max().item(),
        unit="value",
        note="must be > 0: a steer that edits nothing would pass the two checks above",
    )
    sec.add("BOS residual unchanged", bool(torch.equal(got_h[:, 0], h[:, 0])), True)


# ----------------------------------------------------------------------------- throughput


def hf_generate(hf: Any, tokens: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        out = hf.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=0,
        )
    return out[:, tokens.shape[1] :]


def batched_generate_supported(model: Any) -> bool:
    """Whether ``scope.generate`` takes a list of texts (issue 11)."""
    try:
        out = scope.generate(model, [PROMPT, PROMPT], max_new_tokens=1, stop_at_eos=False)
    except (TypeError, ValueError):
        return False
    return isinstance(out, list) and len(out) == 2


def bench_generate(state: State, sec: Section) -> None:
    from scope.steering import steered

    state.need("model", "hf", "sae")
    model, hf, n, device = state.model, state.hf, state.shape.new_tokens, state.device
    tokens = scope.to_tokens(model, PROMPT)
    clamp = [scope.Clamp(7, 50.0)]

    def scope_run():
        return scope.generate_tokens(model, tokens, max_new_tokens=n, stop_at_eos=False)

    def steered_run():
        with steered(model, state.sae, clamp, "all", prompt_length=tokens.shape[1]):
            return scope.generate_tokens(model, tokens, max_new_tokens=n, stop_at_eos=False)

    ours, theirs, steered_tokens = scope_run().cpu(), hf_generate(hf, tokens, n)[0].cpu(), steered_run().cpu()
    same = int((ours == theirs).int().cumprod(0).sum())
    changed = not torch.equal(ours, steered_tokens)
    fns = {"hf": lambda: hf_generate(hf, tokens, n), "scope": scope_run, "steered": steered_run}
    t = repeat_timed(fns, device, sec, reps=state.shape.reps, warmup=state.shape.warmup)
    note = f"{n} new tokens; greedy tokens equal to transformers' for the first {same}/{n}"
    sec.add("greedy generation, batch 1", n / t["scope"], n / t["hf"], "tok/s", note=note)
    sec.add(
        "steered generation (Clamp, every position), batch 1",
        n / t["steered"],
        n / t["hf"],
        "tok/s",
        note=f"baseline: unsteered transformers generate; steering changed the tokens: {changed}",
    )


def bench_generate_batched(state: State, sec: Section) -> None:
    state.need("model", "hf")
    model, hf, n, device = state.model, state.hf, state.shape.new_tokens, state.device
    if not batched_generate_supported(model):
        raise SectionSkippedError("scope.generate does not take a list of texts yet (issue 11)")
    tokens = scope.to_tokens(model, PROMPT)
    takes_batch_size = "batch_size" in inspect.signature(scope.generate).parameters
    for batch in state.shape.batch_sizes:
        if sec.left() <= 0:
            sec.add(f"greedy generation, batch {batch}", None, status="skipped: budget")
            continue
        extra = {"batch_size": batch} if takes_batch_size else {}
        fns: dict[str, Callable[[], Any]] = {
            "hf": functools.partial(hf_generate, hf, tokens.repeat(batch, 1), n),
            "scope": functools.partial(
                scope.generate, model, [PROMPT] * batch, max_new_tokens=n, stop_at_eos=False, **extra
            ),
        }
        t = repeat_timed(fns, device, sec, reps=min(2, state.shape.reps), warmup=state.shape.warmup)
        sec.add(
            f"greedy generation, batch {batch}",
            batch * n / t["scope"],
            batch * n / t["hf"],
            "tok/s",
            note="the same prompt in every row (no padding on either side)",
        )


def bench_decode(state: State, sec: Section) -> None:
    """The fast decode step (scope.decode_step, the default) against transformer-lens' own forward
    (decode="plain", the path before it) and transformers, batch 1 and the largest batch size."""
    from scope.generation import generate_batch

    state.need("model", "hf")
    model, hf, n, device = state.model, state.hf, state.shape.new_tokens, state.device
    prompt = scope.to_tokens(model, PROMPT)[0]
    for batch in (1, max(state.shape.batch_sizes)):
        prompts = [prompt] * batch

        def ours(decode: str, prompts=prompts) -> list[list[int]]:
            return [
                c.tokens for c in generate_batch(model, prompts, max_new_tokens=n, stop_at_eos=False, decode=decode)
            ]

        fns: dict[str, Callable[[], Any]] = {
            "hf": functools.partial(hf_generate, hf, prompt[None].repeat(batch, 1).to(device), n),
            "fast": functools.partial(ours, "fast"),
            "plain": functools.partial(ours, "plain"),
        }
        same = ours("fast") == ours("plain") == hf_generate(hf, prompt[None].repeat(batch, 1).to(device), n).tolist()
        t = repeat_timed(fns, device, sec, reps=min(2, state.shape.reps), warmup=state.shape.warmup)
        note = f"greedy tokens equal (fast, plain, transformers): {same}"
        sec.add(f"fast decode step, batch {batch}", batch * n / t["fast"], batch * n / t["hf"], "tok/s", note=note)
        sec.add(
            f"fast vs plain decode (transformer-lens forward), batch {batch}",
            batch * n / t["fast"],
            batch * n / t["plain"],
            "tok/s",
        )


def bench_compiled_anchor(state: State, sec: Section) -> None:
    """transformers with a static KV cache (which it compiles with torch.compile on CUDA): the next anchor."""
    state.need("model", "hf")
    if not state.device.startswith("cuda"):
        raise SectionSkippedError("CUDA only (transformers compiles its static-cache decode step there)")
    model, hf, n, device = state.model, state.hf, state.shape.new_tokens, state.device
    tokens = scope.to_tokens(model, PROMPT).to(device)

    def static():
        with torch.no_grad():
            return hf.generate(
                tokens,
                attention_mask=torch.ones_like(tokens),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
                cache_implementation="static",
            )

    t = repeat_timed(
        {
            "static": static,
            "scope": lambda: scope.generate_tokens(model, tokens.cpu(), max_new_tokens=n, stop_at_eos=False),
        },
        device,
        sec,
        reps=state.shape.reps,
        warmup=True,  # the compile happens in the warm-up
    )
    sec.add("scope vs transformers static cache + compile, batch 1", n / t["scope"], n / t["static"], "tok/s")


def bench_assisted(state: State, sec: Section) -> None:
    """scope.generate with a draft model (assistant=): tokens/s against the target alone, the acceptance
    rate, and greedy equality. Random weights: the draft agrees with the target by chance only, so the
    acceptance rate (and the speed-up) here is a floor, not what real Gemma 2 2B drafting for 9B gives."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from scope.assisted import summary

    state.need("model")
    shape, device, model, n = state.shape, state.device, state.model, state.shape.new_tokens
    config = Gemma2Config(**{**GEMMA2_SHARED, **shape.config, **shape.draft})
    torch.manual_seed(1)
    with torch.device(device):
        draft_hf = Gemma2ForCausalLM._from_config(config, dtype=torch.bfloat16).eval()
    folder = state.work / f"{shape.subject}-draft"
    draft_hf.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    del draft_hf
    free()
    draft = scope.load_model(shape.subject, weights=folder, device=device, dtype=torch.bfloat16)
    try:

        def run(**kwargs: Any) -> list:
            return scope.generate_completions(model, [PROMPT], max_new_tokens=n, stop_at_eos=False, **kwargs)

        assisted = functools.partial(run, assistant=draft)
        alone, helped = run(), assisted()
        stats = summary(helped)
        t = repeat_timed({"alone": run, "assisted": assisted}, device, sec, reps=state.shape.reps, warmup=False)
        sec.add(
            "assisted greedy generation, batch 1",
            n / t["assisted"],
            n / t["alone"],
            "tok/s",
            note=f"draft: {shape.draft_label}, random weights; greedy tokens equal to the target alone: "
            f"{alone[0].tokens == helped[0].tokens}",
        )
        sec.add("assisted: draft tokens accepted", stats["acceptance_rate"], unit="fraction", note="chance level")
        sec.add("assisted: tokens per target pass", stats["tokens_per_target_pass"], unit="tokens")
    finally:
        del draft
        free()
        shutil.rmtree(folder, ignore_errors=True)


def bench_encode(state: State, sec: Section) -> None:
    state.need("model", "sae")
    model, sae, device = state.model, state.sae, state.device
    tokens = scope.to_tokens(model, ENCODE_TEXT)
    stop = state.shape.layer + 1

    def bare():
        with torch.no_grad():
            model(tokens, stop_at_layer=stop)

    t = repeat_timed(
        {"bare": bare, "encode": lambda: scope.encode(model, sae, ENCODE_TEXT)},
        device,
        sec,
        reps=state.shape.reps + 2,
        warmup=state.shape.warmup,
    )
    n = tokens.shape[1]
    sec.add(
        f"encode, 1 text of {n} tokens",
        n / t["encode"],
        n / t["bare"],
        "tok/s",
        note=f"baseline: bare forward to layer {state.shape.layer}",
    )


def bench_mine(state: State, sec: Section) -> None:
    state.need("model", "sae")
    model, sae, device = state.model, state.sae, state.device
    window, batch = 128, 16
    per_text = window * 2
    gen = torch.Generator().manual_seed(3)
    vocab = len(model.tokenizer)
    # texts of ~2 windows each from random ids of the stand-in tokenizer
    texts = [
        model.tokenizer.decode(torch.randint(3, vocab, (per_text,), generator=gen).tolist())
        for _ in range(state.shape.mine_texts)
    ]
    stop = state.shape.layer + 1
    tokens = torch.randint(3, vocab, (batch, window), generator=gen).to(device)
    tokens[:, 0] = 2
    mined: dict[str, Any] = {}

    def run_mine():
        mined["m"] = scope.mine(model, sae, texts, window=window, batch_size=batch, progress=False)

    seconds = timed(run_mine, device)  # one pass: mining is long enough to time once
    n_tokens = mined["m"].n_tokens
    n_batches = math.ceil(n_tokens / (batch * window))

    def bare():
        with torch.no_grad():
            for _ in range(n_batches):
                model(tokens, stop_at_layer=stop)

    bare_s = repeat_timed({"bare": bare}, device, sec, reps=min(2, state.shape.reps), warmup=state.shape.warmup)["bare"]
    sec.add(
        f"mine, {n_tokens} tokens",
        n_tokens / seconds,
        n_batches * batch * window / bare_s,
        "tok/s",
        note=f"baseline: bare forwards of [{batch}, {window}] to layer {state.shape.layer}; mine includes "
        "tokenizing and its first-call warm-up",
    )


def model_card_scores(hf: Any, tokenizer: Any, prompts: list[str], yes: int, no: int, device: str) -> np.ndarray:
    """The ShieldGemma model card's loop: one prompt at a time, softmax over Yes/No at the last position."""
    scores = []
    with torch.no_grad():
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt").to(device)
            logits = hf(**inputs).logits
            selected = logits[0, -1, [yes, no]].float()
            scores.append(torch.softmax(selected, dim=0)[0].item())
    return np.array(scores)


def bench_shield(state: State, sec: Section) -> None:
    from scope.shield.scoring import yes_no_ids

    state.need("model", "hf")
    model, hf, device = state.model, state.hf, state.device
    prompts = (USER_PROMPTS * math.ceil(state.shape.shield_prompts / len(USER_PROMPTS)))[: state.shape.shield_prompts]
    prompts = [f"{p} ({i})" for i, p in enumerate(prompts)]
    policy = "dangerous_content"
    full = [scope.shield.build_prompt(p, [policy]) for p in prompts]
    yes, no = yes_no_ids(model)
    result: dict[str, np.ndarray] = {}

    def ours():
        result["scope"] = scope.shield.score(model, prompts, policy, batch_size=8, progress=False)

    def card():
        result["card"] = model_card_scores(hf, model.tokenizer, full, yes, no, device)

    t = repeat_timed(
        {"card": card, "scope": ours}, device, sec, reps=min(2, state.shape.reps), warmup=state.shape.warmup
    )
    n = len(prompts)
    diff = float(np.abs(result["scope"] - result["card"]).max())
    sec.add(
        "shield.score",
        n / t["scope"],
        n / t["card"],
        "prompts/s",
        note=f"baseline: the model card's loop on transformers bf16; max |P(Yes) diff| {diff:.3g}",
    )


def bench_server(state: State, sec: Section) -> None:
    import importlib.util

    if importlib.util.find_spec("scope.serve") is None:
        raise SectionSkippedError("scope.serve is not in this checkout (issue 10)")
    for dep in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(dep) is None:
            raise SectionSkippedError(f"scope.serve needs {dep}, not installed on this machine")
    raise SectionSkippedError("server requests/s is not measured by this script yet")


# ----------------------------------------------------------------------------- the run

# (section, budget in seconds on the full-size run, function); the tiny run scales budgets down.
SECTIONS: list[tuple[str, float, Callable[[State, Section], None]]] = [
    ("checkpoint", 60, make_checkpoint),
    ("reference fp32", 45, reference),
    ("load transformers", 30, load_transformers),
    ("load scope", 90, load_scope),
    ("sae", 30, make_sae),
    ("encode", 15, check_encode),
    ("steer", 15, check_steer),
    ("generate", 30, bench_generate),
    ("generate batched", 30, bench_generate_batched),
    ("decode step", 40, bench_decode),
    ("compiled anchor", 60, bench_compiled_anchor),
    ("assisted", 60, bench_assisted),
    ("encode speed", 10, bench_encode),
    ("mine speed", 20, bench_mine),
    ("shield speed", 20, bench_shield),
    ("server", 1, bench_server),
]


def run_model(report: Report, shape: Shape, device: str, work: Path, scale: float) -> None:
    state = State(shape, device, work)
    try:
        for name, budget, fn in SECTIONS:
            run_section(report, shape.label, name, budget * scale, functools.partial(fn, state))
    finally:
        state.model = state.hf = state.sae = state.params = None
        free()
        if state.folder is not None:
            shutil.rmtree(state.folder, ignore_errors=True)


def environment(device: str) -> dict:
    """Versions of what the run uses; importing sae-lens and transformer-lens here first makes a machine
    that lacks one of their dependencies fail in seconds, not after a checkpoint was written."""
    from importlib.metadata import version

    import sae_lens  # noqa: F401
    import transformer_lens  # noqa: F401

    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else device,
        **{name: version(name) for name in ("torch", "transformers", "transformer-lens", "sae-lens")},
        "weights": "random (transformers' init, std 0.02), bf16",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny configs of the same shapes: seconds on a CPU")
    parser.add_argument("--models", default="2b,9b", help="comma-separated: 2b, 9b (default both)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default 360; tiny 600)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for gpu_check.json and .md")
    parser.add_argument("--work", type=Path, default=None, help="folder for checkpoints (default: a temp dir)")
    args = parser.parse_args(argv)
    wanted = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    bad = [m for m in wanted if m not in {"2b", "9b"}]
    if bad or not wanted:
        parser.error(f"--models takes 2b and/or 9b, got {args.models!r}")
    shapes = [s for s, key in zip(TINY if args.tiny else FULL, ("2b", "9b")) if key in wanted]
    budget = args.budget if args.budget is not None else (600.0 if args.tiny else 360.0)
    started = time.monotonic()
    report = Report(args.out, args.device, started + budget)
    report.meta.update(environment(args.device))
    report.meta.update(mode="tiny" if args.tiny else "full size", budget_s=budget)
    print(json.dumps(report.meta), flush=True)
    print(report.markdown().split("\n\n", 1)[1], end="", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    scale = 0.5 if args.tiny else 1.0
    try:
        for shape in shapes:
            run_model(report, shape, args.device, work, scale)
    finally:
        report.meta["total_s"] = round(time.monotonic() - started, 1)
        report.save()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    errors = [r for r in report.rows if r["status"] == "error"]
    print(f"done in {report.meta['total_s']} s: {len(report.rows)} rows, {len(errors)} errors", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
