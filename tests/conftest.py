import os
from pathlib import Path

import pytest
import torch

from tests.tiny import save_tiny_gemma2

torch.set_num_threads(max(1, os.cpu_count() or 1))


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
