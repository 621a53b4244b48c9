"""Train the demo JumpReLU SAE for the bundled Gemma 3 270M with sae-lens' own training runner.

Offline and on CPU: the model comes from ``scope.load_model("gemma-3-270m")`` (passed to the
runner as ``override_model``), the text from the train split that ``scripts/build_corpus.py``
writes (passed as ``override_dataset``), so sae-lens never downloads anything. sae-lens runs the
model with ``stop_at_layer`` = hooked layer + 1 (``ActivationsStore.get_activations``), so only
blocks 0..6 are computed. BOS positions (context starts and document separators) are dropped from
the training activations with ``exclude_special_tokens=[bos_id]``: Gemma's BOS residual is huge
and carries no text.

The result goes to ``data/demo_sae/`` in sae-lens' folder format (cfg.json +
sae_weights.safetensors, weights stored in fp16 to stay near 10 MB), with the full runner config
in ``training_config.json`` beside it.

Measured on 2 CPU cores (torch 2.13): about 1,035 training tokens/s end to end (model forward to
layer 6 plus the SAE step), so the shipped 1.4M-token run took 23 minutes.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 WANDB_MODE=disabled PYTHONPATH=. python scripts/train_demo_sae.py \
        --tokens 1400000 --lr 8e-4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = Path(os.environ.get("SCOPE_CACHE", Path.home() / ".cache" / "scope")) / "corpus"
HOOK = "blocks.6.hook_resid_post"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=1_400_000, help="training tokens (activations)")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--hook", default=HOOK)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=2048, help="SAE training batch, in tokens")
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--target-l0", type=float, default=50.0)
    p.add_argument("--init-threshold", type=float, default=0.1)
    p.add_argument("--l0-coeff", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS / "train.jsonl")
    p.add_argument("--out", type=Path, default=ROOT / "data" / "demo_sae")
    return p.parse_args()


def load_texts(path: Path, seed: int) -> list[str]:
    """Train documents, shuffled by seed so every source shows up early (the file is by source)."""
    if not path.is_file():
        sys.exit(f"{path} is missing: build the corpus first with scripts/build_corpus.py")
    with path.open() as f:
        texts = [json.loads(line)["text"] for line in f]
    random.Random(seed).shuffle(texts)
    return texts


def runner_config(args: argparse.Namespace, bos_id: int, out_dir: str):
    """The sae-lens runner config: JumpReLU like Gemma Scope, with Gemma Scope 2's quadratic L0
    penalty around a target L0 (it lands in the wanted L0 range in a short CPU run)."""
    from sae_lens import JumpReLUTrainingSAEConfig, LanguageModelSAERunnerConfig, LoggingConfig

    total_steps = args.tokens // args.batch
    sae_cfg = JumpReLUTrainingSAEConfig(
        d_in=640,
        d_sae=args.width,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="expected_average_only_in",  # folded into the weights at the end
        jumprelu_init_threshold=args.init_threshold,
        jumprelu_bandwidth=0.05,
        jumprelu_sparsity_loss_mode="quadratic",
        target_l0=args.target_l0,
        l0_coefficient=args.l0_coeff,
        l0_warm_up_steps=max(1, total_steps // 10),
        # Anthropic's variant: the L0 gradient also reaches the encoder, not only the
        # thresholds; with ~700 CPU steps the thresholds alone (moving ~lr per Adam step) left
        # L0 in the thousands in a 100-step trial.
        jumprelu_ste_to_input=True,
        decoder_init_norm=0.1,
    )
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name="gemma-3-270m",  # informational: the model is passed in as override_model
        model_class_name="HookedSAETransformer",
        hook_name=args.hook,
        dataset_path="scope-corpus/train.jsonl",  # informational: passed in as override_dataset
        is_dataset_tokenized=False,
        streaming=False,
        context_size=args.context,
        prepend_bos=True,
        exclude_special_tokens=[bos_id],
        training_tokens=args.tokens,
        train_batch_size_tokens=args.batch,
        store_batch_size_prompts=16,
        n_batches_in_buffer=16,
        activations_mixing_fraction=0.5,
        n_batches_for_norm_estimate=20,
        lr=args.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=max(1, total_steps // 20),
        lr_decay_steps=max(1, total_steps // 5),
        device="cpu",
        seed=args.seed,
        dtype="float32",
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=out_dir,
        verbose=True,
    )


def ship(tmp: Path, out: Path, extra: dict) -> None:
    """Copy the runner's output into ``out``: fp16 weights, cfg.json (fp32 compute), full config."""
    out.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(tmp / "sae_weights.safetensors"))
    save_file({k: v.to(torch.float16).contiguous() for k, v in weights.items()}, str(out / "sae_weights.safetensors"))
    cfg = json.loads((tmp / "cfg.json").read_text())
    cfg["dtype"] = "float32"  # stored fp16, computed in fp32 (load_from_disk casts)
    (out / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    runner_cfg = json.loads((tmp / "runner_cfg.json").read_text())
    runner_cfg.update(extra)
    (out / "training_config.json").write_text(json.dumps(runner_cfg, indent=2, default=str) + "\n")
    if (tmp / "sparsity.safetensors").is_file():
        shutil.copy(tmp / "sparsity.safetensors", out / "train_sparsity.safetensors")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    import datasets
    from sae_lens import LanguageModelSAETrainingRunner

    import scope

    t0 = time.time()
    model = scope.load_model("gemma-3-270m")
    model.eval()
    texts = load_texts(args.corpus, args.seed)
    dataset = datasets.Dataset.from_dict({"text": texts})
    print(f"model + {len(texts)} documents loaded in {time.time() - t0:.1f}s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = runner_config(args, model.tokenizer.bos_token_id, tmp)
        runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=model)
        t1 = time.time()
        runner.run()
        seconds = time.time() - t1
        print(f"trained on {args.tokens:,} tokens in {seconds:.0f}s: {args.tokens / seconds:.0f} tokens/s",
              flush=True)
        extra = {
            "scope_corpus": str(args.corpus),
            "scope_train_seconds": round(seconds, 1),
            "scope_tokens_per_second": round(args.tokens / seconds, 1),
            "scope_threads": args.threads,
            "scope_torch": torch.__version__,
            "scope_command": " ".join(sys.argv),
        }
        ship(Path(tmp), args.out, extra)
    print(f"saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
