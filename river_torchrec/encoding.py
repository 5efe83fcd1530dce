"""Turn feature dicts and DataFrames into field slots, table keys and values (no torch here)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FieldEncoder", "parse_features", "signed_log1p", "NUMERIC"]

#: The value part of a numeric field's key: a numeric field has one row, scaled by its value.
NUMERIC = None

Parsed = list[tuple[Hashable, Hashable, float]]


def _is_categorical(v: Any) -> bool:
    return isinstance(v, (str, bool, np.bool_))


def signed_log1p(v: float) -> float:
    """``sign(v) * log(1 + |v|)``: keeps small values, tames counts and outliers (1e6 -> 13.8)."""
    return math.copysign(math.log1p(abs(v)), v)


def parse_features(x: dict, log_numeric: bool = False) -> Parsed:
    """Validate an event and return ``(field, value_key, value)`` triples.

    ``None`` is missing and left out. ``str`` and ``bool`` are categorical (value 1, key
    the value itself); ``int`` and ``float`` (numpy scalars included) are numeric (key
    :data:`NUMERIC`, value the number, passed through :func:`signed_log1p` when
    ``log_numeric``). Anything else, NaN or infinity raises an error that names the
    field; nothing has been changed when it does.
    """
    if not isinstance(x, dict):
        raise TypeError(f"features must be a dict, got {type(x).__name__}")
    out: Parsed = []
    for field, v in x.items():
        t = type(v)
        if t is str:
            out.append((field, v, 1.0))
        elif t is float or t is int:
            if not math.isfinite(v):
                raise ValueError(f"feature {field!r} is {v!r}; numeric features must be finite")
            out.append((field, NUMERIC, signed_log1p(v) if log_numeric else float(v)))
        elif v is None:
            continue
        elif t is bool or isinstance(v, np.bool_):
            out.append((field, bool(v), 1.0))
        elif isinstance(v, str):
            out.append((field, str(v), 1.0))
        elif isinstance(v, numbers.Real):
            f = float(v)
            if not math.isfinite(f):
                raise ValueError(f"feature {field!r} is {v!r}; numeric features must be finite")
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
        new = {f for f in fields if f not in self.slots}
        for f in sorted(new, key=repr):
            self.slots[f] = len(self.slots)
        return len(self.slots)

    def arrange(self, parsed: Parsed, learn: bool) -> tuple[list[int], list[tuple], list[float]]:
        """Slots, keys and values of the fields of an event the model knows, in slot order."""
        slots = self.slots
        if learn:
            self.register(f for f, _, _ in parsed)
        items = sorted(
            (slots[f], (f, k), v) for f, k, v in parsed if f in slots
        ) if parsed else []
        return [s for s, _, _ in items], [k for _, k, _ in items], [v for _, _, v in items]

    def frame_columns(self, X: pd.DataFrame, learn: bool) -> list[tuple[int, Hashable, pd.Series]]:
        """The columns of a frame the model knows (registering new ones when learning)."""
        if learn:
            self.register(X.columns)
        return sorted(
            ((self.slots[c], c, X[c]) for c in X.columns if c in self.slots), key=lambda t: t[0]
        )
