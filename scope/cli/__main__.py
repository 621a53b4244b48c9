"""``python -m scope.cli``: the ``scope`` command."""

import sys

from scope.cli import main

sys.exit(main())
