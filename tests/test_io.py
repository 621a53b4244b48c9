"""Files (scope/_io.py): reading corpora, the early out= checks."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

import scope
from scope._io import check_writable_dir, check_writable_file, iter_texts

LINES = ["The quick brown fox.", "", "Paris is the capital of France.", "   ", "def add(a, b): return a + b", ""]


def test_every_line_of_a_corpus_file_is_a_text_blank_or_not(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("\n".join(LINES) + "\n")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t}) if t else "" for t in LINES) + "\n")
    assert list(iter_texts(txt)) == LINES == txt.read_text().splitlines()
    assert list(iter_texts(jsonl)) == LINES


def test_text_id_is_the_line_number_in_mining_results(tiny_model, make_sae, tmp_path):
    sae, _ = make_sae(d_sae=16)
    txt = tmp_path / "c.txt"
    txt.write_text("\n".join(LINES) + "\n")
    options = dict(k=4, window=8, progress=False)
    from_file = scope.mine(tiny_model, sae, txt, **options)
    from_list = scope.mine(tiny_model, sae, LINES, **options)
    pd.testing.assert_frame_equal(from_file.examples, from_list.examples)
    assert set(from_file.examples["text_id"]) <= {i for i, line in enumerate(LINES) if line}  # "" has no token
    assert 4 in set(from_file.examples["text_id"])  # the last non-blank line keeps its number (skipping made it 2)


@pytest.mark.parametrize("check", [check_writable_file, check_writable_dir])
def test_the_early_out_check_tries_to_create_a_file(tmp_path, check, monkeypatch):
    """Permission bits pass where writing fails (root under /proc, a read-only mount): the check
    creates and removes a file in the target folder instead of trusting them."""
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)  # what root is told everywhere
    with pytest.raises(
        PermissionError, match=r"out='/proc/scope/top\.parquet': cannot create a file in the folder '/proc'"
    ):
        check("/proc/scope/top.parquet", "out")
    assert check(tmp_path / "new" / "top.parquet", "out") == tmp_path / "new" / "top.parquet"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
