"""The Golden Gate measurement: does steering one feature make the model talk about its concept?

    python scripts/golden_gate.py --sae demo --feature 1234 --keywords sea \\
        [--strengths 0 2 5 10 20] [--method clamp|add] [--unit act|max] [--tokens 40] \\
        [--prompts data/golden_gate_prompts.txt] [--limit N] [--out DIR] [--batch-size 8]

Anthropic's "Golden Gate Claude" clamped one SAE feature at every position and the model
brought the concept up whatever it was asked. This script measures that for one feature of a
scope SAE over neutral prompts that no feature search has seen (``data/golden_gate_prompts.txt``):

1. Check every input before anything is hooked: the feature exists in the SAE, the keyword list
   and the prompts are not empty, the strengths are finite (strength 0 is always measured: it
   is the baseline).
2. For each strength, one batched greedy generation of ``--tokens`` new tokens after every
   prompt (``scope.steering.generate_completions``): ``Clamp(feature, value)`` (the feature set
   to ``value`` at every position, error term kept) or ``Add(feature, value)``. Strength 0 is
   the *unsteered* model, no intervention at all (a clamp to 0 would be an ablation).
3. Each continuation: does it mention the concept (:func:`mentions`: any keyword as a whole
   word, case-insensitive), its perplexity under the unsteered model conditioned on its prompt
   (``exp(-mean log p)`` of the generated tokens, ``scope.steering.reread``), and the feature's
   mean activation when the unsteered model re-reads it.
4. Per strength: the fraction of continuations that mention the concept; the median perplexity
   and its ratio to the unsteered median (``perplexity_ratio``); the ratio of geometric means
   (``exp(mean log ppl - mean log ppl at 0)``, ``geometric_ratio``); the mean share of distinct
   words (low = the steered text repeats itself, which perplexity alone rewards).
5. The pick: the steered strength with the highest mention fraction whose ``perplexity_ratio``
   is <= 2 (ties: the weaker strength). Issue 16's target: >= 50% mentions at that strength.
6. Print the table, write ``golden_gate.json`` atomically into ``--out`` (default: the SAE's
   folder): after each strength with ``"complete": false`` (a killed CPU run keeps what it
   measured), and at the end.

Units: a clamp value or an additive coefficient is in the feature's activation units; the
vector added per unit is ``W_dec[feature]``, so with unit-norm decoder rows a value is the norm
of the feature's contribution to the residual stream. The JSON records the feature's decoder
norm, its max activation over the corpus (the SAE's feature statistics; ``--unit max`` reads the
strengths as multiples of it) and the median residual norm at the hook over the prompts, so a
strength reads against all three.

Keywords (:data:`CONCEPT_KEYWORDS`, or ``--keywords word,word``) match whole words only: "sea"
matches "sea", "Sea" and the "sea" of "sea-shore" (a hyphen ends a word), not "seashore" or
"seal"; plurals and closed compounds count only when listed ("seas", "seashore"). A multi-word
keyword matches across any whitespace ("sperm  whale").
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import scope
from scope import _checks
from scope._io import check_writable_dir, write_atomically
from scope.feature_stats import max_activations
from scope.hooks import check_compatible, run_to_hooks, sae_hook
from scope.inputs import to_tokens
from scope.labels import feature_labels, label_of
from scope.saes import DEMO_SAES
from scope.steering import Add, Clamp, generate_completions, reread

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PROMPTS = REPO / "data" / "golden_gate_prompts.txt"
METHODS = ("clamp", "add")
UNITS = ("act", "max")
MAX_PERPLEXITY_RATIO = 2.0  # issue 16: the concept must appear while perplexity stays within 2x
TARGET_MENTIONS = 0.5

# Concrete concepts the SAE corpus teaches (Austen, Moby-Dick, dictionaries, fortunes, Debian
# docs), with the words that count as mentioning each. Plurals and inflections are listed, as
# matching is by whole word. Words too common in neutral text to signal the concept are left
# out on purpose: "white"/"black" (colours), "pay"/"cost" (money), "water" (sea), "eat" alone
# is kept for food because neutral prompts rarely lead to it (the unsteered row shows it).
CONCEPT_KEYWORDS: dict[str, list[str]] = {
    "dogs": ["dog", "dogs", "puppy", "puppies", "hound", "hounds", "bark", "barks", "barked", "barking",
             "canine", "spaniel", "spaniels", "terrier", "terriers", "poodle", "poodles", "kennel", "leash"],
    "sea": ["sea", "seas", "ocean", "oceans", "seaside", "seashore", "shore", "shores", "wave", "waves",
            "sailor", "sailors", "ship", "ships", "voyage", "voyages", "tide", "tides", "beach", "beaches",
            "marine", "naval", "sail", "sails", "sailing", "sailed", "harbour", "harbor", "coast"],
    "whales": ["whale", "whales", "whaling", "whaler", "whalers", "whaleman", "whalemen", "harpoon",
               "harpoons", "harpooneer", "harpooner", "Moby", "leviathan", "leviathans", "blubber",
               "sperm whale", "cachalot"],
    "food": ["food", "foods", "cook", "cooks", "cooked", "cooking", "kitchen", "kitchens", "meal", "meals",
             "dinner", "dinners", "supper", "breakfast", "lunch", "bread", "soup", "soups", "recipe", "recipes",
             "bake", "baked", "baking", "dish", "dishes", "eat", "eats", "eating", "ate", "delicious",
             "meat", "cake", "cakes", "cheese", "fruit", "vegetables"],
    "colours": ["colour", "colours", "color", "colors", "coloured", "colored", "colourful", "colorful",
                "red", "blue", "green", "yellow", "purple", "crimson", "scarlet", "violet", "pink",
                "orange", "brown", "grey", "gray"],
    "horses": ["horse", "horses", "pony", "ponies", "ride", "rides", "riding", "rode", "rider", "riders",
               "saddle", "saddles", "gallop", "galloped", "galloping", "stable", "stables", "mare", "mares",
               "stallion", "stallions", "foal", "hoof", "hooves", "bridle", "horseback"],
    "weather": ["weather", "rain", "rains", "rained", "raining", "rainy", "storm", "storms", "stormy",
                "snow", "snowing", "snowed", "wind", "winds", "windy", "cloud", "clouds", "cloudy",
                "thunder", "lightning", "sunshine", "sunny", "fog", "foggy", "drizzle", "umbrella"],
    "money": ["money", "pound", "pounds", "shilling", "shillings", "dollar", "dollars", "penny", "pennies",
              "fortune", "fortunes", "income", "incomes", "wealth", "wealthy", "rich", "cash", "coin",
              "coins", "bank", "banks", "salary", "debt", "debts", "guinea", "guineas"],
    "france": ["France", "French", "Frenchman", "Frenchmen", "Frenchwoman", "Paris", "Parisian",
               "Parisians", "Eiffel", "Lyon", "Marseille", "Marseilles", "Bordeaux", "Normandy", "Provence"],
    "church": ["church", "churches", "God", "gods", "Lord", "pray", "prays", "prayed", "praying", "prayer",
               "prayers", "chapel", "chapels", "clergyman", "clergy", "parson", "priest", "priests",
               "bishop", "bishops", "sermon", "sermons", "heaven", "holy", "worship", "Christian", "Bible"],
}  # fmt: skip


# ----------------------------------------------------------------------------- keywords


def keyword_list(keywords: Any) -> list[str]:
    """The command line's ``--keywords``: a concept name of :data:`CONCEPT_KEYWORDS` stands for
    its list; anything else is read by :func:`words`."""
    items = _checks.texts(keywords, "keywords")
    if len(items) == 1 and items[0].strip().lower() in CONCEPT_KEYWORDS:
        return list(CONCEPT_KEYWORDS[items[0].strip().lower()])
    return words(items)


def words(keywords: Any) -> list[str]:
    """Keywords from a word or a list of them (each item may hold several, comma-separated),
    stripped, duplicates dropped; ValueError when none is left."""
    items = _checks.texts(keywords, "keywords")
    found = [word.strip() for item in items for word in item.split(",") if word.strip()]
    if not found:
        raise ValueError(
            f"keywords is empty ({keywords!r}): give a concept name ({', '.join(CONCEPT_KEYWORDS)}) "
            "or the words that count as a mention, e.g. 'whale,whales,harpoon'."
        )
    return list(dict.fromkeys(found))  # order kept, duplicates dropped


def keyword_pattern(keywords: str | Sequence[str]) -> re.Pattern[str]:
    """One case-insensitive regex matching any keyword as a whole word: no letter, digit or
    underscore right before or after it (so "c.f." works too, where ``\\b`` would not); a
    multi-word keyword matches across any whitespace."""
    found = words(keywords)
    # longest first, so "sperm whale" is tried before "sperm" (only matters for what is matched)
    alternatives = [r"\s+".join(map(re.escape, w.split())) for w in sorted(found, key=len, reverse=True)]
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)


def mentions(text: str, keywords: str | Sequence[str] | re.Pattern[str]) -> bool:
    """Whether ``text`` mentions any keyword (whole words, case-insensitive; see the module docstring)."""
    pattern = keywords if isinstance(keywords, re.Pattern) else keyword_pattern(keywords)
    return pattern.search(text) is not None


def distinct_word_share(text: str) -> float:
    """Distinct words / words (NaN for no words): 1 for varied text, near 0 for "sea sea sea ..."."""
    words = re.findall(r"\w+", text.lower())
    return len(set(words)) / len(words) if words else math.nan


# ----------------------------------------------------------------------------- inputs


def read_prompts(path: str | Path) -> list[str]:
    """One prompt a line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist (one prompt a line, '#' comments).")
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.rstrip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def check_prompts(prompts: Any) -> list[str]:
    prompts = _checks.texts(prompts, "prompts")
    if not prompts:
        raise ValueError("prompts is empty: the measurement needs at least one neutral prompt.")
    for i, prompt in enumerate(prompts):
        if not prompt.strip():
            raise ValueError(f"prompts[{i}] is empty ({prompt!r}); every prompt needs words to continue.")
    return prompts


def check_strengths(strengths: Any) -> list[float]:
    """Finite strengths, duplicates dropped, 0 (the unsteered baseline) first."""
    try:
        items = list(strengths)
    except TypeError:
        raise TypeError(f"strengths must be a list of numbers, got {strengths!r}.") from None
    values = [_checks.finite(s, "strength") for s in items]
    if not values:
        raise ValueError("strengths is empty: give the strengths to sweep, e.g. [0, 5, 10, 20].")
    return [0.0, *dict.fromkeys(v for v in values if v != 0.0)]


# ----------------------------------------------------------------------------- the measurement


def measure(
    model: Any,
    sae: Any,
    feature: int,
    keywords: Sequence[str],
    strengths: Sequence[float],
    prompts: Sequence[str],
    *,
    method: str = "clamp",
    unit: str = "act",
    max_new_tokens: int = 40,
    batch_size: int = 8,
    progress: bool = True,
    on_strength: Callable[[pd.DataFrame, pd.DataFrame], Any] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps 1-4 of the module docstring: (one row per strength, one row per continuation).
    ``on_strength(table, continuations)`` is called with the figures so far after each strength
    (a long CPU sweep can save what it has).

    Strength table columns: strength, value (activation units), multiple_of_max,
    contribution_norm (``|value| * ||W_dec[feature]||``), mention_fraction, median_perplexity,
    perplexity_ratio, geometric_ratio, concept_activation, distinct_words, empty.
    Continuation columns: strength, prompt, text, mentions, perplexity, concept_activation,
    n_tokens, tokens (the generated ids).
    """
    method = _checks.choice(method, METHODS, "method")
    unit = _checks.choice(unit, UNITS, "unit")
    feature = _checks.index(feature, int(sae.cfg.d_sae), "feature")
    pattern = keyword_pattern(words(keywords))
    strengths = check_strengths(strengths)
    prompts = check_prompts(prompts)
    max_new_tokens = _checks.positive_int(max_new_tokens, "max_new_tokens")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    max_act = feature_max_activation(sae, feature)
    if unit == "max" and math.isnan(max_act):
        raise ValueError(
            f"unit='max' reads strengths as multiples of feature {feature}'s max activation, which this SAE "
            "does not record (scope.feature_stats.set_max_activations); use unit='act'."
        )
    check_compatible(model, sae)
    prompt_tokens = [to_tokens(model, p, reserve=max_new_tokens, name=f"prompt {i}") for i, p in enumerate(prompts)]

    rows = []
    bar = tqdm(total=len(strengths) * len(prompts), desc="Golden Gate sweep", disable=not progress)
    for strength in strengths:
        value = strength * max_act if unit == "max" else strength
        intervention = (Clamp if method == "clamp" else Add)(feature, value)
        bar.set_postfix_str(f"strength {strength:g}: generating")
        completions = generate_completions(
            model,
            list(prompts),
            max_new_tokens=max_new_tokens,
            sae=sae,
            steering=[intervention] if strength != 0.0 else [],  # 0: the unsteered model itself
            batch_size=batch_size,
        )
        bar.set_postfix_str(f"strength {strength:g}: re-reading")
        for prompt, tokens, completion in zip(prompts, prompt_tokens, completions):
            new = torch.tensor(completion.tokens, dtype=torch.long)
            activation, log_prob = reread(model, sae, feature, tokens, new)
            rows.append(
                {
                    "strength": strength,
                    "prompt": prompt,
                    "text": completion.text,
                    "mentions": mentions(completion.text, pattern),
                    "perplexity": math.exp(-log_prob) if not math.isnan(log_prob) else math.nan,
                    "concept_activation": activation,
                    "n_tokens": len(completion.tokens),
                    "tokens": list(completion.tokens),
                }
            )
            bar.update(1)
        if on_strength is not None:
            so_far = pd.DataFrame(rows)
            on_strength(summarise(so_far, max_act, decoder_norm(sae, feature), unit), so_far)
    bar.close()
    continuations = pd.DataFrame(rows)
    return summarise(continuations, max_act, decoder_norm(sae, feature), unit), continuations


def summarise(continuations: pd.DataFrame, max_act: float, norm: float, unit: str) -> pd.DataFrame:
    """Step 4: one row per strength from the continuation rows (strength 0 is the baseline)."""
    baseline = continuations[continuations["strength"] == 0.0]["perplexity"].dropna()
    base_median = float(baseline.median()) if len(baseline) else math.nan
    base_log = float(np.log(baseline).mean()) if len(baseline) else math.nan
    rows = []
    for strength, group in continuations.groupby("strength", sort=False):
        perplexity = group["perplexity"].dropna()
        value = float(strength) * max_act if unit == "max" else float(strength)
        median = float(perplexity.median()) if len(perplexity) else math.nan
        rows.append(
            {
                "strength": float(strength),
                "value": value,
                "multiple_of_max": value / max_act if max_act and not math.isnan(max_act) else math.nan,
                "contribution_norm": abs(value) * norm,
                "mention_fraction": float(group["mentions"].mean()),
                "median_perplexity": median,
                "perplexity_ratio": median / base_median,
                "geometric_ratio": math.exp(float(np.log(perplexity).mean()) - base_log)
                if len(perplexity)
                else math.nan,
                "concept_activation": float(group["concept_activation"].mean()),
                "distinct_words": float(group["text"].map(distinct_word_share).mean()),
                "empty": int((group["n_tokens"] == 0).sum()),
            }
        )
    return pd.DataFrame(rows)


def pick(table: pd.DataFrame, max_ratio: float = MAX_PERPLEXITY_RATIO) -> dict[str, Any] | None:
    """Step 5: the steered strength with the highest mention fraction whose perplexity ratio is at
    most ``max_ratio`` (ties: the weaker strength); None when no steered strength qualifies."""
    steered = table[(table["strength"] != 0.0) & (table["perplexity_ratio"] <= max_ratio)]
    if steered.empty:
        return None
    order = steered.assign(size=steered["strength"].abs()).sort_values(
        ["mention_fraction", "size"], ascending=[False, True], kind="stable"
    )
    best = order.iloc[0]
    return {
        "strength": float(best["strength"]),
        "value": float(best["value"]),
        "mention_fraction": float(best["mention_fraction"]),
        "perplexity_ratio": float(best["perplexity_ratio"]),
        "target_met": bool(best["mention_fraction"] >= TARGET_MENTIONS),
    }


# ----------------------------------------------------------------------------- feature facts


def feature_max_activation(sae: Any, feature: int) -> float:
    """The feature's recorded max activation over the corpus; NaN when the SAE records none."""
    values = max_activations(sae)
    return float(values[feature]) if values is not None else math.nan


def decoder_norm(sae: Any, feature: int) -> float:
    return float(sae.W_dec[feature].detach().float().norm())


def residual_norm(model: Any, sae: Any, prompts: Sequence[str]) -> float:
    """Median L2 norm of the activation at the SAE's hook over the prompts' tokens (BOS left out:
    its norm is in another range altogether)."""
    hook = sae_hook(sae)
    norms = [run_to_hooks(model, to_tokens(model, p), [hook])[hook][0, 1:].float().norm(dim=-1) for p in prompts]
    return float(torch.cat(norms).median())


# ----------------------------------------------------------------------------- the report


def report(
    table: pd.DataFrame,
    continuations: pd.DataFrame,
    *,
    sae_spec: str,
    sae: Any,
    feature: int,
    keywords: Sequence[str],
    concept: str | None,
    prompts_file: str,
    method: str,
    unit: str,
    max_new_tokens: int,
    model_name: str,
    residual: float,
    complete: bool = True,
) -> dict[str, Any]:
    """The content of ``golden_gate.json`` (NaN written as null); ``complete`` is False while a
    sweep is still running (the strengths measured so far)."""
    prompts = list(dict.fromkeys(continuations["prompt"]))
    sweep = []
    for record in table.to_dict("records"):
        group = continuations[continuations["strength"] == record["strength"]]
        record["continuations"] = [
            {"prompt": prompts.index(r["prompt"]), "text": r["text"], "mentions": bool(r["mentions"]),
             "perplexity": r["perplexity"]}
            for r in group.to_dict("records")
        ]  # fmt: skip
        sweep.append(record)
    return json_safe(
        {
            "model": model_name,
            "sae": sae_spec,
            "hook": sae_hook(sae),
            "d_sae": int(sae.cfg.d_sae),
            "feature": feature,
            "label": label_of(feature_labels(sae), [feature])[0],
            "max_activation": feature_max_activation(sae, feature),
            "decoder_norm": decoder_norm(sae, feature),
            "residual_norm": residual,
            "concept": concept,
            "keywords": list(keywords),
            "prompts_file": prompts_file,
            "prompts": prompts,
            "method": method,
            "unit": unit,
            "max_new_tokens": max_new_tokens,
            "decoding": "greedy",
            "strengths": table["strength"].tolist(),
            "max_perplexity_ratio": MAX_PERPLEXITY_RATIO,
            "pick": pick(table),
            "complete": complete,
            "sweep": sweep,
            "command": " ".join(["scripts/golden_gate.py", *sys.argv[1:]]),
        }
    )


def json_safe(value: Any) -> Any:
    """``value`` with NumPy scalars as Python ones, NaN and infinities as None, keys as strings:
    what ``json.dumps(..., allow_nan=False)`` takes."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_report(content: dict[str, Any], out: str | Path) -> Path:
    """Write ``golden_gate.json`` into the folder ``out``, atomically."""
    text = json.dumps(content, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    return write_atomically(Path(out) / "golden_gate.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def sae_folder(spec: str) -> Path | None:
    """Where an SAE spec's files live: a local folder (or the folder of a params.npz), the
    bundled demo SAEs' folders, else None (a registry SAE has no local folder to write into)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    if spec in DEMO_SAES:
        return DEMO_SAES[spec].folder
    return None


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", default="demo", help="SAE spec for scope.load_sae (default: demo)")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--feature", type=int, required=True)
    parser.add_argument(
        "--keywords",
        nargs="+",
        required=True,
        help=f"a concept ({', '.join(CONCEPT_KEYWORDS)}) or words that count as a mention (comma-separated)",
    )
    parser.add_argument("--strengths", type=float, nargs="+", default=[0, 2, 5, 10, 20, 40])
    parser.add_argument("--method", choices=METHODS, default="clamp")
    parser.add_argument("--unit", choices=UNITS, default="act", help="strengths in activations or x max activation")
    parser.add_argument("--tokens", type=int, default=40, help="new tokens per continuation")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="file, one neutral prompt a line")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts (a cheap first look)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=None, help="folder for golden_gate.json (default: the SAE's folder)")
    args = parser.parse_args(argv)

    # Cheap checks first: a typo costs milliseconds, not a model load.
    keywords = keyword_list(args.keywords)
    named = args.keywords[0].strip().lower()
    concept = named if len(args.keywords) == 1 and named in CONCEPT_KEYWORDS else None
    prompts = check_prompts(read_prompts(args.prompts)[: args.limit])
    check_strengths(args.strengths)
    out = args.out or sae_folder(args.sae)
    if out is None:
        parser.error(f"--sae {args.sae!r} has no local folder; give --out DIR for golden_gate.json.")
    check_writable_dir(out, "--out")

    sae = scope.load_sae(args.sae, device="cpu")
    feature = _checks.index(args.feature, int(sae.cfg.d_sae), "--feature")
    model = scope.load_model(args.model, device="cpu")
    residual = residual_norm(model, sae, prompts)

    def save(table: pd.DataFrame, continuations: pd.DataFrame, complete: bool = False) -> Path:
        content = report(
            table, continuations, sae_spec=args.sae, sae=sae, feature=feature, keywords=keywords, concept=concept,
            prompts_file=args.prompts, method=args.method, unit=args.unit, max_new_tokens=args.tokens,
            model_name=args.model, residual=residual, complete=complete,
        )  # fmt: skip
        return write_report(content, out)

    table, continuations = measure(
        model, sae, feature, keywords, args.strengths, prompts, method=args.method, unit=args.unit,
        max_new_tokens=args.tokens, batch_size=args.batch_size, on_strength=save,
    )  # fmt: skip
    path = save(table, continuations, complete=True)
    content = json.loads(path.read_text(encoding="utf-8"))
    _print(content, table, continuations, path)
    return content


def _print(content: dict[str, Any], table: pd.DataFrame, continuations: pd.DataFrame, path: Path) -> None:
    print(
        f"feature {content['feature']} of {content['sae']} ({content['hook']}): label {content['label']!r}; "
        f"max activation {content['max_activation']}, decoder norm {content['decoder_norm']:.3g}, "
        f"median residual norm at the hook {content['residual_norm']:.4g}"
    )
    print(f"{content['method']} over {len(content['prompts'])} prompts, {content['max_new_tokens']} greedy tokens each")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.precision", 3):
        print(table.to_string(index=False))
    for strength, group in continuations.groupby("strength", sort=False):
        first = group.iloc[0]
        print(f"  strength {strength:g}: {first['prompt']!r} -> {first['text']!r}")
    chosen = content["pick"]
    if chosen is None:
        print(f"pick: none (no steered strength kept perplexity within {MAX_PERPLEXITY_RATIO:g}x of unsteered)")
    else:
        print(
            f"pick: strength {chosen['strength']:g} -> {chosen['mention_fraction']:.0%} of continuations mention "
            f"the concept at perplexity ratio {chosen['perplexity_ratio']:.2f} (target >= 50%: "
            f"{'met' if chosen['target_met'] else 'not met'})"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
