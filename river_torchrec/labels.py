"""Validation of labels and sample weights, shared by every estimator (no torch here)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["binary_label", "frame_weights", "sample_weight"]


def binary_label(y: Any) -> float:
    """A bool or 0/1 label as 0.0 or 1.0; anything else is a ``ValueError``."""
    if isinstance(y, (bool, np.bool_)):
        return float(y)
    if isinstance(y, (int, float, np.integer, np.floating)) and (y == 0 or y == 1):
        return float(y)
    raise ValueError(f"label must be a bool or 0/1, got {y!r} ({type(y).__name__})")


def sample_weight(w: Any) -> float:
    """A finite, non-negative sample weight as a float; anything else is a ``ValueError``."""
    f = float(w)
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"sample weight must be finite and >= 0, got {w!r}")
    return f


def frame_weights(w: Any, n: int) -> np.ndarray | list[float]:
    """Validated per-row weights of a frame: a Series of ``n`` weights or one number."""
    if isinstance(w, pd.Series):
        if len(w) != n:
            raise ValueError(f"X has {n} rows but w has {len(w)}")
        if w.dtype.kind in "iuf":
            arr = w.to_numpy(dtype=np.float64)
            bad = ~(np.isfinite(arr) & (arr >= 0))
            if bad.any():
                sample_weight(float(arr[int(np.argmax(bad))]))  # raises, naming the first bad weight
            return arr
        return [sample_weight(v) for v in w.tolist()]
    return [sample_weight(w)] * n
