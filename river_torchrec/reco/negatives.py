"""Sampled negatives for positive-only feedback: uniform or popularity-proportional."""

from __future__ import annotations

import numpy as np

__all__ = ["NegativeSampler", "STRATEGIES"]

STRATEGIES = ("uniform", "popularity")


class NegativeSampler:
    """Draws items a user has not interacted with, as negatives of one positive.

    Parameters
    ----------
    strategy
        ``"uniform"``: every item of the catalogue the user has not interacted with is
        equally likely. ``"popularity"``: proportional to the item's number of positive
        interactions so far (a draw from the log of past positives), which makes the model
        tell a positive from items that are popular too rather than from the long tail.
    reservoir
        The log of positives for ``"popularity"`` keeps at most this many entries, as a
        uniform reservoir sample of the history (so memory stays bounded on long streams).

    Notes
    -----
    Rejection sampling against the user's set of seen items costs ``O(n)`` per positive;
    when the user has seen most of the catalogue, the sampler draws from the explicit
    complement instead. A user who has seen every item gets no negatives.

    Examples
    --------
    >>> import numpy as np
    >>> sampler = NegativeSampler("uniform")
    >>> rng = np.random.default_rng(0)
    >>> negs = sampler.sample(10, {0, 1, 2}, 4, rng)
    >>> len(negs), bool(set(negs.tolist()) & {0, 1, 2})
    (4, False)

    """

    def __init__(self, strategy: str = "uniform", reservoir: int = 2**20) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"negative_sampling must be one of {list(STRATEGIES)}, got {strategy!r}")
        self.strategy = strategy
        self.reservoir = reservoir
        self.log = np.zeros(256, dtype=np.int64)
        self.n_logged = 0

    def observe(self, index: int, rng: np.random.Generator) -> None:
        """Record a positive interaction with item ``index`` (for ``"popularity"``)."""
        if self.strategy != "popularity":
            return
        n = self.n_logged
        if n < self.reservoir:
            if n >= len(self.log):
                self.log = np.concatenate([self.log, np.zeros(len(self.log), dtype=np.int64)])
            self.log[n] = index
        else:
            j = int(rng.integers(n + 1))
            if j < self.reservoir:
                self.log[j] = index
        self.n_logged = n + 1

    def sample(self, n_items: int, seen: set[int], n: int, rng: np.random.Generator) -> np.ndarray:
        """Up to ``n`` distinct item indices in ``range(n_items)``, none of them in ``seen``."""
        n_free = n_items - len(seen)
        n = min(n, n_free)
        if n <= 0:
            return np.zeros(0, dtype=np.int64)
        out: list[int] = []
        taken = set(seen)
        popular = self.strategy == "popularity" and self.n_logged > 0
        log = self.log[: min(self.n_logged, self.reservoir)]
        if n_free > 2 * len(seen) or popular:
            for _ in range(8):
                draws = log[rng.integers(len(log), size=4 * n)] if popular else rng.integers(n_items, size=4 * n)
                for d in draws.tolist():
                    if d not in taken:
                        taken.add(d)
                        out.append(d)
                        if len(out) == n:
                            return np.array(out, dtype=np.int64)
        # Most of the catalogue is seen (or the popular items are): draw from the complement.
        free = np.setdiff1d(np.arange(n_items), np.fromiter(taken, dtype=np.int64, count=len(taken)))
        if popular:
            weights = np.bincount(log, minlength=n_items)[free].astype(np.float64) + 1e-9
            picked = rng.choice(free, size=n - len(out), replace=False, p=weights / weights.sum())
        else:
            picked = rng.choice(free, size=n - len(out), replace=False)
        return np.array(out + picked.tolist(), dtype=np.int64)
