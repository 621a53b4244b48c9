"""Neuronpedia explanations, fetched from a loopback HTTP server that serves the export layout of
Neuronpedia's bucket (S3 ListObjectsV2 XML + gzipped JSON Lines batches in the documented schema)."""

import gzip
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

import pytest

import scope
from scope.neuronpedia import NeuronpediaUnavailableError, cache_path, neuronpedia_explanations, resolve_neuronpedia_id

NP_ID = "gemma-2-2b/20-gemmascope-res-16k"
PREFIX = f"v1/{NP_ID}/explanations/"


def _row(index, description, model="gpt-4o-mini"):
    """One row as export-data.py's export_explanations writes it (columns in its order)."""
    return {
        "id": f"clx{index:08d}",
        "modelId": "gemma-2-2b",
        "layer": "20-gemmascope-res-16k",
        "index": str(index),
        "authorId": "default",
        "description": description,
        "embedding": None,
        "typeName": "oai_token-act-pair",
        "explanationModelName": model,
        "umap_x": None,
        "umap_y": None,
        "umap_cluster": None,
        "umap_log_feature_sparsity": None,
    }


BATCHES = {
    f"{PREFIX}batch-0.jsonl.gz": [_row(0, " references to the Golden Gate Bridge"), _row(2, "if statements in code")],
    f"{PREFIX}batch-1.jsonl.gz": [
        _row(1025, "apostrophes in contractions"),
        _row(1025, "a second explanation", "claude"),
    ],
    f"{PREFIX}batch-10.jsonl.gz": [_row(10240, "the word directory")],
}


def _gz(rows):
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


def _listing(keys, truncated_after=None, token=None):
    """ListObjectsV2 XML; with ``truncated_after``, a first page and a continuation token."""
    start = int(token) if token else 0
    page = keys[start : start + truncated_after] if truncated_after else keys[start:]
    more = truncated_after is not None and start + truncated_after < len(keys)
    contents = "".join(f"<Contents><Key>{escape(k)}</Key><Size>1</Size></Contents>" for k in page)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>neuronpedia-datasets</Name><Prefix>{PREFIX}</Prefix><KeyCount>{len(page)}</KeyCount>"
        f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{contents}"
        + (f"<NextContinuationToken>{start + truncated_after}</NextContinuationToken>" if more else "")
        + "</ListBucketResult>"
    ).encode()


@pytest.fixture
def bucket():
    """A real HTTP server on 127.0.0.1 (free port) serving the export files; records requests."""
    requests = []
    keys = sorted([*BATCHES, f"{PREFIX}batch-2-notes.txt", f"{PREFIX}old/batch-0.jsonl.gz"])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            url = urllib.parse.urlsplit(self.path)
            requests.append(self.path)
            query = urllib.parse.parse_qs(url.query)
            if url.path == "/" and query.get("list-type") == ["2"]:
                chosen = [k for k in keys if k.startswith(query["prefix"][0])]
                body = _listing(chosen, truncated_after=2, token=query.get("continuation-token", [None])[0])
            elif url.path.lstrip("/") in BATCHES:
                body = _gz(BATCHES[url.path.lstrip("/")])
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOPE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_downloads_every_batch_in_the_documented_schema(bucket, cache):
    url, requests = bucket
    table = neuronpedia_explanations(NP_ID, base_url=url)
    assert table["feature"].tolist() == [0, 2, 1025, 10240]
    assert table["explanation"].tolist() == [
        "references to the Golden Gate Bridge",
        "if statements in code",
        "apostrophes in contractions",  # the first of feature 1025's two explanations
        "the word directory",
    ]
    assert (table["label"] == table["explanation"]).all() and (table["source"] == "neuronpedia").all()
    assert table["explainer"].tolist() == ["gpt-4o-mini"] * 4
    assert list(table.columns[:11]) == scope.labels.LABEL_COLUMNS
    listings = [r for r in requests if r.startswith("/?")]
    assert len(listings) == 3  # 5 keys, 2 a page: the continuation token was followed
    # batches fetched in numeric order, the notes file and the subfolder skipped
    assert [r for r in requests if not r.startswith("/?")] == [f"/{PREFIX}batch-{n}.jsonl.gz" for n in (0, 1, 10)]
    assert cache_path(NP_ID) == cache / "neuronpedia" / NP_ID / "explanations.parquet"
    assert cache_path(NP_ID).is_file()


def test_the_cache_answers_without_the_network(bucket):
    url, requests = bucket
    first = neuronpedia_explanations(NP_ID, base_url=url)
    count = len(requests)
    again = neuronpedia_explanations(NP_ID, base_url="http://127.0.0.1:9")  # nothing listens there
    assert len(requests) == count
    assert again.equals(first)


def test_offline_error_names_the_cache_and_the_fix(tmp_path):
    with pytest.raises(NeuronpediaUnavailableError) as info:
        neuronpedia_explanations(NP_ID, base_url="http://127.0.0.1:9")
    message = str(info.value)
    assert str(cache_path(NP_ID)) in message
    assert f"s3://neuronpedia-datasets/{PREFIX}" in message
    assert "files=" in message
    assert not cache_path(NP_ID).exists()


def test_files_fill_the_cache_offline(tmp_path, bucket):
    folder = tmp_path / "explanations"
    folder.mkdir()
    for key, rows in BATCHES.items():
        (folder / key.rsplit("/", 1)[1]).write_bytes(_gz(rows))
    from_files = neuronpedia_explanations(NP_ID, files=folder)
    assert from_files["feature"].tolist() == [0, 2, 1025, 10240]
    cached = neuronpedia_explanations(NP_ID, base_url="http://127.0.0.1:9")
    assert cached.equals(from_files)
    assert cached.equals(neuronpedia_explanations(NP_ID, base_url=bucket[0], refresh=True))


def test_ids_resolve_from_registry_specs_and_saes(make_sae):
    assert resolve_neuronpedia_id("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical") == NP_ID
    assert resolve_neuronpedia_id(scope.gemma_scope_id("gemma-2-2b", 20)) == NP_ID
    assert resolve_neuronpedia_id(NP_ID) == NP_ID
    sae, _ = make_sae()
    with pytest.raises(ValueError, match="no Neuronpedia id"):
        resolve_neuronpedia_id(sae)
    with pytest.raises(ValueError, match="neither a 'release/sae_id'"):
        resolve_neuronpedia_id("not an id at all")
    with pytest.raises(TypeError, match="sae_or_spec must be"):
        resolve_neuronpedia_id(3)


def test_files_in_another_schema_are_refused(tmp_path):
    bad = tmp_path / "batch-0.jsonl"
    bad.write_text(json.dumps({"feature": 1, "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="not a Neuronpedia explanation row"):
        neuronpedia_explanations(NP_ID, files=bad)
