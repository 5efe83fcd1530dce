"""How ``recommend`` turns scores into a list: greedy, epsilon-greedy or Thompson sampling.

A policy gets the ranker, the user and context, the indices the list may hold and the
ranker's seeded random generator, and returns ``k`` catalogue indices. Costs, over a
catalogue of ``N`` items with ``d``-dimensional vectors:

- :class:`Greedy`: the top ``k`` of the model's scores (one scoring pass and a partial sort).
- :class:`EpsilonGreedy`: the greedy list, then each slot is replaced with probability
  ``epsilon`` by a uniform draw among the other allowed items: ``O(k)`` on top of greedy.
  Explores blindly: it spends ``epsilon`` of the slots whatever the model knows.
- :class:`ThompsonSampling`: scores drawn from the ranker's posterior, then their top ``k``:
  one normal draw per item (``O(N)``) on top of the scoring pass; for
  :class:`~river_torchrec.reco.TwoTowerRanker` also one ``d x d`` Cholesky factorisation per
  call and a rank-one ``d x d`` update per learned event. Explores where the model is
  unsure (items and directions of the user's taste with little evidence), and less and
  less as evidence accrues.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["EpsilonGreedy", "Greedy", "ThompsonSampling", "make_policy", "top_k"]


def top_k(scores: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first, among ``allowed`` (a boolean mask).

    Ties go to the smaller index, so the result does not depend on the sort's internals.
    """
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
        n_ok = int(allowed.sum())
    else:
        n_ok = len(scores)
    k = min(k, n_ok)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < len(scores) // 8:
        part = np.argpartition(-scores, k - 1)[:k]
        # argpartition may pick any of several tied k-th scores: widen to all of them.
        kth = scores[part].min()
        part = np.flatnonzero(scores >= kth)
    else:
        part = np.arange(len(scores))
    order = np.lexsort((part, -scores[part]))
    return part[order[:k]].astype(np.int64)


class Greedy:
    """The ``k`` best-scored items (no exploration).

    Examples
    --------
    >>> import numpy as np
    >>> Greedy().pick(np.array([0.1, 0.9, 0.5]), 2, None, np.random.default_rng(0)).tolist()
    [1, 2]

    """

    name = "greedy"

    def scores(self, ranker: Any, user: Any, x: dict | None, rng: np.random.Generator) -> np.ndarray:
        return ranker._catalogue_scores(user, x)

    def pick(self, scores: np.ndarray, k: int, allowed: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        return top_k(scores, k, allowed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsilonGreedy(Greedy):
    """The greedy list with each slot swapped, with probability ``epsilon``, for a random item.

    Parameters
    ----------
    epsilon
        Probability that a slot shows a uniformly drawn allowed item instead.

    Examples
    --------
    >>> import numpy as np
    >>> policy = EpsilonGreedy(epsilon=1.0)
    >>> picked = policy.pick(np.arange(10.0), 3, None, np.random.default_rng(0))
    >>> len(set(picked.tolist())), picked.tolist() != [9, 8, 7]
    (3, True)

    """

    name = "epsilon"

    def __init__(self, epsilon: float = 0.1) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        self.epsilon = epsilon

    def pick(self, scores: np.ndarray, k: int, allowed: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        greedy = top_k(scores, k, allowed)
        swap = rng.random(len(greedy)) < self.epsilon
        if not swap.any():
            return greedy
        pool = np.flatnonzero(allowed) if allowed is not None else np.arange(len(scores))
        kept = set(greedy[~swap].tolist())
        out = greedy.copy()
        for slot in np.flatnonzero(swap):
            # Rejection sampling: cheap while the list is short next to the pool.
            for _ in range(32):
                cand = int(pool[rng.integers(len(pool))])
                if cand not in kept:
                    break
            else:
                rest = np.setdiff1d(pool, np.fromiter(kept, dtype=np.int64))
                cand = int(rest[rng.integers(len(rest))]) if len(rest) else int(greedy[slot])
            kept.add(cand)
            out[slot] = cand
        return out

    def __repr__(self) -> str:
        return f"EpsilonGreedy(epsilon={self.epsilon!r})"


class ThompsonSampling(Greedy):
    """The top ``k`` of scores drawn from the ranker's posterior (Thompson sampling).

    The posterior is the ranker's: a Laplace approximation of the user's vector and of
    each item's bias for :class:`~river_torchrec.reco.TwoTowerRanker`, of each item's bias
    for :class:`~river_torchrec.reco.CTRRanker`, and a Gamma posterior of each item's rate
    for :class:`~river_torchrec.reco.MostPopular`.

    Parameters
    ----------
    scale
        Multiplies the posterior standard deviation: above 1 explores more, 0 is greedy.

    Examples
    --------
    >>> ThompsonSampling(scale=0.5)
    ThompsonSampling(scale=0.5)

    """

    name = "thompson"

    def __init__(self, scale: float = 1.0) -> None:
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale!r}")
        self.scale = scale

    def scores(self, ranker: Any, user: Any, x: dict | None, rng: np.random.Generator) -> np.ndarray:
        return ranker._sampled_scores(user, x, rng, self.scale)

    def __repr__(self) -> str:
        return f"ThompsonSampling(scale={self.scale!r})"


_NAMES = {"greedy": Greedy, "epsilon": EpsilonGreedy, "thompson": ThompsonSampling}


def make_policy(explore: str | Greedy | None) -> Greedy:
    """A policy from a name (``"greedy"``, ``"epsilon"``, ``"thompson"``), a policy, or None (greedy)."""
    if explore is None:
        return Greedy()
    if isinstance(explore, Greedy):
        return explore
    if isinstance(explore, str) and explore in _NAMES:
        return _NAMES[explore]()
    raise ValueError(
        f"explore must be None, 'greedy', 'epsilon', 'thompson' or a policy from "
        f"river_torchrec.reco.exploration, got {explore!r}"
    )
