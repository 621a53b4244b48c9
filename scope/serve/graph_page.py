"""The explorer's graph page: ``/graph/{name}`` draws an attribution graph registered with
:func:`add_graph` (tokens along the bottom, layers up, nodes sized by influence, a node's edges on
hover, a click on a feature opening its feature page); ``/api/graph/{name}`` serves its JSON
(Neuronpedia's schema, :meth:`scope.Graph.to_json`)."""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from scope.graphs.export import graph_json
from scope.graphs.graph import Graph

api = APIRouter()
pages = APIRouter()


def add_graph(
    app: FastAPI,
    name: str,
    graph: Graph | Mapping[str, Any] | str | os.PathLike,
    *,
    feature_pages: Mapping[int, str] | None = None,
) -> str:
    """Serve ``graph`` (a Graph, a graph JSON file, or one already read by :func:`read_graph_json`)
    at ``/graph/{name}``; returns that path.

    ``feature_pages``: layer -> the name its transcoder is served under (``create_app``'s SAEs), so
    that clicking a feature of that layer opens ``/feature/{name}/{feature}``."""
    if isinstance(graph, Graph):
        data = graph_json(graph)
    elif isinstance(graph, Mapping):
        data = dict(graph)
    else:
        data = read_graph_json(graph)
    data["feature_pages"] = {str(layer): str(sae) for layer, sae in (feature_pages or {}).items()}
    if not hasattr(app.state, "graphs"):
        app.state.graphs = {}
    app.state.graphs[name] = data
    return f"/graph/{name}"


def read_graph_json(path: str | os.PathLike) -> dict[str, Any]:
    """A graph JSON (``scope graph --out``, :meth:`scope.Graph.to_json`), checked for what the page
    draws: ``metadata.prompt_tokens``, ``nodes`` and ``links``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No graph JSON at {path} (write one with scope graph or Graph.to_json).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not JSON ({err}); a graph JSON comes from scope graph or Graph.to_json.") from err
    fine = (
        isinstance(data, dict)
        and isinstance(data.get("nodes"), list)
        and isinstance(data.get("links"), list)
        and isinstance(data.get("metadata"), dict)
        and isinstance(data["metadata"].get("prompt_tokens"), list)
    )
    if not fine:
        raise ValueError(
            f"{path} is not a graph JSON: it needs metadata.prompt_tokens, nodes and links "
            "(Neuronpedia's schema, as scope graph and Graph.to_json write)."
        )
    return data


def _graph(request: Request, name: str) -> dict[str, Any]:
    graphs = getattr(request.app.state, "graphs", {})
    if name not in graphs:
        raise HTTPException(404, f"No graph {name!r}; served graphs: {sorted(graphs) or 'none'}.")
    return graphs[name]


@api.get("/api/graph/{name}")
def graph_data(name: str, request: Request) -> dict[str, Any]:
    return _graph(request, name)


@pages.get("/graph/{name}", response_class=HTMLResponse)
def graph_page(name: str, request: Request) -> HTMLResponse:
    _graph(request, name)
    return HTMLResponse(_page())


@cache
def _page() -> str:
    return (importlib.resources.files("scope.serve") / "static" / "graph.html").read_text(encoding="utf-8")
