"""Small helpers shared by the feature transformers (private)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "as_field_tuple",
    "check_max_tracked",
    "is_missing",
    "is_number",
    "object_column",
]


def is_missing(value: Any) -> bool:
    """`True` for None, NaN (Python or NumPy), `pd.NA` and `pd.NaT`.

    These are the markers pandas produces when a dict stream is turned into a DataFrame, so
    `transform_one` and `transform_many` agree on what "missing" means.
    """
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return False


def is_number(value: Any) -> bool:
    """`True` for real numbers, bools excluded.

    Bools are `numbers.Integral` in Python, but in a click stream they are flags, not magnitudes.
    """
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def as_field_tuple(fields: Any, name: str = "fields") -> tuple | None:
    """Normalise a `fields` argument to a tuple (or None).

    A bare string is treated as a single field name, because iterating over it character by
    character is never what the user means.
    """
    if fields is None:
        return None
    if isinstance(fields, str):
        return (fields,)
    try:
        return tuple(fields)
    except TypeError:
        raise TypeError(
            f"{name} must be None, a field name or an iterable of field names, "
            f"got {type(fields).__name__}"
        ) from None


def check_max_tracked(max_tracked: int | None) -> None:
    if max_tracked is None:
        return
    if not isinstance(max_tracked, numbers.Integral) or isinstance(max_tracked, bool):
        raise TypeError(f"max_tracked must be None or an int, got {type(max_tracked).__name__}")
    if max_tracked < 1:
        raise ValueError(f"max_tracked must be >= 1, got {max_tracked}")


def object_column(values: list, index: pd.Index) -> pd.Series:
    """An object Series, so that None stays None and strings are not coerced."""
    return pd.Series(values, index=index, dtype=object)
