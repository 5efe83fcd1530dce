"""Progressive-validation scores shared by the benchmark scripts."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

__all__ = ["auc", "logloss"]


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    # Clipped as river's metrics.LogLoss clips.
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Exact ROC AUC (every threshold), NaN when only one class was seen."""
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")
