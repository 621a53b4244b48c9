"""The old name of :mod:`scope.mining.api`, kept so that ``scope.examples.X`` still works.

``scope.examples`` *is* that module (not a copy of its names): patching ``scope.examples.X``
patches what :func:`scope.mine` reads. New code imports from :mod:`scope.mining`.
"""

import sys

from scope.mining import api

sys.modules[__name__] = api
