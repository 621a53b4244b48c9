"""Files: atomic writes, Parquet results, and reading a corpus of texts.

Every result scope writes goes through :func:`write_atomically`, so a failure or a kill leaves
the previous file (or none), never half of one. Corpus errors name the file, the line and what
a valid record looks like.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CORPUS_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_VALID_RECORD = 'a valid record is one JSON object per line with a string "text" field, e.g. {"text": "..."}'


def write_atomically(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """``write`` a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_parquet(frame: Any, path: str | os.PathLike) -> Path:
    """Write a DataFrame to ``path`` atomically: never a half-written file."""
    return write_atomically(path, lambda tmp: frame.to_parquet(tmp, index=False))


def check_writable_file(path: str | os.PathLike, name: str = "out") -> Path:
    """Fail in milliseconds, before any work, when a result could not be written to ``path``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"{name}={str(path)!r} is a directory; give a file path, e.g. {str(path / 'result.parquet')!r}."
        )
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise NotADirectoryError(f"{name}={str(path)!r}: {str(parent)!r} is a file, not a folder.")
    _try_writing(parent, path, name)
    return path


def _try_writing(folder: Path, path: Path, name: str) -> None:
    """Create (and remove) a file in ``folder``: permission bits do not tell all (root passes them,
    yet cannot write under /proc; a read-only mount passes them too)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}={str(path)!r}: the folder {str(folder)!r} is not writable.")
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".scope-write-check-")
    except OSError as err:
        raise PermissionError(
            f"{name}={str(path)!r}: cannot create a file in the folder {str(folder)!r} ({err.strerror or err}); "
            "give a path in a writable folder."
        ) from None
    os.close(handle)
    os.unlink(probe)


def check_writable_dir(path: str | os.PathLike, name: str = "out") -> Path:
    """Like :func:`check_writable_file` for a folder of results."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{name}={str(path)!r} is a file; give a folder for the results.")
    parent = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise NotADirectoryError(f"{name}={str(path)!r}: {str(parent)!r} is a file, not a folder.")
    _try_writing(parent, path, name)
    return path


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Lists of ``size`` items (the last one shorter); ``itertools.batched`` before Python 3.12."""
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


# ----------------------------------------------------------------------------- corpora


def iter_texts(texts: Any) -> Iterator[str]:
    """Strings from an iterable of strings, a ``datasets`` dataset with a ``text`` column, or a
    local file: ``.txt`` (one text per line), ``.jsonl`` (a ``text`` field) or ``.parquet``.

    One rule for every form: the n-th text (``text_id`` n in results) is the n-th item of a
    list, the n-th row of a dataset or Parquet file, the n-th line of a ``.txt`` or ``.jsonl``
    file (counted from 0). A blank line is an empty text, never skipped, so a ``.txt`` file gives
    exactly what the list of its lines gives."""
    if isinstance(texts, (str, os.PathLike)):
        yield from read_corpus_file(Path(texts))
        return
    if hasattr(texts, "column_names"):  # a Hugging Face dataset (a streamed one may not know its columns)
        if texts.column_names is not None and "text" not in texts.column_names:
            raise ValueError(f"The dataset has no 'text' column; its columns are {texts.column_names}.")
        texts = (row["text"] for row in texts)
    try:
        items = iter(texts)
    except TypeError:
        raise TypeError(
            f"texts must be strings, a corpus file path or a dataset, got {type(texts).__name__}."
        ) from None
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"texts must hold strings; item {i} is a {type(text).__name__}.")
        yield text


def check_corpus_file(path: str | os.PathLike) -> Path:
    """``path`` if it is a corpus file scope reads (its records are checked as they are read)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CORPUS_SUFFIXES:
        raise ValueError(f"Unknown corpus file type {suffix!r} for {path}; use .txt, .jsonl or .parquet.")
    if not path.is_file():
        raise FileNotFoundError(
            f"No corpus file at {path}. Pass a .txt, .jsonl or .parquet file, or an iterable of strings."
        )
    return path


def read_corpus_file(path: Path) -> Iterator[str]:
    """The texts of a corpus file, checked record by record."""
    path = check_corpus_file(path)
    if path.suffix.lower() == ".parquet":
        yield from _read_parquet(path)
    else:
        yield from _read_lines(path, jsonl=path.suffix.lower() != ".txt")


def _read_parquet(path: Path) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises its own error types for a file that is not Parquet
        raise ValueError(f"{path} is not a readable Parquet file: {err}") from err
    if "text" not in file.schema_arrow.names:
        raise ValueError(
            f"{path} has no 'text' column; its columns are {file.schema_arrow.names}. "
            "A Parquet corpus holds one text per row in a string column named 'text'."
        )
    row = 0
    for batch in file.iter_batches(columns=["text"]):
        for value in batch.column("text").to_pylist():
            if not isinstance(value, str):
                raise ValueError(
                    f"{path}, row {row}: 'text' is {value!r}, not a string. "
                    "A Parquet corpus holds one text per row in a string column named 'text'."
                )
            yield value
            row += 1


def _read_lines(path: Path, *, jsonl: bool) -> Iterator[str]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}, line {number}: not UTF-8 ({err.reason} at byte {err.start}); "
                    "corpus files must be UTF-8 text."
                ) from None
            if jsonl and not line.strip():  # a blank line is an empty text: text_id stays the line number
                yield ""
                continue
            yield _json_text(path, number, line) if jsonl else line.rstrip("\r\n")


def _json_text(path: Path, number: int, line: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {number}: malformed JSON ({err.msg}); {_VALID_RECORD}.") from None
    if not isinstance(record, dict) or "text" not in record:
        raise ValueError(f"{path}, line {number}: no 'text' field in {line.strip()[:80]!r}; {_VALID_RECORD}.")
    if not isinstance(record["text"], str):
        raise ValueError(f"{path}, line {number}: 'text' is {record['text']!r}, not a string; {_VALID_RECORD}.")
    return record["text"]
