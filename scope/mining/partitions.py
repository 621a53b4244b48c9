"""Many SAEs in one result: their names, the features asked of each, and the hive-partitioned
Parquet dataset (``out/sae=NAME/part-0.parquet``) a many-SAE run writes."""

from __future__ import annotations

import os
import shutil
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from scope._io import write_parquet
from scope.hooks import sae_hook
from scope.lazy_layers import LazySAEs
from scope.mining.results import Mined


def is_one_sae(sae: Any) -> bool:
    """Whether ``sae`` is one SAE (or transcoder), not a collection of them."""
    return hasattr(sae, "cfg") and hasattr(sae, "encode")


def named_saes(sae: Any, *, specs: bool = False) -> list[tuple[str | None, Any, Any]]:
    """``(partition name, key in the result, SAE or spec)`` for each SAE; one entry named None for
    a single SAE. A dict (or :func:`scope.load_saes`' lazy set) is named by its keys, a list by
    its SAEs' hooks. ``specs``: a lazy set gives its specs (for workers to load), not its SAEs."""
    if is_one_sae(sae):
        return [(None, None, sae)]
    if isinstance(sae, LazySAEs) and specs:
        return [(partition_name(layer), layer, spec) for layer, spec in sae.specs.items()]
    named: list[tuple[str | None, Any, Any]]
    if isinstance(sae, Mapping):  # names checked before a LazySAEs loads each SAE, when it is touched
        names = _distinct_names(list(sae))
        named = [(name, key, sae[key]) for name, key in names]
    elif isinstance(sae, (list, tuple)):
        named = []
        for i, each in enumerate(sae):
            if not is_one_sae(each):
                raise TypeError(
                    f"saes[{i}] is a {type(each).__name__}, not an SAE; a list holds loaded SAEs "
                    "(name specs in a dict: {'name': spec})."
                )
            hook = sae_hook(each)
            named.append((partition_name(hook), hook, each))
        hooks = [sae_hook(each) for each in sae]
        twice = sorted({hook for hook in hooks if hooks.count(hook) > 1})
        if twice:
            raise ValueError(
                f"Two SAEs of the list read {', '.join(twice)}: a list names each SAE by its hook; "
                "pass a dict {name: sae} to mine several SAEs at one hook."
            )
    else:
        raise TypeError(
            f"sae must be an SAE, a list or dict of SAEs, or scope.load_saes(...), got {type(sae).__name__}."
        )
    if not named:
        raise ValueError("saes is empty: give at least one SAE.")
    return named


_NOT_IN_NAMES = "/\\=%\0"  # path separators, hive's NAME=VALUE and its %-escapes, NUL


def partition_name(key: Any) -> str:
    """``key`` as the name of its folder ``sae=NAME`` in a many-SAE result."""
    name = str(key)
    if (
        not name
        or name.startswith(".")
        or name != name.strip()
        or any(c in _NOT_IN_NAMES or not c.isprintable() for c in name)
    ):
        raise ValueError(
            f"SAE name {key!r} cannot name a folder sae={name}: use a name without '/', '\\\\', '=', '%', "
            "control characters, surrounding spaces or a leading '.'."
        )
    return name


def _distinct_names(keys: Sequence[Any]) -> list[tuple[str, Any]]:
    """``(partition name, key)`` of each key; ValueError naming both keys when two would write the
    same folder: the same text (``1`` and ``"1"``), or the same but for case or Unicode form,
    which case-insensitive file systems (macOS, Windows) hold as one folder."""
    seen: dict[str, Any] = {}
    names = []
    for key in keys:
        name = partition_name(key)
        folded = unicodedata.normalize("NFC", name).casefold()
        if folded in seen:
            raise ValueError(
                f"SAE names {seen[folded]!r} and {key!r} would both write the folder sae={name} (names are "
                "compared as text, ignoring case, as case-insensitive file systems do): rename one of them."
            )
        seen[folded] = key
        names.append((name, key))
    return names


def features_by_name(features: Any, named: list[tuple[str | None, Any, Any]]) -> dict[str | None, Any]:
    """The features asked of each SAE, by partition name: ``features`` itself for every SAE, or for
    many SAEs a dict's entries, keyed like the SAEs (or by their names as text). A key that names
    no SAE is a ValueError naming it and the SAEs."""
    if named[0][0] is None or not isinstance(features, Mapping):
        return {name: features for name, _, _ in named}
    chosen: dict[str | None, Any] = {}
    for asked, wanted in features.items():
        match = [name for name, key, _ in named if asked == key] or [name for name, _, _ in named if str(asked) == name]
        if not match:
            shown = ", ".join(repr(key) for _, key, _ in named)
            raise ValueError(f"features has an entry for {asked!r}, which names no SAE here; the SAEs are {shown}.")
        if match[0] in chosen:
            raise ValueError(f"features has two entries for the SAE named {match[0]!r}: give one.")
        chosen[match[0]] = wanted
    return {name: chosen.get(name) for name, _, _ in named}


def dataset_files(out: str | os.PathLike, names: Iterable[str]) -> dict[str, Path]:
    """Where a many-SAE result keeps each SAE's table: ``out/sae=NAME/part-0.parquet``."""
    return {name: Path(out) / f"sae={name}" / "part-0.parquet" for name in names}


def write_dataset(frames: Mapping[str, pd.DataFrame], out: str | os.PathLike) -> Path:
    """Write one table per SAE as a hive-partitioned Parquet dataset (``pd.read_parquet(out)``
    reads them all, with a ``sae`` column), atomically: the folder is written beside ``out`` and
    renamed into place, so a kill leaves the previous dataset (or none), never half of one."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, path in dataset_files(tmp, frames).items():
            path.parent.mkdir(parents=True)
            frames[name].to_parquet(path, index=False)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def write_results(results: Mapping[Any, Mined], named: list[tuple[str | None, Any, Any]], out: Any) -> None:
    """Write a run's tables to ``out``: one Parquet file for a single SAE, a dataset for many."""
    if out is None:
        return
    if named[0][0] is None:
        write_parquet(results[None].examples, out)
    else:
        write_dataset({str(name): results[key].examples for name, key, _ in named}, out)
