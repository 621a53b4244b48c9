"""Mining: top-activating examples, densities and activation histograms, for one SAE or many.

One pass over a corpus, in batches: the model runs only up to the SAEs' hooks, every feature's
per-example maximum is merged into running top-k buffers of shape ``[k, n_features]``, so memory
is bounded by batch size x width and k x width, never by the corpus. The tokens around each
buffered peak are kept in the buffer too, which is what lets the pass stream.

Modules, each importing only those above it:

- :mod:`~scope.mining.windows`: the examples (windows of a text, each with its own BOS);
- :mod:`~scope.mining.buffers`: running top-k and activity statistics, and their exact merges;
- :mod:`~scope.mining.results`: :class:`Mined` and the buffers as a table;
- :mod:`~scope.mining.run`: the single-process pass (one forward per batch, every SAE encodes);
- :mod:`~scope.mining.checkpoints`: what a killed run resumes from;
- :mod:`~scope.mining.partitions`: names of many SAEs and their hive-partitioned dataset;
- :mod:`~scope.mining.distributed`, :mod:`~scope.mining.ray_engine`: shards on Ray workers;
- :mod:`~scope.mining.api`: :func:`mine` and :func:`top_examples`.
"""

from scope.mining.api import mine, top_examples
from scope.mining.buffers import HISTOGRAM_EDGES
from scope.mining.checkpoints import checkpoint_path
from scope.mining.ray_engine import shards_path
from scope.mining.results import COLUMNS, DEFAULT_CONTEXT, Mined
from scope.mining.windows import Window, iter_windows

__all__ = [
    "COLUMNS",
    "DEFAULT_CONTEXT",
    "HISTOGRAM_EDGES",
    "Mined",
    "Window",
    "checkpoint_path",
    "iter_windows",
    "mine",
    "shards_path",
    "top_examples",
]
