"""The mined examples shipped beside each bundled SAE, so that its feature pages are full out of the box.

``scripts/label_demo_sae.py`` mines each bundled SAE (:data:`scope.saes.DEMO_SAES`) over a
held-out corpus sample shipped in ``data/`` (overlapping windows: no token scored without
context) and writes two files into the SAE's folder with :func:`write_shipped`:

- ``examples.parquet``: per feature, its top examples (``group`` 0) and examples sampled from
  intervals between quantiles of its non-zero activations (``group`` 1, 2, ...: highest interval
  first, as :func:`scope.interval_examples.interval_examples` samples them), each with its document id and
  token position and the context around its peak: token ids, token strings and the feature's
  activation on each. Its Parquet metadata records how it was mined (corpus file and sha256,
  window, overlap, the sha256 of the SAE's weights);
- ``activity.parquet``: per feature, its density and activation histogram over the sample.

:func:`shipped_examples` reads them back as :class:`ShippedExamples` (a :class:`scope.Mined` of
the top examples, densities and histograms, and a table of the interval examples) for an SAE
that *is* a bundled one: :func:`bundled_name` recognises it by its weights, whatever name it is
served under, and the model must be the bundled ``gemma-3-270m`` the examples were mined with.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open

from scope._io import write_atomically
from scope.hooks import sae_hook
from scope.interval_examples import Group
from scope.labels import PEAK_CLOSE, PEAK_OPEN
from scope.mining import COLUMNS, HISTOGRAM_EDGES, Mined
from scope.mining.results import decode_many
from scope.saes import DATA_DIR, DEMO_SAES
from scope.subjects import subject_of

EXAMPLES_FILE = "examples.parquet"
ACTIVITY_FILE = "activity.parquet"
METADATA_KEY = b"scope.shipped_examples"
FORMAT = 1
MODEL = "gemma-3-270m"  # the subject every bundled SAE reads
TOP = 0  # ``group`` of the top examples
PROBE_ROWS = 64  # decoder rows compared to recognise a bundled SAE
WEIGHTS_FILE = "sae_weights.safetensors"


@dataclass
class ShippedExamples:
    """A bundled SAE's shipped examples: ``mined`` (top examples with their shaded contexts,
    densities, histograms, as :func:`scope.mine` gives them) and ``intervals``, the examples
    sampled below the top ones, one row each: feature, group (1 = highest interval), rank,
    activation, text_id, position, token, context, quantile_low, quantile_high (the interval's
    bounds as quantiles of the non-zero activations), low, high (as activations), seen (windows
    that peaked in the interval), peak, token_ids, tokens, acts (the context; the peak at index
    ``peak``). ``about``:
    how they were mined (corpus, its sha256, window, overlap, k...)."""

    name: str
    mined: Mined
    intervals: pd.DataFrame
    about: dict[str, Any]

    @property
    def source(self) -> str:
        """Where the examples come from, in a sentence a page can show."""
        return (
            f"shipped with the bundled SAE {self.name!r}: mined over {self.about['corpus']} "
            f"({self.mined.n_tokens:,} tokens of held-out text)"
        )


# ----------------------------------------------------------------------------- recognising a bundled SAE


def bundled_name(sae: Any) -> str | None:
    """The name in :data:`~scope.saes.DEMO_SAES` of the bundled SAE ``sae`` is (None if none):
    same hook and width, and the same thresholds and first decoder rows as the shipped weights
    (to bfloat16 precision, so a copy in another dtype or on another device is still recognised)."""
    W_dec, threshold = getattr(sae, "W_dec", None), getattr(sae, "threshold", None)
    if not isinstance(W_dec, torch.Tensor) or not isinstance(threshold, torch.Tensor):
        return None
    for name, demo in DEMO_SAES.items():
        weights = demo.folder / WEIGHTS_FILE
        if sae_hook(sae) != demo.hook or tuple(W_dec.shape)[0] != demo.width or not weights.is_file():
            continue
        with safe_open(str(weights), "pt") as shipped:
            rows = shipped.get_slice("W_dec")[:PROBE_ROWS].float()
            thresholds = shipped.get_tensor("threshold").float()
        if rows.shape[1] != W_dec.shape[1] or thresholds.shape != threshold.shape:
            continue
        with torch.no_grad():
            probe = W_dec[:PROBE_ROWS].detach().float().cpu()
            if torch.allclose(probe, rows, rtol=1e-2, atol=1e-3) and torch.allclose(
                threshold.detach().float().cpu(), thresholds, rtol=1e-2, atol=1e-3
            ):
                return name
    return None


def shipped_examples(sae: Any, model: Any = None) -> ShippedExamples | None:
    """The examples shipped with a bundled SAE: ``sae`` is its name (``"demo"``, ``"demo-docs"``, ``"demo-modern"``)
    or an SAE (recognised by :func:`bundled_name`). None when ``sae`` is not a bundled SAE, when
    ``model`` is given and is not the bundled ``gemma-3-270m``, or when its folder ships no
    examples (or examples mined with other weights: a warning says so). ValueError for a name
    that is no bundled SAE."""
    if isinstance(sae, str) and sae not in DEMO_SAES:
        raise ValueError(f"{sae!r} is not a bundled SAE; bundled SAEs: {', '.join(map(repr, DEMO_SAES))}.")
    if model is not None and getattr(subject_of(model), "name", None) != MODEL:
        return None  # the examples are this model's activations
    name = sae if isinstance(sae, str) else bundled_name(sae)
    if name is None:
        return None
    folder = DEMO_SAES[name].folder
    if not (folder / EXAMPLES_FILE).is_file() or not (folder / ACTIVITY_FILE).is_file():
        return None
    recorded = read_about(folder).get("sae_weights_sha256")
    if recorded != file_sha256(folder / WEIGHTS_FILE):
        warnings.warn(
            f"The examples shipped in {folder} were mined with other weights than its {WEIGHTS_FILE}: "
            "left out. Regenerate them with scripts/label_demo_sae.py.",
            UserWarning,
            stacklevel=2,
        )
        return None
    return read_shipped(folder, name)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- reading


def read_about(folder: str | os.PathLike) -> dict[str, Any]:
    """How the examples in ``folder`` were mined (the metadata :func:`write_shipped` recorded)."""
    metadata = pq.read_schema(Path(folder) / EXAMPLES_FILE).metadata or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{Path(folder) / EXAMPLES_FILE} is not a file of shipped examples (no scope metadata).")
    return json.loads(metadata[METADATA_KEY])


def read_shipped(folder: str | os.PathLike, name: str) -> ShippedExamples:
    """The examples :func:`write_shipped` wrote into ``folder``."""
    folder = Path(folder)
    about = read_about(folder)
    if about.get("format") != FORMAT:
        raise ValueError(f"{folder / EXAMPLES_FILE} has format {about.get('format')!r}; this scope reads {FORMAT}.")
    rows = pq.read_table(folder / EXAMPLES_FILE)
    activity = pq.read_table(folder / ACTIVITY_FILE)
    group = rows.column("group").to_numpy()
    top, intervals = rows.filter(pa.array(group == TOP)), rows.filter(pa.array(group != TOP))
    vocabulary = dict(zip(about["vocabulary"]["ids"], about["vocabulary"]["strings"]))
    ids, acts = _padded(top, int(about["context"]))
    examples = top.select([c for c in COLUMNS if c != "context"]).to_pandas()
    examples["context"] = _contexts(top, vocabulary)
    for column in ("feature", "rank", "text_id", "position"):
        examples[column] = examples[column].astype("int64")
    examples["activation"] = examples["activation"].astype("float64")
    edges = torch.tensor(about["histogram_edges"], dtype=torch.float32)
    if not torch.allclose(edges, HISTOGRAM_EDGES.float()):
        raise ValueError(f"{folder / ACTIVITY_FILE} has other histogram bins than this scope's mining.")
    mined = Mined(
        examples=examples,
        features=activity.column("feature").to_numpy().astype(int).tolist(),
        n_tokens=int(about["n_tokens"]),
        density=torch.from_numpy(activity.column("density").to_numpy().astype(np.float64)),
        histogram=torch.from_numpy(_list_matrix(activity.column("histogram")).astype(np.int64)),
        histogram_edges=HISTOGRAM_EDGES.clone(),
        context_ids=ids,
        context_acts=acts,
        token_strings={int(i): vocabulary[int(i)] for i in torch.unique(ids[ids >= 0]).tolist()},
    )
    table = intervals.to_pandas()
    table["token_ids"] = [np.asarray(t, dtype=np.int64).tolist() for t in table["token_ids"]]
    table["tokens"] = [[vocabulary[i] for i in t] for t in table["token_ids"]]
    table.insert(table.columns.get_loc("token") + 1, "context", _contexts(intervals, vocabulary))
    table["acts"] = [np.asarray(a, dtype=np.float64).tolist() for a in table["acts"]]
    return ShippedExamples(name, mined, table.reset_index(drop=True), about)


def _list_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A list column of equal-length lists as a ``[rows, length]`` array."""
    flat = pa.concat_arrays([chunk.flatten() for chunk in column.chunks]).to_numpy(zero_copy_only=False)
    return flat.reshape(len(column), -1) if len(column) else flat.reshape(0, 0)


def _contexts(rows: pa.Table, vocabulary: dict[int, str]) -> list[str]:
    """Each row's context as mining writes it, ``before⟦peak⟧after``, from its token strings."""
    out = []
    for ids, peak in zip(rows.column("token_ids").to_pylist(), rows.column("peak").to_pylist()):
        pieces = [vocabulary[i] for i in ids]
        out.append(f"{''.join(pieces[:peak])}{PEAK_OPEN}{pieces[peak]}{PEAK_CLOSE}{''.join(pieces[peak + 1 :])}")
    return out


def _padded(top: pa.Table, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top examples' contexts as :class:`Mined` holds them: ``[rows, 2 * context + 1]`` ids and
    activations with the peak in the middle (-1 and 0 outside the text)."""
    width = 2 * context + 1
    ids = np.full((top.num_rows, width), -1, dtype=np.int64)
    acts = np.zeros((top.num_rows, width), dtype=np.float32)
    if not top.num_rows:
        return torch.from_numpy(ids), torch.from_numpy(acts)
    token_ids, values = (pa.concat_arrays(top.column(c).chunks) for c in ("token_ids", "acts"))
    offsets = token_ids.offsets.to_numpy()
    row = np.repeat(np.arange(top.num_rows), np.diff(offsets))
    peak = top.column("peak").to_numpy().astype(np.int64)
    column = context - peak[row] + (np.arange(offsets[-1] - offsets[0]) - (offsets[:-1] - offsets[0])[row])
    flat_ids = token_ids.flatten().to_numpy().astype(np.int64)
    ids[row, column] = flat_ids
    acts[row, column] = values.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return torch.from_numpy(ids), torch.from_numpy(acts)


# ----------------------------------------------------------------------------- writing


def write_shipped(
    folder: str | os.PathLike,
    model: Any,
    mined: Mined,
    intervals: dict[int, list[Group]],
    about: dict[str, Any],
    *,
    top_k: int | None = None,
) -> tuple[Path, Path]:
    """Write ``examples.parquet`` and ``activity.parquet`` into ``folder`` (atomically): the top
    ``top_k`` examples of each feature (all mined when None) and the interval examples, with
    ``about`` (how they were mined: corpus, window, overlap...) in the examples file's metadata."""
    folder = Path(folder)
    top = _top_rows(mined, top_k)
    sampled = _interval_rows(model, mined, intervals)
    rows = pa.concat_tables([top, sampled]) if sampled.num_rows else top
    metadata = {
        **about,
        "format": FORMAT,
        "n_tokens": int(mined.n_tokens),
        "context": int(mined.context_ids.shape[1] // 2),
        "histogram_edges": HISTOGRAM_EDGES.tolist(),
        "top_k": top_k,
    }
    # Token strings once, in the metadata, and contexts rebuilt from them: a third of the size.
    flat_ids = pa.concat_arrays(rows.column("token_ids").chunks).flatten().to_numpy()
    flat_tokens = pa.concat_arrays(rows.column("tokens").chunks).flatten().to_pylist()
    _, first = np.unique(flat_ids, return_index=True)
    metadata["vocabulary"] = {
        "ids": [int(flat_ids[i]) for i in first],
        "strings": [flat_tokens[i] for i in first],
    }
    rows = rows.drop_columns(["context", "tokens"])
    rows = rows.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})
    activity = pa.table(
        {
            "feature": pa.array(mined.features, pa.int32()),
            "density": pa.array(mined.density.double().numpy()),
            "histogram": pa.array(mined.histogram.to(torch.int32).numpy().tolist(), pa.list_(pa.int32())),
        }
    )
    return _write_table(rows, folder / EXAMPLES_FILE), _write_table(activity, folder / ACTIVITY_FILE)


def _write_table(table: pa.Table, path: Path) -> Path:
    def write(tmp: Path) -> None:
        pq.write_table(table, tmp, compression="zstd")

    return write_atomically(path, write)


def _schema() -> pa.Schema:
    return pa.schema(
        [
            ("feature", pa.int32()),
            ("group", pa.int8()),
            ("rank", pa.int16()),
            ("activation", pa.float32()),
            ("text_id", pa.int32()),
            ("position", pa.int32()),
            ("token", pa.string()),
            ("context", pa.string()),
            ("quantile_low", pa.float32()),
            ("quantile_high", pa.float32()),
            ("low", pa.float32()),
            ("high", pa.float32()),
            ("seen", pa.int32()),
            ("peak", pa.int8()),
            ("token_ids", pa.list_(pa.int32())),
            ("tokens", pa.list_(pa.string())),
            ("acts", pa.list_(pa.float32())),
        ]
    )


def _top_rows(mined: Mined, top_k: int | None) -> pa.Table:
    frame = mined.examples
    keep = np.ones(len(frame), dtype=bool) if top_k is None else (frame["rank"].to_numpy() <= top_k)
    rows = np.flatnonzero(keep)
    c = mined.context_ids.shape[1] // 2
    token_ids, tokens, acts, peaks = [], [], [], []
    for row in rows.tolist():
        ids = mined.context_ids[row].tolist()
        inside = [i for i, t in enumerate(ids) if t >= 0]  # ids outside the text only sit at the ends
        token_ids.append([ids[i] for i in inside])
        tokens.append([mined.token_strings[ids[i]] for i in inside])
        acts.append([float(a) for a in mined.context_acts[row, inside].tolist()])
        peaks.append(c - inside[0])
    n = len(rows)
    selected = frame.iloc[rows]
    columns = {
        "feature": selected["feature"].to_numpy(),
        "group": np.zeros(n, dtype=np.int8),
        "rank": selected["rank"].to_numpy(),
        "activation": selected["activation"].to_numpy(),
        "text_id": selected["text_id"].to_numpy(),
        "position": selected["position"].to_numpy(),
        "token": selected["token"].astype(str).tolist(),
        "context": selected["context"].astype(str).tolist(),
        "quantile_low": np.full(n, np.nan),
        "quantile_high": np.full(n, np.nan),
        "low": np.full(n, np.nan),
        "high": np.full(n, np.nan),
        "seen": np.zeros(n, dtype=np.int32),
        "peak": np.asarray(peaks, dtype=np.int8),
        "token_ids": token_ids,
        "tokens": tokens,
        "acts": acts,
    }
    return pa.Table.from_pydict(columns, schema=_schema())


def _interval_rows(model: Any, mined: Mined, intervals: dict[int, list[Group]]) -> pa.Table:
    records = []
    for feature, groups in sorted(intervals.items()):
        for number, group in enumerate(groups, 1):
            for rank, example in enumerate(group.examples, 1):
                records.append((feature, number, rank, group, example))
    if not records:
        return _schema().empty_table()
    ids = sorted({t for *_, e in records for t in e.tokens})
    pieces = dict(zip(ids, decode_many(model.tokenizer, [[t] for t in ids])))
    before = decode_many(model.tokenizer, [e.tokens[: e.peak] for *_, e in records])
    after = decode_many(model.tokenizer, [e.tokens[e.peak + 1 :] for *_, e in records])
    columns: dict[str, list] = {name: [] for name in _schema().names}
    for (feature, number, rank, group, example), b, a in zip(records, before, after):
        peak = pieces[example.tokens[example.peak]]
        values = {
            "feature": feature,
            "group": number,
            "rank": rank,
            "activation": example.activation,
            "text_id": example.text_id,
            "position": example.position,
            "token": peak,
            "context": f"{b}{PEAK_OPEN}{peak}{PEAK_CLOSE}{a}",
            "quantile_low": group.quantiles[0],
            "quantile_high": group.quantiles[1],
            "low": group.low,
            "high": group.high,
            "seen": group.seen,
            "peak": example.peak,
            "token_ids": example.tokens,
            "tokens": [pieces[t] for t in example.tokens],
            "acts": [float(v) for v in example.acts],
        }
        for name, value in values.items():
            columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=_schema())


def corpus_label(path: str | os.PathLike) -> str:
    """A corpus file's path as the metadata records it: relative to the repository when inside it."""
    path = Path(path).resolve()
    root = DATA_DIR.parent
    return str(path.relative_to(root)) if root in path.parents else str(path)
