"""The Golden Gate search: which steering brings a concept into neutral text, per SAE, honestly.

    python scripts/steering_benchmark.py --sae demo demo-docs --out runs/golden_gate_search \\
        [--concepts dogs sea ...] [--candidates 1] [--choose-limit 8] [--tokens 24] \\
        [--ship data/demo_sae/golden_gate.json]

Rerunning it on a new SAE is this one command with its spec after ``--sae``; a killed run
resumes where it stopped (same ``--out``): every finished batch is saved atomically and skipped.

What is searched, per SAE and concept (:data:`CONCEPT_KEYWORDS` of ``golden_gate.py``: ten
concrete concepts, each with its keyword list):

1. Candidates: the top ``--candidates`` features from ``find_concept_feature.py``'s contrastive
   ranking (AUROC over ten matched pairs per concept), and the unit DiffMean direction of the
   same pairs at the SAE's hook (``scope.diffmean``).
2. Lines: each candidate feature x {clamp, add} x units {act (raw), max} x positions
   {all, generated}; DiffMean add x positions {all, generated}. Each line is a coarse ascending
   grid of strengths: raw values whose contribution ``value * ||W_dec[f]||`` is
   :data:`RAW_FRACTIONS` (``--raw-fractions``) of the median residual norm at the hook,
   :data:`MAX_MULTIPLES` of the feature's max activation, DiffMean coefficients of
   :data:`DIFFMEAN_FRACTIONS` (``--diffmean-fractions``) of the norm.
   A line stops climbing once a strength pushes perplexity past 2x (stronger only breaks more)
   or mentions the concept in every continuation. Prompting (AxBench's reference: "Talk about
   X." before the prompt, no steering) and the unsteered model are measured once.
3. Scores (``golden_gate.py``'s, not re-implemented): mention of the concept (any keyword as a
   whole word), perplexity of the continuation under the unsteered model given the text the
   model saw, its ratio of medians to the unsteered continuations of the same prompts, and the
   share of distinct words (perplexity alone rewards repetition).
4. Choosing half (``data/steering_prompts_choose.txt``, first ``--choose-limit`` prompts): per
   line the ``golden_gate.pick`` strength (most mentions at <= 2x perplexity, ties: weaker);
   per SAE and concept the best feature line and the best DiffMean line (most mentions, then
   lowest ratio). A choice with no mention at all is not carried on.
5. Held-out half (``data/steering_prompts_heldout.txt``, all of it): only the chosen settings,
   prompting and the unsteered model. These are the reported figures; the target is an SAE
   feature bringing its concept into >= 50% of held-out continuations at <= 2x perplexity.

Budget flags (the grid above is the default): ``--methods``, ``--units``, ``--positions`` (feature
lines), ``--diffmean-positions``, ``--diffmean-fractions``, ``--choose-limit``, ``--heldout-limit``.
Rows already measured are reused whatever the flags, and the choice per SAE and concept is made
over every setting measured on the choosing half. ``--report-only`` loads no model and writes the
tables from the rows measured so far. Cost: each 24-token continuation and its re-read took
~5 s on the 2 shared cores at load 8-12 (data/README.md, "The Golden Gate attempt").

Outputs under ``--out``: ``rows.parquet`` (every continuation), ``state.json`` (candidates,
norms, timings), ``choosing.csv`` and ``heldout.csv`` (one row per setting), ``report.md``
(the tables of data/README.md's Golden Gate section) and, with ``--ship``, the Golden Gate
file that ``scope demo`` reads. Generation is batched across everything (each row steered its
own way, one ``generate`` call per positions value and batch), greedy, ``--tokens`` new tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from find_concept_feature import CONCEPTS, rank_concept, texts_of  # sibling scripts (run as a script)
from golden_gate import (
    CONCEPT_KEYWORDS,
    MAX_PERPLEXITY_RATIO,
    TARGET_MENTIONS,
    check_prompts,
    decoder_norm,
    distinct_word_share,
    feature_max_activation,
    json_safe,
    keyword_pattern,
    mentions,
    pick,
    read_prompts,
    residual_norm,
    summarise,
)
from tqdm.auto import tqdm

import scope
from scope import _checks
from scope._io import check_writable_dir, write_atomically, write_parquet
from scope.hooks import model_lock, sae_hook
from scope.inputs import pad, pad_id, to_tokens
from scope.labels import feature_labels, label_of
from scope.logits import final_logits

REPO = Path(__file__).resolve().parent.parent
CHOOSE_PROMPTS = REPO / "data" / "steering_prompts_choose.txt"
HELDOUT_PROMPTS = REPO / "data" / "steering_prompts_heldout.txt"
RAW_FRACTIONS = (0.05, 0.12)  # contribution norm / median residual norm at the hook
MAX_MULTIPLES = (2.0, 10.0)  # x the feature's max activation (Anthropic clamped at ~10x)
DIFFMEAN_FRACTIONS = (0.04, 0.08, 0.12)  # the issue: ~7% of the residual norm worked for ocean, music
POSITIONS = ("all", "generated")
# How the prompting reference names each concept: "Talk about the sea." (AxBench's wording).
PHRASES = {
    "dogs": "dogs", "sea": "the sea", "whales": "whales", "food": "food", "colours": "colours",
    "horses": "horses", "weather": "the weather", "money": "money", "france": "France", "church": "the church",
}  # fmt: skip
UNSTEERED, PROMPTING, CLAMP, ADD, DIFFMEAN = "unsteered", "prompting", "SAE clamp", "SAE add", "DiffMean add"


@dataclass(frozen=True)
class Cell:
    """One setting measured on one split: a line (what is steered, how, where) at one strength."""

    split: str  # "choose" | "heldout"
    family: str  # UNSTEERED, PROMPTING, CLAMP, ADD, DIFFMEAN
    concept: str = ""
    sae: str = ""  # the SAE spec ("" for prompting and unsteered)
    feature: int = -1  # -1: none (a direction, prompting, unsteered)
    unit: str = ""  # "act" | "max" for SAE methods
    positions: str = "all"
    strength: float = 0.0  # in the line's unit (x max for "max"; the raw value otherwise)
    value: float = 0.0  # the raw activation value / coefficient
    fraction: float = 0.0  # the steering vector's norm / the median residual norm at the hook

    @property
    def line(self) -> str:
        return f"{self.sae}|{self.concept}|{self.family}|{self.feature}|{self.unit}|{self.positions}"


@dataclass
class Target:
    """What a row steers with: the loaded SAE, its norms, and the concept directions at its hook."""

    spec: str
    sae: Any
    residual: float
    directions: dict[str, Any]
    candidates: dict[str, list[int]]


# ----------------------------------------------------------------------------- lines


def feature_lines(
    target: Target, concept: str, split: str = "choose", *, families: Sequence[str] = (CLAMP, ADD),
    units: Sequence[str] = ("act", "max"), positions_: Sequence[str] = POSITIONS,
    raw_fractions: Sequence[float] = RAW_FRACTIONS,
) -> list[list[Cell]]:  # fmt: skip
    """Each candidate feature x {clamp, add} x {act, max} x positions: an ascending strength grid."""
    lines = []
    for feature in target.candidates[concept]:
        norm = decoder_norm(target.sae, feature)
        peak = feature_max_activation(target.sae, feature)
        for family in families:
            for unit in units:
                if unit == "max" and not (peak > 0):
                    continue  # the SAE records no max activation for it
                for positions in positions_:
                    cells = []
                    for step in raw_fractions if unit == "act" else MAX_MULTIPLES:
                        value = step * target.residual / norm if unit == "act" else step * peak
                        cells.append(
                            Cell(split, family, concept, target.spec, feature, unit, positions,
                                 strength=value if unit == "act" else step, value=value,
                                 fraction=value * norm / target.residual)
                        )  # fmt: skip
                    lines.append(sorted(cells, key=lambda c: c.value))
    return lines


def diffmean_lines(
    target: Target, concept: str, split: str = "choose", *, positions_: Sequence[str] = POSITIONS,
    fractions: Sequence[float] = DIFFMEAN_FRACTIONS,
) -> list[list[Cell]]:  # fmt: skip
    return [
        [
            Cell(
                split,
                DIFFMEAN,
                concept,
                target.spec,
                -1,
                "act",
                positions,
                strength=f * target.residual,
                value=f * target.residual,
                fraction=f,
            )
            for f in fractions
        ]  # fmt: skip
        for positions in positions_
    ]


def next_cells(lines: list[list[Cell]], summary: Callable[[Cell], pd.Series | None]) -> list[Cell]:
    """The next strength of every line still climbing: its first unmeasured cell, unless a weaker
    one broke perplexity (> 2x) or already mentioned the concept everywhere."""
    todo = []
    for line in lines:
        for cell in line:
            figures = summary(cell)
            if figures is None:
                todo.append(cell)
                break
            ratio = figures["perplexity_ratio"]
            if not ratio <= MAX_PERPLEXITY_RATIO or figures["mention_fraction"] >= 1.0:
                break
    return todo


# ----------------------------------------------------------------------------- generation and scores


def steering_of(cell: Cell, targets: dict[str, Target]) -> list[Any]:
    if cell.family in (UNSTEERED, PROMPTING):
        return []
    target = targets[cell.sae]
    if cell.family == DIFFMEAN:
        return [scope.Add(target.directions[cell.concept], cell.value)]
    if cell.family == CLAMP:
        intervention = (
            scope.Clamp(cell.feature, cell.strength, unit="max")
            if cell.unit == "max"
            else scope.Clamp(cell.feature, cell.value)
        )
    else:
        intervention = scope.Add(cell.feature, cell.value)
    return [(target.sae, intervention)]


def text_of(cell: Cell, prompt: str) -> str:
    """What the model reads: the prompt, after AxBench's request for the prompting reference."""
    return f"Talk about {PHRASES.get(cell.concept, cell.concept)}. {prompt}" if cell.family == PROMPTING else prompt


def perplexities(
    model: Any, prompts: Sequence[torch.Tensor], continuations: Sequence[Sequence[int]], batch_size: int = 8
) -> list[float]:
    """``exp(-mean log p)`` of each continuation after its prompt (1-D token tensors, BOS
    included) under the model as it is: right-padded batches, one forward each, logits only
    where they score a generated token. NaN for an empty continuation."""
    result: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(zip(prompts[start : start + batch_size], continuations[start : start + batch_size]))
        sequences = [torch.cat([p.cpu(), torch.tensor(list(c), dtype=torch.long)]) for p, c in chunk]
        tokens, mask = pad(sequences, pad_id(model), side="right")
        with model_lock(model), torch.no_grad():
            residual = model(
                tokens.to(model.cfg.device), attention_mask=mask.to(model.cfg.device), stop_at_layer=model.cfg.n_layers
            )
            for row, (prompt, new) in enumerate(chunk):
                if len(new) == 0:
                    result.append(math.nan)
                    continue
                n = len(prompt)
                log_probs = final_logits(model, residual[row, n - 1 : n - 1 + len(new)]).float().log_softmax(-1)
                picked = log_probs.gather(-1, torch.tensor(list(new), device=log_probs.device)[:, None])
                result.append(math.exp(-picked.mean().item()))
    return result


def measure(
    model: Any,
    work: Sequence[tuple[Cell, int, str]],
    targets: dict[str, Target],
    *,
    max_new_tokens: int,
    batch_size: int,
    save: Callable[[list[dict[str, Any]]], Any],
    progress: bool = True,
) -> None:
    """Generate every (cell, prompt index, prompt) row, score it and hand each finished batch to
    ``save`` (rows as dicts), batch by batch: rows of one positions value share a generation."""
    bar = tqdm(total=len(work), desc="Golden Gate search", disable=not progress)
    for positions in POSITIONS:
        batch_work = [w for w in work if w[0].positions == positions]
        for start in range(0, len(batch_work), batch_size):
            batch = batch_work[start : start + batch_size]
            texts = [text_of(cell, prompt) for cell, _, prompt in batch]
            completions = scope.generate_completions(
                model, texts, steering=[steering_of(cell, targets) for cell, _, _ in batch], positions=positions,
                max_new_tokens=max_new_tokens, batch_size=batch_size,
            )  # fmt: skip
            prompt_tokens = [to_tokens(model, text)[0] for text in texts]
            scores = perplexities(model, prompt_tokens, [c.tokens for c in completions], batch_size=8)
            rows = []
            for (cell, i, prompt), completion, perplexity in zip(batch, completions, scores):
                pattern = keyword_pattern(CONCEPT_KEYWORDS[cell.concept]) if cell.concept else None
                rows.append(
                    {
                        **asdict(cell), "line": cell.line, "prompt_index": i, "prompt": prompt,
                        "text": completion.text, "tokens": list(completion.tokens),
                        "n_tokens": len(completion.tokens), "perplexity": perplexity,
                        "mentions": bool(pattern is not None and mentions(completion.text, pattern)),
                        "distinct_words": distinct_word_share(completion.text),
                    }
                )  # fmt: skip
            save(rows)
            bar.update(len(batch))
    bar.close()


# ----------------------------------------------------------------------------- figures


def mention_rows(rows: pd.DataFrame, split: str, concept: str) -> pd.DataFrame:
    """The unsteered rows of ``split`` scored for ``concept`` (the baseline of every line)."""
    base = rows[(rows["split"] == split) & (rows["family"] == UNSTEERED)].copy()
    pattern = keyword_pattern(CONCEPT_KEYWORDS[concept])
    base["mentions"] = [mentions(text, pattern) for text in base["text"]]
    return base


def line_table(rows: pd.DataFrame, cells: Sequence[Cell]) -> pd.DataFrame:
    """``golden_gate.summarise`` over the measured cells of one line (strength 0 = the unsteered
    rows of the same prompts): one row per cell, its setting beside its figures."""
    first = cells[0]
    measured = rows[rows["line"].eq(first.line) & rows["split"].eq(first.split)] if len(rows) else rows
    wanted = [c for c in cells if len(measured) and (measured["value"] == c.value).any()]
    if not wanted:
        return pd.DataFrame()
    base = mention_rows(rows, first.split, first.concept)
    base = base[base["prompt_index"].isin(measured["prompt_index"])]
    parts = [base.assign(strength=0.0)] + [
        measured[measured["value"] == c.value].assign(strength=float(k + 1)) for k, c in enumerate(wanted)
    ]
    frame = pd.concat(parts, ignore_index=True).assign(concept_activation=math.nan)
    table = summarise(frame, math.nan, 1.0, "act").set_index("strength")
    scores = table.loc[[float(k + 1) for k in range(len(wanted))], list(SCORES)].reset_index(drop=True)
    setting = pd.DataFrame([asdict(c) for c in wanted])
    n_prompts = [int(measured.loc[measured["value"] == c.value, "prompt_index"].nunique()) for c in wanted]
    return pd.concat([setting, scores], axis=1).assign(line=first.line, n_prompts=n_prompts)


SCORES = ("mention_fraction", "median_perplexity", "perplexity_ratio", "geometric_ratio", "distinct_words", "empty")


def best(tables: Sequence[pd.DataFrame]) -> pd.Series | None:
    """Over lines: each line's ``golden_gate.pick`` strength, then the most mentions, then the
    lowest perplexity ratio. None when no line has a strength within 2x."""
    picks = []
    for table in tables:
        if table.empty:
            continue
        chosen = pick(table.assign(strength=table["value"].abs()))
        if chosen is not None:
            picks.append(table[table["value"] == chosen["value"]].iloc[0])
    if not picks:
        return None
    frame = pd.DataFrame(picks).sort_values(["mention_fraction", "perplexity_ratio"], ascending=[False, True])
    return frame.iloc[0]


# ----------------------------------------------------------------------------- the search


class Search:
    """The state of one run: its rows (saved atomically after every batch) and its settings."""

    def __init__(self, out: Path, model: Any, targets: dict[str, Target], prompts: dict[str, list[str]],
                 concepts: Sequence[str], *, max_new_tokens: int = 24, batch_size: int = 32, progress: bool = True,
                 lines: dict[str, Any] | None = None):  # fmt: skip
        self.out, self.model, self.targets, self.prompts = Path(out), model, targets, prompts
        self.concepts = list(concepts)
        self.model_name = model.cfg.model_name if model is not None else ""
        self.max_new_tokens, self.batch_size, self.progress = max_new_tokens, batch_size, progress
        self.lines = lines or {}  # restrictions of the grid: families, units, positions (a budget)
        path = self.out / "rows.parquet"
        self.rows = pd.read_parquet(path) if path.is_file() else pd.DataFrame()
        self._summaries: dict[tuple[Cell, int], pd.Series | None] = {}

    def _save(self, new: list[dict[str, Any]]) -> None:
        self.rows = pd.concat([self.rows, pd.DataFrame(new)], ignore_index=True)
        write_parquet(self.rows, self.out / "rows.parquet")

    def _missing(self, cell: Cell) -> list[int]:
        """The prompts of the cell's split it has no row for (a rerun with more prompts fills them)."""
        wanted = range(len(self.prompts[cell.split]))
        if self.rows.empty:
            return list(wanted)
        found = self.rows[self.rows["line"].eq(cell.line) & self.rows["split"].eq(cell.split)]
        done = set(found.loc[found["value"] == cell.value, "prompt_index"])
        return [i for i in wanted if i not in done]

    def _done(self, cell: Cell) -> bool:
        return not self._missing(cell)

    def run(self, cells: Sequence[Cell]) -> None:
        work = [(c, i, self.prompts[c.split][i]) for c in dict.fromkeys(cells) for i in self._missing(c)]
        if work and self.model is not None:  # without a model: report on what is measured
            measure(self.model, work, self.targets, max_new_tokens=self.max_new_tokens,
                    batch_size=self.batch_size, save=self._save, progress=self.progress)  # fmt: skip

    def summary(self, cell: Cell) -> pd.Series | None:
        key = (cell, len(self.rows))  # rows only grow: their count dates a summary
        if key not in self._summaries:
            self._summaries[key] = line_table(self.rows, [cell]).iloc[0] if self._done(cell) else None
        return self._summaries[key]

    def choose(self, spec: str) -> dict[str, dict[str, pd.Series | None]]:
        """Climb every line of one SAE on the choosing half; return per concept the best feature
        setting and the best DiffMean setting."""
        target = self.targets[spec]
        self.run([Cell("choose", UNSTEERED)])
        restrict = self.lines
        lines = {
            c: feature_lines(target, c, families=restrict.get("families", (CLAMP, ADD)),
                             units=restrict.get("units", ("act", "max")),
                             positions_=restrict.get("positions", POSITIONS),
                             raw_fractions=restrict.get("raw_fractions", RAW_FRACTIONS))
            + diffmean_lines(target, c, positions_=restrict.get("diffmean_positions", POSITIONS),
                             fractions=restrict.get("diffmean_fractions", DIFFMEAN_FRACTIONS))
            for c in self.concepts
        }  # fmt: skip
        while self.model is not None:
            todo = [cell for c in self.concepts for cell in next_cells(lines[c], self.summary)]
            if not todo:
                break
            self.run(todo)
        chosen = {}
        for concept in self.concepts:
            tables = self.measured_lines("choose", spec, concept)  # every setting measured, climbed now or before
            chosen[concept] = {
                "feature": best([t for t in tables if not t.empty and t["family"].iloc[0] != DIFFMEAN]),
                "direction": best([t for t in tables if not t.empty and t["family"].iloc[0] == DIFFMEAN]),
            }
        return chosen

    def held_out(self, chosen: dict[str, dict[str, pd.Series | None]]) -> None:
        """Run the chosen settings (those that mentioned the concept at all) on the held-out half."""
        cells = [Cell("heldout", UNSTEERED)] + [Cell("heldout", PROMPTING, c) for c in self.concepts]
        for picks in chosen.values():
            for choice in picks.values():
                if choice is not None and choice["mention_fraction"] > 0:
                    cells.append(as_cell(choice, "heldout"))
        features = [p["feature"] for p in chosen.values() if p["feature"] is not None]
        if features:  # the SAE's best feature setting is always reported, even without a mention
            top = min(features, key=lambda r: (-r["mention_fraction"], r["perplexity_ratio"]))
            cells.append(as_cell(top, "heldout"))
        self.run(cells)

    def measured_lines(self, split: str, spec: str, concept: str) -> list[pd.DataFrame]:
        """One :func:`line_table` per measured line of one SAE and concept."""
        rows = self.rows
        if rows.empty:
            return []
        mine = rows[rows["split"].eq(split) & rows["sae"].eq(spec) & rows["concept"].eq(concept)]
        tables = []
        for _, group in mine.groupby("line", sort=False):
            cells = sorted({as_cell(r, split) for r in group.to_dict("records")}, key=lambda c: c.value)
            tables.append(line_table(rows, cells))
        return tables

    def tables(self, split: str) -> pd.DataFrame:
        """One row per measured setting of ``split``: the setting and its figures."""
        rows = self.rows[self.rows["split"] == split]
        tables = []
        for _, group in rows[rows["family"] != UNSTEERED].groupby("line", sort=False):
            cells = sorted({as_cell(r, split) for r in group.to_dict("records")}, key=lambda c: c.value)
            tables.append(line_table(self.rows, cells))
        return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def as_cell(record: Any, split: str) -> Cell:
    fields = Cell.__dataclass_fields__
    values = {name: record[name] for name in fields if name != "split"}
    values["feature"], values["value"] = int(values["feature"]), float(values["value"])
    values["strength"], values["fraction"] = float(values["strength"]), float(values["fraction"])
    return Cell(split=split, **values)


# ----------------------------------------------------------------------------- setup


def load_target(model: Any, spec: str, concepts: Sequence[str], prompts: Sequence[str], k: int, state: dict) -> Target:
    """An SAE with its residual norm, its candidates (ranked once, then read from ``state``) and
    the DiffMean direction of each concept at its hook."""
    sae = scope.load_sae(spec, device=model.cfg.device if model is not None else "cpu")
    saved = state.setdefault("saes", {}).setdefault(spec, {})
    if model is None:  # a report on rows already measured: what was ranked is in the state
        return Target(spec, sae, float(saved["residual_norm"]), {}, {c: saved["candidates"][c][:k] for c in concepts})
    if "residual_norm" not in saved:
        saved["residual_norm"] = residual_norm(model, sae, prompts)
    candidates = saved.setdefault("candidates", {})
    for concept in concepts:
        if concept not in candidates or len(candidates[concept]) < k:
            ranking = rank_concept(model, sae, concept, k=k)
            candidates[concept] = [int(f) for f in ranking["feature"]]
            saved.setdefault("rankings", {})[concept] = (
                ranking.astype(object).where(ranking.notna(), None).to_dict("records")
            )
    hook = sae_hook(sae)
    directions = {c: scope.diffmean(model, hook, *texts_of(c), label=f"DiffMean {c}") for c in concepts}
    saved["hook"] = hook
    return Target(spec, sae, float(saved["residual_norm"]), directions, {c: candidates[c][:k] for c in concepts})


def write_json(content: dict[str, Any], path: Path) -> Path:
    text = json.dumps(json_safe(content), indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    return write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ----------------------------------------------------------------------------- report


def figures(row: pd.Series) -> dict[str, Any]:
    keys = ("mention_fraction", "median_perplexity", "perplexity_ratio", "geometric_ratio", "distinct_words",
            "n_prompts")  # fmt: skip
    return {k: row[k] for k in keys}


def setting(row: pd.Series) -> dict[str, Any]:
    keys = ("family", "concept", "sae", "feature", "unit", "positions", "strength", "value", "fraction")
    return {k: row[k] for k in keys}


def unsteered_figures(rows: pd.DataFrame, split: str, concepts: Sequence[str]) -> dict[str, pd.Series]:
    """The unsteered model's mention rate per concept (its perplexity ratio is 1 by definition)."""
    figures = {}
    for concept in concepts:
        base = mention_rows(rows, split, concept)
        figures[concept] = pd.Series(
            {"mention_fraction": float(np.mean(list(base["mentions"]))) if len(base) else math.nan,
             "perplexity_ratio": 1.0,
             "distinct_words": float(np.nanmean([distinct_word_share(t) for t in base["text"]]))
             if len(base) else math.nan}
        )  # fmt: skip
    return figures


def meets_target(row: pd.Series | dict[str, Any]) -> bool:
    return bool(row["mention_fraction"] >= TARGET_MENTIONS and row["perplexity_ratio"] <= MAX_PERPLEXITY_RATIO)


def held_out_row(search: Search, choice: pd.Series) -> pd.Series | None:
    heldout = line_table(search.rows, [as_cell(choice, "heldout")])
    return None if heldout.empty else heldout.iloc[0]


def continuations(search: Search, choice: pd.Series, split: str = "heldout") -> list[dict[str, Any]]:
    cell = as_cell(choice, split)
    rows = search.rows[search.rows["line"].eq(cell.line) & search.rows["split"].eq(split)]
    rows = rows[rows["value"] == cell.value].sort_values("prompt_index")
    return [
        {"prompt": int(r.prompt_index), "text": r.text, "mentions": bool(r.mentions), "perplexity": r.perplexity}
        for r in rows.itertuples()
    ]


def golden_gate(search: Search, chosen: dict[str, dict[str, dict[str, pd.Series | None]]]) -> dict[str, Any] | None:
    """The shipped file: the SAE-feature setting that did best on the choosing half (most
    mentions, then lowest ratio), its held-out figures, and DiffMean for the same concept."""
    features = [
        (spec, c, p["feature"]) for spec, per in chosen.items() for c, p in per.items() if p["feature"] is not None
    ]
    carried = [(s, c, p) for s, c, p in features if held_out_row(search, p) is not None]
    if not carried:
        return None
    spec, concept, choice = min(carried, key=lambda t: (-t[2]["mention_fraction"], t[2]["perplexity_ratio"]))
    heldout = held_out_row(search, choice)
    sae = search.targets[spec].sae
    feature = int(choice["feature"])
    directions = {
        (s, c): held_out_row(search, p["direction"]) for s, per in chosen.items() for c, p in per.items()
        if p["direction"] is not None and held_out_row(search, p["direction"]) is not None
    }  # fmt: skip
    reference = [(s, c) for s, c in directions if c == concept]
    best_direction = max(
        directions, key=lambda k: (directions[k]["mention_fraction"], -directions[k]["perplexity_ratio"]), default=None
    )
    unsteered = mention_rows(search.rows, "heldout", concept)
    content = {
        "model": search.model_name,
        "sae": spec,
        "hook": sae_hook(sae),
        "feature": feature,
        "label": label_of(feature_labels(sae), [feature])[0],
        "concept": concept,
        "keywords": CONCEPT_KEYWORDS[concept],
        "method": "clamp" if choice["family"] == CLAMP else "add",
        "unit": choice["unit"],
        "positions": choice["positions"],
        "value": float(choice["value"]),
        "strength": float(choice["strength"]),
        "fraction_of_residual": float(choice["fraction"]),
        "max_activation": feature_max_activation(sae, feature),
        "residual_norm": search.targets[spec].residual,
        "meets_target": meets_target(heldout),
        "target": {"mention_fraction": TARGET_MENTIONS, "max_perplexity_ratio": MAX_PERPLEXITY_RATIO},
        "pick": {"value": float(choice["value"]), **figures(heldout), "target_met": meets_target(heldout)},
        "choosing": figures(choice),
        "heldout": {
            **figures(heldout),
            "unsteered_mention_fraction": float(unsteered["mentions"].mean()),
            "continuations": continuations(search, choice),
        },  # fmt: skip
        "diffmean": _direction_entry(search, chosen, *reference[0]) if reference else None,
        "diffmean_best": _direction_entry(search, chosen, *best_direction) if best_direction else None,
        "prompts": search.prompts["heldout"],
        "max_new_tokens": search.max_new_tokens,
        "decoding": "greedy",
        "complete": True,
        "command": " ".join(["scripts/steering_benchmark.py", *sys.argv[1:]]),
    }
    return content


def _direction_entry(search: Search, chosen: dict, spec: str, concept: str) -> dict[str, Any]:
    choice = chosen[spec][concept]["direction"]
    heldout = held_out_row(search, choice)
    positive, negative = texts_of(concept)
    return {
        "kind": "direction (DiffMean, not an SAE feature)",
        "sae": spec,
        "hook": sae_hook(search.targets[spec].sae),
        "concept": concept,
        "keywords": CONCEPT_KEYWORDS[concept],
        "method": "add",
        "positions": choice["positions"],
        "value": float(choice["value"]),
        "fraction_of_residual": float(choice["fraction"]),
        "meets_target": meets_target(heldout),
        "choosing": figures(choice),
        "heldout": {**figures(heldout), "continuations": continuations(search, choice)},
        "positive": positive,
        "negative": negative,
    }


def markdown(
    heldout: pd.DataFrame,
    choosing: pd.DataFrame,
    concepts: Sequence[str],
    unsteered: dict[str, pd.Series] | None = None,
) -> str:
    """The method x concept table (held-out) and the per-family best on the choosing half."""

    def cell(row: pd.Series | None) -> str:
        if row is None:
            return "-"
        return f"{row['mention_fraction']:.0%} / {row['perplexity_ratio']:.2f}x / {row['distinct_words']:.2f}"

    def label(row: pd.Series) -> str:
        if row["family"] == PROMPTING:
            return "prompting"
        return f"{row['family']} ({row['sae']})" if row["family"] == DIFFMEAN else f"SAE feature ({row['sae']})"

    lines = ["| method | " + " | ".join(concepts) + " |", "|---|" + "---|" * len(concepts)]
    if unsteered is not None:
        lines.append("| unsteered | " + " | ".join(cell(unsteered.get(c)) for c in concepts) + " |")
    if heldout.empty:
        heldout = pd.DataFrame(
            columns=["family", "sae", "concept", "feature", "unit", "positions", "value", "fraction"]
        )
    labelled = heldout.assign(method=[label(r) for _, r in heldout.iterrows()])
    for method, group in labelled.groupby("method", sort=True):
        by_concept = {r["concept"]: r for _, r in group.iterrows()}
        lines.append(f"| {method} | " + " | ".join(cell(by_concept.get(c)) for c in concepts) + " |")
    out = ["Held-out half (mention rate / perplexity ratio / distinct-word share):", "", *lines, ""]
    settings = [
        "| method | concept | feature | unit | positions | value | fraction of residual |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in labelled[labelled["family"] != PROMPTING].iterrows():
        feature = r["feature"] if r["feature"] >= 0 else "-"
        settings.append(
            f"| {r['method']} | {r['concept']} | {feature} | {r['unit']} | {r['positions']} | {r['value']:.4g} "
            f"| {r['fraction']:.3f} |"
        )
    out += ["Chosen settings:", "", *settings, ""]
    best_rows = ["| family (SAE) | " + " | ".join(concepts) + " |", "|---|" + "---|" * len(concepts)]
    for (family, sae), group in choosing[choosing["family"] != PROMPTING].groupby(["family", "sae"], sort=True):
        cells = []
        for concept in concepts:
            rows = group[group["concept"] == concept]
            ok = rows[rows["perplexity_ratio"] <= MAX_PERPLEXITY_RATIO].sort_values(
                ["mention_fraction", "perplexity_ratio"], ascending=[False, True]
            )
            cells.append(cell(ok.iloc[0]) if len(ok) else ("none <= 2x" if len(rows) else "-"))
        best_rows.append(f"| {family} ({sae}) | " + " | ".join(cells) + " |")
    out += ["Choosing half, best setting within 2x per family:", "", *best_rows, ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", nargs="+", default=["demo", "demo-docs"], help="SAE specs, searched in order")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPT_KEYWORDS), help="concept names")
    parser.add_argument("--candidates", type=int, default=1, help="top contrastive features per concept and SAE")
    parser.add_argument("--choose-limit", type=int, default=8, help="choosing-half prompts used (budget)")
    parser.add_argument("--methods", nargs="+", choices=("clamp", "add"), default=["clamp", "add"])
    parser.add_argument("--units", nargs="+", choices=("act", "max"), default=["act", "max"])
    parser.add_argument("--positions", nargs="+", choices=POSITIONS, default=list(POSITIONS), help="for features")
    parser.add_argument("--diffmean-positions", nargs="+", choices=POSITIONS, default=list(POSITIONS))
    parser.add_argument("--heldout-limit", type=int, default=None, help="held-out prompts used (all by default)")
    parser.add_argument("--diffmean-fractions", nargs="+", type=float, default=list(DIFFMEAN_FRACTIONS))
    parser.add_argument(
        "--raw-fractions", nargs="+", type=float, default=list(RAW_FRACTIONS),
        help="feature strengths in raw units, as fractions of the median residual norm at the hook",
    )  # fmt: skip
    parser.add_argument("--report-only", action="store_true", help="no model: tables from the rows measured so far")
    parser.add_argument("--tokens", type=int, default=24, help="greedy new tokens per continuation")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a contended machine)")
    parser.add_argument("--out", type=Path, required=True, help="folder for rows.parquet, report.md, ...")
    parser.add_argument("--ship", type=Path, default=None, help="also write the Golden Gate json here")
    args = parser.parse_args(argv)

    # Cheap checks first: a typo costs milliseconds, not a model load.
    unknown = [c for c in args.concepts if c not in CONCEPT_KEYWORDS or c not in CONCEPTS]
    if unknown:
        raise ValueError(f"unknown concepts {unknown}; valid: {', '.join(CONCEPT_KEYWORDS)}.")
    _checks.positive_int(args.candidates, "--candidates")
    _checks.positive_int(args.tokens, "--tokens")
    prompts = {
        "choose": check_prompts(
            read_prompts(CHOOSE_PROMPTS)[: _checks.positive_int(args.choose_limit, "--choose-limit")]
        ),
        "heldout": check_prompts(read_prompts(HELDOUT_PROMPTS)[: args.heldout_limit]),
    }
    check_writable_dir(args.out, "--out")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    state_path = args.out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    grid = {"raw_fractions": args.raw_fractions, "max_multiples": MAX_MULTIPLES,
            "diffmean_fractions": args.diffmean_fractions}  # fmt: skip
    if not args.report_only:
        state.update(model=args.model, concepts=args.concepts, prompts=prompts, tokens=args.tokens, **grid)
    timings = state.setdefault("seconds", {})

    started = time.perf_counter()
    model = None if args.report_only else scope.load_model(args.model)
    targets: dict[str, Target] = {}
    for spec in args.sae:
        targets[spec] = load_target(model, spec, args.concepts, prompts["choose"], args.candidates, state)
        write_json(state, state_path)
    restrict: dict[str, Any] = {"families": [CLAMP if m == "clamp" else ADD for m in args.methods], "units": args.units,
                "positions": args.positions, "raw_fractions": args.raw_fractions,
                "diffmean_fractions": args.diffmean_fractions,
                "diffmean_positions": args.diffmean_positions}  # fmt: skip
    if not args.report_only:
        state.setdefault("runs", []).append({"argv": sys.argv[1:], **restrict})
    search = Search(args.out, model, targets, prompts, args.concepts, max_new_tokens=args.tokens,
                    batch_size=args.batch_size, lines=restrict)  # fmt: skip
    search.model_name = args.model
    chosen = {}
    for spec in args.sae:  # each SAE chosen and held out before the next: a cut-short run keeps whole SAEs
        t0 = time.perf_counter()
        chosen[spec] = search.choose(spec)
        search.held_out(chosen[spec])
        timings[spec] = timings.get(spec, 0.0) + time.perf_counter() - t0
        write_json(state, state_path)
    timings["total_this_run"] = time.perf_counter() - started
    write_json(state, state_path)

    choosing, heldout = search.tables("choose"), search.tables("heldout")
    choosing.to_csv(args.out / "choosing.csv", index=False)
    heldout.to_csv(args.out / "heldout.csv", index=False)
    report = markdown(heldout, choosing, args.concepts, unsteered_figures(search.rows, "heldout", args.concepts))
    (args.out / "report.md").write_text(report, encoding="utf-8")
    print(report)
    content = golden_gate(search, chosen)
    if content is not None:
        write_json(content, args.out / "golden_gate.json")
        if args.ship:
            write_json(content, args.ship)
            print(f"wrote {args.ship}")
    print(f"seconds: {json.dumps(timings)}")
    return {"state": state, "golden_gate": content, "choosing": choosing, "heldout": heldout}


if __name__ == "__main__":
    main()
