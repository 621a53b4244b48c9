"""Neuronpedia's public explanations of SAE features (Gemma Scope's among them), as labels.

Where they come from (read in Neuronpedia's open-source repository and documentation):

- Neuronpedia publishes its data as exports in the public S3 bucket ``neuronpedia-datasets``
  (https://docs.neuronpedia.org/api-and-data/exports): ``v1/[MODEL_ID]/[SOURCE_ID]/explanations/``
  holds ``batch-0.jsonl.gz``, ``batch-1.jsonl.gz``, ..., gzipped JSON Lines, one explanation
  per line. ``MODEL_ID/SOURCE_ID`` is the Neuronpedia id sae-lens records for each registry SAE
  (``gemma-2-2b/20-gemmascope-res-16k``).
- The rows are Neuronpedia's ``Explanation`` table, written by
  ``utils/neuronpedia-utils/neuronpedia_utils/export-data.py`` (``export_explanations``,
  github.com/hijohnnylin/neuronpedia), 1,024 rows per batch ordered by feature: ``id``,
  ``modelId``, ``layer`` (the source id), ``index`` (the feature, a string), ``authorId``,
  ``description`` (the explanation), ``embedding``, ``typeName``, ``explanationModelName``,
  ``umap_x``, ``umap_y``, ``umap_cluster``, ``umap_log_feature_sparsity``.
- The older bulk endpoint ``GET /api/explanation/export?modelId=&saeId=`` is removed: it now
  answers HTTP 400 pointing at the bucket (``apps/webapp/app/api/explanation/export/route.ts``).
  One feature at a time, ``GET https://www.neuronpedia.org/api/feature/{modelId}/{layer}/{index}``
  still returns a feature with its ``explanations``; for a whole SAE the export is the way.

The steps:

1. Resolve the Neuronpedia id: from the SAE (``sae.cfg.metadata.neuronpedia_id``), from sae-lens'
   registry for a ``"release/sae_id"`` spec or :func:`scope.gemma_scope_id` tuple, or as given
   (``"gemma-2-2b/20-gemmascope-res-16k"``).
2. Return the cached table if there is one: ``$SCOPE_CACHE/neuronpedia/MODEL_ID/SOURCE_ID/explanations.parquet``.
3. Otherwise list the folder with S3's ``ListObjectsV2`` (``GET /?list-type=2&prefix=...``,
   following continuation tokens), download every ``batch-N.jsonl.gz`` in order (or read the
   files given with ``files=``, for a machine without network), parse the rows, keep one
   explanation per feature (the first listed), and write the table to the cache atomically.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from scope._io import write_parquet
from scope.bundled import cache_root
from scope.gemma_scope import GemmaScopeId, registry, split_spec
from scope.labels import as_labels, read_labels

EXPORTS_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com"
EXPORTS_VERSION = "v1"
DOCS_URL = "https://docs.neuronpedia.org/api-and-data/exports"
TIMEOUT_S = 30
_S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_BATCH = re.compile(r"batch-(\d+)\.jsonl(\.gz)?$")
_NEURONPEDIA_ID = re.compile(r"^[A-Za-z0-9._-]+/[A-Za-z0-9._-]+$")


class NeuronpediaUnavailableError(OSError):
    """Neuronpedia's explanations could not be downloaded and are not cached."""


def neuronpedia_explanations(
    sae_or_spec: Any,
    *,
    files: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    base_url: str = EXPORTS_URL,
    refresh: bool = False,
) -> pd.DataFrame:
    """Neuronpedia's explanations of every feature of an SAE, as a label table.

    Args:
        sae_or_spec: a loaded SAE with a Neuronpedia id (registry SAEs have one), a
            ``"release/sae_id"`` spec or ``(release, sae_id)`` tuple of sae-lens' registry, or a
            Neuronpedia id ``"MODEL_ID/SOURCE_ID"``.
        files: export files already downloaded (``batch-N.jsonl.gz`` or ``.jsonl``, or a folder
            of them): read instead of the network, and cached.
        base_url: the exports bucket (a mirror, or a test server).
        refresh: download again even when cached.

    Returns:
        The label table of :mod:`scope.labels`: ``label`` and ``explanation`` hold Neuronpedia's
        description, ``source`` is ``"neuronpedia"``; plus ``explainer`` (the model that wrote
        it) and ``explanation_type``. Features Neuronpedia has no explanation for get no row.

    Raises:
        NeuronpediaUnavailableError: nothing cached and the download failed; the message names
            the cache file and how to fill it from downloaded files.
        ValueError: an SAE or spec without a Neuronpedia id, or files not in the export schema.
    """
    neuronpedia_id = resolve_neuronpedia_id(sae_or_spec)
    if not isinstance(refresh, bool):
        raise TypeError(f"refresh must be True or False, got {refresh!r}.")
    cached = cache_path(neuronpedia_id)
    if files is not None:
        table = _table(_read_files(_export_files(files)), neuronpedia_id)
        write_parquet(table, cached)
        return table
    if cached.is_file() and not refresh:
        return read_labels(cached)
    try:
        rows = list(_download(neuronpedia_id, base_url))
    except (urllib.error.URLError, OSError, ET.ParseError) as err:
        raise NeuronpediaUnavailableError(_offline_message(neuronpedia_id, base_url, cached, err)) from err
    if not rows:
        raise ValueError(
            f"Neuronpedia's exports list no explanations for {neuronpedia_id!r} under {base_url} "
            f"({_prefix(neuronpedia_id)}); check the id on https://www.neuronpedia.org/{neuronpedia_id}."
        )
    table = _table(rows, neuronpedia_id)
    write_parquet(table, cached)
    return table


def cache_path(neuronpedia_id: str) -> Path:
    """Where the explanations of ``MODEL_ID/SOURCE_ID`` are cached."""
    return cache_root() / "neuronpedia" / neuronpedia_id / "explanations.parquet"


# ----------------------------------------------------------------------------- which SAE


def resolve_neuronpedia_id(sae_or_spec: Any) -> str:
    """``"MODEL_ID/SOURCE_ID"`` for an SAE, a registry spec or tuple, or a Neuronpedia id."""
    if hasattr(sae_or_spec, "cfg"):
        found = getattr(sae_or_spec.cfg.metadata, "neuronpedia_id", None)
        if not found:
            raise ValueError(
                "This SAE has no Neuronpedia id (sae.cfg.metadata.neuronpedia_id is empty): only SAEs "
                "Neuronpedia hosts have explanations there, e.g. Gemma Scope's registry SAEs. Label it "
                "from data with scope.label_features(scope.mine(model, sae, texts)) instead."
            )
        return str(found)
    if isinstance(sae_or_spec, tuple) and len(sae_or_spec) == 2:
        sae_or_spec = str(GemmaScopeId(*sae_or_spec))
    if not isinstance(sae_or_spec, str):
        raise TypeError(
            "sae_or_spec must be an SAE, a 'release/sae_id' spec, a (release, sae_id) tuple or a "
            f"Neuronpedia id 'MODEL_ID/SOURCE_ID', got {type(sae_or_spec).__name__}."
        )
    parts = split_spec(sae_or_spec)
    if parts is not None:
        found = registry()[parts.release].neuronpedia.get(parts.sae_id)
        if not found:
            raise ValueError(f"sae-lens' registry records no Neuronpedia id for {sae_or_spec!r}.")
        return found
    if _NEURONPEDIA_ID.match(sae_or_spec):
        return sae_or_spec
    raise ValueError(
        f"{sae_or_spec!r} is neither a 'release/sae_id' of sae-lens' registry nor a Neuronpedia id "
        "'MODEL_ID/SOURCE_ID' (e.g. 'gemma-2-2b/20-gemmascope-res-16k')."
    )


# ----------------------------------------------------------------------------- download


def _prefix(neuronpedia_id: str) -> str:
    return f"{EXPORTS_VERSION}/{neuronpedia_id}/explanations/"


def _download(neuronpedia_id: str, base_url: str) -> Iterator[dict]:
    base = base_url.rstrip("/")
    for key in _batch_keys(_list_keys(base, _prefix(neuronpedia_id))):
        with urllib.request.urlopen(f"{base}/{urllib.parse.quote(key)}", timeout=TIMEOUT_S) as response:
            data = response.read()
        yield from _rows(gzip.decompress(data) if key.endswith(".gz") else data, key)


def _list_keys(base: str, prefix: str) -> list[str]:
    """Every key under ``prefix``, through S3's ListObjectsV2 (1,000 keys a page)."""
    keys: list[str] = []
    token = None
    while True:
        query = {"list-type": "2", "prefix": prefix, **({"continuation-token": token} if token else {})}
        with urllib.request.urlopen(f"{base}/?{urllib.parse.urlencode(query)}", timeout=TIMEOUT_S) as response:
            root = ET.fromstring(response.read())
        keys += [node.text or "" for node in root.iter(f"{_S3}Key")]
        token = root.findtext(f"{_S3}NextContinuationToken")
        if root.findtext(f"{_S3}IsTruncated") != "true" or not token:
            return keys


def _batch_keys(keys: Iterable[str]) -> list[str]:
    """The ``batch-N`` files directly in the folder, by N."""
    found = [(int(m.group(1)), key) for key in keys if (m := _BATCH.search(key)) and key.count("/") == 4]
    return [key for _, key in sorted(found)]


def _offline_message(neuronpedia_id: str, base_url: str, cached: Path, err: BaseException) -> str:
    folder = f"s3://neuronpedia-datasets/{_prefix(neuronpedia_id)}"
    return (
        f"Cannot download Neuronpedia's explanations for {neuronpedia_id!r} from {base_url} ({err}), and none "
        f"are cached at {cached}. On a machine with network, download the export folder ({DOCS_URL}): "
        f"`aws s3 sync --no-sign-request {folder} ./explanations/`, copy it here, and fill the cache with "
        f"scope.neuronpedia_explanations({neuronpedia_id!r}, files='./explanations/')."
    )


# ----------------------------------------------------------------------------- files and rows


def _export_files(files: Any) -> list[Path]:
    paths = [Path(files)] if isinstance(files, (str, os.PathLike)) else [Path(f) for f in files]
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            batches = [p for p in path.iterdir() if _BATCH.search(p.name)]
            found += sorted(batches, key=lambda p: int(_BATCH.search(p.name).group(1)))  # type: ignore[union-attr]
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"No Neuronpedia export file or folder at {str(path)!r}.")
    if not found:
        raise ValueError(f"No batch-N.jsonl(.gz) export files in {[str(p) for p in paths]}.")
    return found


def _read_files(paths: list[Path]) -> list[dict]:
    rows: list[dict] = []
    for path in paths:
        data = path.read_bytes()
        rows += _rows(gzip.decompress(data) if path.suffix == ".gz" else data, str(path))
    return rows


def _rows(data: bytes, where: str) -> list[dict]:
    rows = []
    for number, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}, line {number}: not JSON ({err}).") from err
        if not isinstance(row, dict) or "index" not in row or "description" not in row:
            raise ValueError(
                f"{where}, line {number}: not a Neuronpedia explanation row (needs 'index' and "
                f"'description', as in {DOCS_URL}); got {line[:120]!r}."
            )
        rows.append(row)
    return rows


def _table(rows: list[dict], neuronpedia_id: str) -> pd.DataFrame:
    """One row per feature (the first explanation listed for it), as a label table."""
    first: dict[int, dict] = {}
    for row in rows:
        if row.get("layer") not in (None, neuronpedia_id.split("/", 1)[1]):
            continue  # another source's row in a file given by hand
        first.setdefault(int(row["index"]), row)
    features = sorted(first)
    descriptions = [str(first[f]["description"]).strip() for f in features]
    frame = pd.DataFrame(
        {
            "feature": features,
            "label": descriptions,
            "explanation": descriptions,
            "source": "neuronpedia",
            "explainer": [first[f].get("explanationModelName") for f in features],
            "explanation_type": [first[f].get("typeName") for f in features],
        }
    )
    return as_labels(frame, source="neuronpedia")
