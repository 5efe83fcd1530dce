"""The most-popular-so-far baseline ranker."""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np
from river import reco

from river_torchrec.learner import _Lock, locked
from river_torchrec.reco.base import Recommender
from river_torchrec.reco.catalogue import Catalogue, check_hashable

__all__ = ["MostPopular"]


class MostPopular(Recommender, reco.base.Ranker):
    """Ranks items by their number of positive interactions so far, the same for every user.

    The baseline every recommender must beat: on MovieLens it is a strong one, since a
    few films take a large share of the ratings. With ``exclude_seen=True`` (the default)
    :meth:`recommend` still personalises a little, by leaving out what the user has seen.

    Parameters
    ----------
    threshold
        ``y`` counts as a positive when ``y >= threshold``; None: when ``y`` is truthy
        (``True``, or a non-zero number).
    seed
        Seed of the exploration draws of :meth:`recommend`.

    Notes
    -----
    ``recommend(..., explore="thompson")`` draws each item's rate from its Gamma posterior
    ``Gamma(1 + positives, 1)`` (a Poisson rate under a flat prior): ``O(N)`` per call.

    Examples
    --------
    >>> from river_torchrec.reco import MostPopular
    >>> model = MostPopular()
    >>> for user, item, y in [("ann", "a", 1), ("bob", "a", 1), ("bob", "b", 1), ("carl", "c", 0)]:
    ...     model.learn_one(user, item, y)
    >>> model.rank("ann", ["c", "b", "a"])
    ['a', 'b', 'c']
    >>> model.recommend("bob", k=2), model.predict_one("ann", "a")
    (['c'], 2.0)

    """

    def __init__(self, threshold: float | None = None, seed: int | None = None) -> None:
        if threshold is not None and not (
            isinstance(threshold, numbers.Real) and not isinstance(threshold, bool) and math.isfinite(threshold)
        ):
            raise ValueError(f"threshold must be a finite number or None, got {threshold!r}")
        super().__init__(seed=seed)
        self.threshold = threshold
        self._catalogue = Catalogue()
        self._explore_rng = np.random.default_rng(seed)
        self._lock = _Lock()

    def _positive(self, y: Any) -> float:
        if isinstance(y, (bool, np.bool_)):
            y = bool(y)
        elif not isinstance(y, numbers.Real) or not math.isfinite(float(y)):
            raise ValueError(f"y must be a bool or a finite number, got {y!r} ({type(y).__name__})")
        if self.threshold is None:
            return 1.0 if y else 0.0
        return 1.0 if y >= self.threshold else 0.0

    @locked
    def learn_one(self, user: Hashable, item: Hashable, y: Any, x: dict | None = None) -> None:
        check_hashable("user", user)
        check_hashable("item", item)
        self._catalogue.observe(user, item, self._positive(y))

    @locked
    def predict_one(self, user: Hashable, item: Hashable, x: dict | None = None) -> float:
        check_hashable("item", item)
        i = self._catalogue.index.get(item)
        return 0.0 if i is None else float(self._catalogue.positives[i])

    @locked
    def rank(self, user: Hashable, items: Iterable[Hashable], x: dict | None = None) -> list[Hashable]:
        items = list(items)
        for item in items:
            check_hashable("item", item)
        idx = self._catalogue.indices(items)
        pop = self._catalogue.popularity()
        scores = np.where(idx >= 0, pop[np.maximum(idx, 0)] if len(pop) else 0.0, 0.0)
        # Ties: earlier-seen items first, then unknown items in the given order.
        first = np.where(idx >= 0, idx, len(pop) + np.arange(len(items)))
        return [items[i] for i in np.lexsort((first, -scores)).tolist()]

    def _catalogue_scores(self, user: Hashable, x: dict | None) -> np.ndarray:
        return self._catalogue.popularity().copy()

    def _sampled_scores(self, user: Hashable, x: dict | None, rng: np.random.Generator, scale: float) -> np.ndarray:
        pop = self._catalogue.popularity()
        return pop + scale * (rng.gamma(1.0 + pop) - (1.0 + pop))

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"threshold": 1}
