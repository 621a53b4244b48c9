"""Tiny Gemma 2 checkpoints built offline, with every Gemma 2 feature switched on.

Sliding-window attention (a window of 8 tokens, so that short tests cross it),
attention and final-logit softcaps, pre- and post-norms, grouped-query
attention, and a small BPE tokenizer with Gemma's special tokens at Gemma's ids.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Golden Gate Bridge spans the strait in San Francisco.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "def add(a, b):\n    return a + b",
    "Sparse autoencoders find interpretable features in language models.",
    "knock knock. who is there? LaMDA. LaMDA who?",
] * 4


def make_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )


def make_gemma2_config(vocab_size: int, **overrides):
    from transformers import Gemma2Config

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0,  # small: they bite
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        hidden_activation="gelu_pytorch_tanh",
        initializer_range=0.1,
    )
    settings.update(overrides)
    return Gemma2Config(**settings)


def save_tiny_gemma2(path: Path, seed: int = 0, **config_overrides) -> Path:
    """Write a random tiny ``Gemma2ForCausalLM`` and its tokenizer to ``path``."""
    from transformers import Gemma2ForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = make_gemma2_config(len(tokenizer), **config_overrides)
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():  # norms start at zero in HF Gemma (weight is used as 1 + w): make them matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_model_and_sae(tiny_dir, sae_path, hook: str = "blocks.1.hook_resid_post"):
    """The tiny model (as the ``tiny_model`` fixture loads it) and a params.npz SAE, for tests
    that run in a subprocess."""
    import scope

    model = scope.load_model("shieldgemma-2b", weights=tiny_dir, device="cpu")
    return model, scope.load_sae(sae_path, hook=hook, device="cpu")


# ----------------------------------------------------------------------------- Gemma 3

# Local (sliding) and global layers interleaved, each kind with its own rope base; a global
# rope scaled linearly as Gemma 3 4B-27B's is. The window is a few tokens, so tests cross it.
GEMMA3_LAYER_TYPES = [
    "sliding_attention",
    "sliding_attention",
    "full_attention",
    "sliding_attention",
    "sliding_attention",
    "full_attention",
]
GEMMA3_ROPE = {
    "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 50_000.0},
    "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
}


def make_gemma3_text_config(vocab_size: int, **overrides):
    from transformers import Gemma3TextConfig

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=len(GEMMA3_LAYER_TYPES),
        layer_types=list(GEMMA3_LAYER_TYPES),
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=24,  # not head_dim: the attention scale must come from the config
        sliding_window=4,
        rope_parameters={kind: dict(values) for kind, values in GEMMA3_ROPE.items()},
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        hidden_activation="gelu_pytorch_tanh",
        initializer_range=0.1,
    )
    settings.update(overrides)
    return Gemma3TextConfig(**settings)


def _randomise_norms(model) -> None:
    with torch.no_grad():  # HF Gemma norms start at zero (weight is used as 1 + w): make them matter
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(0.0, 0.3)


def save_tiny_gemma3(path: Path, seed: int = 0, **config_overrides) -> Path:
    """Write a random tiny ``Gemma3ForCausalLM`` (the 270M/1B shape) and its tokenizer to ``path``."""
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    model = Gemma3ForCausalLM(make_gemma3_text_config(len(tokenizer), **config_overrides)).eval()
    _randomise_norms(model)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_gemma3_multimodal(path: Path, seed: int = 0) -> Path:
    """Write a random tiny ``Gemma3ForConditionalGeneration`` (the 4B-27B shape: a ``Gemma3Config``
    with a ``text_config`` and a small SigLIP vision tower) and its tokenizer to ``path``."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    config = Gemma3Config(
        text_config=make_gemma3_text_config(len(tokenizer)).to_dict(),
        vision_config=vision.to_dict(),
        mm_tokens_per_image=4,
        image_token_index=3,  # <unk>: the tiny vocabulary has no image token
        boi_token_index=4,
        eoi_token_index=4,
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    _randomise_norms(model)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
