"""``scope examples``, ``scope dashboard`` and ``scope explain``: work over a corpus."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import scope
from scope._io import check_corpus_file, check_writable_dir, check_writable_file
from scope.cli.common import check_model, check_sae_spec, model_and_sae, table
from scope.mining import checkpoint_path, shards_path
from scope.pages import dashboards


def examples(args: argparse.Namespace) -> None:
    specs = _sae_specs(args)
    if len(specs) > 1 or args.engine:
        return _mine_many(args, specs)
    check_writable_file(args.out, "--out")  # fail before a model loads
    check_corpus_file(args.corpus)
    args.sae, args.hook = specs[0]
    model, sae = model_and_sae(args)
    frame = scope.top_examples(
        model,
        sae,
        args.corpus,
        features=args.features,
        k=args.k,
        context=args.context,
        overlap=args.overlap,
        out=args.out,
        checkpoint_every=args.checkpoint_every,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    print(table(frame.drop(columns=["text_id"]).head(args.show)))
    print(f"\n{len(frame)} rows for {frame.feature.nunique()} features written to {args.out}")


def _sae_specs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """``(spec, hook)`` of each ``--sae`` (default: the demo SAE); ``--hook`` once per ``--sae``."""
    specs = args.sae or ["demo"]
    hooks = args.hook or [None] * len(specs)
    if len(hooks) != len(specs):
        raise ValueError(
            f"--hook is given {len(hooks)} times for {len(specs)} --sae: give it once per --sae, in the same order."
        )
    for spec, hook in zip(specs, hooks):
        check_sae_spec(spec, hook)
    return list(zip(specs, hooks))


def _mine_many(args: argparse.Namespace, specs: list[tuple[str, str | None]]) -> None:
    """Several SAEs in one pass (``--out`` a folder, one ``sae=HOOK`` table each), or any SAEs on Ray."""
    many = len(specs) > 1
    check_writable_dir(args.out, "--out") if many else check_writable_file(args.out, "--out")
    check_corpus_file(args.corpus)
    check_model(args.model)
    options = dict(
        features=args.features,
        k=args.k,
        context=args.context,
        overlap=args.overlap,
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


def interrupted(args: argparse.Namespace) -> str | None:
    """What Ctrl-C during ``scope examples`` kept, and how to resume."""
    if args.command != "examples":
        return None
    checkpoint = checkpoint_path(Path(args.out))
    if shards_path(Path(args.out)).is_dir():
        checkpoint = shards_path(Path(args.out))
    if checkpoint.is_file() or checkpoint.is_dir():
        return (
            f"scope: interrupted; {checkpoint} keeps the work done up to its last save: "
            "run the same command again to resume"
        )
    return None


def dashboard(args: argparse.Namespace) -> None:
    check_writable_dir(args.out, "--out")  # fail before a model loads
    check_corpus_file(args.corpus)
    model, sae = model_and_sae(args)
    index = dashboards(model, sae, args.features, args.corpus, args.out, k=args.k, progress=sys.stderr.isatty())
    print(f"{len(args.features)} feature pages and their index: {index}")


def explain(args: argparse.Namespace) -> None:
    """LLM explanations of mined features (and, with --score, their detection scores)."""
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
        check_model(args.explainer)
        explainer = scope.load_model(args.explainer)
        llm = scope.LocalLLM(explainer, batch_size=args.batch_size)
        if args.explainer == args.model:
            model = explainer  # one copy serves as explainer and as the subject scoring needs
    print(f"explainer: {llm.name}", file=sys.stderr)
    progress = sys.stderr.isatty()
    explained = scope.explain(
        args.mined, args.features, explainer=llm, n_examples=args.n_examples, out=args.out, progress=progress
    )
    if args.score:
        if model is None:
            check_model(args.model)
            model = scope.load_model(args.model)
        check_sae_spec(args.sae, args.hook)
        sae = scope.load_sae(args.sae, hook=args.hook, device=model.cfg.device, dtype=model.cfg.dtype)
        scores = scope.score_explanations(
            args.mined, explained, scorer=llm, model=model, sae=sae, out=scores_out, progress=progress
        )
        explained = explained.merge(scores[["feature", "balanced_accuracy", "precision", "recall"]], on="feature")
    print(table(explained.drop(columns=["reply", "explainer"])))
    where = f"{args.out}" + (f"; scores in {scores_out}" if args.score else "")
    print(f"\n{len(explained)} explanations by {llm.name} in {where}")
