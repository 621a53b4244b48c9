"""The old name of :mod:`scope.mining.distributed` (Ray shards, workers and stored results)."""

import sys

from scope.mining import distributed

sys.modules[__name__] = distributed
