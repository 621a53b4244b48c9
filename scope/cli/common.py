"""What several commands share: printing tables, checking names and specs before anything loads,
loading the model and its SAE."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import pandas as pd

import scope
from scope.saes import resolve_sae_spec
from scope.subjects import subject


def table(frame: pd.DataFrame) -> str:
    with pd.option_context("display.max_rows", 500, "display.max_colwidth", 60, "display.width", 160):
        return frame.to_string(index=False)


def check_model(name: str) -> None:
    """An unknown model name is a ValueError before anything loads."""
    subject(name)


def check_sae_spec(spec: str, hook: str | None) -> None:
    """The library's own resolution of an SAE spec (scope.saes.resolve_sae_spec: a missing file, a
    demo SAE not built, an id not in sae-lens' registry), and --hook for a params.npz, before the
    model loads."""
    if resolve_sae_spec(spec).kind == "params.npz" and hook is None:
        raise ValueError(
            f"--sae {spec} is a Gemma Scope params.npz, which does not record the hook it was "
            "trained at: pass --hook, e.g. --hook blocks.20.hook_resid_post."
        )


def model_and_sae(args: argparse.Namespace) -> tuple[Any, Any]:
    check_model(args.model)
    check_sae_spec(args.sae, args.hook)
    model = scope.load_model(args.model)
    sae = scope.load_sae(args.sae, hook=args.hook, device=model.cfg.device, dtype=model.cfg.dtype)
    scope.check_compatible(model, sae)
    return model, sae


def prompt(args: argparse.Namespace) -> Any:
    """The prompt, or with --chat a one-message chat."""
    return [{"role": "user", "content": args.prompt}] if args.chat else args.prompt


def named(
    values: list[str],
    option: str,
    default_name: str | None = None,
    bare_name: Callable[[str], str] | None = None,
    what: str = "SPEC",
) -> dict[str, str]:
    """``name=value`` (or a bare value: named ``bare_name(value)``, ``default_name`` or itself) ->
    {name: value}; ``what`` is what a value is, in the error."""
    found: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep:
            name, rest = (bare_name(value) if bare_name else default_name or value), value
        if not name or not rest:
            raise ValueError(f"{option} {value!r}: expected {what} or NAME={what}")
        if name in found:
            raise ValueError(f"{option}: the name {name!r} is given twice")
        found[name] = rest
    return found
