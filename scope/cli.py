"""The ``scope`` command: a thin layer over the library."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

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

    model = scope.load_model(args.model)
    prompt = _prompt(args)
    text = scope.generate(model, prompt, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    print(text)


def cmd_features(args: argparse.Namespace) -> None:
    import scope

    model = scope.load_model(args.model or "gemma-3-270m")
    sae = scope.load_sae(args.sae or "demo", hook=args.hook, device=model.cfg.device, dtype=model.cfg.dtype)
    scope.check_compatible(model, sae)
    print(_table(scope.top_features(model, sae, args.text, k=args.k)))


def cmd_steer(args: argparse.Namespace) -> None:
    import scope

    model = scope.load_model(args.model)
    sae = scope.load_sae(args.sae, hook=args.hook, device=model.cfg.device, dtype=model.cfg.dtype)
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
    from scope.residuals import residual_norms

    started = time.perf_counter()
    model = scope.load_model("gemma-3-270m")
    print(f"Loaded the bundled Gemma 3 270M ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}) "
          f"in {time.perf_counter() - started:.1f} s\n")

    started = time.perf_counter()
    continuation = scope.generate(model, DEMO_PROMPT, max_new_tokens=args.max_new_tokens)
    elapsed = time.perf_counter() - started
    print(f"Greedy continuation ({elapsed:.1f} s):\n  {DEMO_PROMPT}{continuation}\n")

    from scope.saes import DEMO_SAE_DIR

    if (DEMO_SAE_DIR / "cfg.json").is_file():
        sae = scope.load_sae("demo", device=model.cfg.device, dtype=model.cfg.dtype)
        table = scope.top_features(model, sae, DEMO_SENTENCE, k=3)
        print(f"Top demo-SAE features per token ({sae.cfg.metadata.hook_name}) of: {DEMO_SENTENCE!r}")
        print(_table(table.round({"activation": 1})))
        return
    norms = residual_norms(model, DEMO_SENTENCE)
    summary = (norms.assign(is_bos=norms["position"] == 0)
               .pivot_table(index="layer", columns="is_bos", values="norm", aggfunc="mean")
               .rename(columns={True: "norm at BOS", False: "mean norm elsewhere"})
               .reset_index())
    summary.columns.name = None
    print(f"Residual stream (blocks.L.hook_resid_post) on: {DEMO_SENTENCE!r}")
    print("(the bundled demo SAE is not in data/demo_sae yet: scripts/train_demo_sae.py builds it)")
    print(_table(summary.round(1)))


def _feature_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise ValueError(f"--features must be comma-separated integers like 1,2,3, got {text!r}.") from None


def _model_and_sae(args: argparse.Namespace):
    import scope

    model = scope.load_model(args.model)
    sae = scope.load_sae(args.sae, hook=args.hook, device=model.cfg.device, dtype=model.cfg.dtype)
    scope.check_compatible(model, sae)
    return model, sae


def cmd_examples(args: argparse.Namespace) -> None:
    import scope
    from scope._io import check_corpus_file, check_writable_file

    features = _feature_list(args.features)
    check_writable_file(args.out, "--out")  # fail before a model loads
    check_corpus_file(args.corpus)
    model, sae = _model_and_sae(args)
    frame = scope.top_examples(model, sae, args.corpus, features=features, k=args.k, context=args.context,
                               out=args.out)
    print(_table(frame.drop(columns=["text_id"]).head(args.show)))
    print(f"\n{len(frame)} rows for {frame.feature.nunique()} features written to {args.out}")


def cmd_dashboard(args: argparse.Namespace) -> None:
    from scope._io import check_corpus_file, check_writable_dir
    from scope.pages import dashboards

    features = _feature_list(args.features)
    check_writable_dir(args.out, "--out")  # fail before a model loads
    check_corpus_file(args.corpus)
    model, sae = _model_and_sae(args)
    index = dashboards(model, sae, features, args.corpus, args.out, k=args.k)
    print(f"{len(features)} feature pages and their index: {index}")


def cmd_shield(args: argparse.Namespace) -> None:
    import scope
    from scope import shield

    policies = args.policies or list(shield.TRAINED_HARM_TYPES)
    for key in policies:  # fail on a bad key before loading a model
        shield.resolve_policy(key)
    model = scope.load_model(args.model, weights=args.weights)
    if not args.model.startswith("shieldgemma"):
        print(f"note: {args.model} is not ShieldGemma; P(Yes) below is a stand-in, not a safety verdict.\n")
    # One policy per call, as the model card recommends (ShieldGemma was trained on one at a time).
    rows = [{"policy": key, "P(Yes)": shield.score(model, args.prompt, key, responses=args.response,
                                                   progress=False)[0]} for key in policies]
    print(_table(pd.DataFrame(rows).round(4)))


def _add_generation_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a user turn")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)


def _add_mining_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sae", default="demo", help="any scope.load_sae spec (default: the demo SAE)")
    parser.add_argument("--hook", default=None, help="the SAE's hook, required for a params.npz")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--corpus", required=True, help="a .txt (one text per line), .jsonl or .parquet file")
    parser.add_argument("--k", type=int, default=20, help="examples per feature")


def _prompt(args: argparse.Namespace):
    return [{"role": "user", "content": args.prompt}] if args.chat else args.prompt


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scope", description="Interpretability toolkit for Gemma 2.")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("models", help="list the models scope can load").set_defaults(run=cmd_models)

    generate = commands.add_parser("generate", help="generate a continuation (or a chat reply)")
    generate.add_argument("prompt")
    _add_generation_arguments(generate, max_new_tokens=64)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.set_defaults(run=cmd_generate)

    features = commands.add_parser("features", help="top SAE features per token of a text")
    features.add_argument("text")
    features.add_argument("--model", default=None, help="default: the bundled gemma-3-270m")
    features.add_argument("--sae", default=None, help="any scope.load_sae spec; default: the bundled demo SAE")
    features.add_argument("--hook", default=None, help="the SAE's hook, required for a params.npz")
    features.add_argument("--k", type=int, default=5)
    features.set_defaults(run=cmd_features)

    steer = commands.add_parser("steer", help="unsteered vs steered continuation of a prompt")
    steer.add_argument("prompt")
    steer.add_argument("--feature", type=int, required=True)
    steer.add_argument("--value", type=float, required=True, help="clamp value, or add coefficient")
    steer.add_argument("--mode", choices=["clamp", "add"], default="clamp")
    steer.add_argument("--unit", choices=["act", "max"], default="act", help="clamp unit (max: x max activation)")
    steer.add_argument("--positions", choices=["all", "prompt", "generated"], default="all")
    steer.add_argument("--sae", default="demo")
    steer.add_argument("--hook", default=None, help="the SAE's hook, required for a params.npz")
    _add_generation_arguments(steer, max_new_tokens=40)
    steer.set_defaults(run=cmd_steer)

    examples = commands.add_parser("examples", help="top activating examples of SAE features over a corpus")
    _add_mining_arguments(examples)
    examples.add_argument("--features", default=None, help="comma-separated, e.g. 1,2,3 (default: all)")
    examples.add_argument("--out", required=True, help="Parquet file for the results (resumes if interrupted)")
    examples.add_argument("--context", type=int, default=8, help="tokens shown either side of the peak")
    examples.add_argument("--show", type=int, default=20, help="rows printed")
    examples.set_defaults(run=cmd_examples)

    dashboard = commands.add_parser("dashboard", help="self-contained HTML pages for SAE features")
    _add_mining_arguments(dashboard)
    dashboard.add_argument("--features", required=True, help="comma-separated, e.g. 1,2,3")
    dashboard.add_argument("--out", required=True, help="folder for the pages and index.html")
    dashboard.set_defaults(run=cmd_dashboard)

    shield = commands.add_parser("shield", help="ShieldGemma P(Yes) per policy for a prompt (and response)")
    shield.add_argument("prompt")
    shield.add_argument("--response", default=None, help="the chatbot's response (prompt-response use case)")
    shield.add_argument("--policy", action="append", dest="policies",
                        help="a scope.shield.POLICIES key, repeatable (default: the four trained harm types)")
    shield.add_argument("--model", default="shieldgemma-2b")
    shield.add_argument("--weights", default=None, help="local checkpoint folder for --model")
    shield.set_defaults(run=cmd_shield)

    demo = commands.add_parser("demo", help="the main job on the bundled model (offline)")
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, RuntimeError, OSError) as err:  # user errors (a bad file or folder too): one clear line
        print(f"scope: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
