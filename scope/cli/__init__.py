"""The ``scope`` command: :func:`main` runs one command of the parser (:mod:`scope.cli.parser`);
each command group is one module (``info``, ``generation``, ``features``, ``mining``,
``shield``, ``serve``, ``demo``) calling the library, loaded only when one of its commands runs,
so that ``scope --help`` imports neither torch nor the library.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from scope.cli.parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``scope ARGV``; the exit status: 0, 2 for a bad argument (argparse's own errors, and a
    ValueError or TypeError found checking one), 1 for a failure at run time (a file or folder, a
    download: OSError, scope.ModelUnavailableError and other RuntimeErrors), 130 for Ctrl-C. Every
    error is one line on stderr, ``scope: error: ...``, never a traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help (0), or a usage error argparse printed on one line (2)
        return exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 2
    module: ModuleType | None = None
    try:
        module_name, function = args.run.split(":")
        module = importlib.import_module(f"scope.cli.{module_name}")
        getattr(module, function)(args)
    except KeyboardInterrupt:
        note = getattr(module, "interrupted", lambda args: None)(args) if module is not None else None
        print(note or "scope: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as err:
        _error(err)
        return 2
    except (OSError, RuntimeError, ImportError) as err:  # ModelUnavailableError is a RuntimeError
        _error(err)
        return 1
    return 0


def _error(err: BaseException) -> None:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    print(f"scope: error: {' '.join(lines) or type(err).__name__}", file=sys.stderr)
