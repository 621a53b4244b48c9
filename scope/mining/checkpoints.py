"""Checkpoints of a single-process pass, beside its ``out=``: what a killed run resumes from.

A checkpoint is one torch.save of tensors, ints, strings, lists and dicts, read back with
torch.load(weights_only=True): a file planted in its place cannot run code. It holds what the
run must match (options, SAE and model identity: ``key``) and a running hash of the windows read
so far (``corpus``), which a resume recomputes as it re-reads those windows: another corpus, or
one now shorter than the part read, is refused whatever its source (list, file or dataset).
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
import shutil
import struct
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scope._io import write_atomically
from scope.hooks import sae_hook
from scope.mining.run import SAERun
from scope.mining.windows import Window
from scope.subjects import subject_of

CHECKPOINT_FORMAT = "scope.mine checkpoint"
CHECKPOINT_VERSION = 2  # 2: windows overlap (the key has ``overlap``)
RESTART = "pass overwrite=True (scope examples --overwrite) to discard it and start again, or choose another out= path"


def checkpoint_path(out: Path) -> Path:
    """The hidden checkpoint file beside a run's ``out=``."""
    return out.with_name(f".{out.name}.checkpoint")


def remove_stale_temps(path: Path, kinds: tuple[str, ...] = ("tmp",)) -> None:
    """Remove what killed writers left beside ``path``: ``.NAME.tmp-PID`` (files of
    :func:`scope._io.write_atomically`, folders of a dataset's write; ``kinds`` adds ``old``).
    Only those of a process that is gone, or older than the process now holding that PID (a
    reused PID): a live writer's temp is never touched."""
    for kind in kinds:
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.{kind}-*"):
            pid = tmp.name.rsplit("-", 1)[1]
            if pid.isdigit() and _left_by_a_gone_writer(tmp, int(pid)):
                shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _left_by_a_gone_writer(tmp: Path, pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    started = _process_start(pid)
    return started is not None and tmp.lstat().st_mtime < started


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where /proc tells (Linux)."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(int(line.split()[1]) for line in lines if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def buffers_of(runs: Sequence[SAERun]) -> dict[str, dict]:
    """The running buffers as a checkpoint holds them, copied to the host: ``top``/``stats`` are
    one SAE's buffers (:meth:`RunningTopK.state`, :meth:`ActivityStats.state`), or for many SAEs
    one such dict per SAE name."""
    if len(runs) == 1 and runs[0].name is None:
        return {"top": runs[0].top.state(), "stats": runs[0].stats.state()}
    return {
        "top": {run.name: run.top.state() for run in runs},
        "stats": {run.name: run.stats.state() for run in runs},
    }


def load_buffers(runs: Sequence[SAERun], buffers: dict[str, dict]) -> None:
    """Put :func:`buffers_of`'s buffers back into ``runs``, on each SAE's device."""
    for run in runs:
        top, stats = buffers["top"], buffers["stats"]
        if run.name is not None:
            top, stats = top[run.name], stats[run.name]
        run.top.load_state(top)
        run.stats.load_state(stats)


def _save_checkpoint(path: Path, key: dict, windows_done: int, corpus: str, buffers: dict[str, dict]) -> None:
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "key": key,
        "windows_done": windows_done,
        "corpus": corpus,
        **buffers,
    }
    write_atomically(path, lambda tmp: torch.save(state, tmp))  # a kill mid-write keeps the previous one


def _load_checkpoint(path: Path, key: dict, buffers: dict[str, dict]) -> tuple[int, str | None]:
    """Restore ``buffers`` (see :func:`_buffers`) from a checkpoint of the same run; returns the
    windows done and the hash of those windows (0 and None without a checkpoint)."""
    if not path.is_file():
        return 0, None
    try:
        with warnings.catch_warnings():  # torch's notes on a planted pickle's protocol: the error says more
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or a pickle of anything but plain data
        reason = " ".join(str(err).split())
        raise ValueError(
            f"{path} is not a checkpoint scope.mine can resume (unreadable: {reason[:200]}); {RESTART}."
        ) from None
    problem = _checkpoint_problem(state)
    if problem:
        raise ValueError(f"{path} is not a checkpoint scope.mine can resume ({problem}); {RESTART}.")
    if state["key"] != key:
        differs = [name for name in key if state["key"].get(name) != key[name]]
        differs += [name for name in state["key"] if name not in key]
        shown = ", ".join(
            name
            if name.endswith(("features", "sae_weights", "model_weights")) or name not in key
            else f"{name} {state['key'][name]!r} then, {key[name]!r} now"
            for name in differs
        )
        raise ValueError(f"{path} is the checkpoint of a different run ({shown}); {RESTART}.")
    problem = _layout_problem(state, buffers, "")
    if problem:
        raise ValueError(f"{path} is not a checkpoint scope.mine can resume ({problem}); {RESTART}.")
    restore(buffers, state)
    return state["windows_done"], state["corpus"]


def _checkpoint_problem(state: Any) -> str | None:
    """What makes ``state`` something other than a checkpoint of scope.mine."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        return f"a file of another kind, not a {CHECKPOINT_FORMAT}"
    if state.get("version") != CHECKPOINT_VERSION:
        return f"version {state.get('version')!r}, this scope reads version {CHECKPOINT_VERSION}"
    if not (
        isinstance(state.get("key"), dict)
        and isinstance(state.get("windows_done"), int)
        and state["windows_done"] >= 0
        and isinstance(state.get("corpus"), str)
    ):
        return "its key, windows read or corpus hash is missing"
    return None


def _layout_problem(saved: Any, fresh: dict, where: str) -> str | None:
    """What keeps the checkpoint's buffers from being this run's (same key, other shapes)."""
    for name, value in fresh.items():
        part = f"{where}{name}"
        if not isinstance(saved, dict) or name not in saved:
            return f"its {part!r} buffers are missing"
        if isinstance(value, dict):
            problem = _layout_problem(saved[name], value, f"{part}.")
            if problem:
                return problem
            continue
        if isinstance(value, torch.Tensor):
            ok = (
                isinstance(saved[name], torch.Tensor)
                and saved[name].shape == value.shape
                and saved[name].dtype == value.dtype
            )
        else:
            ok = type(saved[name]) is type(value)
        if not ok:
            return f"{part} is not shaped like this run's"
    return None


def restore(fresh: dict, saved: dict) -> None:
    """Put ``saved``'s values into ``fresh`` (nested attribute dicts), in place."""
    for name, value in fresh.items():
        if isinstance(value, dict):
            restore(value, saved[name])
        else:
            fresh[name] = saved[name]


def _window_bytes(w: Window) -> bytes:
    n = len(w.tokens)
    return struct.pack(f"<{4 + n}q", w.text_id, w.start, w.context_only, n, *w.tokens)


@dataclass
class Resume:
    """The checkpoint beside a run's ``out=``: restored at the start (checked against the run's
    key and, as the windows it covers are re-read, against the corpus), saved every few batches,
    removed once the result is written."""

    path: Path
    key: dict
    done: int = 0
    hasher: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=16))

    def start(self, windows: Iterator[Window], runs: Sequence[SAERun], *, overwrite: bool) -> Iterator[Window]:
        """The windows still to read (those the checkpoint covers are re-read and checked);
        ``runs`` take the checkpoint's buffers."""
        if overwrite:
            self.path.unlink(missing_ok=True)
        remove_stale_temps(self.path)
        buffers = buffers_of(runs)
        self.done, corpus = _load_checkpoint(self.path, self.key, buffers)
        windows = _hashed(windows, self.hasher)
        if corpus is not None:
            _skip_read(windows, self.done, self.hasher, corpus, self.path)
            load_buffers(runs, buffers)
        return windows

    def save(self, done: int, runs: Sequence[SAERun]) -> None:
        _save_checkpoint(self.path, self.key, done, self.hasher.hexdigest(), buffers_of(runs))

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def _hashed(windows: Iterable[Window], hasher) -> Iterator[Window]:
    """``windows``, each added to ``hasher`` as it is read."""
    for w in windows:
        hasher.update(_window_bytes(w))
        yield w


def _skip_read(windows: Iterator[Window], done: int, hasher, expected: str, path: Path) -> None:
    """Re-read the ``done`` windows a checkpoint covers; ValueError unless they hash as it says."""
    read = sum(1 for _ in itertools.islice(windows, done))
    if read < done:
        raise ValueError(
            f"{path} is the checkpoint of a run over a different corpus: it has read {done} windows, "
            f"but the corpus given now has only {read} windows; {RESTART}."
        )
    if hasher.hexdigest() != expected:
        raise ValueError(
            f"{path} is the checkpoint of a run over a different corpus: the first {done} windows "
            f"(token ids) of the corpus given now differ from those it has read; {RESTART}."
        )


def _tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    hasher = hashlib.blake2b(digest_size=16)
    for name, tensor in named:
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        hasher.update(f"{name}:{tensor.dtype}:{tensor.numel()};".encode())
        hasher.update(tensor.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def _first_values(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """Up to ``n`` values of ``tensor``, never copying all of it."""
    tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor[(0,) * (tensor.ndim - 1)] if tensor.ndim > 1 else tensor
    return tensor.reshape(-1)[:n]


def _model_identity(model) -> dict:
    """The model's name and shapes, and a hash of a sample of its weights (the first values of
    every tensor: cheap for a 27B model, and different for any other checkpoint)."""
    spec = subject_of(model)
    cfg = model.cfg
    sample = [(name, _first_values(tensor, 256)) for name, tensor in model.state_dict().items()]
    return {
        "model": spec.name if spec is not None else type(model).__name__,
        "model_shapes": [int(cfg.n_layers), int(cfg.d_model), int(cfg.d_vocab), int(cfg.n_ctx)],
        "model_dtype": str(cfg.dtype),
        "model_weights": _tensors_digest(sample),
    }


def _run_key(
    model, sae, selected: torch.Tensor, k: int, context: int, window: int, overlap: int, batch_size: int
) -> dict:
    """Everything that changes the result of a run and must match for its checkpoint to be resumed
    (the corpus is checked apart, as it is re-read)."""
    settings = {name: value for name, value in vars(sae.cfg).items() if name not in ("metadata", "device")}
    return {
        "hook": sae_hook(sae),
        "d_sae": int(sae.cfg.d_sae),
        "features": selected.tolist(),
        "k": k,
        "context": context,
        "window": window,
        "overlap": overlap,
        "batch_size": batch_size,
        "sae": f"{type(sae).__name__} {sorted(settings.items())!r}",  # architecture, normalisation, dtype
        "sae_weights": _tensors_digest(sorted(sae.state_dict().items())),
        **_model_identity(model),
    }


_SAE_FIELDS = ("hook", "d_sae", "features", "sae", "sae_weights")  # per SAE in a many-SAE key


def key_of(model, runs: Sequence[SAERun], k: int, context: int, window: int, overlap: int, batch_size: int) -> dict:
    """The run key of a pass: :func:`_run_key` for one SAE; for many, the shared options once and
    each SAE's own fields under ``"NAME: field"``."""
    keys = [_run_key(model, run.sae, run.selected, k, context, window, overlap, batch_size) for run in runs]
    if len(runs) == 1 and runs[0].name is None:
        return keys[0]
    key = {name: value for name, value in keys[0].items() if name not in _SAE_FIELDS}
    key["saes"] = [run.name for run in runs]
    for run, each in zip(runs, keys):
        key.update({f"{run.name}: {name}": each[name] for name in _SAE_FIELDS})
    return key
