"""The public entry of mining: :func:`top_examples` and :func:`mine` check their arguments, pick
the engine (this process, or Ray) and write the result."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, overload

import pandas as pd
from tqdm.auto import tqdm

from scope import _checks
from scope._io import batched, check_writable_dir, check_writable_file, iter_texts
from scope.hooks import check_compatible

# ``scope.examples`` is this module (see scope/examples.py): names code imported from there.
from scope.mining.buffers import HISTOGRAM_EDGES  # noqa: E402, F401
from scope.mining.checkpoints import Resume, checkpoint_path, key_of, remove_stale_temps
from scope.mining.partitions import features_by_name, is_one_sae, named_saes, write_results
from scope.mining.ray_engine import (
    Options,
    mine_on_ray,
    shards_path,  # noqa: E402, F401
)
from scope.mining.results import DEFAULT_CONTEXT, Mined
from scope.mining.run import SAERun, mine_batches
from scope.mining.windows import Window, check_overlap, check_window, iter_windows


def top_examples(
    model: Any,
    sae: Any,
    texts: Any,
    *,
    features: Sequence[int] | None = None,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    out: str | os.PathLike | None = None,
    window: int = 128,
    overlap: int | None = None,
    batch_size: int = 16,
    checkpoint_every: int = 50,
    overwrite: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """The ``k`` examples where each feature fires hardest over ``texts``.

    ``texts``: an iterable of strings, a ``datasets`` dataset, or a .txt/.jsonl/.parquet file.
    Long texts are cut into windows of ``window`` tokens (BOS included); each window after a
    text's first starts with ``overlap`` tokens of the window before, read as context only and not
    scored (None: an eighth of the window, at most 32; 0: no overlap), so that no token is scored
    without context: the first tokens after a cut see none, and their activations are artifacts
    of the cut. An example's activation is its maximum over its scored tokens; each token of a
    text is scored exactly once. Returns DataFrame(feature, rank, activation, text_id,
    position, token, context): ``context`` shows ``context`` tokens either side of the peak, the
    peak marked ⟦like this⟧. Features that never fire get no rows.

    ``out``: write the table to this Parquet path (atomically). The run then checkpoints every
    ``checkpoint_every`` batches beside it, and a run that was interrupted (even killed) resumes
    from its checkpoint and ends with exactly the table an uninterrupted run gives. A checkpoint
    resumes only the same run: the same options, SAE and model, and a corpus whose windows read so
    far hash as they did (whether it comes from a list, a file or a dataset); anything else is a
    ValueError naming the checkpoint. ``overwrite=True`` discards it and starts again. Densities
    and activation histograms come from the same pass: see :func:`mine`, which also mines many
    SAEs in one pass.
    """
    return mine(
        model,
        sae,
        texts,
        features=features,
        k=k,
        context=context,
        out=out,
        window=window,
        overlap=overlap,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        overwrite=overwrite,
        progress=progress,
    ).examples


@overload
def mine(
    model: Any,
    sae: Mapping[Any, Any] | list[Any] | tuple[Any, ...],
    texts: Any,
    *,
    features: Sequence[int] | Mapping[Any, Sequence[int]] | None = None,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    out: str | os.PathLike | None = None,
    window: int = 128,
    overlap: int | None = None,
    batch_size: int = 16,
    checkpoint_every: int = 50,
    overwrite: bool = False,
    progress: bool = True,
    engine: str | None = None,
    workers: int | None = None,
    shards: int = 64,
) -> dict[Any, Mined]: ...


@overload
def mine(
    model: Any,
    sae: Any,
    texts: Any,
    *,
    features: Sequence[int] | Mapping[Any, Sequence[int]] | None = None,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    out: str | os.PathLike | None = None,
    window: int = 128,
    overlap: int | None = None,
    batch_size: int = 16,
    checkpoint_every: int = 50,
    overwrite: bool = False,
    progress: bool = True,
    engine: str | None = None,
    workers: int | None = None,
    shards: int = 64,
) -> Mined: ...


def mine(
    model: Any,
    sae: Any,
    texts: Any,
    *,
    features: Sequence[int] | Mapping[Any, Sequence[int]] | None = None,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    out: str | os.PathLike | None = None,
    window: int = 128,
    overlap: int | None = None,
    batch_size: int = 16,
    checkpoint_every: int = 50,
    overwrite: bool = False,
    progress: bool = True,
    engine: str | None = None,
    workers: int | None = None,
    shards: int = 64,
) -> Mined | dict[Any, Mined]:
    """:func:`top_examples` plus each feature's density and activation histogram, in one pass,
    for one SAE or many.

    ``sae``: one SAE (returns a :class:`Mined`; ``out`` is one Parquet file, as
    :func:`top_examples` writes it), or many: a list (named by their hooks), a dict
    ``{name: sae}``, or :func:`scope.load_saes`' lazy set (named by layer). Many SAEs, at any
    hooks, are mined from one forward pass per batch that runs only to the deepest of their hooks;
    the result is ``{name: Mined}``, each exactly what mining that SAE alone gives, and ``out`` is
    a folder holding one Parquet table per SAE, ``out/sae=NAME/part-0.parquet`` (hive-partitioned:
    ``pd.read_parquet(out)`` reads them all with a ``sae`` column), written atomically and
    resumable like a single SAE's. ``features``: a list for every SAE, or a dict of lists by name.

    Memory, on the SAEs' device (the model's: a GPU's when it runs there): per SAE of ``F``
    features mined, running buffers of ``k * F * (28 + 8 * (2 * context + 1))`` bytes plus
    ``448 * F`` for the histograms (~3.7 KB per feature at k=20, context=8: 26 SAEs of 16k
    features take ~1.6 GB); per batch, the hooks' activations (``batch_size * window * d_model *
    4`` bytes each) and one SAE's activations at a time (``batch_size * window * F * 4``). Nothing
    goes to the host but at checkpoints (a copy of the buffers while one is written) and at the
    end. SAE weights (``8 * d_in * F`` bytes each in fp32) stay on the model's device.

    ``engine="ray"``: shard the corpus over ``workers`` Ray workers (see
    :mod:`scope.mining.ray_engine`). ``model`` is then something each worker can load on its own
    device: a model name (``"gemma-2-2b"``) or a picklable callable returning a model (e.g.
    ``functools.partial(scope.load_model, name, weights=path)``); each SAE is an SAE, an SAE spec
    of :func:`scope.load_sae`, or such a callable (``load_saes``' set sends its specs).
    ``texts`` is read once per shard, so it is a list, a dataset or a corpus file (which every
    worker must be able to read). Documents are split into ``shards`` by a hash of their text;
    each finished shard's result is kept beside ``out`` (a restarted run skips those), and the
    merge is exact: the result equals the single-process one.
    """
    k = _checks.positive_int(k, "k")
    context = _checks.non_negative_int(context, "context")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    checkpoint_every = _checks.positive_int(checkpoint_every, "checkpoint_every")
    window = check_window(window)
    overlap = check_overlap(overlap, window)
    if not isinstance(overwrite, bool):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}.")
    if engine not in (None, "ray"):
        raise ValueError(f"engine must be None (this process) or 'ray', got {engine!r}.")
    if engine is None and workers is not None:
        raise ValueError(f"workers={workers!r} is for engine='ray'; this process mines alone.")
    single = is_one_sae(sae)
    if out is not None:  # before anything is loaded or run
        check_writable_file(out) if single else check_writable_dir(out)
    named = named_saes(sae, specs=engine == "ray")
    features = features_by_name(features, named)
    options = Options(k, context, window, overlap, batch_size)
    if engine == "ray":
        workers = _checks.positive_int(1 if workers is None else workers, "workers")
        return mine_on_ray(
            model,
            named,
            texts,
            features,
            options,
            out,
            overwrite,
            progress,
            workers,
            _checks.positive_int(shards, "shards"),
        )
    runs = [SAERun.start(name, each, features[name], k, context) for name, _, each in named]
    for run in runs:
        check_compatible(model, run.sae)
    windows: Iterator[Window] = iter_windows(model, iter_texts(texts), window, overlap=overlap)
    resume = None
    if out is not None:
        remove_stale_temps(Path(out), ("tmp",) if single else ("tmp", "old"))
        resume = Resume(checkpoint_path(Path(out)), key_of(model, runs, k, context, window, overlap, batch_size))
        windows = resume.start(windows, runs, overwrite=overwrite)
    done = resume.done if resume else 0
    bar = tqdm(
        batched(windows, batch_size),
        desc="top examples",
        unit="batch",
        disable=not progress,
        initial=done // batch_size,
    )
    for n, read in enumerate(mine_batches(model, runs, bar), 1):
        done += read
        if resume and n % checkpoint_every == 0:
            resume.save(done, runs)
    results = {key: run.mined(model) for (_, key, _), run in zip(named, runs)}
    write_results(results, named, out)
    if resume:
        resume.finish()
    return results[None] if single else results
