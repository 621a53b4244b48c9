"""The ``scope`` command: a thin layer over the library."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

DEMO_PROMPT = "The Golden Gate Bridge is"
DEMO_SENTENCE = "The Golden Gate Bridge spans the strait between San Francisco and Marin."


def _table(frame: pd.DataFrame) -> str:
    with pd.option_context("display.max_rows", 500, "display.max_colwidth", 60, "display.width", 160):
        return frame.to_string(index=False)


def cmd_models(args: argparse.Namespace) -> None:
    import scope

    table = scope.list_models()
    table["gemma_scope_releases"] = table["gemma_scope_releases"].map(_short_release_list)
    print(_table(table))


def _short_release_list(releases: list[str]) -> str:
    """Canonical releases where there are some, else those that are not per-layer '-all' sets."""
    shown = [r for r in releases if "canonical" in r or "demo" in r]
    shown = shown if len(shown) > 1 else shown + [r for r in releases if r not in shown and not r.endswith("-all")]
    return ", ".join(shown) or "-"


def cmd_generate(args: argparse.Namespace) -> None:
    import scope

    _check_model(args.model)
    model = scope.load_model(args.model)
    prompt = _prompt(args)
    text = scope.generate(
        model,
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    print(text)


def cmd_features(args: argparse.Namespace) -> None:
    import scope

    model, sae = _model_and_sae(args)
    print(_table(scope.top_features(model, sae, args.text, k=args.k)))


def cmd_search(args: argparse.Namespace) -> None:
    import scope
    from scope._io import iter_texts
    from scope.labels import read_labels

    if args.query is not None and args.negative:
        raise ValueError("--negative goes with --positive (a contrast), not with --query.")
    labels = read_labels(args.labels) if args.labels else None
    if args.query is not None:  # words against labels: no model needed
        _check_sae_spec(args.sae, args.hook)
        sae = scope.load_sae(args.sae, hook=args.hook)
        found = scope.search_features(None, sae, query=args.query, k=args.k, labels=labels)
    else:
        positive = list(iter_texts(args.positive))
        negative = list(iter_texts(args.negative)) if args.negative else None
        model, sae = _model_and_sae(args)
        found = scope.search_features(model, sae, positive=positive, negative=negative, k=args.k, labels=labels)
    if found.empty:
        print(f"No feature label shares a word with {args.query!r}.")
        return
    print(_table(found.drop(columns=["top_tokens", "explanation"], errors="ignore").round(3)))


def cmd_steer(args: argparse.Namespace) -> None:
    import scope

    model, sae = _model_and_sae(args)
    intervention: scope.steering.Intervention
    if args.mode == "add":
        intervention = scope.Add(args.feature, args.value)
    else:
        intervention = scope.Clamp(args.feature, args.value, unit=args.unit)
    prompt = _prompt(args)
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    steered = scope.generate(model, prompt, sae=sae, steering=[intervention], positions=args.positions, **kwargs)
    plain = scope.generate(model, prompt, **kwargs)
    from scope.steering import describe

    print(_table(pd.DataFrame({"": ["unsteered", describe([intervention])], "continuation": [plain, steered]})))


def cmd_demo(args: argparse.Namespace) -> None:
    import scope
    from scope.saes import DEMO_SAES

    started = time.perf_counter()
    model = scope.load_model("gemma-3-270m")
    print(
        f"Loaded the bundled Gemma 3 270M ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}) "
        f"in {time.perf_counter() - started:.1f} s\n"
    )

    started = time.perf_counter()
    continuation = scope.generate(model, DEMO_PROMPT, max_new_tokens=args.max_new_tokens)
    elapsed = time.perf_counter() - started
    print(f"Greedy continuation ({elapsed:.1f} s):\n  {DEMO_PROMPT}{continuation}\n")

    folder = DEMO_SAES["demo"].folder
    if not (folder / "cfg.json").is_file():
        _print_residual_norms(model)
        return
    sae = scope.load_sae("demo", device=model.cfg.device, dtype=model.cfg.dtype)
    table = scope.top_features(model, sae, DEMO_SENTENCE, k=2)
    print(f"Top demo-SAE features per token ({sae.cfg.metadata.hook_name}) of: {DEMO_SENTENCE!r}")
    shown = [c for c in ("position", "token", "feature", "activation", "label") if c in table]
    print(_table(table[shown].round({"activation": 1})))
    _print_golden_gate(model, sae, folder / "golden_gate.json", args.max_new_tokens)


def _print_golden_gate(model: Any, sae: Any, sweep_file: Path, max_new_tokens: int) -> None:
    """The demo SAE's concept feature clamped on a neutral prompt, at the strength its Golden Gate
    sweep (``scripts/golden_gate.py``, shipped as ``golden_gate.json``) picked."""
    import json

    import scope

    if not sweep_file.is_file():
        return
    sweep = json.loads(sweep_file.read_text())
    chosen = sweep.get("pick")
    if not chosen:
        return
    feature, value, prompt = sweep["feature"], chosen["value"], sweep["prompts"][0]
    steering = scope.Clamp(feature, value) if sweep["method"] == "clamp" else scope.Add(feature, value)
    plain = scope.generate(model, prompt, max_new_tokens=max_new_tokens)
    steered = scope.generate(model, prompt, max_new_tokens=max_new_tokens, sae=sae, steering=steering)
    print(
        f"\nGolden Gate: feature {feature} ({_label(sae, feature)}) {sweep['method']}ed at {value:.0f}. "
        f"Over {len(sweep['prompts'])} neutral prompts "
        f"it brought up the concept in {chosen['mention_fraction']:.0%} of greedy continuations "
        f"(unsteered: {_unsteered_mentions(sweep):.0%}) at {chosen['perplexity_ratio']:.2f}x the perplexity."
    )
    print(_table(pd.DataFrame({"": ["unsteered", "clamped"], "continuation": [prompt + plain, prompt + steered]})))


def _label(sae: Any, feature: int) -> str:
    from scope.labels import feature_labels

    labels = feature_labels(sae)
    found = None if labels is None else labels.loc[labels["feature"] == feature, "label"]
    return "unlabelled" if found is None or found.empty else str(found.iloc[0])


def _unsteered_mentions(sweep: dict[str, Any]) -> float:
    return next(row["mention_fraction"] for row in sweep["sweep"] if row["strength"] == 0)


def _print_residual_norms(model: Any) -> None:
    """Without the demo SAE: the residual stream's norms per layer, BOS apart."""
    from scope.residuals import residual_norms

    norms = residual_norms(model, DEMO_SENTENCE)
    summary = (
        norms.assign(is_bos=norms["position"] == 0)
        .pivot_table(index="layer", columns="is_bos", values="norm", aggfunc="mean")
        .rename(columns={True: "norm at BOS", False: "mean norm elsewhere"})
        .reset_index()
    )
    summary.columns.name = None
    print(f"Residual stream (blocks.L.hook_resid_post) on: {DEMO_SENTENCE!r}")
    print("(the bundled demo SAE is not in data/demo_sae yet: scripts/train_demo_sae.py builds it)")
    print(_table(summary.round(1)))


def _check_model(name: str) -> None:
    """An unknown model name is a ValueError before anything loads."""
    from scope.subjects import subject

    subject(name)


def _check_sae_spec(spec: str, hook: str | None) -> None:
    """Cheap checks of an SAE spec before the model loads: a local path (or a demo SAE) that is
    not there, a release or id that is not in sae-lens' registry."""
    from scope.gemma_scope import registry, split_spec
    from scope.saes import DEMO_SAES

    if spec in DEMO_SAES and (DEMO_SAES[spec].folder / "cfg.json").is_file():
        return
    path = Path(spec).expanduser()
    if spec not in DEMO_SAES and path.exists():
        npz = path / "params.npz" if path.is_dir() else path
        if hook is None and npz.suffix == ".npz" and not (path / "cfg.json").is_file():
            raise ValueError(
                f"--sae {spec} is a Gemma Scope params.npz, which does not record the hook it was "
                "trained at: pass --hook, e.g. --hook blocks.20.hook_resid_post."
            )
        return  # read (and checked) when the SAE loads
    parts = split_spec(spec)
    if parts is not None and parts.sae_id in registry()[parts.release].ids:
        return  # downloaded, or found in the hub cache, when the SAE loads
    import scope

    # A spec of neither kind: load_sae refuses it with its own message, before reading or downloading anything.
    scope.load_sae(spec, hook=hook, device="cpu")


def _model_and_sae(args: argparse.Namespace):
    import scope

    _check_model(args.model)
    _check_sae_spec(args.sae, args.hook)
    model = scope.load_model(args.model)
    sae = scope.load_sae(args.sae, hook=args.hook, device=model.cfg.device, dtype=model.cfg.dtype)
    scope.check_compatible(model, sae)
    return model, sae


def _sae_specs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """``(spec, hook)`` of each ``--sae`` (default: the demo SAE); ``--hook`` once per ``--sae``."""
    specs = args.sae or ["demo"]
    hooks = args.hook or [None] * len(specs)
    if len(hooks) != len(specs):
        raise ValueError(
            f"--hook is given {len(hooks)} times for {len(specs)} --sae: give it once per --sae, in the same order."
        )
    for spec, hook in zip(specs, hooks):
        _check_sae_spec(spec, hook)
    return list(zip(specs, hooks))


def cmd_examples(args: argparse.Namespace) -> None:
    import scope
    from scope._io import check_corpus_file, check_writable_file

    specs = _sae_specs(args)
    if len(specs) > 1 or args.engine:
        return _mine_many(args, specs)
    check_writable_file(args.out, "--out")  # fail before a model loads
    check_corpus_file(args.corpus)
    args.sae, args.hook = specs[0]
    model, sae = _model_and_sae(args)
    frame = scope.top_examples(
        model,
        sae,
        args.corpus,
        features=args.features,
        k=args.k,
        context=args.context,
        out=args.out,
        checkpoint_every=args.checkpoint_every,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    print(_table(frame.drop(columns=["text_id"]).head(args.show)))
    print(f"\n{len(frame)} rows for {frame.feature.nunique()} features written to {args.out}")


def _mine_many(args: argparse.Namespace, specs: list[tuple[str, str | None]]) -> None:
    """Several SAEs in one pass (``--out`` a folder, one ``sae=HOOK`` table each), or any SAEs on Ray."""
    import functools

    import scope
    from scope._io import check_corpus_file, check_writable_dir, check_writable_file

    many = len(specs) > 1
    check_writable_dir(args.out, "--out") if many else check_writable_file(args.out, "--out")
    check_corpus_file(args.corpus)
    _check_model(args.model)
    options = dict(
        features=args.features,
        k=args.k,
        context=args.context,
        out=args.out,
        checkpoint_every=args.checkpoint_every,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    if args.engine == "ray":
        # Each worker loads the model and the SAEs itself; here each SAE is read once, on the CPU,
        # only to name it by its hook.
        saes = {
            scope.load_sae(spec, hook=hook, device="cpu").cfg.metadata.hook_name: functools.partial(
                scope.load_sae, spec, hook=hook
            )
            for spec, hook in specs
        }
        mined = scope.mine(
            args.model, saes, args.corpus, engine="ray", workers=args.workers, shards=args.shards, **options
        )
    else:
        model = scope.load_model(args.model)
        loaded = [scope.load_sae(spec, hook=hook, device=model.cfg.device) for spec, hook in specs]
        mined = scope.mine(model, loaded, args.corpus, **options)
    results = mined if isinstance(mined, dict) else {specs[0][0]: mined}
    for name, each in results.items():
        print(f"{name}: {len(each.examples)} rows for {each.examples.feature.nunique()} features")
    print(f"written to {args.out}")


def cmd_dashboard(args: argparse.Namespace) -> None:
    from scope._io import check_corpus_file, check_writable_dir
    from scope.pages import dashboards

    check_writable_dir(args.out, "--out")  # fail before a model loads
    check_corpus_file(args.corpus)
    model, sae = _model_and_sae(args)
    index = dashboards(model, sae, args.features, args.corpus, args.out, k=args.k, progress=sys.stderr.isatty())
    print(f"{len(args.features)} feature pages and their index: {index}")


def cmd_explain(args: argparse.Namespace) -> None:
    """LLM explanations of mined features (and, with --score, their detection scores)."""
    import scope
    from scope._io import check_writable_file

    check_writable_file(args.out, "--out")  # fail before anything loads
    scores_out = args.scores_out or str(Path(args.out).with_name(Path(args.out).stem + "_scores.parquet"))
    if args.score:
        check_writable_file(scores_out, "--scores-out")
    if not Path(args.mined).is_file():
        raise FileNotFoundError(f"--mined {args.mined}: no such file (write it with `scope examples --out`).")
    model = sae = None
    llm: scope.LLM
    if args.endpoint:
        llm = scope.Endpoint(args.endpoint, args.endpoint_model, api_key=args.api_key)
    else:
        _check_model(args.explainer)
        explainer = scope.load_model(args.explainer)
        llm = scope.LocalLLM(explainer, batch_size=args.batch_size)
        if args.explainer == args.model:
            model = explainer  # one copy serves as explainer and as the subject scoring needs
    print(f"explainer: {llm.name}", file=sys.stderr)
    progress = sys.stderr.isatty()
    table = scope.explain(
        args.mined, args.features, explainer=llm, n_examples=args.n_examples, out=args.out, progress=progress
    )
    if args.score:
        if model is None:
            _check_model(args.model)
            model = scope.load_model(args.model)
        _check_sae_spec(args.sae, args.hook)
        sae = scope.load_sae(args.sae, hook=args.hook, device=model.cfg.device, dtype=model.cfg.dtype)
        scores = scope.score_explanations(
            args.mined, table, scorer=llm, model=model, sae=sae, out=scores_out, progress=progress
        )
        table = table.merge(scores[["feature", "balanced_accuracy", "precision", "recall"]], on="feature")
    print(_table(table.drop(columns=["reply", "explainer"])))
    where = f"{args.out}" + (f"; scores in {scores_out}" if args.score else "")
    print(f"\n{len(table)} explanations by {llm.name} in {where}")


def cmd_shield(args: argparse.Namespace) -> None:
    import scope
    from scope import shield

    policies = args.policies or list(shield.TRAINED_HARM_TYPES)
    for key in policies:  # fail on a bad key before loading a model
        shield.resolve_policy(key)
    _check_model(args.model)
    model = scope.load_model(args.model, weights=args.weights)
    if not args.model.startswith("shieldgemma"):
        print(f"note: {args.model} is not ShieldGemma; P(Yes) below is a stand-in, not a safety verdict.\n")
    # One policy per call, as the model card recommends (ShieldGemma was trained on one at a time).
    rows = [
        {"policy": key, "P(Yes)": shield.score(model, args.prompt, key, responses=args.response, progress=False)[0]}
        for key in policies
    ]
    print(_table(pd.DataFrame(rows).round(4)))


def cmd_doctor(args: argparse.Namespace) -> None:
    from scope.bundled import inspect_cache
    from scope.models import hub_status

    status = inspect_cache()  # size and sha256 of every file of the bundled model's cache
    print(status)
    print(f"Hugging Face Hub: {hub_status()}")
    if not status.ok:
        raise RuntimeError(
            f"the bundled model cache {status.folder} is corrupted: the next "
            "scope.load_model('gemma-3-270m') deletes it and converts it again"
        )


def cmd_serve(args: argparse.Namespace) -> None:
    import scope
    from scope.serve import Limits, create_app, host_warning, serve

    _check_model(args.model)
    specs = _named(args.sae or ["demo"], "--sae")
    for spec in specs.values():
        _check_sae_spec(spec, None)
    mined_paths = _named(args.mined or [], "--mined", default_name=next(iter(specs)))
    for name, path in mined_paths.items():
        if name not in specs:
            raise ValueError(f"--mined {name}={path} names no served SAE; served: {', '.join(specs)}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"--mined {path}: no such file (write one with scope examples --out)")
    limits = Limits(max_prompt_tokens=args.max_prompt_tokens, max_tokens=args.max_tokens, max_queue=args.max_queue,
                    max_batch=args.max_batch)  # fmt: skip
    warning = host_warning(args.host)
    if warning:
        print(f"scope: warning: {warning}", file=sys.stderr)
    model = scope.load_model(args.model)
    saes = {name: scope.load_sae(spec, device=model.cfg.device) for name, spec in specs.items()}
    mined = {name: pd.read_parquet(path) for name, path in mined_paths.items()}
    app = create_app(model, saes, mined=mined, limits=limits, api_key=args.api_key, cors_origins=args.cors_origin)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"scope serve: {args.model} with SAEs {', '.join(saes)}")
    print(f"  explorer    http://{shown}:{args.port}/")
    keyed = "  (Authorization: Bearer required)" if args.api_key else ""
    print(f"  OpenAI API  http://{shown}:{args.port}/v1{keyed}")
    serve(app, host=args.host, port=args.port)


def _named(values: list[str], option: str, default_name: str | None = None) -> dict[str, str]:
    """``name=value`` (or a bare value: named by itself, or ``default_name``) -> {name: value}."""
    named: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep:
            name, rest = default_name or value, value
        if not name or not rest:
            raise ValueError(f"{option} {value!r}: expected SPEC or NAME=SPEC")
        if name in named:
            raise ValueError(f"{option}: the name {name!r} is given twice")
        named[name] = rest
    return named


# ----------------------------------------------------------------------------- arguments
# Cheap arguments are checked as they are parsed, before any model loads: a bad one is a usage
# error on one line (exit 2), like every error of argparse's own.


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the option is required or its help
    already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or "default" in text:
            return text
        return super()._get_help_string(action) or text


class _Parser(argparse.ArgumentParser):
    """The parser of ``scope`` and of each subcommand: defaults in every help, and a usage error
    on one line, ``scope: error: ...`` (exit 2)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"scope: error: {message} (see {self.prog} --help)\n")


def _checked(parse: Callable[[str], Any], valid: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: ``parse(text)`` if ``valid``, else ``argument --x: must be WHAT, got 'text'``."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    convert.__name__ = what
    return convert


def _integers(text: str) -> list[int] | None:
    values = [int(f) for f in text.split(",") if f.strip()]
    return values or None


POSITIVE_INT = _checked(int, lambda v: v >= 1, "a positive integer")
NON_NEGATIVE_INT = _checked(int, lambda v: v >= 0, "a non-negative integer")
FINITE = _checked(float, math.isfinite, "a finite number")
TEMPERATURE = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
TOP_P = _checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
FEATURES = _checked(_integers, lambda v: all(f >= 0 for f in v), "comma-separated integers like 1,2,3")


def _add_generation_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
    parser.add_argument("--model", default="gemma-3-270m", help="a model of `scope models`")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a user turn")
    parser.add_argument("--max-new-tokens", type=POSITIVE_INT, default=max_new_tokens, help="tokens to generate")
    parser.add_argument("--temperature", type=TEMPERATURE, default=0.0, help="sampling temperature; 0 is greedy")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the sampling (default: unseeded)")


def _add_mining_arguments(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    """``many``: ``--sae`` (and ``--hook``) may be repeated, one per SAE mined in the same pass."""
    parser.add_argument(
        "--sae",
        action="append" if many else "store",
        default=None if many else "demo",
        help="any scope.load_sae spec: a registry 'RELEASE/SAE_ID', "
        "a params.npz, a sae-lens folder, or 'demo' / 'demo-docs' (the bundled demo SAEs)"
        + ("; repeat it to mine several SAEs in one pass (default: demo)" if many else ""),
    )
    parser.add_argument(
        "--hook",
        action="append" if many else "store",
        default=None,
        help="the SAE's hook, required for a params.npz (default: the hook the SAE records)"
        + ("; once per --sae, in order" if many else ""),
    )
    parser.add_argument("--model", default="gemma-3-270m", help="a model of `scope models`")
    parser.add_argument("--corpus", required=True, help="a .txt (one text per line), .jsonl or .parquet file")
    parser.add_argument("--k", type=POSITIVE_INT, default=20, help="examples per feature")


def _prompt(args: argparse.Namespace):
    return [{"role": "user", "content": args.prompt}] if args.chat else args.prompt


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scope", description="Interpretability toolkit for Gemma 2.")
    commands = parser.add_subparsers(dest="command", required=True)  # each a _Parser too

    commands.add_parser("models", help="list the models scope can load").set_defaults(run=cmd_models)

    generate = commands.add_parser("generate", help="generate a continuation (or a chat reply)")
    generate.add_argument("prompt", help="the text to continue (with --chat: the user's message)")
    _add_generation_arguments(generate, max_new_tokens=64)
    generate.add_argument(
        "--top-p",
        type=TOP_P,
        default=1.0,
        help="nucleus sampling: keep the most likely tokens up to this probability mass",
    )
    generate.set_defaults(run=cmd_generate)

    features = commands.add_parser("features", help="top SAE features per token of a text")
    features.add_argument("text", help="the text to encode")
    features.add_argument("--model", default="gemma-3-270m", help="a model of `scope models`")
    features.add_argument(
        "--sae",
        default="demo",
        help="any scope.load_sae spec: a registry 'RELEASE/SAE_ID', "
        "a params.npz, a sae-lens folder, or 'demo' / 'demo-docs' (the bundled demo SAEs)",
    )
    features.add_argument(
        "--hook", default=None, help="the SAE's hook, required for a params.npz (default: the hook the SAE records)"
    )
    features.add_argument("--k", type=POSITIVE_INT, default=5, help="features shown per token")
    features.set_defaults(run=cmd_features)

    search = commands.add_parser(
        "search",
        help="find features: by words in their labels, or by contrasting texts with and without a concept",
    )
    wanted = search.add_mutually_exclusive_group(required=True)
    wanted.add_argument("--query", help="words to find in the feature labels and explanations")
    wanted.add_argument(
        "--positive", help="texts with the concept: .txt (one text per line), .jsonl (a text field) or .parquet"
    )
    search.add_argument(
        "--negative", default=None, help="texts without it (same formats); omit to rank by corpus density"
    )
    search.add_argument("--model", default="gemma-3-270m", help="a model of `scope models`")
    search.add_argument(
        "--sae", default="demo", help="any scope.load_sae spec, or 'demo' / 'demo-docs' (the bundled demo SAEs)"
    )
    search.add_argument("--hook", default=None, help="the SAE's hook, required for a params.npz")
    search.add_argument("--labels", default=None, help="a label table (.parquet/.csv/.jsonl; default: the SAE's own)")
    search.add_argument("--k", type=POSITIVE_INT, default=10, help="features shown")
    search.set_defaults(run=cmd_search)

    steer = commands.add_parser("steer", help="unsteered vs steered continuation of a prompt")
    steer.add_argument("prompt", help="the text to continue (with --chat: the user's message)")
    steer.add_argument("--feature", type=NON_NEGATIVE_INT, required=True, help="the SAE feature to steer")
    steer.add_argument("--value", type=FINITE, required=True, help="clamp value, or add coefficient")
    steer.add_argument(
        "--mode", choices=["clamp", "add"], default="clamp", help="clamp the feature, or add its decoder direction"
    )
    steer.add_argument("--unit", choices=["act", "max"], default="act", help="clamp unit (max: x max activation)")
    steer.add_argument("--positions", choices=["all", "prompt", "generated"], default="all", help="the tokens steered")
    steer.add_argument(
        "--sae",
        default="demo",
        help="any scope.load_sae spec: a registry 'RELEASE/SAE_ID', "
        "a params.npz, a sae-lens folder, or 'demo' / 'demo-docs' (the bundled demo SAEs)",
    )
    steer.add_argument(
        "--hook", default=None, help="the SAE's hook, required for a params.npz (default: the hook the SAE records)"
    )
    _add_generation_arguments(steer, max_new_tokens=40)
    steer.set_defaults(run=cmd_steer)

    examples = commands.add_parser("examples", help="top activating examples of SAE features over a corpus")
    _add_mining_arguments(examples, many=True)
    examples.add_argument("--features", type=FEATURES, default=None, help="comma-separated, e.g. 1,2,3 (default: all)")
    examples.add_argument(
        "--out",
        required=True,
        help="Parquet file for the results (resumes if interrupted); with several --sae, a folder "
        "holding one sae=HOOK/part-0.parquet per SAE",
    )
    examples.add_argument(
        "--engine", choices=["ray"], default=None, help="shard the corpus over Ray workers (pip install 'scope[ray]')"
    )
    examples.add_argument("--workers", type=POSITIVE_INT, default=2, help="Ray workers (with --engine ray)")
    examples.add_argument(
        "--shards", type=POSITIVE_INT, default=64, help="corpus shards, by document hash (with --engine ray)"
    )
    examples.add_argument("--context", type=NON_NEGATIVE_INT, default=8, help="tokens shown either side of the peak")
    examples.add_argument("--show", type=NON_NEGATIVE_INT, default=20, help="rows printed")
    examples.add_argument(
        "--checkpoint-every",
        type=POSITIVE_INT,
        default=50,
        help="batches between checkpoints (beside --out; a rerun resumes from them)",
    )
    examples.add_argument(
        "--overwrite", action="store_true", help="discard a checkpoint of another run beside --out and start again"
    )
    examples.set_defaults(run=cmd_examples)

    dashboard = commands.add_parser("dashboard", help="self-contained HTML pages for SAE features")
    _add_mining_arguments(dashboard)
    dashboard.add_argument("--features", type=FEATURES, required=True, help="comma-separated, e.g. 1,2,3")
    dashboard.add_argument("--out", required=True, help="folder for the pages and index.html")
    dashboard.set_defaults(run=cmd_dashboard)

    explain = commands.add_parser("explain", help="LLM explanations of mined features, and their detection scores")
    explain.add_argument("--mined", required=True, help="the Parquet table `scope examples --out` wrote")
    explain.add_argument("--features", type=FEATURES, default=None, help="comma-separated (default: all mined)")
    explain.add_argument("--out", required=True, help="Parquet file of explanations (a rerun resumes it)")
    explain.add_argument(
        "--explainer",
        default="gemma-3-270m",
        help="a model of `scope models` to explain with (an -it model for real use; the bundled base "
        "model is a weak stand-in)",
    )
    explain.add_argument(
        "--endpoint", default=None, help="an OpenAI-compatible base URL instead, e.g. http://127.0.0.1:8080/v1"
    )
    explain.add_argument("--endpoint-model", default="default", help="the model name the endpoint expects")
    explain.add_argument("--api-key", default=None, help="the endpoint's key (default: $OPENAI_API_KEY, or none)")
    explain.add_argument("--n-examples", type=POSITIVE_INT, default=10, help="examples shown per feature")
    explain.add_argument(
        "--batch-size", type=POSITIVE_INT, default=8, help="chats generated together (local explainer)"
    )
    explain.add_argument("--score", action="store_true", help="also score each explanation by detection")
    explain.add_argument("--scores-out", default=None, help="Parquet file of scores (default: OUT_scores.parquet)")
    explain.add_argument("--model", default="gemma-3-270m", help="the subject the examples were mined from (--score)")
    explain.add_argument("--sae", default="demo", help="the SAE the examples were mined from (--score)")
    explain.add_argument("--hook", default=None, help="the SAE's hook, for a params.npz (--score)")
    explain.set_defaults(run=cmd_explain)

    shield = commands.add_parser("shield", help="ShieldGemma P(Yes) per policy for a prompt (and response)")
    shield.add_argument("prompt", help="the user's prompt to classify")
    shield.add_argument(
        "--response",
        default=None,
        help="the chatbot's response (prompt-response use case; default: none, the prompt is classified)",
    )
    shield.add_argument(
        "--policy",
        action="append",
        dest="policies",
        help="a scope.shield.POLICIES key, repeatable (default: the four trained harm types)",
    )
    shield.add_argument("--model", default="shieldgemma-2b", help="a model of `scope models`")
    shield.add_argument(
        "--weights", default=None, help="local checkpoint folder for --model (default: the Hugging Face Hub's)"
    )
    shield.set_defaults(run=cmd_shield)

    demo = commands.add_parser("demo", help="the main job on the bundled model (offline)")
    demo.add_argument("--max-new-tokens", type=POSITIVE_INT, default=24, help="tokens to generate")
    demo.set_defaults(run=cmd_demo)

    commands.add_parser("doctor", help="check the bundled model's cache and the hub").set_defaults(run=cmd_doctor)

    serve = commands.add_parser("serve", help="OpenAI-compatible steering server and feature explorer")
    serve.add_argument("--model", default="gemma-3-270m", help="a model of `scope models`")
    serve.add_argument(
        "--sae",
        action="append",
        help="an SAE to serve, as SPEC or NAME=SPEC (any scope.load_sae spec), repeatable (default: demo)",
    )
    serve.add_argument(
        "--mined",
        action="append",
        help="examples Parquet of `scope examples --out` as PATH or NAME=PATH, repeatable (default: none)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (a non-loopback one prints a warning)")
    serve.add_argument("--port", type=POSITIVE_INT, default=8000, help="port to listen on")
    serve.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' on API routes (default: none)"
    )
    serve.add_argument("--max-batch", type=POSITIVE_INT, default=8, help="most requests one batched generation groups")
    serve.add_argument("--max-queue", type=POSITIVE_INT, default=64, help="requests waiting or running; more get 429")
    serve.add_argument("--max-tokens", type=POSITIVE_INT, default=512, help="most tokens one request may generate")
    serve.add_argument("--max-prompt-tokens", type=POSITIVE_INT, default=4096, help="longest prompt accepted")
    serve.add_argument(
        "--cors-origin",
        action="append",
        help="an origin allowed to call the API from a browser, repeatable (default: none)",
    )
    serve.set_defaults(run=cmd_serve)
    return parser


def _error(err: BaseException) -> None:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    print(f"scope: error: {' '.join(lines) or type(err).__name__}", file=sys.stderr)


def _interrupted(args: argparse.Namespace) -> str:
    if args.command == "examples":
        from scope.mining import checkpoint_path, shards_path

        checkpoint = checkpoint_path(Path(args.out))
        if shards_path(Path(args.out)).is_dir():
            checkpoint = shards_path(Path(args.out))
        if checkpoint.is_file() or checkpoint.is_dir():
            return (
                f"scope: interrupted; {checkpoint} keeps the work done up to its last save: "
                "run the same command again to resume"
            )
    return "scope: interrupted"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scope ARGV``; the exit status: 0, 2 for a bad argument (argparse's own errors, and a
    ValueError or TypeError found checking one), 1 for a failure at run time (a file or folder, a
    download: OSError, scope.ModelUnavailableError and other RuntimeErrors), 130 for Ctrl-C. Every
    error is one line on stderr, ``scope: error: ...``, never a traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help (0), or a usage error argparse printed on one line (2)
        return exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 2
    try:
        args.run(args)
    except KeyboardInterrupt:
        print(_interrupted(args), file=sys.stderr)
        return 130
    except (ValueError, TypeError) as err:
        _error(err)
        return 2
    except (OSError, RuntimeError, ImportError) as err:  # ModelUnavailableError is a RuntimeError
        _error(err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
