"""Turn feature dicts and DataFrames into field slots, table keys and values (no torch here)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FieldEncoder", "MISSING_POLICIES", "parse_features", "signed_log1p", "FLOAT32_MAX", "NUMERIC"]

#: The value part of a numeric field's key: a numeric field has one row, scaled by its value.
NUMERIC = None

Parsed = list[tuple[Hashable, Hashable, float]]


def _is_categorical(v: Any) -> bool:
    return isinstance(v, (str, bool, np.bool_))


def signed_log1p(v: float) -> float:
    """``sign(v) * log(1 + |v|)``: keeps small values, tames counts and outliers (1e6 -> 13.8)."""
    return math.copysign(math.log1p(abs(v)), v)


#: Largest magnitude a numeric feature may have: beyond it, float32 (the models' type) is inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)

#: What a NaN feature value means, the same in a dict and in a frame: ``"nan-is-missing"``
#: (the field is absent, as with ``None``: what pandas and river's ``stream.iter_pandas``
#: produce for an empty cell) or ``"error"`` (a ``ValueError`` naming the field).
MISSING_POLICIES = ("nan-is-missing", "error")


def nan_refused(field: Hashable, where: str = "") -> ValueError:
    """The error of ``missing="error"`` for a NaN in ``field`` (``where``: e.g. ``" (row 3)"``)."""
    return ValueError(
        f"feature {field!r} is NaN{where} and missing='error' refuses NaN; pass None for a missing "
        "value, or use missing='nan-is-missing'"
    )


def _out_of_range(field: Hashable, v: Any) -> ValueError:
    # Not repr(v): a huge int has thousands of digits (or cannot be printed at all).
    try:
        shown = repr(float(v))
    except (OverflowError, ValueError):
        shown = "a number too large for a float"
    return ValueError(
        f"feature {field!r} is {shown}; numeric features must be finite and within "
        f"float32's range (|x| <= {FLOAT32_MAX:.4g})"
    )


def parse_features(x: dict, log_numeric: bool = False, nan_missing: bool = True) -> Parsed:
    """Validate an event and return ``(field, value_key, value)`` triples.

    ``None`` (and ``pandas.NA``) is missing and left out; so is NaN when ``nan_missing``
    (``missing="nan-is-missing"``), while without it a NaN raises. ``str`` and ``bool`` are
    categorical (value 1, key the value itself); ``int`` and ``float`` (numpy scalars
    included) are numeric (key :data:`NUMERIC`, value the number, passed through
    :func:`signed_log1p` when ``log_numeric``). Anything else, or an infinity, raises an
    error that names the field; nothing has been changed when it does.

    Examples
    --------
    >>> from river_torchrec.encoding import parse_features
    >>> parse_features({"user": "ann", "price": float("nan"), "page": None})
    [('user', 'ann', 1.0)]
    >>> parse_features({"price": float("nan")}, nan_missing=False)
    Traceback (most recent call last):
    ...
    ValueError: feature 'price' is NaN and missing='error' refuses NaN; pass None for a missing value, or use missing='nan-is-missing'

    """
    if not isinstance(x, dict):
        raise TypeError(f"features must be a dict, got {type(x).__name__}")
    out: Parsed = []
    for field, v in x.items():
        t = type(v)
        if t is str:
            out.append((field, v, 1.0))
        elif t is float or t is int:
            # A comparison, not math.isfinite: it is False for NaN and never overflows on
            # a huge int; values beyond float32's range would turn into inf in the model.
            if not -FLOAT32_MAX <= v <= FLOAT32_MAX:
                if v != v:
                    if nan_missing:
                        continue
                    raise nan_refused(field)
                raise _out_of_range(field, v)
            out.append((field, NUMERIC, signed_log1p(v) if log_numeric else float(v)))
        elif v is None or v is pd.NA:
            continue
        elif t is bool or isinstance(v, np.bool_):
            out.append((field, bool(v), 1.0))
        elif isinstance(v, str):
            out.append((field, str(v), 1.0))
        elif isinstance(v, numbers.Real):
            try:
                f = float(v)
            except (OverflowError, ValueError):
                f = math.inf
            if not -FLOAT32_MAX <= f <= FLOAT32_MAX:
                if f != f:
                    if nan_missing:
                        continue
                    raise nan_refused(field)
                raise _out_of_range(field, v)
            out.append((field, NUMERIC, signed_log1p(f) if log_numeric else f))
        else:
            raise TypeError(
                f"feature {field!r} has a value of type {t.__name__} ({v!r:.50}); expected str or "
                "bool (categorical), int or float (numeric), or None (missing)"
            )
    return out


class FieldEncoder:
    """Gives each field a stable slot, in an order that does not depend on dict order.

    Fields new to an event are sorted by name before they get slots, so two streams that
    differ only in the order of their dict keys build identical models.
    """

    def __init__(self) -> None:
        self.slots: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self.slots)

    def register(self, fields: Iterable[Hashable]) -> int:
        """Give slots to unseen fields; return the new number of fields."""
        slots = self.slots
        new = [f for f in fields if f not in slots]
        if new:
            for f in sorted(set(new), key=repr):
                slots[f] = len(slots)
        return len(slots)

    def arrange(self, parsed: Parsed, learn: bool) -> tuple[list[int], list[tuple], list[float]]:
        """Slots, keys and values of the fields of an event the model knows, in slot order."""
        slots = self.slots
        if learn:
            self.register([f for f, _, _ in parsed])
        items = sorted([(slots[f], (f, k), v) for f, k, v in parsed if f in slots])
        return [s for s, _, _ in items], [k for _, k, _ in items], [v for _, _, v in items]

    def frame_columns(self, X: pd.DataFrame, learn: bool) -> list[tuple[int, Hashable, pd.Series]]:
        """The columns of a frame the model knows (registering new ones when learning)."""
        if learn:
            self.register(X.columns)
        return sorted(
            ((self.slots[c], c, X[c]) for c in X.columns if c in self.slots), key=lambda t: t[0]
        )
