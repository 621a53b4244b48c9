"""The explorer: HTML pages (``/``, ``/feature/{sae}/{feature}``) and the JSON endpoints behind them.

- ``POST /api/features``: a text's tokens, the top features at each with their labels, and every
  listed feature's activation at every token (the page shades tokens by any of them). Dense
  features are left out unless ``"dense": true``; ``"dense"`` in the answer says which were.
  ``"rank_by": "relative"`` ranks by activation / max activation.
- ``GET /api/feature/{sae}/{feature}``: a feature page's data: label and explanation, density,
  max activation and quantiles (the SAE's recorded statistics), activation histogram, top
  examples and examples sampled from quantile intervals below them (from mined data: ``--mined``,
  or the examples a bundled SAE ships), logit lens, Neuronpedia link.
- ``POST /api/search``: :func:`scope.search_features` (query or contrastive), when scope has it.

The pages are static files of this package plus plotly.js from the installed plotly package
(no build step, no network). Files are served from a fixed table of names: a request path never
reaches the file system.
"""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import math
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import plotly
import torch
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from scope.density import dense_filter
from scope.feature_stats import STATS_TOKENS, feature_stats
from scope.features import TopView, check_feature, encode, feature_logits, neuronpedia_url
from scope.hooks import sae_hook
from scope.labels import CONCEPT
from scope.mining import HISTOGRAM_EDGES, Mined
from scope.serve.schemas import FeaturesRequest, SearchRequest
from scope.serve.state import Served

api = APIRouter()
pages = APIRouter()

HINT_TOKENS = 3  # promoted tokens shown for a feature that has no label
_STATIC = {  # URL name -> (file in scope/serve/static, media type)
    "explorer.js": ("explorer.js", "text/javascript"),
    "feature.js": ("feature.js", "text/javascript"),
    "common.js": ("common.js", "text/javascript"),
    "style.css": ("style.css", "text/css"),
}


def _served(request: Request) -> Served:
    return request.app.state.served


# ----------------------------------------------------------------------------- JSON


@api.post("/api/features")
async def features(body: FeaturesRequest, request: Request) -> dict[str, Any]:
    served = _served(request)
    name, sae = served.sae(body.sae)
    view = TopView.of(sae, dense=body.dense, rank_by=body.rank_by)
    return await run_in_threadpool(token_features, served, name, sae, body.text, body.k, view)


def token_features(
    served: Served, name: str, sae: Any, text: str, k: int, view: TopView | None = None
) -> dict[str, Any]:
    """Tokens, their top ``k`` active features (BOS left out: its activations mean nothing; dense
    features left out unless the view shows them), and each listed feature's activation at every
    token."""
    view = view or TopView.of(sae)
    acts = encode(served.model, sae, text)
    bos = served.model.tokenizer.bos_token
    skip = {i for i, token in enumerate(acts.tokens) if token == bos}
    top = view.table(acts, k, skip)
    tokens: list[dict[str, Any]] = [{"position": p, "token": t, "features": []} for p, t in enumerate(acts.tokens)]
    relative = "relative" in top.columns
    for row in top.itertuples(index=False):
        item = {"feature": int(row.feature), "activation": float(row.activation)}
        tokens[int(row.position)]["features"].append(item | ({"relative": float(row.relative)} if relative else {}))
    ordered = sorted({int(f) for f in top["feature"]})
    notes = feature_notes(served, name, sae, ordered)
    for entry in tokens:
        for item in entry["features"]:
            item.update(notes[item["feature"]])
    shaded = acts.values.float().clone()
    shaded[sorted(skip)] = 0.0
    activations = {str(f): [round(v, 5) for v in shaded[:, f].tolist()] for f in ordered}
    dense = {"hidden": top.attrs["dense_hidden"], "note": top.attrs["dense_note"], "shown": view.show_dense}
    return {"sae": name, "tokens": tokens, "activations": activations, "dense": dense}


def feature_notes(served: Served, name: str, sae: Any, features: list[int]) -> dict[int, dict[str, Any]]:
    """Per feature: its label (when the server has labels), else the tokens it promotes most (logit lens)."""
    notes: dict[int, dict[str, Any]] = {f: served.label(name, f) | _concept(served, name, f) for f in features}
    unlabelled = [f for f in features if "label" not in notes[f]]
    for feature, hint in zip(unlabelled, _promoted_tokens(served.model, sae, unlabelled)):
        notes[feature]["promotes"] = hint
    return notes


def _concept(served: Served, name: str, feature: int) -> dict[str, str]:
    """``{"concept": ...}`` when the SAE's labels derive one for ``feature`` (scope.labels), else ``{}``."""
    table = served.label_tables.get(name)
    if table is None or CONCEPT not in table.columns:
        return {}
    found = table.loc[table["feature"] == feature, CONCEPT]
    return {"concept": str(found.iloc[0])} if len(found) and isinstance(found.iloc[0], str) else {}


def _dense(sae: Any, feature: int) -> dict[str, Any]:
    """Whether ``feature`` is dense (hidden from token views by default), by the SAE's known densities."""
    view = dense_filter(sae)
    return {"threshold": view.threshold, "known": view.known, "is_dense": feature in view.dense}


def _promoted_tokens(model: Any, sae: Any, features: list[int]) -> list[list[str]]:
    """The top promoted tokens of each feature's decoder direction, from one product with W_U
    (residual-width SAEs only; others get none)."""
    if not features or sae.W_dec.shape[-1] != model.cfg.d_model:
        return [[] for _ in features]
    with torch.no_grad():
        logits = sae.W_dec[features].float() @ model.W_U.float()
        top = torch.topk(logits, HINT_TOKENS, dim=-1).indices.tolist()
    return [[model.tokenizer.decode([t]) for t in row] for row in top]


@api.get("/api/feature/{sae_name:path}/{feature}")  # SAE names may hold "/" (release/id)
async def feature_page_data(sae_name: str, feature: int, request: Request) -> dict[str, Any]:
    served = _served(request)
    name, sae = served.sae(sae_name)
    feature = check_feature(sae, feature)
    return await run_in_threadpool(feature_data, served, name, sae, feature)


def feature_data(served: Served, name: str, sae: Any, feature: int) -> dict[str, Any]:
    """Everything a feature page shows, as JSON."""
    lens = feature_logits(served.model, sae, feature, k=10)
    stats = {key: float(column[feature]) for key, column in feature_stats(sae).items()}
    data: dict[str, Any] = {
        "sae": name,
        "feature": feature,
        "hook": sae_hook(sae),
        "d_sae": int(sae.cfg.d_sae),
        **served.label(name, feature),
        **_concept(served, name, feature),
        "dense": _dense(sae, feature),
        "stats": stats,
        "stats_tokens": sae.cfg.metadata.get(STATS_TOKENS),
        "neuronpedia": neuronpedia_url(sae, feature),
        "logit_lens": {
            direction: [{"token": r.token, "logit": r.logit} for r in lens[lens.direction == direction].itertuples()]
            for direction in ("promoted", "suppressed")
        },
        "examples": [],
        "histogram": None,
    }
    mined = served.mined.get(name)
    if isinstance(mined, Mined):
        data |= _from_mined(mined, feature)
    if name in served.intervals:
        data["intervals"] = _intervals(served.intervals[name], feature)
    if name in served.sources:
        data["examples_source"] = served.sources[name]
    elif isinstance(mined, pd.DataFrame):
        rows = mined[mined["feature"] == feature].sort_values("rank")
        data["examples"] = [
            {"rank": int(r["rank"]), "activation": float(r["activation"]), "context": str(r["context"])}
            for _, r in rows.iterrows()
        ]
    return data


def _from_mined(mined: Mined, feature: int) -> dict[str, Any]:
    if feature not in mined.features:
        return {}
    i = mined.features.index(feature)
    rows = mined.examples.index[mined.examples["feature"] == feature]
    examples = []
    for row in rows:
        tokens, acts = mined.span(row)
        example = mined.examples.loc[row]
        examples.append(
            {
                "rank": int(example["rank"]),
                "activation": float(example["activation"]),
                "text_id": int(example["text_id"]),
                "position": int(example["position"]),
                "tokens": tokens,
                "acts": acts,
            }
        )
    edges = HISTOGRAM_EDGES.tolist()
    return {
        "examples": examples,
        "density": float(mined.density[i]),
        "n_tokens": mined.n_tokens,
        "histogram": {"edges": edges, "counts": mined.histogram[i].tolist()},
    }


def _intervals(table: pd.DataFrame, feature: int) -> list[dict[str, Any]]:
    """A feature's examples sampled below its top ones, by interval (highest first)."""
    rows = table[table["feature"] == feature].sort_values(["group", "rank"])
    groups = []
    for _, group in rows.groupby("group", sort=True):
        first = group.iloc[0]
        groups.append(
            {
                "quantiles": [float(first["quantile_low"]), float(first["quantile_high"])],
                "low": float(first["low"]),
                "high": float(first["high"]) if math.isfinite(first["high"]) else None,  # None: up to the max
                "seen": int(first["seen"]),
                "examples": [
                    {
                        "activation": float(r.activation),
                        "text_id": int(r.text_id),
                        "position": int(r.position),
                        "tokens": list(r.tokens),
                        "acts": [float(a) for a in r.acts],
                    }
                    for r in group.itertuples(index=False)
                ],
            }
        )
    return groups


@api.post("/api/search")
async def search(body: SearchRequest, request: Request) -> dict[str, Any]:
    served = _served(request)
    name, sae = served.sae(body.sae)
    if importlib.util.find_spec("scope.search") is None:
        raise HTTPException(501, "Feature search is not available in this version of scope (scope.search).")
    search_features = importlib.import_module("scope.search").search_features
    kwargs = {"query": body.query, "positive": body.positive, "negative": body.negative, "k": body.k}
    kwargs["labels"] = served.label_tables.get(name)
    table = await run_in_threadpool(
        search_features, served.model, sae, **{key: value for key, value in kwargs.items() if value is not None}
    )
    records = table.to_dict(orient="records")
    for record in records:
        record.update({k: v for k, v in served.label(name, int(record["feature"])).items() if k not in record})
    return {"sae": name, "results": _plain(records)}


def _plain(value: Any) -> Any:
    """numpy and pandas scalars as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


# ----------------------------------------------------------------------------- pages


@pages.get("/", response_class=HTMLResponse)
def index() -> HTMLResponse:
    return HTMLResponse(_static_text("index.html"))


@pages.get("/feature/{sae_name:path}/{feature}", response_class=HTMLResponse)
def feature_page(sae_name: str, feature: int, request: Request) -> HTMLResponse:
    _, sae = _served(request).sae(sae_name)
    check_feature(sae, feature)
    return HTMLResponse(_static_text("feature.html"))


@pages.get("/static/{name}")
def static(name: str) -> Response:
    if name == "plotly.min.js":
        return Response(_plotly_js(), media_type="text/javascript")
    if name not in _STATIC:
        raise HTTPException(404, f"No static file {name!r}.")
    file, media_type = _STATIC[name]
    return Response(_static_text(file), media_type=media_type)


@cache
def _static_text(file: str) -> str:
    return (importlib.resources.files("scope.serve") / "static" / file).read_text(encoding="utf-8")


@cache
def _plotly_js() -> bytes:
    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
