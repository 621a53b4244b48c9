"""scope's attribution graphs against circuit-tracer's, on one tiny random Gemma 2 (a script, not CI).

circuit-tracer 0.5 pins transformers <= 4.57.3 and huggingface-hub < 1.0, transformer-lens 3.9 (scope)
needs transformers >= 5.9: they cannot share an environment. So this script makes (once) a virtualenv
of its own, ``~/.cache/scope/circuit-tracer-venv`` (``--venv``), with circuit-tracer from PyPI and
scope's torch version, and runs circuit-tracer there on files written here:

- a tiny Gemma 2 checkpoint in Hugging Face's format (random weights, every Gemma 2 feature on:
  sliding window, soft-caps, pre- and post-norms; ``tests/tiny.py``);
- random JumpReLU transcoders, one per layer, reading ``ln2.hook_normalized`` and writing
  ``hook_mlp_out``, in circuit-tracer's own safetensors format (``SingleLayerTranscoder.to_safetensors``:
  ``W_enc [d_sae, d_model]``, ``W_dec``, ``b_enc``, ``b_dec``, ``activation_function.threshold``,
  ``W_skip`` with ``--skip``), read by its ``load_transcoder_set``; scope gets the same tensors as
  sae-lens ``JumpReLUTranscoder`` / ``JumpReLUSkipTranscoder`` objects.

The child loads the checkpoint as circuit-tracer's ``TransformerLensReplacementModel`` (transformer-lens'
official ``google/gemma-2-2b`` config with the checkpoint's sizes, weights converted by
transformer-lens, then ``_configure_replacement_model``: what ``from_pretrained_and_transcoders``
does, minus the hub), takes scope's rotary tables (the two transformer-lens versions compute the
rotary angles differently, ~1e-7 apart even in float64: without this the forward passes, not the
attributions, set the difference), checks its logits against the HF model, and runs
``circuit_tracer.attribute`` with the same token ids and logit targets as scope. Both sides run in
float64 (circuit-tracer's edge matrix takes the default dtype, set to float64 there).

Nodes are matched by identity (features by layer, position, feature; errors by layer, position;
embeddings by position; logits by token), then the adjacencies are compared entry by entry. The
documented differences are accounted for, not hidden:

- BOS: circuit-tracer drops the BOS position's features and zeroes its error vectors; scope does
  the same with ``zero_bos=True`` (compared whole). With ``zero_bos=False`` scope keeps them: on
  the shared nodes every edge must still agree (an edge is a direct effect, whatever other nodes
  exist), and scope's BOS error columns are left out of that comparison.
- b_dec: circuit-tracer's error node is ``mlp_out - reconstruction`` with ``b_dec`` in the
  reconstruction, so ``b_dec``'s effect is in no node; scope's error node carries it. circuit-tracer
  is run twice: on transcoders whose ``b_dec`` is zeroed (whose error nodes equal scope's: compared
  whole) and on the real ones (feature, embedding and logit columns compared; the error columns'
  gap, the ``b_dec`` share, is printed).

    PYTHONPATH=$PWD python scripts/crosscheck_circuit_tracer.py            # first run installs (~3 min)
    PYTHONPATH=$PWD python scripts/crosscheck_circuit_tracer.py --skip     # skip-transcoders

Prints the largest absolute difference per comparison (relative to the largest edge) and exits
non-zero when one exceeds ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import scope
from tests.tiny import save_tiny_gemma2

VENV = Path("~/.cache/scope/circuit-tracer-venv").expanduser()
CIRCUIT_TRACER = "circuit-tracer==0.5.0"
PROMPT = "Paris is the capital of France, and Rome"

# Run by the child venv's python: argv = checkpoint folder, transcoder folder, request JSON, output .pt
CHILD = r"""
import importlib.metadata, json, math, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
import transformer_lens.loading_from_pretrained as tl_loading
from transformer_lens import HookedTransformerConfig
from circuit_tracer import attribute
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

folder, transcoder_dir, request_path, rotary_path, out = sys.argv[1:6]
request = json.load(open(request_path))
dtype = torch.float64
torch.set_default_dtype(dtype)  # circuit-tracer allocates its edge matrix in the default dtype
# eager: transformers 4.57's default (sdpa) leaves out Gemma 2's attention soft-cap
hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
c = hf.config
cfg = tl_loading.get_pretrained_model_config("google/gemma-2-2b", dtype=dtype, device="cpu", fold_ln=False)
sizes = dict(
    d_model=c.hidden_size, d_head=c.head_dim, n_heads=c.num_attention_heads,
    n_key_value_heads=c.num_key_value_heads, d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers,
    d_vocab=c.vocab_size, d_vocab_out=c.vocab_size, window_size=c.sliding_window, rotary_dim=c.head_dim,
    eps=c.rms_norm_eps, attn_scores_soft_cap=float(c.attn_logit_softcapping),
    output_logits_soft_cap=float(c.final_logit_softcapping), n_ctx=c.max_position_embeddings,
    attn_scale=math.sqrt(c.query_pre_attn_scalar),
    # which layers slide: HF's layer_types (transformer-lens' Gemma 2 default is the other way round)
    attn_types=["local" if t == "sliding_attention" else "global" for t in c.layer_types],
)
fields = {k: v for k, v in cfg.to_dict().items() if k != "n_params"}
cfg = HookedTransformerConfig.from_dict({**fields, **sizes})
model = TransformerLensReplacementModel(cfg, tokenizer)
model.load_and_process_state_dict(
    tl_loading.get_pretrained_state_dict("google/gemma-2-2b", cfg, hf, dtype=dtype),
    fold_ln=False, center_writing_weights=False, center_unembed=False,
    fold_value_biases=False, refactor_factored_attn_matrices=False,
)
transcoders = load_transcoder_set(
    {layer: f"{transcoder_dir}/layer_{layer}.safetensors" for layer in range(cfg.n_layers)},
    scan="crosscheck", feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out",
    device=torch.device("cpu"), dtype=dtype, lazy_encoder=False, lazy_decoder=False,
)
# the rotary tables scope's transformer-lens computed: this one's differ by ~1e-7 (float32 angles)
for block, (sin, cos) in zip(model.blocks, torch.load(rotary_path)):
    block.attn.rotary_sin.copy_(sin)
    block.attn.rotary_cos.copy_(cos)
model._configure_replacement_model(transcoders)
tokens = torch.tensor(request["tokens"])
with torch.no_grad():
    hf_logits = hf(tokens[None]).logits[0]
    tl_logits = model(tokens[None])[0]
graph = attribute(
    tokens, model, attribution_targets=torch.tensor(request["targets"]), batch_size=request["batch_size"]
)
torch.save(
    {
        "adjacency": graph.adjacency_matrix,
        "active_features": graph.active_features,
        "activation_values": graph.activation_values,
        "selected_features": graph.selected_features,
        "logit_targets": [int(t.vocab_idx) for t in graph.logit_targets],
        "logit_probabilities": graph.logit_probabilities,
        "input_tokens": graph.input_tokens,
        "model_vs_hf": float((tl_logits - hf_logits).abs().max()),
        "versions": {name: importlib.metadata.version(name)
                     for name in ("torch", "transformers", "transformer-lens", "circuit-tracer")},
    },
    out,
)
os._exit(0)  # circuit-tracer's __del__ fails at interpreter shutdown (a noisy, harmless traceback)
"""


def ensure_venv(path: Path) -> Path:
    """The child venv's python, installing circuit-tracer (niced) the first time."""
    python = path / "bin" / "python"
    done = path / "scope-installed.json"
    wanted = [CIRCUIT_TRACER, f"torch=={torch.__version__.split('+')[0]}"]
    if done.is_file() and json.loads(done.read_text()) == wanted:
        return python
    print(f"installing {' '.join(wanted)} into {path} (once; a few minutes)", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    subprocess.run(["nice", "-n", "10", str(python), "-m", "pip", "install", "--quiet", *wanted], check=True)
    done.write_text(json.dumps(wanted))
    return python


def random_transcoder_tensors(model, d_sae: int, skip: bool, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Per layer, circuit-tracer's tensors (float64): thresholds inside the pre-activations' range."""
    g = torch.Generator().manual_seed(seed)
    d, layers = model.cfg.d_model, []
    for _ in range(model.cfg.n_layers):
        tensors = {
            "W_enc": torch.randn(d_sae, d, generator=g, dtype=torch.float64) * 2 / d**0.5,
            "W_dec": torch.randn(d_sae, d, generator=g, dtype=torch.float64) * 0.3,
            "b_enc": torch.randn(d_sae, generator=g, dtype=torch.float64) * 0.1,
            "b_dec": torch.randn(d, generator=g, dtype=torch.float64) * 0.1,
            "activation_function.threshold": torch.rand(d_sae, generator=g, dtype=torch.float64),
        }
        if skip:
            tensors["W_skip"] = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.05
        layers.append(tensors)
    return layers


def write_circuit_tracer_files(folder: Path, layers: list[dict[str, torch.Tensor]], zero_b_dec: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for layer, tensors in enumerate(layers):
        tensors = dict(tensors, b_dec=torch.zeros_like(tensors["b_dec"])) if zero_b_dec else tensors
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"layer_{layer}.safetensors"))
    return folder


def scope_transcoders(folder: Path, n_layers: int) -> dict:
    """The files circuit-tracer reads, as sae-lens transcoders (scope's kind)."""
    from sae_lens import JumpReLUSkipTranscoder, JumpReLUTranscoder

    out = {}
    for layer in range(n_layers):
        tensors = load_file(str(folder / f"layer_{layer}.safetensors"))
        skip = "W_skip" in tensors
        d_sae, d = tensors["W_enc"].shape
        transcoder = (JumpReLUSkipTranscoder if skip else JumpReLUTranscoder).from_dict(
            {
                "d_in": d,
                "d_sae": d_sae,
                "d_out": d,
                "dtype": "float64",
                "device": "cpu",
                "apply_b_dec_to_input": False,
                "metadata": {
                    "hook_name": f"blocks.{layer}.ln2.hook_normalized",
                    "hook_name_out": f"blocks.{layer}.hook_mlp_out",
                },
            }
        )
        with torch.no_grad():
            transcoder.W_enc.copy_(tensors["W_enc"].T)
            transcoder.W_dec.copy_(tensors["W_dec"])
            transcoder.b_enc.copy_(tensors["b_enc"])
            transcoder.b_dec.copy_(tensors["b_dec"])
            transcoder.threshold.copy_(tensors["activation_function.threshold"])
            if skip:
                transcoder.W_skip.copy_(tensors["W_skip"])
        out[layer] = transcoder
    return out


def for_old_transformers(checkpoint: Path, folder: Path) -> Path:
    """A copy of ``checkpoint`` that transformers 4.57 reads: transformers 5 names its tokenizer class
    ``TokenizersBackend``, which 4.57 lacks, and lists ``extra_special_tokens`` where 4.57 wants a
    mapping: the same tokenizer.json as a ``PreTrainedTokenizerFast`` in 4.57's terms."""
    shutil.copytree(checkpoint, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["additional_special_tokens"] = config.pop("extra_special_tokens", [])  # 4.57's name for them
    config.pop("backend", None)
    config_path.write_text(json.dumps(config))
    return folder


def run_circuit_tracer(model, python: Path, checkpoint: Path, transcoders: Path, request: dict, work: Path) -> dict:
    child, request_path, out = work / "child.py", work / "request.json", work / f"{transcoders.name}.pt"
    rotary = work / "rotary.pt"
    child.write_text(CHILD)
    request_path.write_text(json.dumps(request))
    torch.save([(block.attn.rotary_sin, block.attn.rotary_cos) for block in model.blocks], rotary)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = ["nice", "-n", "10", str(python), str(child), str(checkpoint), str(transcoders), str(request_path)]
    command.append(str(rotary))
    subprocess.run([*command, str(out)], check=True, env=env, cwd=work)
    return torch.load(out, weights_only=False)


def circuit_tracer_index(found: dict, n_layers: int, n_pos: int) -> list[tuple]:
    """circuit-tracer's node order as keys: features (selected), errors, embeddings, logits."""
    active = found["active_features"][found["selected_features"]].tolist()
    keys: list[tuple] = [("feature", layer, pos, feature) for layer, pos, feature in active]
    keys += [("error", layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
    keys += [("embedding", pos) for pos in range(n_pos)]
    keys += [("logit", token) for token in found["logit_targets"]]
    return keys


def scope_index(graph) -> dict[tuple, int]:
    keys = {}
    for i, node in enumerate(graph.nodes.itertuples()):
        if node.kind == "feature":
            keys[("feature", node.layer, node.position, node.feature)] = i
        elif node.kind == "error":
            keys[("error", node.layer, node.position)] = i
        elif node.kind == "embedding":
            keys[("embedding", node.position)] = i
        else:
            keys[("logit", node.feature)] = i
    return keys


def compare(graph, found: dict, n_layers: int, n_pos: int, columns: str) -> tuple[float, float, int]:
    """Max |scope - circuit-tracer| over circuit-tracer's nodes, the largest edge, the entries compared.
    ``columns``: "all"; "no-bos-error" (scope kept BOS); "no-error" (b_dec differs)."""
    keys = circuit_tracer_index(found, n_layers, n_pos)
    index = scope_index(graph)
    missing = [key for key in keys if key not in index]
    if missing:
        raise AssertionError(f"circuit-tracer nodes scope lacks: {missing[:5]} ({len(missing)})")
    if columns == "all" and len(keys) != len(index):
        raise AssertionError(f"scope has {len(index)} nodes, circuit-tracer {len(keys)}")
    mapped = torch.tensor([index[key] for key in keys])
    ours = graph.adjacency.double()[mapped][:, mapped]
    theirs = found["adjacency"].double()
    keep = torch.ones(len(keys), dtype=torch.bool)
    for j, key in enumerate(keys):
        if key[0] == "error" and (columns == "no-error" or (columns == "no-bos-error" and key[2] == 0)):
            keep[j] = False
    gap = (ours - theirs)[:, keep].abs()
    return float(gap.max()), float(theirs.abs().max()), int(gap.numel())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, default=VENV)
    parser.add_argument("--skip", action="store_true", help="skip-transcoders (an affine W_skip path)")
    parser.add_argument("--d-sae", type=int, default=24)
    parser.add_argument("--work", type=Path, default=None, help="keep the files here (default: a temporary folder)")
    parser.add_argument("--tolerance", type=float, default=1e-9, help="max difference relative to the largest edge")
    args = parser.parse_args()
    python = ensure_venv(args.venv.expanduser())
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) if args.work is None else args.work
        if args.work is not None:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
        checkpoint = save_tiny_gemma2(work / "tiny-gemma2")
        model = scope.load_model("shieldgemma-2b", weights=checkpoint, device="cpu", dtype=torch.float64)
        tensors = random_transcoder_tensors(model, args.d_sae, args.skip)
        real = write_circuit_tracer_files(work / "transcoders", tensors, zero_b_dec=False)
        no_b_dec = write_circuit_tracer_files(work / "transcoders_no_b_dec", tensors, zero_b_dec=True)
        transcoders = scope_transcoders(real, model.cfg.n_layers)
        tokens = model.to_tokens(PROMPT)[0]
        n_layers, n_pos = model.cfg.n_layers, len(tokens)
        kept_bos = scope.attribution_graph(model, transcoders, PROMPT, progress=False)
        targets = kept_bos.nodes.loc[kept_bos.nodes["kind"] == "logit", "feature"].tolist()
        request = {"tokens": tokens.tolist(), "targets": targets, "batch_size": 16}
        old = for_old_transformers(checkpoint, work / "tiny-gemma2-for-4.57")
        theirs = run_circuit_tracer(model, python, old, no_b_dec, request, work)
        theirs_b_dec = run_circuit_tracer(model, python, old, real, request, work)
        print(f"versions in the child: {theirs['versions']}")
        print(
            f"circuit-tracer's model vs the HF model: max logit difference {theirs['model_vs_hf']:.1e} "
            "(HF's RMSNorm runs in float32)"
        )
        print(
            f"prompt {PROMPT!r}: {n_pos} tokens, {n_layers} layers, {len(targets)} logit targets, "
            f"{len(theirs['selected_features'])} active features (circuit-tracer, BOS dropped), "
            f"skip-transcoders: {args.skip}"
        )
        zero_bos = scope.attribution_graph(model, transcoders, PROMPT, progress=False, zero_bos=True)
        rows = [
            ("scope zero_bos=True vs circuit-tracer (b_dec zeroed), every entry", zero_bos, theirs, "all"),
            ("scope zero_bos=False vs circuit-tracer (b_dec zeroed), shared nodes", kept_bos, theirs, "no-bos-error"),
            ("scope vs circuit-tracer (real b_dec), all but error columns", kept_bos, theirs_b_dec, "no-error"),
        ]
        worst = 0.0
        for label, graph, found, columns in rows:
            gap, scale, count = compare(graph, found, n_layers, n_pos, columns)
            worst = max(worst, gap / scale)
            print(f"{label}: max |difference| {gap:.2e} (largest edge {scale:.2e}; {count} entries)")
        b_dec_gap, _, _ = compare(kept_bos, theirs_b_dec, n_layers, n_pos, "no-bos-error")
        print(f"b_dec's share (scope's error nodes carry it, circuit-tracer's do not): up to {b_dec_gap:.2e} per edge")
        index = scope_index(kept_bos)
        active = [index[("feature", *key)] for key in theirs["active_features"].tolist()]
        ours = kept_bos.nodes["activation"].to_numpy()[active]
        print(f"activations: max |difference| {np.abs(ours - theirs['activation_values'].numpy()).max():.2e}")
        print(f"largest relative difference {worst:.2e} (tolerance {args.tolerance:.0e})")
        return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
