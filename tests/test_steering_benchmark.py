"""scripts/steering_benchmark.py, the Golden Gate search: its perplexities against a plain forward,
its climb and choice against hand-made figures, its resumption, and its prompt files."""

import math

import pandas as pd
import pytest
import torch

import scope
from scope.feature_stats import set_max_activations
from tests.sae_util import count_calls
from tests.test_golden_gate import _script

HOOK = "blocks.1.hook_resid_post"
LINES = {"units": ("act",)}  # clamp and add, both positions, raw units: a cheap search
PROMPTS = {"choose": ["The quick brown fox", "Paris is the capital of"], "heldout": ["knock knock. who is", "Once"]}


@pytest.fixture(scope="module")
def bench():
    return _script("steering_benchmark")


@pytest.fixture(scope="module")
def target(tiny_model, tmp_path_factory, bench):
    from tests.sae_util import random_params, write_params

    path = write_params(tmp_path_factory.mktemp("bench-sae") / "params.npz", random_params(64, 48, seed=5))
    sae = scope.load_sae(path, hook=HOOK, device="cpu")
    set_max_activations(sae, torch.linspace(0.5, 5.0, 48))
    gg = _script("golden_gate")
    residual = gg.residual_norm(tiny_model, sae, PROMPTS["choose"])
    positive, negative = _script("find_concept_feature").texts_of("sea")
    direction = scope.diffmean(tiny_model, HOOK, positive[:3], negative[:3])
    return bench.Target("tiny", sae, residual, {"sea": direction}, {"sea": [7]})


@pytest.fixture(scope="module")
def search(tiny_model, target, bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-out")
    run = bench.Search(out, tiny_model, {"tiny": target}, PROMPTS, ["sea"], max_new_tokens=3, batch_size=32,
                       progress=False, lines=LINES)  # fmt: skip
    chosen = run.choose("tiny")
    run.held_out({"sea": chosen["sea"]})
    return run, chosen


def test_perplexities_equal_a_plain_forward_per_row(tiny_model, bench):
    prompts = [tiny_model.to_tokens(p)[0] for p in ("The quick brown fox", "Hi")]
    news = [[5, 9, 11], [7]]
    found = bench.perplexities(tiny_model, prompts, news, batch_size=2)
    for prompt, new, value in zip(prompts, news, found):
        tokens = torch.cat([prompt, torch.tensor(new)])[None]
        with torch.no_grad():
            log_probs = tiny_model(tokens)[0].double().log_softmax(-1)  # one row, nothing padded
        n = len(prompt)
        expected = math.exp(-log_probs[n - 1 : -1].gather(-1, tokens[0, n:, None]).mean().item())
        assert value == pytest.approx(expected, rel=1e-4)


def test_lines_cover_methods_units_positions_and_climb_in_contribution(target, bench):
    lines = bench.feature_lines(target, "sea")
    kinds = {(line[0].family, line[0].unit, line[0].positions) for line in lines}
    assert kinds == {(f, u, p) for f in ("SAE clamp", "SAE add") for u in ("act", "max") for p in ("all", "generated")}
    norm = target.sae.W_dec[7].float().norm().item()
    for line in lines:
        assert [c.value for c in line] == sorted(c.value for c in line)
        for cell in line:
            assert cell.fraction == pytest.approx(cell.value * norm / target.residual, rel=1e-5)
            if cell.unit == "max":
                assert cell.value == pytest.approx(cell.strength * (0.5 + 7 * 4.5 / 47), rel=1e-5)
    raw = next(line for line in lines if line[0].unit == "act")
    assert [c.fraction for c in raw] == pytest.approx(list(bench.RAW_FRACTIONS))


def test_a_line_stops_climbing_once_perplexity_breaks_or_every_text_mentions(bench):
    line = [bench.Cell("choose", "SAE add", "sea", "x", 1, "act", "all", v, v, v) for v in (1.0, 2.0, 3.0)]
    figures = {1.0: (0.0, 1.2), 2.0: (0.5, 2.5)}

    def summary(cell):
        if cell.value not in figures:
            return None
        mention, ratio = figures[cell.value]
        return pd.Series({"mention_fraction": mention, "perplexity_ratio": ratio})

    assert bench.next_cells([line], lambda c: None) == [line[0]]
    assert bench.next_cells([line], lambda c: summary(c) if c.value == 1.0 else None) == [line[1]]
    assert bench.next_cells([line], summary) == []  # 2.0 broke perplexity: 3.0 is not run
    figures[2.0] = (1.0, 1.5)
    assert bench.next_cells([line], summary) == []  # every text mentions it already
    figures[2.0] = (float("nan"), float("nan"))
    assert bench.next_cells([line], summary) == []  # NaN never passes


def test_best_takes_each_lines_pick_then_most_mentions_then_lowest_ratio(bench):
    def table(values, mentions, ratios):
        return pd.DataFrame({"value": values, "strength": values, "mention_fraction": mentions,
                             "perplexity_ratio": ratios})  # fmt: skip

    a = table([1.0, 2.0], [0.25, 0.75], [1.1, 2.5])  # 2.0 breaks: a's pick is 1.0 (25%)
    b = table([3.0, 6.0], [0.5, 0.5], [1.8, 1.9])  # tie: the weaker, 3.0
    c = table([5.0], [0.5], [1.2])  # same mentions as b, lower ratio
    assert bench.best([a, b]).to_dict()["value"] == 3.0
    assert bench.best([a, b, c]).to_dict()["value"] == 5.0
    assert bench.best([table([9.0], [1.0], [3.0])]) is None


def test_search_figures_follow_from_its_rows(search, bench):
    """Every choosing and held-out figure recomputed by hand from the stored continuations."""
    run, _ = search
    rows = run.rows
    gg = _script("golden_gate")
    pattern = gg.keyword_pattern(gg.CONCEPT_KEYWORDS["sea"])
    for split in ("choose", "heldout"):
        table = run.tables(split)
        assert len(table)
        base = rows[(rows["split"] == split) & (rows["family"] == "unsteered")]
        for _, row in table.iterrows():
            cell = rows[(rows["line"] == row["line"]) & (rows["split"] == split) & (rows["value"] == row["value"])]
            assert sorted(cell["prompt_index"]) == list(range(len(PROMPTS[split])))
            said = [gg.mentions(t, pattern) for t in cell["text"]]
            assert row["mention_fraction"] == pytest.approx(sum(said) / len(said))
            assert row["perplexity_ratio"] == pytest.approx(cell["perplexity"].median() / base["perplexity"].median())
            assert row["distinct_words"] == pytest.approx(cell["text"].map(gg.distinct_word_share).mean(), nan_ok=True)


def test_steered_rows_equal_generating_each_alone(tiny_model, search, target, bench):
    """A batch mixes features, directions, units and positions: each row is what it gives alone."""
    run, _ = search
    rows = run.rows[run.rows["split"] == "choose"]
    for family in ("SAE clamp", "SAE add", "DiffMean add"):
        for positions in ("all", "generated"):
            found = rows[(rows["family"] == family) & (rows["positions"] == positions)]
            if found.empty:
                continue
            row = found.iloc[-1]
            cell = bench.as_cell(row, "choose")
            alone = scope.generate(tiny_model, row["prompt"], max_new_tokens=3, positions=positions,
                                   steering=bench.steering_of(cell, {"tiny": target}))  # fmt: skip
            assert row["text"] == alone


def test_a_rerun_resumes_without_generating_anything(tiny_model, target, search, bench):
    run, chosen = search
    again = bench.Search(run.out, tiny_model, {"tiny": target}, PROMPTS, ["sea"], max_new_tokens=3, progress=False,
                         lines=LINES)  # fmt: skip
    assert len(again.rows) == len(run.rows)
    with count_calls(tiny_model) as calls:
        again_chosen = again.choose("tiny")
        again.held_out({"sea": again_chosen["sea"]})
    assert calls == []
    assert again_chosen["sea"]["feature"].equals(chosen["sea"]["feature"])


def test_prompt_files_are_neutral_disjoint_and_unseen(bench):
    gg = _script("golden_gate")
    find = _script("find_concept_feature")
    choose, heldout = gg.read_prompts(bench.CHOOSE_PROMPTS), gg.read_prompts(bench.HELDOUT_PROMPTS)
    assert len(choose) >= 16 and len(heldout) >= 16
    assert not set(choose) & set(heldout) and len(set(choose)) == len(choose) and len(set(heldout)) == len(heldout)
    seen = {t for pairs in find.CONCEPTS.values() for pair in pairs for t in pair} | set(
        gg.read_prompts(gg.DEFAULT_PROMPTS)
    )
    for prompt in choose + heldout:
        assert prompt not in seen
        for concept, keywords in gg.CONCEPT_KEYWORDS.items():
            assert not gg.mentions(prompt, keywords), (concept, prompt)
    assert set(bench.PHRASES) == set(gg.CONCEPT_KEYWORDS)


def test_unknown_concept_fails_before_loading_anything(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(scope, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ValueError, match=r"unknown concepts \['bridges'\]; valid: dogs, sea"):
        bench.main(["--concepts", "sea", "bridges", "--out", str(tmp_path)])


def test_a_rerun_with_more_prompts_measures_only_the_new_ones(tiny_model, target, search, bench, tmp_path):
    """Resumption is per prompt: a held-out half grown by one prompt adds one row per setting."""
    import shutil

    run, chosen = search
    shutil.copytree(run.out, tmp_path / "copy")
    more = {**PROMPTS, "heldout": [*PROMPTS["heldout"], "Three more words"]}
    again = bench.Search(tmp_path / "copy", tiny_model, {"tiny": target}, more, ["sea"], max_new_tokens=3,
                         progress=False, lines=LINES)  # fmt: skip
    before = again.rows
    again.held_out({"sea": chosen["sea"]})
    new = again.rows.iloc[len(before) :]
    assert set(new["prompt_index"]) == {2} and set(new["split"]) == {"heldout"}
    held = before[before["split"] == "heldout"]
    assert len(new) == held.groupby(["line", "value"]).ngroups
    assert (again.tables("heldout")["n_prompts"] == 3).all()
