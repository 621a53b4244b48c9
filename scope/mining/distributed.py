"""Sharded work on a Ray cluster: deterministic shards, one model per worker, resumable results.

What :func:`scope.mine` with ``engine="ray"`` runs on; it knows shards and workers, not models
or SAEs:

1. A document's shard is a hash of its text (:func:`shard_of`), so the split depends neither on
   the order the corpus is read in, nor on the number of workers, nor on the machine.
2. :class:`WorkerPool` starts ``workers`` Ray actors; each runs the caller's ``setup()`` once
   (loading the model and SAEs on its own device: a GPU when the cluster has them) and then takes
   shard after shard. Ray restarts an actor whose process dies and retries the task it was on.
3. :class:`ShardStore` keeps each finished shard's result in a folder (one file per shard,
   written atomically, read back with ``torch.load(weights_only=True)``), beside a file holding
   the run's key: a driver restarted on the same run skips the shards already there, and never
   mines a finished shard twice; a folder of another run is refused.

Ray is optional (``pip install "scope[ray]"``) and imported only here, only when used. On one
machine ``ray.init()`` starts a local cluster (how the tests run it); on a cluster, start Ray
with ``ray start --head`` / ``ray start --address=HEAD:6379`` and call
``ray.init(address="auto")`` before mining.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from scope._io import write_atomically

RUN_FILE = "run.pt"
STORE_FORMAT = "scope shard store"
STORE_VERSION = 1


def require_ray() -> Any:
    """The ``ray`` module; ImportError naming the extra to install when it is missing."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            'engine="ray" needs Ray, which is not installed: pip install "scope[ray]" (or pip install ray).'
        ) from None
    return ray


def shard_of(text: str, shards: int) -> int:
    """The shard (``0 .. shards - 1``) of a document, from a hash of its text."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % shards


# ----------------------------------------------------------------------------- persisted results


class ShardStore:
    """A folder of finished shards' results: ``run.pt`` (the run's key) and ``shard-NNNNN.pt``."""

    def __init__(self, folder: str | Path, key: dict, *, overwrite: bool, restart_hint: str):
        self.folder = Path(folder)
        self.key = key
        self._hint = restart_hint
        if overwrite and self.folder.exists():
            shutil.rmtree(self.folder)
        run_file = self.folder / RUN_FILE
        if run_file.is_file():
            saved = self._read(run_file)
            if not isinstance(saved, dict) or saved.get("format") != STORE_FORMAT:
                raise ValueError(f"{self.folder} holds no shard results scope can resume; {self._hint}.")
            if saved.get("key") != key:
                differs = sorted(
                    name for name in {*key, *saved.get("key", {})} if saved["key"].get(name) != key.get(name)
                )
                raise ValueError(
                    f"{self.folder} holds the shard results of a different run ({', '.join(differs)} differ); "
                    f"{self._hint}."
                )
        else:
            state = {"format": STORE_FORMAT, "version": STORE_VERSION, "key": key}
            write_atomically(run_file, lambda tmp: torch.save(state, tmp))

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.pt"

    def done(self, shards: Iterable[int]) -> list[int]:
        """Those of ``shards`` whose results are stored."""
        return [shard for shard in shards if self.path(shard).is_file()]

    def save(self, shard: int, result: Any) -> None:
        write_atomically(self.path(shard), lambda tmp: torch.save(result, tmp))

    def load(self, shard: int) -> Any:
        return self._read(self.path(shard))

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _read(self, path: Path) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, foreign, or a pickle of anything but plain data
            raise ValueError(f"{path} is not a shard result scope can read ({err}); {self._hint}.") from None


# ----------------------------------------------------------------------------- workers


class _Worker:
    """A Ray actor's body: ``setup()`` once, then ``fn(state, *args)`` per call."""

    def __init__(self, setup: Callable[[], Any], threads: int | None):
        if threads:
            torch.set_num_threads(threads)
        self.state = setup()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.state, *args)


class WorkerPool:
    """``workers`` Ray actors, each holding what ``setup()`` returned.

    ``cpus`` / ``gpus`` per worker (default 1 CPU, and 1 GPU when the cluster has GPUs); torch
    in each worker uses ``cpus`` threads. An actor whose process dies is restarted (``setup`` runs
    again) and the task it was running is retried, as often as it takes.
    """

    def __init__(self, setup: Callable[[], Any], workers: int, *, cpus: int = 1, gpus: float | None = None) -> None:
        ray = require_ray()
        if not ray.is_initialized():
            ray.init()  # a local cluster, or the one RAY_ADDRESS names
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        actor = ray.remote(max_restarts=-1, max_task_retries=-1)(_Worker)
        self._ray = ray
        self.actors = [actor.options(num_cpus=cpus, num_gpus=gpus).remote(setup, cpus) for _ in range(workers)]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(state, *args)`` on one worker."""
        return self._ray.get(self.actors[0].call.remote(fn, *args))

    def map(self, fn: Callable[..., Any], shards: Iterable[int], *args: Any) -> Iterator[tuple[int, Any]]:
        """``(shard, fn(state, *args, shard))`` for every shard, as workers finish them (each
        worker takes the next shard when it is done with one)."""
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        pending: list[Any] = list(shards)
        yield from pool.map_unordered(lambda actor, shard: actor.call.remote(_with_shard, fn, shard, *args), pending)

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _with_shard(state: Any, fn: Callable[..., Any], shard: int, *args: Any) -> tuple[int, Any]:
    return shard, fn(state, *args, shard)
