"""``scope models`` and ``scope doctor``."""

from __future__ import annotations

import argparse

import scope
from scope.bundled import inspect_cache
from scope.cli.common import table
from scope.models import hub_status


def models(args: argparse.Namespace) -> None:
    listed = scope.list_models()
    listed["gemma_scope_releases"] = listed["gemma_scope_releases"].map(_short_release_list)
    print(table(listed))


def _short_release_list(releases: list[str]) -> str:
    """Canonical releases where there are some, else those that are not per-layer '-all' sets."""
    shown = [r for r in releases if "canonical" in r or "demo" in r]
    shown = shown if len(shown) > 1 else shown + [r for r in releases if r not in shown and not r.endswith("-all")]
    return ", ".join(shown) or "-"


def doctor(args: argparse.Namespace) -> None:
    status = inspect_cache()  # size and sha256 of every file of the bundled model's cache
    print(status)
    print(f"Hugging Face Hub: {hub_status()}")
    if not status.ok:
        raise RuntimeError(
            f"the bundled model cache {status.folder} is corrupted: the next "
            "scope.load_model('gemma-3-270m') deletes it and converts it again"
        )
