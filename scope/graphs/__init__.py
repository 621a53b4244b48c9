"""Attribution graphs with transcoders (Ameisen et al. 2025, "Circuit Tracing"), as circuit-tracer
computes them, on scope's models: :func:`attribution_graph` -> :class:`Graph`; pruning, Neuronpedia's
JSON, strongest paths, interventions checked against the graph."""

from scope.graphs.attribute import attribution_graph
from scope.graphs.graph import Graph
from scope.graphs.interventions import intervene
from scope.graphs.paths import strongest_paths

__all__ = ["Graph", "attribution_graph", "intervene", "strongest_paths"]
