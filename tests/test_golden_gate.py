"""scripts/golden_gate.py and scripts/find_concept_feature.py: the keyword matcher, the sweep's
figures against independent computations, the JSON layout, and bad input."""

import importlib
import json
import math
import re
import statistics

import numpy as np
import pandas as pd
import pytest
import torch

import scope
from scope.feature_stats import set_max_activations
from tests.sae_util import count_calls

HOOK = "blocks.1.hook_resid_post"
PROMPTS = ["The quick brown fox", "Paris is the capital of", "knock knock. who is"]
TOKENS = 6


@pytest.fixture(scope="module")
def gg():
    return _script("golden_gate")


def _script(name):
    from pathlib import Path

    folder = str(Path(__file__).resolve().parent.parent / "scripts")
    import sys

    if folder not in sys.path:
        sys.path.insert(0, folder)  # the scripts import their siblings, as when run as scripts
    return importlib.import_module(name)


@pytest.fixture
def sae(make_sae):
    return make_sae(HOOK, seed=3, threshold_scale=0.3)[0]


def no_hooks_left(model):
    return all(not hp.fwd_hooks for hp in model.hook_dict.values()) and not model._forward_pre_hooks


# ----------------------------------------------------------------------------- keywords


@pytest.mark.parametrize(
    "text, found",
    [
        ("We went to the sea.", True),
        ("THE SEA WAS CALM", True),  # case
        ("Sea-shore walks", True),  # a hyphen ends a word
        ("a walk on the seashore", False),  # a closed compound is another word unless listed
        ("the seal barked", False),
        ("in the season of mists", False),
        ("the seas were high", True),  # plural: listed
        ("a sperm\n  whale surfaced", True),  # multi-word keyword across any whitespace
        ("a sperm cell", False),
        ("undersea cables", False),
    ],
)
def test_mentions_is_whole_word_and_case_insensitive(gg, text, found):
    assert gg.mentions(text, ["sea", "seas", "sperm whale"]) is found


def test_plurals_count_only_when_listed(gg):
    assert not gg.mentions("three dogs", ["dog"])
    assert gg.mentions("three dogs", ["dog", "dogs"])
    assert gg.mentions("three dogs", gg.keyword_list(["dogs"]))  # the concept's list has plurals


def test_keyword_list_from_concept_name_or_words(gg):
    assert gg.keyword_list("Whales") == gg.CONCEPT_KEYWORDS["whales"]
    assert gg.keyword_list(["whale, whales", "harpoon", "whale"]) == ["whale", "whales", "harpoon"]
    assert gg.mentions("C++ (c.f.)", ["c.f."])  # regex characters are literal
    assert not gg.mentions("cxf", ["c.f"])


@pytest.mark.parametrize("keywords", [[], [""], [" , ,"]])
def test_empty_keywords_are_refused(gg, keywords):
    with pytest.raises(ValueError, match="keywords is empty"):
        gg.keyword_list(keywords)
    with pytest.raises(ValueError, match="keywords is empty"):
        gg.keyword_pattern(keywords)


def test_concept_texts_and_prompts_agree_with_the_keyword_lists(gg):
    """Every positive text mentions its concept and no negative does; no Golden Gate prompt
    mentions any concept or appears among the search texts."""
    find = _script("find_concept_feature")
    assert set(find.CONCEPTS) == set(gg.CONCEPT_KEYWORDS)
    for concept, pairs in find.CONCEPTS.items():
        assert len(pairs) >= 10
        for positive, negative in pairs:
            assert gg.mentions(positive, gg.CONCEPT_KEYWORDS[concept]), (concept, positive)
            assert not gg.mentions(negative, gg.CONCEPT_KEYWORDS[concept]), (concept, negative)
    prompts = gg.read_prompts(gg.DEFAULT_PROMPTS)
    assert len(prompts) >= 20 and len(set(prompts)) == len(prompts)
    searched = {text for pairs in find.CONCEPTS.values() for pair in pairs for text in pair}
    for prompt in prompts:
        assert prompt not in searched
        for concept, keywords in gg.CONCEPT_KEYWORDS.items():
            assert not gg.mentions(prompt, keywords), (concept, prompt)


def test_read_prompts_skips_comments_and_blank_lines(gg, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\n\nFirst prompt  \n  # indented comment\nSecond one\n", encoding="utf-8")
    assert gg.read_prompts(path) == ["First prompt", "Second one"]


# ----------------------------------------------------------------------------- the sweep


@pytest.fixture(scope="module")
def sweep(tiny_model, tmp_path_factory, gg):
    """One sweep on the tiny model, the keyword taken from the unsteered text (so that the
    mention fraction is neither 0 nor 1 by construction)."""
    from tests.sae_util import random_params, write_params

    path = write_params(
        tmp_path_factory.mktemp("gg-sae") / "params.npz", random_params(64, 48, seed=3, threshold_scale=0.3)
    )
    sae = scope.load_sae(path, hook=HOOK, device="cpu")
    set_max_activations(sae, torch.linspace(0.5, 5.0, 48))
    unsteered = scope.generate(tiny_model, PROMPTS, max_new_tokens=TOKENS)
    keyword = re.findall(r"\w+", unsteered[0])[0]
    saved = []
    table, rows = gg.measure(
        tiny_model, sae, 7, [keyword], [5.0, 0, 50.0], PROMPTS, max_new_tokens=TOKENS, batch_size=2, progress=False,
        on_strength=lambda t, r: saved.append(t),
    )  # fmt: skip
    return sae, keyword, unsteered, table, rows, saved


def test_strength_zero_is_the_unsteered_model_exactly(tiny_model, sweep):
    sae, _, unsteered, table, rows, _ = sweep
    assert table["strength"].tolist() == [0.0, 5.0, 50.0]  # the baseline first, always
    zero = rows[rows["strength"] == 0.0]
    assert zero["text"].tolist() == unsteered
    assert zero["prompt"].tolist() == PROMPTS
    # and the other strengths do steer (a clamp of 0 would not be the baseline either)
    assert rows[rows["strength"] == 50.0]["text"].tolist() != unsteered
    assert no_hooks_left(tiny_model)


def test_partial_figures_are_handed_on_after_each_strength(sweep):
    table, saved = sweep[3], sweep[5]
    assert [t["strength"].tolist() for t in saved] == [[0.0], [0.0, 5.0], [0.0, 5.0, 50.0]]
    pd.testing.assert_frame_equal(saved[-1], table)


def test_mention_fraction_equals_a_word_count(sweep):
    _, keyword, _, table, rows, _ = sweep
    for strength, group in rows.groupby("strength"):
        hits = [keyword.lower() in {w.lower() for w in re.findall(r"\w+", text)} for text in group["text"]]
        row = table[table["strength"] == strength].iloc[0]
        assert row["mention_fraction"] == pytest.approx(sum(hits) / len(hits))
    assert table[table["strength"] == 0.0]["mention_fraction"].item() > 0  # the keyword came from there


def test_perplexity_and_ratio_equal_a_plain_forward(tiny_model, sweep):
    _, _, _, table, rows, _ = sweep
    recomputed: dict[float, list[float]] = {}
    for row in rows.itertuples():
        prompt = tiny_model.to_tokens(row.prompt)[0]
        tokens = torch.cat([prompt, torch.tensor(row.tokens, dtype=torch.long)])[None]
        with torch.no_grad():
            log_probs = tiny_model(tokens)[0].double().log_softmax(-1)  # the whole model, nothing hooked
        n = len(prompt)
        picked = log_probs[n - 1 : -1].gather(-1, tokens[0, n:, None]).mean().item()
        assert row.perplexity == pytest.approx(math.exp(-picked), rel=1e-4)
        recomputed.setdefault(row.strength, []).append(math.exp(-picked))
    base = recomputed[0.0]
    for strength, values in recomputed.items():
        row = table[table["strength"] == strength].iloc[0]
        assert row["median_perplexity"] == pytest.approx(statistics.median(values), rel=1e-4)
        assert row["perplexity_ratio"] == pytest.approx(statistics.median(values) / statistics.median(base), rel=1e-4)
        geometric = math.exp(np.mean(np.log(values)) - np.mean(np.log(base)))
        assert row["geometric_ratio"] == pytest.approx(geometric, rel=1e-4)
    assert table.loc[table["strength"] == 0.0, "perplexity_ratio"].item() == 1.0


def test_units_and_norms(sweep, gg):
    sae, _, _, table, _, _ = sweep
    norm = sae.W_dec[7].float().norm().item()
    peak = 0.5 + 7 * (4.5 / 47)  # linspace(0.5, 5, 48)[7]
    row = table[table["strength"] == 50.0].iloc[0]
    assert row["value"] == 50.0  # unit "act": the strength is the clamp value
    assert row["multiple_of_max"] == pytest.approx(50.0 / peak, rel=1e-5)
    assert row["contribution_norm"] == pytest.approx(50.0 * norm, rel=1e-5)


def test_unit_max_reads_strengths_as_multiples(tiny_model, sweep, gg):
    sae = sweep[0]
    peak = float(scope.steering.max_activation(sae, 7))
    table, rows = gg.measure(
        tiny_model, sae, 7, ["x"], [2.0], PROMPTS[:1], unit="max", max_new_tokens=3, progress=False
    )
    assert table["value"].tolist() == pytest.approx([0.0, 2.0 * peak])
    clamped = scope.generate(
        tiny_model, PROMPTS[:1], max_new_tokens=3, sae=sae, steering=[scope.Clamp(7, 2.0, unit="max")]
    )
    assert rows[rows["strength"] == 2.0]["text"].tolist() == clamped


def test_json_layout(sweep, gg, tmp_path):
    sae, keyword, _, table, rows, _ = sweep
    content = gg.report(
        table, rows, sae_spec="tiny", sae=sae, feature=7, keywords=[keyword], concept=None,
        prompts_file="prompts.txt", method="clamp", unit="act", max_new_tokens=TOKENS, model_name="tiny",
        residual=1.5,
    )  # fmt: skip
    path = gg.write_report(content, tmp_path / "out")
    assert path == tmp_path / "out" / "golden_gate.json"
    assert [p.name for p in path.parent.iterdir()] == ["golden_gate.json"]  # no temporary left
    data = json.loads(path.read_text())
    for key in ("feature", "label", "keywords", "prompts_file", "prompts", "method", "unit", "strengths", "sweep",
                "pick", "max_activation", "decoder_norm", "residual_norm", "hook", "max_new_tokens"):  # fmt: skip
        assert key in data
    assert data["feature"] == 7 and data["keywords"] == [keyword] and data["method"] == "clamp"
    assert data["strengths"] == [0.0, 5.0, 50.0] and data["prompts"] == PROMPTS
    assert [s["strength"] for s in data["sweep"]] == data["strengths"]
    for entry, row in zip(data["sweep"], table.itertuples()):
        assert entry["mention_fraction"] == pytest.approx(row.mention_fraction)
        assert entry["perplexity_ratio"] == pytest.approx(row.perplexity_ratio)
        assert len(entry["continuations"]) == len(PROMPTS)
        assert [c["prompt"] for c in entry["continuations"]] == [0, 1, 2]
        texts = rows[rows["strength"] == row.strength]["text"].tolist()
        assert [c["text"] for c in entry["continuations"]] == texts
    assert data["pick"] == gg.pick(table)
    assert data["residual_norm"] == 1.5 and data["complete"] is True


def test_pick_takes_the_most_mentions_within_twice_the_perplexity(gg):
    table = pd.DataFrame(
        {
            "strength": [0.0, 2.0, 5.0, 10.0, 20.0],
            "value": [0.0, 2.0, 5.0, 10.0, 20.0],
            "mention_fraction": [0.9, 0.4, 0.6, 0.6, 1.0],
            "perplexity_ratio": [1.0, 1.1, 1.5, 1.9, 2.5],
        }
    )
    chosen = gg.pick(table)
    # 0 is never the pick; 20 breaks perplexity; 5 and 10 tie, the weaker wins
    assert chosen == {
        "strength": 5.0,
        "value": 5.0,
        "mention_fraction": 0.6,
        "perplexity_ratio": 1.5,
        "target_met": True,
    }
    assert gg.pick(table[table["strength"].isin([0.0, 20.0])]) is None
    assert gg.pick(table.assign(perplexity_ratio=[1.0, np.nan, 3, 3, 3])) is None  # NaN never qualifies


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, error, fragment",
    [
        (dict(feature=48), ValueError, "feature 48 is out of range: there are 48 features"),
        (dict(feature=-1), ValueError, "out of range"),
        (dict(keywords=[]), ValueError, "keywords is empty"),
        (dict(keywords=[" "]), ValueError, "keywords is empty"),
        (dict(prompts=[]), ValueError, "prompts is empty"),
        (dict(prompts=["fine", "  "]), ValueError, r"prompts\[1\] is empty"),
        (dict(strengths=[]), ValueError, "strengths is empty"),
        (dict(strengths=[1.0, float("nan")]), ValueError, "finite"),
        (dict(method="scale"), ValueError, "method must be one of 'clamp', 'add'"),
        (dict(unit="max"), ValueError, "does not record"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens must be a positive integer"),
    ],
)
def test_bad_input_fails_before_any_forward_pass(tiny_model, sae, gg, change, error, fragment):
    kwargs = dict(feature=1, keywords=["fox"], strengths=[0, 5.0], prompts=PROMPTS[:1]) | change
    options = {k: kwargs.pop(k) for k in ("method", "unit", "max_new_tokens") if k in kwargs}
    with count_calls(tiny_model) as calls, pytest.raises(error, match=fragment):
        gg.measure(tiny_model, sae, kwargs["feature"], kwargs["keywords"], kwargs["strengths"], kwargs["prompts"],
                   progress=False, **options)  # fmt: skip
    assert calls == [] and no_hooks_left(tiny_model)


def test_command_line_checks_before_loading_anything(gg, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(ValueError, match="keywords is empty"):
        gg.main(["--feature", "1", "--keywords", ",", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="prompts is empty"):
        gg.main(["--feature", "1", "--keywords", "sea", "--prompts", str(prompts), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gg.main(["--feature", "1", "--keywords", "sea", "--prompts", str(tmp_path / "none.txt")])
    with pytest.raises(SystemExit):  # a registry SAE has no folder: --out is required
        gg.main(["--sae", "gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical", "--feature", "1",
                 "--keywords", "sea"])  # fmt: skip


# ----------------------------------------------------------------------------- the shipped result


def _with_golden_gate() -> list[str]:
    from scope.saes import DEMO_SAES

    return [name for name, demo in DEMO_SAES.items() if (demo.folder / "golden_gate.json").is_file()]


def _shipped(name: str = "demo"):
    from scope.saes import DEMO_SAES

    return json.loads((DEMO_SAES[name].folder / "golden_gate.json").read_text(encoding="utf-8"))


def test_the_general_and_the_modern_sae_ship_a_golden_gate_result():
    assert {"demo", "demo-modern"} <= set(_with_golden_gate())


def _check_figures(gg, figures, keywords, base_median=None):
    """A result's figures recomputed from the continuations it stores."""
    continuations = figures["continuations"]
    pattern = gg.keyword_pattern(keywords)
    said = [gg.mentions(c["text"], pattern) for c in continuations]
    assert said == [c["mentions"] for c in continuations]
    assert figures["mention_fraction"] == pytest.approx(sum(said) / len(said))
    assert figures["n_prompts"] == len(continuations)
    median = statistics.median(c["perplexity"] for c in continuations)
    assert figures["median_perplexity"] == pytest.approx(median)
    if base_median is not None:
        assert figures["perplexity_ratio"] == pytest.approx(median / base_median)


@pytest.mark.parametrize("name", _with_golden_gate())
def test_the_shipped_result_keys_types_and_figures(gg, name):
    """Each bundled SAE's golden_gate.json: the keys scope demo reads, their types, every held-out
    figure recomputed from the stored texts, and meets_target read off the figures."""
    bench = _script("steering_benchmark")
    result = _shipped(name)
    assert result["sae"] == name
    types = {"sae": str, "feature": int, "method": str, "value": float, "unit": str, "keywords": list, "pick": dict,
             "meets_target": bool, "positions": str, "concept": str, "heldout": dict, "choosing": dict,
             "prompts": list, "target": dict}  # fmt: skip
    for key, kind in types.items():
        assert isinstance(result[key], kind), key
    assert result["method"] in ("clamp", "add") and result["unit"] in ("act", "max")
    assert result["positions"] in ("all", "generated") and result["complete"] and result["decoding"] == "greedy"
    assert result["keywords"] == gg.CONCEPT_KEYWORDS[result["concept"]]
    assert result["prompts"] == gg.read_prompts(bench.HELDOUT_PROMPTS)
    assert 0 <= result["feature"] < scope.load_sae(result["sae"]).cfg.d_sae
    heldout = result["heldout"]
    _check_figures(gg, heldout, result["keywords"])
    assert [c["prompt"] for c in heldout["continuations"]] == list(range(len(result["prompts"])))
    met = heldout["mention_fraction"] >= 0.5 and heldout["perplexity_ratio"] <= 2.0
    assert result["meets_target"] is met and result["pick"]["target_met"] is met
    assert result["pick"]["mention_fraction"] == heldout["mention_fraction"]
    for name in ("diffmean", "diffmean_best"):
        direction = result[name]
        if direction is None:
            continue
        assert "not an SAE feature" in direction["kind"] and direction["method"] == "add"
        _check_figures(gg, direction["heldout"], direction["keywords"])
        assert direction["meets_target"] is (
            direction["heldout"]["mention_fraction"] >= 0.5 and direction["heldout"]["perplexity_ratio"] <= 2.0
        )
        assert direction["positive"] and len(direction["positive"]) == len(direction["negative"])
    if result["diffmean"] is not None:
        assert result["diffmean"]["concept"] == result["concept"]


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("name", _with_golden_gate())
def test_the_shipped_result_regenerates_on_the_bundled_model(bundled_model, gg, name):
    """The first held-out prompts at the shipped setting, regenerated greedily: the same texts."""
    result = _shipped(name)
    sae = scope.load_sae(result["sae"])
    value = result["value"]
    steering = (
        scope.Clamp(result["feature"], value) if result["method"] == "clamp" else scope.Add(result["feature"], value)
    )
    prompts = result["prompts"][:4]
    texts = scope.generate(bundled_model, prompts, sae=sae, steering=steering, positions=result["positions"],
                           max_new_tokens=result["max_new_tokens"])  # fmt: skip
    assert texts == [c["text"] for c in result["heldout"]["continuations"][:4]]


# ----------------------------------------------------------------------------- scope demo


def _result(tmp_path, *, meets, feature_mentions, direction_mentions=0.9):
    """A Golden Gate file for the tiny model (layer-1 SAE and hook)."""
    find = _script("find_concept_feature")
    positive, negative = find.texts_of("sea")

    def figures(mention):
        return {"mention_fraction": mention, "perplexity_ratio": 1.4, "median_perplexity": 3.0, "distinct_words": 0.9,
                "n_prompts": 16, "geometric_ratio": 1.4, "unsteered_mention_fraction": 0.0, "continuations": []}  # fmt: skip

    content = {
        "sae": "tiny", "feature": 7, "concept": "sea", "method": "clamp", "unit": "act", "positions": "all",
        "value": 40.0, "strength": 40.0, "meets_target": meets, "prompts": PROMPTS,
        "target": {"mention_fraction": 0.5, "max_perplexity_ratio": 2.0},
        "heldout": figures(feature_mentions),
        "diffmean_best": {"kind": "direction (DiffMean, not an SAE feature)", "hook": HOOK, "concept": "sea",
                          "value": 3.0, "fraction_of_residual": 0.08, "positions": "all",
                          "heldout": figures(direction_mentions), "positive": positive[:3], "negative": negative[:3]},
    }  # fmt: skip
    path = tmp_path / "golden_gate.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "meets, feature_mentions, moment",
    [(True, 0.6, True), (False, 0.2, False), (True, 0.2, False), (False, 0.6, False)],
)
def test_demo_shows_the_feature_as_the_moment_only_when_it_meets_the_target(
    tiny_model, sae, tmp_path, capsys, meets, feature_mentions, moment
):
    """A flag that the figures contradict (or figures without the flag) never makes a moment."""
    from scope.cli.demo import _print_golden_gate

    _print_golden_gate(
        tiny_model, lambda spec: sae, _result(tmp_path, meets=meets, feature_mentions=feature_mentions), 3
    )
    out = capsys.readouterr().out
    assert ("The Golden Gate moment: feature 7" in out) is moment
    if not moment:
        assert "no SAE feature reached the target yet" in out
        assert (
            f"Best SAE feature: 7 of the tiny SAE for sea, clamp at 40 on all positions: {feature_mentions:.0%}" in out
        )
        assert "a direction, not a feature: DiffMean add for sea" in out and "DiffMean add" in out
    assert no_hooks_left(tiny_model)


def test_demo_says_when_no_direction_works_either(tiny_model, sae, tmp_path, capsys):
    from scope.cli.demo import _print_golden_gate

    _print_golden_gate(
        tiny_model, lambda spec: sae, _result(tmp_path, meets=False, feature_mentions=0.1, direction_mentions=0.3), 3
    )
    out = capsys.readouterr().out
    assert "No DiffMean direction reached it either" in out and "moment" not in out


def test_diffmean_add_at_the_shipped_fraction_equals_adding_the_vector_by_hand(tiny_model, gg):
    """scope's Add(direction, v) against a plain transformer-lens hook adding v * u (BOS untouched),
    with u computed here as the normalised difference of the two sets' mean activations."""
    find = _script("find_concept_feature")
    positive, negative = find.texts_of("sea")
    direction = scope.diffmean(tiny_model, HOOK, positive[:4], negative[:4])

    def mean(texts):
        acts = [tiny_model.run_with_cache(t, names_filter=[HOOK])[1][HOOK][0, 1:] for t in texts]
        return torch.cat(acts).double().mean(0)

    u = mean(positive[:4]) - mean(negative[:4])
    u = (u / u.norm()).float()
    assert torch.allclose(direction.vector, u, atol=1e-5)
    shipped = _shipped()
    fraction = (shipped.get("diffmean_best") or {}).get("fraction_of_residual", 0.08)
    tokens = tiny_model.to_tokens(PROMPTS[0])
    with torch.no_grad():
        norm = tiny_model.run_with_cache(tokens, names_filter=[HOOK])[1][HOOK][0, 1:].norm(dim=-1).median()
        value = float(fraction * norm)

        def add(act, hook):
            act[:, 1:] += value * u
            return act

        by_hand = tiny_model.run_with_hooks(tokens, fwd_hooks=[(HOOK, add)])
        with scope.steer(tiny_model, None, scope.Add(direction, value)):
            steered = tiny_model(tokens)
        plain = tiny_model(tokens)
    assert torch.allclose(steered, by_hand, atol=1e-4)
    assert not torch.allclose(steered, plain, atol=1e-3)  # the edit does something
