"""How the evaluation obtains a ranking from a model: its `rank`, or an equivalent fast path.

river's `Baseline`, `BiasedMF` and `FunkMF` rank by calling `predict_one` once per
candidate, about 5 µs each: a full-catalogue pass over MovieLens-100K (55k queries of
1,600 candidates) would take over ten minutes per model. Their scores are sums and dot
products of per-user and per-item parameters, so `RiverMFScorer` keeps the item parameters
in NumPy arrays (refreshing the row of each item after it is learned, the only row a
river SGD-style step changes) and scores all candidates in one product.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

__all__ = ["RankScorer", "RiverMFScorer", "make_scorer"]


class RankScorer:
    """Any ranker: calls `model.rank(user, candidates, x)`."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._index: dict[Hashable, int] = {}

    def rank(
        self,
        user: Hashable,
        x: dict | None,
        candidates: np.ndarray,
        true: int | None,
        k: int,
        items: Sequence[Hashable],
    ) -> tuple[float, list[int]]:
        """Return the relevant item's 1-based position (inf if absent) and the top-k rows."""
        ranked = list(self.model.rank(user, [items[j] for j in candidates.tolist()], x))
        if len(ranked) != len(candidates):
            raise ValueError(
                f"{type(self.model).__name__}.rank must return every candidate once: got "
                f"{len(ranked)} items for {len(candidates)} candidate(s)"
            )
        index = self._index
        if len(index) != len(items):
            index.update((items[j], j) for j in range(len(index), len(items)))
        top = [index[i] for i in ranked[:k]]
        if true is None:
            return math.inf, top
        return float(ranked.index(items[true]) + 1), top

    def learn(self, user: Hashable, item: Hashable, y: Any, x: dict | None) -> None:
        self.model.learn_one(user, item, y, x)

    def refresh(self, row: int, item: Hashable, user: Hashable) -> None:
        """Called after each learned event with the item's catalogue row."""


class RiverMFScorer(RankScorer):
    """river's `Baseline`, `BiasedMF` or `FunkMF`, scored from its parameters.

    Same scores as `model.predict_one` (up to float rounding in the dot product) and the
    same tie order as `model.rank` (stable, in candidate order).

    Examples
    --------

    >>> import numpy as np
    >>> from river import reco
    >>> from river_torchrec.evaluate.scorers import RiverMFScorer

    >>> model = reco.BiasedMF(n_factors=4, seed=1)
    >>> scorer = RiverMFScorer(model)
    >>> items = ["a", "b", "c"]
    >>> for row, (user, item, y) in enumerate([("u", "a", 1.0), ("v", "b", 0.0), ("u", "c", 1.0)]):
    ...     scorer.learn(user, item, y, None)
    ...     scorer.refresh(row, item, user)
    >>> rank, top = scorer.rank("v", None, np.array([0, 1, 2]), 1, 2, items)
    >>> [items[j] for j in top] == model.rank("v", items)[:2]
    True

    """

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self._has_bias = hasattr(model, "i_biases")
        self._has_latent = hasattr(model, "i_latents")
        self._bias = np.zeros(0)
        self._latent = np.zeros((0, getattr(model, "n_factors", 0)))

    def refresh(self, row: int, item: Hashable, user: Hashable) -> None:
        model = self.model
        if row >= len(self._bias):
            grow = max(64, len(self._bias))
            self._bias = np.concatenate([self._bias, np.zeros(grow)])
            if self._has_latent:
                pad = np.zeros((grow, self._latent.shape[1]))
                self._latent = np.concatenate([self._latent, pad])
        if self._has_bias:
            self._bias[row] = model.i_biases[item]
        if self._has_latent:
            self._latent[row] = model.i_latents[item]

    def rank(
        self,
        user: Hashable,
        x: dict | None,
        candidates: np.ndarray,
        true: int | None,
        k: int,
        items: Sequence[Hashable],
    ) -> tuple[float, list[int]]:
        model = self.model
        scores = np.zeros(len(candidates))
        if self._has_bias:
            # The same defaultdict accesses as predict_one, so a new user gets its
            # parameters (and draws from the initializer) exactly as model.rank would.
            scores += model.global_mean.get() + model.u_biases[user] + self._bias[candidates]
        if self._has_latent:
            scores += self._latent[candidates] @ model.u_latents[user]
        order = np.argsort(-scores, kind="stable")
        top = candidates[order[:k]].tolist()
        if true is None:
            return math.inf, top
        at = int(np.flatnonzero(candidates == true)[0])
        s = scores[at]
        return float(1 + np.sum(scores > s) + np.sum(scores[:at] == s)), top


def make_scorer(model: Any) -> RankScorer:
    """The fast path for river's matrix-factorisation rankers, `rank` for everything else."""
    from river import reco

    if type(model) in (reco.Baseline, reco.BiasedMF, reco.FunkMF):
        return RiverMFScorer(model)
    return RankScorer(model)
