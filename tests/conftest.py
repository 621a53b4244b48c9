import os
from pathlib import Path

import pytest
import torch

from tests.tiny import save_tiny_gemma2

# `make test` runs the suite on pytest-xdist workers (`-n 2`): the cores are shared among them, so
# that two workers on two cores do not each start two compute threads. OMP_NUM_THREADS carries the
# share to the processes tests start (notebook kernels, Ray workers, children).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)

# Tests that share something one machine has once run on one worker (`--dist loadgroup`):
# Ray's local cluster, and Chromium.
XDIST_GROUPS = {
    "test_distributed.py": "ray",
    "test_dashboard.py": "chromium",
    "test_serve_browser.py": "chromium",
    "test_graphs_page.py": "chromium",
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups off the marks
def pytest_collection_modifyitems(items):
    for item in items:
        group = XDIST_GROUPS.get(item.path.name)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    if _WORKERS > 1:
        # Long tests first, the many short ones last, where they fill in whichever worker
        # finishes early (xdist hands tests out in this order).
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A locally saved tiny Gemma2ForCausalLM + tokenizer (a stand-in ShieldGemma checkpoint)."""
    return save_tiny_gemma2(tmp_path_factory.mktemp("tiny-gemma2"))


@pytest.fixture(scope="session")
def tiny_hf(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """The tiny checkpoint loaded through the ShieldGemma path users hit."""
    import scope

    return scope.load_model("shieldgemma-2b", weights=tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def bundled_model():
    import scope

    return scope.load_model("gemma-3-270m")


@pytest.fixture
def make_sae(tmp_path):
    """A factory of random Gemma Scope-format SAEs: writes a params.npz, loads it through
    ``scope.load_sae`` (the path users take) and returns ``(sae, params)``."""
    import scope
    from tests.sae_util import random_params, write_params

    count = iter(range(10_000))

    def make(
        hook: str = "blocks.1.hook_resid_post",
        d_in: int = 64,
        d_sae: int = 48,
        seed: int = 0,
        threshold_scale: float = 1.0,
        **load_kwargs,
    ):
        params = random_params(d_in, d_sae, seed=seed, threshold_scale=threshold_scale)
        path = write_params(tmp_path / f"sae{next(count)}" / "params.npz", params)
        return scope.load_sae(path, hook=hook, **({"device": "cpu"} | load_kwargs)), params

    return make
