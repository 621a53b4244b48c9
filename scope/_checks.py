"""One rule per kind of argument, shared by every public function.

A wrong *type* raises ``TypeError``, a bad *value* of the right type ``ValueError``; both name
the argument, the value given and what would be valid. Numpy and torch scalars count as the
Python numbers they hold (``top_features(...).feature.iloc[0]`` is an ``np.int64``).

Importable without torch: torch is imported only by the checks that need it.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _scalar(value: Any) -> Any:
    """A 0-d numpy/torch value as its Python number; anything else unchanged."""
    if type(value).__module__.startswith(("torch", "numpy")) and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def integer(value: Any, name: str) -> int:
    """``value`` as an ``int``; ``TypeError`` unless it is an integer (``bool`` is not one)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    return int(value)


def positive_int(value: Any, name: str) -> int:
    """An integer >= 1."""
    number = integer(value, name)
    if number < 1:
        raise ValueError(f"{name} must be a positive integer, got {number}.")
    return number


def non_negative_int(value: Any, name: str) -> int:
    """An integer >= 0."""
    number = integer(value, name)
    if number < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {number}.")
    return number


def index(value: Any, size: int, name: str, what: str = "features") -> int:
    """An index into ``size`` things (a feature of an SAE, a layer of a model)."""
    number = integer(value, name)
    if not 0 <= number < size:
        raise ValueError(f"{name} {number} is out of range: there are {size} {what} (valid indices 0..{size - 1}).")
    return number


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed overflows above (numpy's generators take any >= 0)


def seed(value: Any, name: str = "seed") -> int:
    """A random seed: an integer in ``0..2**64 - 1``, what both torch and numpy generators take."""
    number = integer(value, name)
    if not 0 <= number <= SEED_MAX:
        raise ValueError(f"{name} must be an integer in 0..2**64 - 1 ({SEED_MAX}), got {number}.")
    return number


def number(value: Any, name: str) -> float:
    """A real number (not bool, not complex), NaN and infinities included."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    return float(value)


def finite(value: Any, name: str) -> float:
    """A finite real number."""
    result = number(value, name)
    if not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {result!r}.")
    return result


def choice(value: Any, options: Iterable[str], name: str) -> str:
    """One of ``options`` (strings)."""
    options = tuple(options)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}.")
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}.")
    return value


def text(value: Any, name: str = "text") -> str:
    """A string."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}.")
    return value


def texts(values: Any, name: str = "texts") -> list[str]:
    """One string, or an iterable of strings, as a list."""
    if isinstance(values, str):
        return [values]
    try:
        items = list(values)
    except TypeError:
        raise TypeError(f"{name} must be a string or a list of strings, got {type(values).__name__}.") from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold strings; item {i} is a {type(item).__name__}: {item!r}.")
    return items


# ----------------------------------------------------------------------------- torch settings


def dtype(value: Any):
    """A ``torch.dtype`` from a dtype or its name (``"bfloat16"``, ``"torch.float32"``)."""
    import torch

    if isinstance(value, torch.dtype):
        return value
    if not isinstance(value, str):
        raise TypeError(f"dtype must be a torch.dtype or its name, got {value!r}.")
    resolved = getattr(torch, value.removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"Unknown dtype {value!r}. Use e.g. 'float32', 'bfloat16', 'float16'.")
    return resolved


def dtype_name(value: Any) -> str:
    """``"float32"`` for ``torch.float32`` or ``"torch.float32"``; None means float32."""
    return "float32" if value is None else str(dtype(value)).removeprefix("torch.")


def device(value: Any = None) -> str:
    """The device to use: ``value``, or cuda when available, else cpu. A CUDA device on a
    machine without CUDA is a ValueError here, not an AssertionError deep in torch."""
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Unknown device {value!r}: {err}. Use e.g. 'cpu' or 'cuda'.") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(value)!r} but this machine has no CUDA GPU torch can use "
            f"(torch {torch.__version__}); use device='cpu'."
        )
    return str(resolved)


# ----------------------------------------------------------------------------- renamed arguments


def renamed(**old_to_new: str) -> Callable[[F], F]:
    """Accept old keyword names for one release, with a ``DeprecationWarning`` naming the new one."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{function.__name__}() got both {old}= and its new name {new}=.")
                    warnings.warn(
                        f"{function.__name__}({old}=...) is deprecated; use {new}=.", DeprecationWarning, stacklevel=2
                    )
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
