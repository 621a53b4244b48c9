"""Automated interpretability: an LLM explains each feature from its examples, and each
explanation is scored by *detection*.

The method and the prompt formats follow the published pipelines:

- Bills et al. 2023, "Language models can explain neurons in language models" (OpenAI,
  github.com/openai/automated-interpretability): an explainer reads a feature's top-activating
  contexts and writes a one-sentence explanation of what it responds to.
- EleutherAI's delphi (Paulo et al. 2024, "Automatically Interpreting Millions of Features in
  Large Language Models", github.com/EleutherAI/delphi, ``delphi/explainers/default/prompts.py``
  and ``delphi/scorers/classifier``): examples are shown as ``Example 1: ... <<activating
  tokens>> ...`` (consecutive activating tokens inside one pair of delimiters), the answer's last
  line is ``[EXPLANATION]: ...``; the detection scorer sees an explanation and a shuffled mix of
  activating and non-activating contexts and answers with a Python list of 1s and 0s, one per
  example. Neuronpedia's auto-interp runs the same explainer/scorer prompts.

Explaining (:func:`explain`), per feature:

1. Split the mined examples by rank: odd ranks (1, 3, 5, ...) are shown to the explainer, even
   ranks are held out for scoring, so both halves span the same part of the distribution.
2. Mark, in each shown context, the tokens whose activation is at least ``mark`` x the example's
   peak (the peak always), as ``<<...>>``; whitespace is made readable (``\\n`` for newlines,
   long space runs shortened).
3. Ask the explainer (system guidelines, one worked example, then this feature's examples) and
   keep the text after ``[EXPLANATION]:`` (else the first line of the reply).

Scoring (:func:`score_explanations`), per feature:

1. Activating contexts: held-out (even-rank) examples. Non-activating contexts: other features'
   example contexts on which this feature is silent on every token, checked by encoding them
   with the model and SAE (one batched pass over a shared pool of candidates).
2. Shuffle both together (seeded) and cut them into prompts of ``examples_per_prompt``; every
   prompt of every feature in a batch goes to the scorer in one ``chat`` call.
3. Parse each reply's list of 0/1. A reply that gives no list of the right length counts as
   "none activate" for its examples (and is counted in ``n_unparsed``): a scorer that cannot
   follow the format scores like a guesser, never better.
4. balanced accuracy = (recall + specificity) / 2, plus precision and recall, per feature.

Both write their table to ``out=`` (Parquet, atomically, after every batch); a rerun with the
same ``out`` skips the features already there, so a killed 16k-feature run resumes.
"""

from __future__ import annotations

import ast
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from scope import _checks
from scope._io import batched, check_writable_file, write_parquet
from scope.hooks import check_compatible, run_to_hooks, sae_hook
from scope.inputs import pad, pad_id
from scope.labels import split_peak
from scope.llm import as_llm
from scope.mining import Mined

EXPLAIN_COLUMNS = ["feature", "explanation", "explainer", "n_examples", "reply"]
SCORE_COLUMNS = [
    "feature",
    "explanation",
    "scorer",
    "balanced_accuracy",
    "precision",
    "recall",
    "accuracy",
    "n_activating",
    "n_non_activating",
    "n_prompts",
    "n_unparsed",
]
MARK_OPEN, MARK_CLOSE = "<<", ">>"

# Guidelines in the spirit of delphi's default explainer prompt and Bills et al.'s (our wording).
EXPLAIN_SYSTEM = """You are a meticulous AI researcher studying the features of a language model. \
A feature fires on particular tokens in text. You will see text examples where the feature fires; \
the tokens where it fires most are marked between delimiters <<like this>>, and consecutive marked \
tokens share one pair <<like this too>>.
- Describe in one short sentence what the marked tokens and their contexts have in common.
- Say what the feature responds to; do not list every example and do not mention the << >> markers.
- The last line of your answer must be the explanation, written as [EXPLANATION]: your sentence"""

EXPLAIN_EXAMPLE = (
    """Example 1: we went back to the <<house>> after dinner
Example 2: she kept the letters in <<a box>> under the bed
Example 3: smoke drifted out of the <<kitchen>> window""",
    "[EXPLANATION]: Nouns for places or containers that something is inside of.",
)

# Instructions in the spirit of delphi's detection scorer prompt (our wording).
DETECT_SYSTEM = """You are a meticulous linguistics researcher. You will be given the explanation \
of a feature of text, such as "male pronouns" or "text about cooking", and then several numbered \
text examples. Decide for each example whether the feature is present in it.
Answer with a Python list holding one number per example, in order: 1 if the feature is present, \
0 if it is not. Return only the list."""

DETECT_EXAMPLE = (
    """Feature explanation: The word "end" in the American football position "tight end".

Text examples:

Example 0: the Patriots tight end caught the ball on the run
Example 1: the names of months in the old calendar were
Example 2: the defensive end spoke to reporters after the
Example 3: tight end Rob Gronkowski had his best season""",
    "[1, 0, 0, 1]",
)


# ----------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Example:
    """One mined context of one feature: its pieces of text (tokens, or larger pieces from a
    Parquet table), the feature's activation on each (None when unknown), and the peak's index."""

    feature: int
    rank: int
    activation: float
    text_id: int
    position: int
    pieces: tuple[str, ...]
    acts: tuple[float, ...] | None
    peak: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def mined_examples(mined: Any) -> dict[int, list[Example]]:
    """Each feature's examples, by rank, from a :class:`scope.Mined`, a top-examples DataFrame
    (:func:`scope.top_examples`) or the Parquet file :func:`scope.mine` wrote."""
    if isinstance(mined, Mined):
        return _from_mined(mined)
    if isinstance(mined, (str, os.PathLike)):
        path = Path(mined)
        if not path.exists():
            raise FileNotFoundError(f"No mined examples at {path} (write them with scope.mine(..., out=path)).")
        mined = pd.read_parquet(path)
    if isinstance(mined, pd.DataFrame):
        return _from_frame(mined)
    if isinstance(mined, Mapping):
        raise TypeError(
            f"mined holds several SAEs ({', '.join(map(str, list(mined)[:5]))}); pass one of them, e.g. mined[name]."
        )
    raise TypeError(
        "mined must be a scope.Mined, a top-examples DataFrame or the path of its Parquet file, "
        f"got {type(mined).__name__}."
    )


def _from_mined(mined: Mined) -> dict[int, list[Example]]:
    frame = mined.examples
    c = mined.context_ids.shape[1] // 2
    result: dict[int, list[Example]] = {}
    for row, record in enumerate(frame.itertuples(index=False)):
        ids = mined.context_ids[row].tolist()
        pieces, acts = mined.span(row)
        peak = c - sum(1 for i in ids[:c] if i < 0)  # ids outside the text only sit at the ends
        result.setdefault(int(record.feature), []).append(
            Example(
                int(record.feature),
                int(record.rank),
                float(record.activation),
                int(record.text_id),
                int(record.position),
                tuple(pieces),
                tuple(float(a) for a in acts),
                peak,
            )
        )
    return result


def _from_frame(frame: pd.DataFrame) -> dict[int, list[Example]]:
    missing = {"feature", "rank", "activation", "text_id", "position", "context"} - set(frame.columns)
    if missing:
        raise ValueError(f"The mined table lacks the columns {sorted(missing)}; it has {list(frame.columns)}.")
    if "sae" in frame.columns and frame["sae"].nunique() > 1:
        raise ValueError(
            f"The mined table holds several SAEs ({', '.join(map(str, frame['sae'].unique()[:5]))}); "
            "pass one: frame[frame.sae == name]."
        )
    result: dict[int, list[Example]] = {}
    for record in frame.sort_values(["feature", "rank"]).itertuples(index=False):
        before, peak, after = split_peak(str(record.context))
        result.setdefault(int(record.feature), []).append(
            Example(
                int(record.feature),
                int(record.rank),
                float(record.activation),
                int(record.text_id),
                int(record.position),
                (before, peak, after),
                None,
                1,
            )
        )
    return result


def split_examples(examples: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(shown to the explainer, held out for scoring): odd and even ranks."""
    ordered = sorted(examples, key=lambda e: e.rank)
    return ordered[0::2], ordered[1::2]


def readable(text: str) -> str:
    """Text as one readable line: newlines and tabs as ``\\n`` / ``\\t``, space runs of more than
    two shortened to two (deep indentation says nothing about a feature)."""
    text = text.replace("\r", "").replace("\n", "\\n").replace("\t", "\\t")
    return re.sub(r" {3,}", "  ", text)


def marked(example: Example, mark: float = 0.3) -> str:
    """The example as one line with its activating tokens between ``<<`` ``>>`` (delphi's format):
    tokens at or above ``mark`` x the example's peak activation, and always the peak."""
    peak_value = example.acts[example.peak] if example.acts else 0.0
    out, inside = [], False
    for i, piece in enumerate(example.pieces):
        on = i == example.peak or (example.acts is not None and peak_value > 0 and example.acts[i] >= mark * peak_value)
        if on and not inside:
            out.append(MARK_OPEN)
        elif not on and inside:
            out.append(MARK_CLOSE)
        inside = on
        out.append(readable(piece))
    if inside:
        out.append(MARK_CLOSE)
    return "".join(out).strip()


# ----------------------------------------------------------------------------- prompts


def explain_conversation(examples: Sequence[Example], mark: float = 0.3) -> list[dict[str, str]]:
    """The chat that asks for one feature's explanation."""
    shown = "\n".join(f"Example {i}: {marked(e, mark)}" for i, e in enumerate(examples, 1))
    return [
        {"role": "system", "content": EXPLAIN_SYSTEM},
        {"role": "user", "content": EXPLAIN_EXAMPLE[0]},
        {"role": "assistant", "content": EXPLAIN_EXAMPLE[1]},
        {"role": "user", "content": shown},
    ]


def detect_conversation(explanation: str, texts: Sequence[str]) -> list[dict[str, str]]:
    """The chat that asks which of ``texts`` show the explained feature."""
    shown = "\n".join(f"Example {i}: {readable(t).strip()}" for i, t in enumerate(texts))
    return [
        {"role": "system", "content": DETECT_SYSTEM},
        {"role": "user", "content": DETECT_EXAMPLE[0]},
        {"role": "assistant", "content": DETECT_EXAMPLE[1]},
        {"role": "user", "content": f"Feature explanation: {explanation}\n\nText examples:\n\n{shown}"},
    ]


def parse_explanation(reply: str) -> str:
    """The text after the last ``[EXPLANATION]:``, else the reply's first non-empty line."""
    if "[EXPLANATION]:" in reply:
        text = reply.rsplit("[EXPLANATION]:", 1)[1]
    else:
        text = next((line for line in reply.splitlines() if line.strip()), "")
    return " ".join(text.split()).strip("\"' ")[:300]


def parse_detection(reply: str, n: int) -> list[int] | None:
    """The reply's list of ``n`` zeros and ones (the first bracketed list), or None."""
    for match in re.finditer(r"\[[^\[\]]*\]", reply):
        try:
            values = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            continue
        if isinstance(values, list) and len(values) == n and all(v in (0, 1) for v in values):
            return [int(v) for v in values]
    return None


# ----------------------------------------------------------------------------- explain


def explain(
    mined: Any,
    features: Sequence[int] | None = None,
    *,
    explainer: Any,
    n_examples: int = 10,
    mark: float = 0.3,
    max_tokens: int = 96,
    batch_size: int = 16,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """A one-sentence explanation per feature, written by an LLM from the feature's examples.

    Args:
        mined: a :class:`scope.Mined`, a top-examples DataFrame or its Parquet path. From a
            ``Mined`` every token above ``mark`` x the example's peak is marked; from a table
            only the peak token is.
        features: which features (default: every feature with examples).
        explainer: an :class:`scope.LLM` (:class:`scope.Endpoint`, :class:`scope.LocalLLM`) or a
            model loaded with :func:`scope.load_model` (an instruction-tuned one for real use).
        n_examples: examples shown per feature (odd ranks 1, 3, ...; even ranks are held out
            for :func:`score_explanations`).
        max_tokens: the longest reply.
        batch_size: features per ``explainer.chat`` call (and per write of ``out``).
        out: a Parquet path; written after every batch, and a rerun skips the features it holds.
        overwrite: start ``out`` afresh instead of resuming it.

    Returns DataFrame(feature, explanation, explainer, n_examples, reply), ``reply`` being the
    explainer's full answer. See the module docstring for the method and its sources.
    """
    llm = as_llm(explainer)
    n_examples = _checks.positive_int(n_examples, "n_examples")
    mark = _fraction(mark, "mark")
    max_tokens = _checks.positive_int(max_tokens, "max_tokens")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    examples = mined_examples(mined)
    chosen = chosen_features(examples, features)
    done = _resume(out, EXPLAIN_COLUMNS, "explainer", llm.name, overwrite)
    rows = [r for r in done.to_dict("records") if r["feature"] in set(chosen)]
    todo = [f for f in chosen if f not in set(done.feature)]
    for batch in _progress(todo, batch_size, progress, "explain"):
        shown = [split_examples(examples[f])[0][:n_examples] for f in batch]
        replies = llm.chat([explain_conversation(s, mark) for s in shown], max_tokens=max_tokens)
        rows += [
            {"feature": f, "explanation": parse_explanation(r), "explainer": llm.name, "n_examples": len(s), "reply": r}
            for f, s, r in zip(batch, shown, replies)
        ]
        _save(out, done, rows, EXPLAIN_COLUMNS)
    return _table(rows, EXPLAIN_COLUMNS, chosen)


# ----------------------------------------------------------------------------- score


def score_explanations(
    mined: Any,
    explanations: Any,
    *,
    scorer: Any,
    model: Any,
    sae: Any,
    n_activating: int = 5,
    n_non_activating: int = 5,
    examples_per_prompt: int = 5,
    seed: int = 0,
    max_tokens: int = 32,
    batch_size: int = 16,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Detection scores: how well an LLM, given only an explanation, tells contexts where the
    feature fires from contexts where it is silent.

    Args:
        mined: the same mined examples the explanations came from (see :func:`explain`).
        explanations: :func:`explain`'s DataFrame (or any with ``feature`` and ``explanation``
            columns), or a dict ``{feature: explanation}``.
        scorer: an :class:`scope.LLM` or a loaded model (often the explainer itself).
        model, sae: the subject and SAE the examples were mined with; they check that the
            non-activating contexts really are silent for the feature.
        n_activating: held-out (even-rank) activating contexts per feature, at most.
        n_non_activating: non-activating contexts per feature (other features' contexts).
        examples_per_prompt: contexts shown per prompt (delphi shows 5).
        seed: the shuffle and the choice of non-activating contexts.
        batch_size: features per ``scorer.chat`` call (and per write of ``out``).
        out, overwrite, progress: as for :func:`explain`.

    Returns DataFrame(feature, explanation, scorer, balanced_accuracy, precision, recall,
    accuracy, n_activating, n_non_activating, n_prompts, n_unparsed). Balanced accuracy is 0.5
    for a scorer that guesses; a metric that is undefined (no held-out activating context, or
    nothing predicted positive for precision) is NaN.
    """
    llm = as_llm(scorer)
    n_activating = _checks.positive_int(n_activating, "n_activating")
    n_non_activating = _checks.positive_int(n_non_activating, "n_non_activating")
    examples_per_prompt = _checks.positive_int(examples_per_prompt, "examples_per_prompt")
    seed = _checks.seed(seed)
    max_tokens = _checks.positive_int(max_tokens, "max_tokens")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    check_compatible(model, sae)
    examples = mined_examples(mined)
    explained = _explanations(explanations)
    chosen = chosen_features(examples, list(explained))
    done = _resume(out, SCORE_COLUMNS, "scorer", llm.name, overwrite)
    rows = [r for r in done.to_dict("records") if r["feature"] in set(chosen)]
    todo = [f for f in chosen if f not in set(done.feature)]
    silent = silent_contexts(model, sae, examples, todo, n_non_activating, seed) if todo else {}
    for batch in _progress(todo, batch_size, progress, "score"):
        trials = [
            _trial(f, explained[f], examples[f], silent[f], n_activating, examples_per_prompt, seed) for f in batch
        ]
        conversations = [c for t in trials for c in t.conversations]
        replies = iter(llm.chat(conversations, max_tokens=max_tokens) if conversations else [])
        rows += [t.scored([next(replies) for _ in t.conversations], llm.name) for t in trials]
        _save(out, done, rows, SCORE_COLUMNS)
    return _table(rows, SCORE_COLUMNS, chosen)


@dataclass
class _Trial:
    """One feature's detection prompts and the truth behind them."""

    feature: int
    explanation: str
    prompts: list[list[tuple[str, int]]]  # per prompt: (text, 1 if activating)

    @property
    def conversations(self) -> list[list[dict[str, str]]]:
        return [detect_conversation(self.explanation, [t for t, _ in p]) for p in self.prompts]

    def scored(self, replies: list[str], scorer: str) -> dict[str, Any]:
        truth, predicted, unparsed = [], [], 0
        for prompt, reply in zip(self.prompts, replies):
            answer = parse_detection(reply, len(prompt))
            unparsed += answer is None
            truth += [label for _, label in prompt]
            predicted += answer if answer is not None else [0] * len(prompt)
        return {
            "feature": self.feature,
            "explanation": self.explanation,
            "scorer": scorer,
            **detection_metrics(truth, predicted),
            "n_activating": sum(truth),
            "n_non_activating": len(truth) - sum(truth),
            "n_prompts": len(self.prompts),
            "n_unparsed": unparsed,
        }


def detection_metrics(truth: Sequence[int], predicted: Sequence[int]) -> dict[str, float]:
    """Balanced accuracy, precision, recall and accuracy of 0/1 predictions (NaN where undefined)."""
    tp = sum(1 for t, p in zip(truth, predicted) if t and p)
    fn = sum(1 for t, p in zip(truth, predicted) if t and not p)
    tn = sum(1 for t, p in zip(truth, predicted) if not t and not p)
    fp = sum(1 for t, p in zip(truth, predicted) if not t and p)
    nan = float("nan")
    recall = tp / (tp + fn) if tp + fn else nan
    specificity = tn / (tn + fp) if tn + fp else nan
    return {
        "balanced_accuracy": (recall + specificity) / 2,
        "precision": tp / (tp + fp) if tp + fp else nan,
        "recall": recall,
        "accuracy": (tp + tn) / len(truth) if truth else nan,
    }


def _trial(
    feature: int,
    explanation: str,
    examples: list[Example],
    silent: list[str],
    n_activating: int,
    per_prompt: int,
    seed: int,
) -> _Trial:
    held_out = split_examples(examples)[1][:n_activating]
    items = [(e.text, 1) for e in held_out] + [(t, 0) for t in silent]
    random.Random(f"{seed}:{feature}").shuffle(items)
    prompts = [items[i : i + per_prompt] for i in range(0, len(items), per_prompt)]
    return _Trial(feature, explanation, prompts)


def silent_contexts(
    model: Any, sae: Any, examples: dict[int, list[Example]], features: list[int], n: int, seed: int
) -> dict[int, list[str]]:
    """For each feature, ``n`` contexts (other features' examples) on which it is silent on every
    token, verified by encoding a shared pool of candidates once."""
    # Stripped: the scorer is shown the stripped text, so that is the text checked for silence.
    texts = sorted({e.text.strip() for rows in examples.values() for e in rows if e.text.strip()})
    random.Random(seed).shuffle(texts)
    pool = texts[: max(8 * n, 200)]
    maxima = context_maxima(model, sae, pool, features) if pool else torch.zeros(0, len(features))
    own = {f: {e.text.strip() for e in examples[f]} for f in features}
    silent = {}
    for j, f in enumerate(features):
        quiet = [t for t, value in zip(pool, maxima[:, j].tolist()) if value <= 0 and t not in own[f]]
        random.Random(f"{seed}:{f}:silent").shuffle(quiet)
        silent[f] = quiet[:n]
    return silent


def context_maxima(model: Any, sae: Any, texts: list[str], features: list[int], batch_size: int = 32) -> torch.Tensor:
    """Each feature's maximum activation over each text's tokens (BOS excluded) ``[texts, features]``,
    every text read on its own with one BOS, as the scorer sees it."""
    hook = sae_hook(sae)
    selected = torch.tensor(features, dtype=torch.long)
    bos = model.tokenizer.bos_token_id
    out = []
    for batch in batched(texts, batch_size):
        ids = [torch.tensor([bos, *model.tokenizer.encode(t, add_special_tokens=False)]) for t in batch]
        tokens, mask = pad(ids, pad_id(model), side="right")  # right padding: causal, real tokens untouched
        act = run_to_hooks(model, tokens, [hook], attention_mask=mask)[hook]
        real = mask.bool()
        real[:, 0] = False
        with torch.no_grad():
            values = sae.encode(act.to(sae.W_dec.dtype))[..., selected.to(act.device)].float().cpu()
        out.append(values.masked_fill(~real[..., None], 0.0).amax(dim=1))
    return torch.cat(out)


# ----------------------------------------------------------------------------- shared plumbing


def _fraction(value: Any, name: str) -> float:
    value = _checks.finite(value, name)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}.")
    return value


def chosen_features(examples: dict[int, list[Example]], features: Sequence[int] | None) -> list[int]:
    if features is None:
        return sorted(examples)
    if isinstance(features, (str, bytes)) or not isinstance(features, Sequence):
        raise TypeError(f"features must be a list of feature indices, got {type(features).__name__}.")
    chosen = [_checks.non_negative_int(f, "feature") for f in features]
    missing = [f for f in chosen if f not in examples]
    if missing:
        have = sorted(examples)
        raise ValueError(
            f"Features {missing[:10]} have no mined examples; features with examples: {have[:20]}"
            f"{'...' if len(have) > 20 else ''}."
        )
    return list(dict.fromkeys(chosen))


def _explanations(explanations: Any) -> dict[int, str]:
    if isinstance(explanations, pd.DataFrame):
        if not {"feature", "explanation"} <= set(explanations.columns):
            raise ValueError(
                f"explanations needs 'feature' and 'explanation' columns; it has {list(explanations.columns)}."
            )
        pairs = zip(explanations.feature, explanations.explanation)
    elif isinstance(explanations, Mapping):
        pairs = explanations.items()  # type: ignore[assignment]
    else:
        raise TypeError(
            "explanations must be scope.explain's DataFrame or a dict {feature: text}, "
            f"got {type(explanations).__name__}."
        )
    return {_checks.non_negative_int(f, "feature"): _checks.text(t, f"explanation of feature {f}") for f, t in pairs}


def _resume(out: Any, columns: list[str], who: str, name: str, overwrite: bool) -> pd.DataFrame:
    """The rows a previous run left in ``out`` (none without one, or with ``overwrite``)."""
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}.")
    empty = pd.DataFrame(columns=columns)
    if out is None:
        return empty
    path = check_writable_file(out)
    if overwrite or not path.exists():
        return empty
    try:
        done = pd.read_parquet(path)
    except Exception as err:
        raise ValueError(f"{path} is not a table this run can resume ({err}); pass overwrite=True.") from None
    if list(done.columns) != columns:
        raise ValueError(f"{path} has columns {list(done.columns)}, not {columns}; pass overwrite=True or another out.")
    others = sorted(set(done[who]) - {name})
    if others:
        raise ValueError(
            f"{path} holds rows by the {who} {others[0]!r}, not {name!r}; pass overwrite=True or another out."
        )
    return done


def _progress(todo: list[int], batch_size: int, progress: bool, what: str) -> Iterator[list[int]]:
    bar = tqdm(total=len(todo), desc=what, unit="feature", disable=not progress)
    for batch in batched(todo, batch_size):
        yield batch
        bar.update(len(batch))
    bar.close()


def _save(out: Any, done: pd.DataFrame, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Write every row so far (the previous run's too) atomically."""
    if out is None:
        return
    fresh = pd.DataFrame(rows, columns=columns)
    kept = done[~done.feature.isin(fresh.feature)]
    write_parquet(pd.concat([kept, fresh], ignore_index=True) if len(kept) else fresh, out)


def _table(rows: list[dict[str, Any]], columns: list[str], order: list[int]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=columns)
    frame["feature"] = frame["feature"].astype(int)
    position = {f: i for i, f in enumerate(order)}
    return frame.sort_values("feature", key=lambda s: s.map(position)).reset_index(drop=True)
