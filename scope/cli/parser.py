"""The parser of ``scope``: every command, its arguments and their cheap checks.

Nothing heavy is imported here (``scope --help`` stays fast): each command names its function
as ``"module:function"`` in :mod:`scope.cli`, imported only when that command runs.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

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
PORT = _checked(int, lambda v: 1 <= v <= 65535, "a port number in 1..65535")
SEED = _checked(int, lambda v: -(2**63) <= v < 2**63, "an integer in [-2**63, 2**63 - 1]")
SECONDS = _checked(float, lambda v: math.isfinite(v) and v > 0, "a number of seconds > 0")
NON_NEGATIVE_INT = _checked(int, lambda v: v >= 0, "a non-negative integer")
FINITE = _checked(float, math.isfinite, "a finite number")
TEMPERATURE = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
TOP_P = _checked(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
FRACTION = _checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
FEATURES = _checked(_integers, lambda v: all(f >= 0 for f in v), "comma-separated integers like 1,2,3")
POSITIVE_FRACTION = _checked(float, lambda v: 0 < v <= 1, "a fraction in (0, 1], e.g. 0.1")
WINDOW = 128  # tokens per mining window, BOS included: scope.top_examples' and scope.mine's default
OVERLAP = _checked(
    int,
    lambda v: 0 <= v <= WINDOW - 2,
    f"an integer from 0 to {WINDOW - 2} (windows are {WINDOW} tokens, BOS included)",
)


def _add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """Which features a top-features view shows: dense ones or not, ranked how."""
    parser.add_argument(
        "--show-dense", action="store_true", help="also show dense features (hidden by default: they fire everywhere)"
    )
    parser.add_argument(
        "--dense-threshold",
        type=POSITIVE_FRACTION,
        default=0.1,
        help="a feature firing on more than this share of tokens is dense",
    )
    parser.add_argument(
        "--rank-by",
        choices=("activation", "relative"),
        default="activation",
        help="rank by activation, or by activation / the feature's max activation",
    )


def _add_generation_arguments(parser: argparse.ArgumentParser, *, max_new_tokens: int) -> None:
    parser.add_argument("--model", default="gemma-3-270m", help="a model of `scope models`")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a user turn")
    parser.add_argument("--max-new-tokens", type=POSITIVE_INT, default=max_new_tokens, help="tokens to generate")
    parser.add_argument("--temperature", type=TEMPERATURE, default=0.0, help="sampling temperature; 0 is greedy")
    parser.add_argument("--seed", type=SEED, default=None, help="random seed of the sampling (default: unseeded)")


def _add_mining_arguments(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    """``many``: ``--sae`` (and ``--hook``) may be repeated, one per SAE mined in the same pass."""
    parser.add_argument(
        "--sae",
        action="append" if many else "store",
        default=None if many else "demo",
        help="any scope.load_sae spec: a registry 'RELEASE/SAE_ID', "
        "a params.npz, a sae-lens folder, or 'demo' / 'demo-docs' / 'demo-modern' (the bundled demo SAEs)"
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scope", description="Interpretability toolkit for Gemma 2.")
    commands = parser.add_subparsers(dest="command", required=True)  # each a _Parser too

    commands.add_parser("models", help="list the models scope can load").set_defaults(run="info:models")

    generate = commands.add_parser("generate", help="generate a continuation (or a chat reply)")
    generate.add_argument("prompt", help="the text to continue (with --chat: the user's message)")
    _add_generation_arguments(generate, max_new_tokens=64)
    generate.add_argument(
        "--top-p",
        type=TOP_P,
        default=1.0,
        help="nucleus sampling: keep the most likely tokens up to this probability mass",
    )
    generate.set_defaults(run="generation:generate")

    features = commands.add_parser("features", help="top SAE features per token of a text")
    features.add_argument("text", help="the text to encode")
    features.add_argument("--model", default="gemma-3-270m", help="a model of `scope models`")
    features.add_argument(
        "--sae",
        default="demo",
        help="any scope.load_sae spec: a registry 'RELEASE/SAE_ID', "
        "a params.npz, a sae-lens folder, or 'demo' / 'demo-docs' / 'demo-modern' (the bundled demo SAEs)",
    )
    features.add_argument(
        "--hook", default=None, help="the SAE's hook, required for a params.npz (default: the hook the SAE records)"
    )
    features.add_argument("--k", type=POSITIVE_INT, default=5, help="features shown per token")
    _add_view_arguments(features)
    features.set_defaults(run="features:features")

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
        "--sae",
        default="demo",
        help="any scope.load_sae spec, or 'demo' / 'demo-docs' / 'demo-modern' (the bundled demo SAEs)",
    )
    search.add_argument("--hook", default=None, help="the SAE's hook, required for a params.npz")
    search.add_argument("--labels", default=None, help="a label table (.parquet/.csv/.jsonl; default: the SAE's own)")
    search.add_argument("--k", type=POSITIVE_INT, default=10, help="features shown")
    search.set_defaults(run="features:search")

    steer = commands.add_parser("steer", help="unsteered vs steered continuation of a prompt")
    steer.add_argument("prompt", help="the text to continue (with --chat: the user's message)")
    steer.add_argument("--feature", type=NON_NEGATIVE_INT, required=True, help="the SAE feature to steer")
    steer.add_argument("--value", type=FINITE, required=True, help="clamp value, or add coefficient")
    steer.add_argument(
        "--mode", choices=["clamp", "add"], default="clamp", help="clamp the feature, or add its decoder direction"
    )
    steer.add_argument(
        "--unit",
        choices=["act", "max"],
        default=None,
        help="clamp unit, with --mode clamp only (max: x the feature's max activation; default: act)",
    )
    steer.add_argument("--positions", choices=["all", "prompt", "generated"], default="all", help="the tokens steered")
    steer.add_argument(
        "--sae",
        default="demo",
        help="any scope.load_sae spec: a registry 'RELEASE/SAE_ID', "
        "a params.npz, a sae-lens folder, or 'demo' / 'demo-docs' / 'demo-modern' (the bundled demo SAEs)",
    )
    steer.add_argument(
        "--hook", default=None, help="the SAE's hook, required for a params.npz (default: the hook the SAE records)"
    )
    _add_generation_arguments(steer, max_new_tokens=40)
    steer.set_defaults(run="generation:steer")

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
    examples.add_argument(
        "--overlap",
        type=OVERLAP,
        default=None,
        help=f"tokens a text's next {WINDOW}-token window repeats from the one before, as context only, so that "
        "no scored token starts cold (default: an eighth of the window, 16; 0: none)",
    )
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
    examples.set_defaults(run="mining:examples")

    dashboard = commands.add_parser("dashboard", help="self-contained HTML pages for SAE features")
    _add_mining_arguments(dashboard)
    dashboard.add_argument("--features", type=FEATURES, required=True, help="comma-separated, e.g. 1,2,3")
    dashboard.add_argument("--out", required=True, help="folder for the pages and index.html")
    dashboard.set_defaults(run="mining:dashboard")

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
    explain.set_defaults(run="mining:explain")

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
    shield.set_defaults(run="shield:shield")

    graph = commands.add_parser("graph", help="attribution graph of a prompt's next token, as Neuronpedia's JSON")
    graph.add_argument("prompt", help="the text whose next token is traced")
    graph.add_argument("--model", default="gemma-3-270m", help="a model of `scope models`")
    graph.add_argument(
        "--transcoders", default="demo", help="any scope.load_transcoders spec: 'demo', a model name, a folder"
    )
    graph.add_argument("--out", required=True, help="the graph JSON to write")
    graph.add_argument("--pt", default=None, help="also save the whole graph (Graph.save) here (default: no)")
    graph.add_argument("--max-feature-nodes", type=POSITIVE_INT, default=None, help="feature nodes (default: all)")
    graph.add_argument("--batch-size", type=POSITIVE_INT, default=64, help="targets per backward pass")
    graph.add_argument("--node-threshold", type=FRACTION, default=0.8, help="influence share of the nodes kept")
    graph.add_argument("--edge-threshold", type=FRACTION, default=0.98, help="influence share of the edges kept")
    graph.add_argument(
        "--zero-bos",
        action="store_true",
        help="drop the BOS position's MLP outputs as circuit-tracer does (each node's bos_share says how much)",
    )
    graph.add_argument(
        "--open",
        action="store_true",
        help="then serve the graph and its features' pages on 127.0.0.1 and print the URL, until Ctrl-C",
    )
    graph.add_argument("--port", type=PORT, default=8000, help="the port --open serves on")
    graph.set_defaults(run="graph:graph")

    demo = commands.add_parser("demo", help="the main job on the bundled model (offline)")
    demo.add_argument("--max-new-tokens", type=POSITIVE_INT, default=24, help="tokens to generate")
    _add_view_arguments(demo)
    demo.set_defaults(run="demo:demo")

    commands.add_parser("doctor", help="check the bundled model's cache and the hub").set_defaults(run="info:doctor")

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
    serve.add_argument(
        "--graph",
        action="append",
        help="an attribution graph JSON (`scope graph --out`) served at /graph/NAME, as PATH or NAME=PATH "
        "(NAME: the file's stem), repeatable (default: none)",
    )
    serve.add_argument(
        "--transcoders",
        default=None,
        help="transcoders served as SAEs named transcoder-LAYER, so a graph's feature opens its page: 'demo', "
        "this model's name, or a folder (any scope.load_transcoders spec; default: none)",
    )
    serve.add_argument(
        "--assistant",
        default=None,
        help="a model of `scope models` sharing --model's tokenizer that drafts tokens for every request "
        "(assisted generation: same greedy text, faster; default: none)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (a non-loopback one prints a warning)")
    serve.add_argument(
        "--port", type=PORT, default=8000, help="port to listen on (checked free before the model loads)"
    )
    serve.add_argument(
        "--api-key", default=None, help="require 'Authorization: Bearer KEY' on API routes (default: none)"
    )
    serve.add_argument("--max-batch", type=POSITIVE_INT, default=8, help="most requests one batched generation groups")
    serve.add_argument("--max-queue", type=POSITIVE_INT, default=64, help="requests waiting or running; more get 429")
    serve.add_argument("--max-tokens", type=POSITIVE_INT, default=512, help="most tokens one request may generate")
    serve.add_argument("--max-prompt-tokens", type=POSITIVE_INT, default=4096, help="longest prompt accepted")
    serve.add_argument(
        "--request-timeout",
        type=SECONDS,
        default=600.0,
        help="seconds one request may wait and generate; past it the request gets 504 and its work stops",
    )
    serve.add_argument(
        "--any-model-name",
        action="store_true",
        help="accept any 'model' in requests, as llama-server does (default: another name gets 404 model_not_found)",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        help="an origin allowed to call the API from a browser, repeatable (default: none)",
    )
    serve.set_defaults(run="serve:serve")
    return parser
