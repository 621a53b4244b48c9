"""scripts/gpu_check.py in its --tiny CPU mode: every section runs (bf16 on the CPU) and its figures hold.

The script compares scope against independent computations (transformers' own model in bf16 and
fp32, a float64 JumpReLU written out, a steering edit computed by hand in a plain hook); this test
bounds what those comparisons must show, so that the GPU run's code never rots.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> dict[tuple[str, str], dict]:
    out = tmp_path_factory.mktemp("gpu-check")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--models", "2b", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.md").read_text().count("| tiny 2B-like |") == len(payload["rows"])
    return {(r["section"], r["check"]): r for r in payload["rows"]}


def value(rows, section: str, check: str):
    return rows[(section, check)]["value"]


def test_every_section_ran(rows):
    sections = {section for section, _ in rows}
    assert {"checkpoint", "reference fp32", "load scope", "sae", "encode", "steer", "generate"} <= sections
    assert {"encode speed", "mine speed", "shield speed"} <= sections
    statuses = {(s, c): r["status"] for (s, c), r in rows.items()}
    # server: not measured yet; batched: until issue 11 lands; the compiled anchor: CUDA only
    allowed_skips = {"server", "generate batched", "compiled anchor"}
    bad = {k: v for k, v in statuses.items() if v != "ok" and not (k[0] in allowed_skips and v.startswith("skipped"))}
    assert not bad


def test_bf16_logits_match_transformers_bf16_and_are_bounded_by_its_fp32_error(rows):
    # scope's bf16 forward is transformers' bf16 forward, to bf16 rounding
    assert value(rows, "load scope", "logits vs transformers bf16: max abs diff") < 0.05
    assert value(rows, "load scope", "logits vs transformers bf16: top-1 agreement") >= 0.95
    # and its distance to fp32 is what bf16 itself costs transformers (within 2x)
    for check in ("max abs diff", "mean abs diff"):
        row = rows[("load scope", f"logits bf16 vs fp32: {check}")]
        assert 0 < row["value"] <= 2 * row["baseline"] + 1e-6, row
    assert value(rows, "load scope", "logits bf16 vs fp32: top-1 agreement") >= 0.85


def test_fp32_sae_on_bf16_model_encodes_like_the_fp64_reference(rows):
    # the plumbing: scope's fp32 SAE on its own bf16 residual is the JumpReLU written out
    assert value(rows, "encode", "max abs diff vs JumpReLU of its own bf16 residual") < 1e-4
    assert value(rows, "encode", "active-set Jaccard vs JumpReLU of its own bf16 residual") > 0.99
    # bf16 residual vs the fp32 reference: near-threshold features may flip, few do
    assert value(rows, "encode", "active-set Jaccard vs fp32 reference") > 0.9
    assert value(rows, "encode", "top_features: active top-5 Jaccard vs fp32 reference") > 0.8
    l0 = rows[("encode", "L0 (mean active features)")]
    assert l0["baseline"] > 0 and abs(l0["ratio"] - 1) < 0.1
    assert value(rows, "sae", "SAE dtype") == "torch.float32"


def test_steered_forward_is_the_hand_computed_edit(rows):
    assert value(rows, "steer", "steered residual vs hand-computed: max abs diff") == 0
    assert value(rows, "steer", "steered logits vs hand-computed: max abs diff") == 0
    assert value(rows, "steer", "residual changed by steering: max abs") > 1.0
    assert value(rows, "steer", "BOS residual unchanged") is True


def test_throughput_rows_carry_a_baseline_from_the_same_run(rows):
    timed = [r for r in rows.values() if r["unit"] in {"tok/s", "prompts/s", "s"} and r["status"] == "ok"]
    assert len(timed) >= 6
    for row in timed:
        assert (
            row["value"] > 0 and row["baseline"] > 0 and row["ratio"] == pytest.approx(row["value"] / row["baseline"])
        )
    assert (
        "steering changed the tokens: True"
        in rows[("generate", "steered generation (Clamp, every position), batch 1")]["note"]
    )


def test_fast_decode_and_assisted_generation_make_the_plain_greedy_tokens(rows):
    for batch in (1, 4):
        note = rows[("decode step", f"fast decode step, batch {batch}")]["note"]
        assert "equal (fast, plain, transformers): True" in note
    assert "equal to the target alone: True" in rows[("assisted", "assisted greedy generation, batch 1")]["note"]
    assert 0 <= value(rows, "assisted", "assisted: draft tokens accepted") <= 1
    assert value(rows, "assisted", "assisted: tokens per target pass") >= 1
