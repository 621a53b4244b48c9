import pandas as pd
import pytest
import torch

from scope.plots import residual_norms_figure
from scope.residuals import residual_norms

TEXT = "Paris is the capital of France."


def test_residual_norms_match_the_cache(tiny_model):
    table = residual_norms(tiny_model, TEXT)
    tokens = tiny_model.to_tokens(TEXT)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens)
    n_layers, n_pos = tiny_model.cfg.n_layers, tokens.shape[1]
    assert list(table.columns) == ["layer", "position", "token", "norm"]
    assert len(table) == n_layers * n_pos
    row = table[(table.layer == 2) & (table.position == 3)].iloc[0]
    expected = cache["blocks.2.hook_resid_post"][0, 3].norm().item()
    assert abs(row["norm"] - expected) < 1e-4 * expected
    assert table[table.position == 0]["token"].unique().tolist() == ["<bos>"]


def test_residual_norms_figure_is_layers_by_positions(tiny_model):
    table = residual_norms(tiny_model, TEXT)
    figure = residual_norms_figure(table)
    heatmap = figure.data[0]
    assert len(heatmap.y) == tiny_model.cfg.n_layers and len(heatmap.x) == table.position.nunique()
    assert heatmap.x[0].startswith("0: '<bos>'")


def test_residual_norms_of_a_chat_are_those_of_its_gemma_turn_text(tiny_model):
    from scope.chat import format_chat

    messages = [{"role": "user", "content": "Paris?"}]
    table = residual_norms(tiny_model, messages)
    pd.testing.assert_frame_equal(table, residual_norms(tiny_model, format_chat(messages)))
    assert table[table.position == 0]["token"].tolist() == ["<bos>"] * tiny_model.cfg.n_layers  # one BOS


def test_residual_norms_prompt_or_messages_is_a_deprecated_alias(tiny_model):
    with pytest.warns(
        DeprecationWarning, match=r"residual_norms\(prompt_or_messages=\.\.\.\) is deprecated; use text="
    ):
        old = residual_norms(tiny_model, prompt_or_messages=TEXT)
    pd.testing.assert_frame_equal(old, residual_norms(tiny_model, text=TEXT))


def test_residual_norms_refuse_a_text_longer_than_the_context(tiny_model):
    with pytest.raises(ValueError, match=rf"more than the model's context of {tiny_model.cfg.n_ctx}"):
        residual_norms(tiny_model, "the " * (tiny_model.cfg.n_ctx + 5))
    assert all(not hp.fwd_hooks for hp in tiny_model.hook_dict.values())
