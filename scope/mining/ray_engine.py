"""The Ray engine of :func:`scope.mine` (``engine="ray"``):

1. documents go to shards by a hash of their text (:func:`scope.mining.distributed.shard_of`);
2. each worker loads the model and SAEs once and mines whole shards, exactly as one pass would
   mine those documents (global ``text_id`` kept);
3. each finished shard's buffers are stored as they arrive (a restarted driver skips them);
4. the shards merge exactly (:func:`~scope.mining.buffers.merge_top`: top-k of top-ks, ties in
   reading order; :func:`~scope.mining.buffers.merge_stats`: counts and histograms add), and a
   worker turns the merged buffers into the tables a single process writes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from scope._io import batched, check_corpus_file, iter_texts
from scope.hooks import check_compatible
from scope.mining.buffers import ActivityStats, RunningTopK, merge_stats, merge_top
from scope.mining.checkpoints import RESTART, buffers_of, key_of, load_buffers
from scope.mining.distributed import ShardStore, WorkerPool, require_ray, shard_of
from scope.mining.partitions import write_results
from scope.mining.results import Mined
from scope.mining.run import SAERun, mine_batches
from scope.mining.windows import iter_windows
from scope.models import load_model
from scope.saes import load_sae


@dataclass(frozen=True)
class Options:
    k: int
    context: int
    window: int
    overlap: int
    batch_size: int


def shards_path(out: Path) -> Path:
    """The hidden folder of finished shards beside an ``engine="ray"`` run's ``out=``."""
    return out.with_name(f".{out.name}.shards")


def _model_loader(model: Any) -> Callable[[], Any]:
    if isinstance(model, str):
        return functools.partial(load_model, model)
    if callable(model) and not hasattr(model, "cfg"):
        return model
    raise TypeError(
        f"engine='ray' needs a model every worker can load, not a loaded {type(model).__name__}: "
        "pass its name (e.g. 'gemma-2-2b') or a picklable callable returning it, e.g. "
        "functools.partial(scope.load_model, name, weights=path)."
    )


def _load_sae_on(model: Any, spec: Any) -> Any:
    """A worker's SAE from an SAE, a load_sae spec or a callable, on the model's device."""
    if hasattr(spec, "cfg") and hasattr(spec, "encode"):
        return spec.to(model.cfg.device)
    if callable(spec):
        return spec()
    return load_sae(spec, device=str(model.cfg.device))


def _worker_setup(model_loader: Callable[[], Any], specs: list[tuple[str | None, Any]]) -> tuple[Any, list]:
    """What each Ray worker loads once: the model, then every SAE (checked against it)."""
    model = model_loader()
    saes = [(name, _load_sae_on(model, spec)) for name, spec in specs]
    for _, sae in saes:
        check_compatible(model, sae)
    return model, saes


def _worker_runs(state: tuple[Any, list], features: dict, options: Options) -> list[SAERun]:
    """Fresh runs of the worker's SAEs; ``features`` by partition name (see ``features_by_name``)."""
    _, saes = state
    return [SAERun.start(name, sae, features[name], options.k, options.context) for name, sae in saes]


def _worker_key(state: tuple[Any, list], features: Any, options: Options) -> dict:
    model = state[0]
    runs = _worker_runs(state, features, options)
    return key_of(model, runs, options.k, options.context, options.window, options.overlap, options.batch_size)


def _worker_mine_shard(
    state: tuple[Any, list], texts: Any, features: Any, options: Options, shards: int, shard: int
) -> dict:
    """One shard's buffers: the documents whose text hashes to ``shard``, mined as one pass would."""
    model = state[0]
    runs = _worker_runs(state, features, options)
    windows = iter_windows(
        model,
        iter_texts(texts),
        options.window,
        keep=lambda text: shard_of(text, shards) == shard,
        overlap=options.overlap,
    )
    read = sum(mine_batches(model, runs, batched(windows, options.batch_size)))
    return {"windows": read, **buffers_of(runs)}


def _worker_finish(state: tuple[Any, list], features: Any, options: Options, merged: dict) -> list[Mined]:
    """The merged buffers as :class:`Mined` results (the tokenizer lives on the workers)."""
    model = state[0]
    runs = _worker_runs(state, features, options)
    load_buffers(runs, merged)
    return [run.mined(model) for run in runs]


def _merge_shards(results: list[dict]) -> dict:
    """The buffers of the union of the shards (see :func:`merge_top`, :func:`merge_stats`)."""
    top, stats = RunningTopK.from_state, ActivityStats.from_state
    first = results[0]["top"]
    if isinstance(first.get("values"), torch.Tensor):  # one SAE's buffers, not a dict of them by name
        return {
            "top": merge_top([top(r["top"]) for r in results]).state(),
            "stats": merge_stats([stats(r["stats"]) for r in results]).state(),
        }
    return {
        "top": {name: merge_top([top(r["top"][name]) for r in results]).state() for name in first},
        "stats": {name: merge_stats([stats(r["stats"][name]) for r in results]).state() for name in first},
    }


def _merged_with(merged: dict | None, result: dict) -> dict:
    return _merge_shards([result] if merged is None else [merged, result])


def _ray_texts(texts: Any) -> Any:
    """``texts`` as each shard reads it again: a corpus file's path, or the list/dataset itself."""
    if isinstance(texts, (str, os.PathLike)):
        return str(check_corpus_file(texts))
    if isinstance(texts, (list, tuple)) or hasattr(texts, "column_names"):
        return texts
    raise TypeError(
        f"engine='ray' reads the corpus once per shard, so texts must be a list, a dataset or a corpus "
        f"file, not a {type(texts).__name__} (an iterator can be read only once)."
    )


def _corpus_digest(texts: Any) -> str:
    """A hash of every text, in order: what a restarted run checks its stored shards against."""
    hasher = hashlib.blake2b(digest_size=16)
    for text in iter_texts(texts):
        data = text.encode("utf-8", "surrogatepass")
        hasher.update(struct.pack("<q", len(data)) + data)
    return hasher.hexdigest()


def mine_on_ray(
    model: Any,
    named: list[tuple[str | None, Any, Any]],
    texts: Any,
    features: Any,
    options: Options,
    out: str | os.PathLike | None,
    overwrite: bool,
    progress: bool,
    workers: int,
    shards: int,
) -> Mined | dict[Any, Mined]:
    """Steps: start the workers (each loads the model and SAEs); key the run (options, model and
    SAE identity from a worker, the corpus' hash); mine the shards not yet stored, storing each as
    it arrives; merge all shards exactly; build the tables on a worker; write them like a
    single-process run."""
    ray = require_ray()
    texts = _ray_texts(texts)
    setup = functools.partial(_worker_setup, _model_loader(model), [(name, spec) for name, _, spec in named])
    corpus = _corpus_digest(texts)
    with WorkerPool(setup, workers) as pool:
        key = {"engine": "ray", "shards": shards, "corpus": corpus, **pool.call(_worker_key, features, options)}
        store = None
        if out is not None:
            store = ShardStore(shards_path(Path(out)), key, overwrite=overwrite, restart_hint=RESTART)
        done = store.done(range(shards)) if store else []
        todo = [shard for shard in range(shards) if shard not in done]
        # Merged as they come (the merge's order does not matter), so the driver holds two
        # shards' buffers at a time, not all of them.
        merged: dict | None = None
        for shard in done if store else []:  # stored by an earlier driver: read, never mined again
            merged = _merged_with(merged, store.load(shard))  # type: ignore[union-attr]
        bar = tqdm(total=shards, initial=len(done), desc="shards", unit="shard", disable=not progress)
        for shard, result in pool.map(_worker_mine_shard, todo, ray.put(texts), features, options, shards):
            if store:
                store.save(shard, result)
            merged = _merged_with(merged, result)
            bar.update()
        bar.close()
        mined = pool.call(_worker_finish, features, options, merged)
    by_key = {key: each for (_, key, _), each in zip(named, mined)}
    write_results(by_key, named, out)
    if store:
        store.remove()
    return by_key[None] if named[0][0] is None else by_key
