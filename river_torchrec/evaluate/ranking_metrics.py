"""Ranking metrics of one relevant item per query, computed exactly from its rank.

Every test-then-learn query has exactly one relevant item (the one the user interacted
with), so each metric is a function of that item's 1-based position `r` in the ranked
candidates: `np.inf` marks a miss (the item was not among the candidates at all, e.g. an
item never seen before).

"""

from __future__ import annotations

import numpy as np

__all__ = ["hit_rate", "mrr", "ndcg", "per_query"]


def _ranks(ranks: np.ndarray | list[float]) -> np.ndarray:
    r = np.asarray(ranks, dtype=float)
    if r.ndim != 1:
        raise ValueError(f"ranks must be one-dimensional, got shape {r.shape}")
    if np.isnan(r).any() or (r < 1).any():
        raise ValueError("ranks must be 1-based positions (>= 1) or inf for a miss")
    return r


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def per_query(ranks: np.ndarray | list[float], metric: str, k: int = 10) -> np.ndarray:
    """Per-query values of `metric` (`"hit_rate"`, `"ndcg"` or `"mrr"`).

    * HitRate@k: `1` if `r <= k` else `0`;
    * NDCG@k: `1 / log2(r + 1)` if `r <= k` else `0` (with one relevant item the ideal DCG
      is 1);
    * MRR: `1 / r`, not truncated at `k` (a miss gives `0`).

    Examples
    --------

    >>> from river_torchrec.evaluate.ranking_metrics import per_query
    >>> per_query([1, 3, 20, float("inf")], "ndcg", k=10).round(4).tolist()
    [1.0, 0.5, 0.0, 0.0]
    >>> per_query([1, 4, float("inf")], "mrr").tolist()
    [1.0, 0.25, 0.0]

    """
    r = _ranks(ranks)
    _check_k(k)
    if metric == "hit_rate":
        return (r <= k).astype(float)
    if metric == "ndcg":
        out = np.zeros(len(r))
        hit = r <= k
        out[hit] = 1.0 / np.log2(r[hit] + 1.0)
        return out
    if metric == "mrr":
        return 1.0 / r
    raise ValueError(f"metric must be 'hit_rate', 'ndcg' or 'mrr', got {metric!r}")


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else float("nan")


def hit_rate(ranks: np.ndarray | list[float], k: int = 10) -> float:
    """Fraction of queries whose relevant item is in the top `k`.

    Examples
    --------

    >>> from river_torchrec.evaluate.ranking_metrics import hit_rate
    >>> hit_rate([1, 5, 11, float("inf")], k=10)
    0.5

    """
    return _mean(per_query(ranks, "hit_rate", k))


def ndcg(ranks: np.ndarray | list[float], k: int = 10) -> float:
    """Mean NDCG@k with one relevant item per query.

    Examples
    --------

    >>> from river_torchrec.evaluate.ranking_metrics import ndcg
    >>> ndcg([1, 3], k=10)
    0.75

    """
    return _mean(per_query(ranks, "ndcg", k))


def mrr(ranks: np.ndarray | list[float]) -> float:
    """Mean reciprocal rank over the full ranking (not cut at `k`).

    Examples
    --------

    >>> from river_torchrec.evaluate.ranking_metrics import mrr
    >>> mrr([1, 2, 4, float("inf")])
    0.4375

    """
    return _mean(per_query(ranks, "mrr"))
