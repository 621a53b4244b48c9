"""Random Gemma Scope-format SAEs for tests, an independent JumpReLU, a forward-call counter, and a
stand-in for the hub's ``SAE.from_pretrained``."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np
import torch


def random_params(d_in: int, d_sae: int, seed: int = 0, threshold_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Gemma Scope params with thresholds in the range of the pre-activations, so that some
    units are positive but below threshold (a plain ReLU would keep them; JumpReLU must not)."""
    rng = np.random.default_rng(seed)
    return {
        "W_enc": (rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in)).astype(np.float32),
        "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
        "b_enc": (rng.normal(size=d_sae) * 0.1).astype(np.float32),
        "b_dec": (rng.normal(size=d_in) * 0.1).astype(np.float32),
        "threshold": (rng.uniform(0.0, 2.0, size=d_sae) * threshold_scale).astype(np.float32),
    }


def write_params(path: Path, params: dict[str, np.ndarray]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **params)
    return path


def jumprelu(x: torch.Tensor, params: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma Scope's JumpReLU written out: pre = x W_enc + b_enc; acts = relu(pre) * (pre > threshold)."""
    p = {k: torch.from_numpy(v).double() for k, v in params.items()}
    pre = x.double() @ p["W_enc"] + p["b_enc"]
    return torch.relu(pre) * (pre > p["threshold"]), pre


@contextlib.contextmanager
def count_calls(module: torch.nn.Module):
    """A list that grows by one each time ``module``'s forward runs inside the block."""
    calls: list[int] = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


class FakeFromPretrained:
    """Stands in for the hub: records calls, returns a small SAE reading the id's layer."""

    def __init__(self, make_sae, d_in=64):
        self.calls = []
        self.make_sae = make_sae
        self.d_in = d_in

    def __call__(self, release, sae_id, device="cpu", dtype="float32", **kwargs):
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

        self.calls.append((release, sae_id, device, dtype))
        layer = int(re.match(r"layer_(\d+)", sae_id)[1])
        sae, _ = self.make_sae(
            hook=f"blocks.{layer}.hook_resid_post", d_in=self.d_in, d_sae=16, seed=layer, device=device, dtype=dtype
        )
        sae.cfg.metadata.neuronpedia_id = get_pretrained_saes_directory()[release].neuronpedia_id.get(sae_id)
        return sae
