"""How ``recommend`` turns scores into a list: greedy, epsilon-greedy, Thompson sampling or UCB.

A policy gets the ranker, the user and context, the indices the list may hold and the
ranker's seeded random generator, and returns ``k`` catalogue indices.

**The posterior** (:class:`ThompsonSampling` and :class:`UpperConfidenceBound` on a
:class:`~river_torchrec.reco.TwoTowerRanker`) is a Bayesian last layer around the learned
model. The item vectors ``v_j`` and the model's logits ``s_j`` are taken as given; the
user's vector gets the Laplace approximation of the logistic likelihood of the events
learned with that user (:func:`user_posterior`),

    ``Lambda_u = lambda_0 I + sum_j c_j p_j (1 - p_j) v_j v_j^T``,

(``c_j`` events about item ``j``, ``p_j = sigmoid(s_j)`` the model's click rate, so
``p_j (1 - p_j)`` is the Bernoulli noise variance at the current estimate), and each
item's logit gets an offset with an empirical-Bayes normal prior (:func:`item_prior`,
:func:`item_variance`): its variance ``tau^2`` is the between-item variance of the items'
observed rates (method of moments: variance of the rates less their mean binomial sampling
variance, on the logit scale), shrunk by the item's own evidence,
``sigma_j^2 = 1 / (1 / tau^2 + n_j r_j (1 - r_j))``. The user prior
``lambda_0 = mean_n(|v|^2) / tau^2`` gives the user's part of an average item's logit the
same prior variance ``tau^2`` (a user's taste is a priori as uncertain as an item's
quality), in the units of the item vectors, so the width does not depend on how large the
learned vectors happen to be; both terms shrink as evidence accrues, and with no
between-item variance in the data there is nothing to explore (the policies are greedy).
The score variance of item ``j`` is ``v_j^T Lambda_u^-1 v_j + sigma_j^2``.

**When exploration pays** (``benchmarks/bench_exploration.py``: a simulated world where
``TwoTowerRanker(feedback="explicit", embedding_dim=16)`` learns only from the one item it
showed per round, 20,000 rounds; numbers in ``benchmarks/README.md``):

- It pays, modestly, when each user sees each item at most once and cold items keep
  arriving or tastes move: with 1,000 items arriving over the run, :class:`EpsilonGreedy`
  (0.1) collected 2-8% more clicks than greedy on every seed and
  :class:`UpperConfidenceBound` (alpha 0.5) 2-3%; after a preference shift UCB gained 2-8%
  on every seed. Greedy's own choices leave items and directions of taste unexplored;
  random impressions teach the shared item vectors something every user profits from.
- It is about even (a median gain of 4-5%, one seed of three losing) with a stable
  catalogue of 300 items, with rare feedback (a ~5% base rate: epsilon +5%, UCB -1%) and
  with many users who come back rarely (about 10 rounds each: epsilon +1.5%, UCB -3%).
- It does not pay where the model may show the best item it knows again (an ad slot of 50
  items): greedy learns the item vectors from its own choices; epsilon lost 4%, the
  decaying epsilon 10%, Thompson 7%, UCB from -16% to +2% by seed.
- :class:`ThompsonSampling` lost 7-18% of the clicks in every scenario: with hundreds of
  items the best of the per-item draws is almost always an item with a wide posterior, so
  it explores nearly every round (the many-armed regime, where arms outnumber the feedback
  each one gets); UCB on the same posterior adds one deterministic bonus and does not chase
  the luckiest draw. Prefer UCB or epsilon on large catalogues, Thompson on small ones or
  with ``scale < 1``.

**Costs per call**, over a catalogue of ``N`` items with ``d``-dimensional vectors and a user
with ``m`` learned items:

- :class:`Greedy`: one scoring pass (``O(N d)``) and a partial sort.
- :class:`EpsilonGreedy`: the greedy list, then each slot is replaced with probability
  ``epsilon`` (constant, or decaying with the user's learned events) by a uniform draw among
  the other allowed items: ``O(k)`` on top of greedy. Explores blindly.
- :class:`ThompsonSampling`: the posterior above (``O(m d^2 + d^3)`` for ``Lambda_u`` and its
  Cholesky factor, ``O(N)`` for the item terms), one draw of the user's vector and one
  normal draw per item (``O(N d)``), then the top ``k``: about twice a greedy call on
  catalogues of 300-1,000 items in the benchmark. Explores where the model is unsure,
  less as evidence accrues.
- :class:`UpperConfidenceBound`: the same posterior, plus the per-item quadratic form
  ``v_j^T Lambda_u^-1 v_j`` (``O(N d^2)``: a triangular solve against all item vectors):
  also about twice a greedy call there, more on large catalogues; deterministic given the
  model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "EpsilonGreedy",
    "Greedy",
    "ThompsonSampling",
    "UpperConfidenceBound",
    "held_normals",
    "item_prior",
    "item_variance",
    "make_policy",
    "top_k",
    "user_posterior",
]


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


def _sigmoid(s: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * s))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def held_normals(seed: int, events: np.ndarray) -> np.ndarray:
    """One standard normal per item, a function of ``(seed, item index, events about it)``.

    An item's draw is therefore held from call to call and redrawn only when the item gets
    new evidence: at every call it is a draw from the item's current posterior, but the
    ranking of items nobody has learned about stays the same for every user until one of
    them is shown (exploration is coordinated across users instead of spread thinly over
    every cold item at once).

    Examples
    --------
    >>> a = held_normals(0, np.array([0, 0, 3]))
    >>> b = held_normals(0, np.array([0, 1, 3]))
    >>> bool(a[0] == b[0] and a[1] != b[1] and a[2] == b[2])
    True

    """
    from scipy.special import ndtri

    with np.errstate(over="ignore"):
        idx = np.arange(len(events), dtype=np.uint64)
        key = _splitmix64(idx ^ _splitmix64(np.full(len(events), seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)))
        key = _splitmix64(key + np.asarray(events).astype(np.uint64))
    u = (key >> np.uint64(11)).astype(np.float64) * 2.0**-53 + 2.0**-54
    return ndtri(u)


def item_prior(shown: np.ndarray, positives: np.ndarray) -> float:
    """Empirical-Bayes variance ``tau^2`` of an item's logit offset (method of moments).

    The between-item variance of the observed rates ``r_j = positives_j / n_j`` over items
    with evidence, less their mean binomial sampling variance ``r_j (1 - r_j) / n_j``,
    carried to the logit scale by the delta method at the mean rate; 0 while the rates show
    no between-item variance (or fewer than two items have evidence).

    Examples
    --------
    >>> round(item_prior(np.array([100.0, 100.0]), np.array([10.0, 30.0])), 3)
    0.332
    >>> item_prior(np.array([10.0, 10.0]), np.array([3.0, 3.0]))
    0.0

    """
    shown = np.asarray(shown, dtype=np.float64)
    positives = np.minimum(np.asarray(positives, dtype=np.float64), shown)
    has = shown > 0
    if has.sum() < 2:
        return 0.0
    n, r = shown[has], positives[has] / shown[has]
    mean = float(np.clip(positives[has].sum() / n.sum(), 1e-3, 1 - 1e-3))
    tau2_rate = float(np.var(r) - np.mean(r * (1.0 - r) / n))
    return tau2_rate / (mean * (1.0 - mean)) ** 2 if tau2_rate > 0 else 0.0


def item_variance(shown: np.ndarray, positives: np.ndarray, tau2: float | None = None) -> np.ndarray:
    """Posterior variance of each item's logit offset: ``1 / (1 / tau^2 + n_j r_j (1 - r_j))``.

    ``tau^2`` is :func:`item_prior` (the empirical-Bayes prior) unless given; ``r_j`` is the
    item's rate with one pseudo-event at the mean rate.

    Parameters
    ----------
    shown
        Events learned per item (``n_j``).
    positives
        Positive feedback per item.
    tau2
        Prior variance (default: :func:`item_prior`).

    Returns
    -------
    np.ndarray
        ``[N]`` variances; all zero when ``tau^2`` is 0.

    Examples
    --------
    >>> v = item_variance(np.array([0.0, 10.0, 10.0, 100.0]), np.array([0.0, 1.0, 6.0, 30.0]))
    >>> bool(v[0] > v[1] > v[3] > 0)
    True

    """
    shown = np.asarray(shown, dtype=np.float64)
    positives = np.minimum(np.asarray(positives, dtype=np.float64), shown)
    if tau2 is None:
        tau2 = item_prior(shown, positives)
    if not tau2 > 0:
        return np.zeros(len(shown))
    mean = float(np.clip(positives.sum() / max(shown.sum(), 1.0), 1e-3, 1 - 1e-3))
    rate = (positives + mean) / (shown + 1.0)
    return 1.0 / (1.0 / tau2 + shown * rate * (1.0 - rate))


def user_posterior(
    vectors: np.ndarray,
    scores: np.ndarray,
    evidence: dict[int, float],
    shown: np.ndarray,
    prior_var: float,
) -> np.ndarray:
    """Laplace precision ``Lambda_u`` (``[d, d]``) of a user's vector, around the model's estimate.

    ``Lambda_u = lambda_0 I + sum_j c_j p_j (1 - p_j) v_j v_j^T`` over the items ``j`` learned
    with the user (``evidence``: index -> ``c_j`` events), ``p = sigmoid(scores)``. The
    isotropic prior ``lambda_0 = mean_n(|v|^2) / prior_var`` (the squared norms averaged
    with weights ``n_j = shown``) gives the user term of an average item the prior variance
    ``prior_var``: the prior has the units of the item vectors.

    Parameters
    ----------
    vectors
        ``[N, d]`` item vectors.
    scores
        ``[N]`` the model's logits for this user.
    evidence
        Catalogue index -> number of events learned with this user about that item.
    shown
        ``[N]`` events learned per item, all users (weights of the prior's scale).
    prior_var
        Prior variance of the user's part of an average item's logit (> 0).

    Examples
    --------
    >>> v = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> user_posterior(v, np.zeros(2), {0: 4.0}, np.array([1.0, 1.0]), prior_var=1.25).tolist()
    [[3.0, 0.0], [0.0, 2.0]]

    """
    d = vectors.shape[1]
    w = _sigmoid(np.asarray(scores, dtype=np.float64))
    w = w * (1.0 - w)
    sq = np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64)
    weight = np.asarray(shown, dtype=np.float64)
    if weight.sum() <= 0:
        weight = np.ones(len(sq))
    mean_sq = float((weight * sq).sum() / weight.sum())
    lam0 = mean_sq / prior_var if mean_sq > 0 else 1.0 / prior_var
    precision = lam0 * np.eye(d)
    if evidence:
        idx = np.fromiter(evidence.keys(), dtype=np.int64, count=len(evidence))
        c = np.fromiter(evidence.values(), dtype=np.float64, count=len(evidence))
        v = vectors[idx].astype(np.float64)
        precision += (v * (c * w[idx])[:, None]).T @ v
    return precision


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
        """The scores whose top ``k`` the policy shows (here the model's own)."""
        return ranker._catalogue_scores(user, x)

    def pick(self, scores: np.ndarray, k: int, allowed: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """``k`` catalogue indices from ``scores``, among ``allowed`` (None: all)."""
        return top_k(scores, k, allowed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class EpsilonGreedy(Greedy):
    """The greedy list with each slot swapped, with probability ``epsilon``, for a random item.

    Parameters
    ----------
    epsilon
        Probability that a slot shows a uniformly drawn allowed item instead.
    decay
        ``None`` (the default): ``epsilon`` is constant. A number of events ``n_0``: the
        probability is ``epsilon * min(1, sqrt(n_0 / n_u))`` for a user with ``n_u``
        learned items, i.e. ``epsilon`` for the first ``n_0`` items, then falling as
        ``1 / sqrt(n_u)``: a user the model knows well is explored less.

    Examples
    --------
    >>> import numpy as np
    >>> policy = EpsilonGreedy(epsilon=1.0)
    >>> picked = policy.pick(np.arange(10.0), 3, None, np.random.default_rng(0))
    >>> len(set(picked.tolist())), picked.tolist() != [9, 8, 7]
    (3, True)
    >>> EpsilonGreedy(0.2, decay=25).rate(100)
    0.1

    """

    name = "epsilon"

    def __init__(self, epsilon: float = 0.1, decay: float | None = None) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
        if decay is not None and not decay > 0:
            raise ValueError(f"decay must be None or > 0, got {decay!r}")
        self.epsilon = epsilon
        self.decay = decay
        self._rate = epsilon

    def rate(self, n_events: int) -> float:
        """The probability of swapping a slot for a user with ``n_events`` learned items."""
        if self.decay is None or n_events <= self.decay:
            return self.epsilon
        return self.epsilon * float(np.sqrt(self.decay / n_events))

    def scores(self, ranker: Any, user: Any, x: dict | None, rng: np.random.Generator) -> np.ndarray:
        """The model's scores; also reads the user's learned items for the decaying rate."""
        seen = ranker._catalogue.seen.get(user)
        self._rate = self.rate(len(seen) if seen else 0)
        return ranker._catalogue_scores(user, x)

    def pick(self, scores: np.ndarray, k: int, allowed: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """The greedy list with each slot swapped for a uniform draw with the current rate."""
        greedy = top_k(scores, k, allowed)
        swap = rng.random(len(greedy)) < self._rate
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
        if self.decay is None:
            return f"EpsilonGreedy(epsilon={self.epsilon!r})"
        return f"EpsilonGreedy(epsilon={self.epsilon!r}, decay={self.decay!r})"


def _has_vectors(ranker: Any) -> bool:
    return hasattr(ranker, "_evidence") and hasattr(ranker, "_cache") and hasattr(ranker, "embedding_dim")


def _posterior(ranker: Any, user: Any, x: dict | None, prior_var: float | None):
    """Scores, item vectors, Cholesky factor of ``Lambda_u`` (None: no user term) and item variances."""
    scores = ranker._catalogue_scores(user, x)  # refreshes the cached item vectors
    n = len(ranker._catalogue)
    cat = ranker._catalogue
    vectors = ranker._cache.vectors[:n].detach().cpu().numpy()
    shown, positives = cat.shown[:n], cat.positives[:n]
    tau2 = item_prior(shown, positives)
    user_var = tau2 if prior_var is None else prior_var
    chol = None
    if user_var > 0:
        chol = np.linalg.cholesky(user_posterior(vectors, scores, ranker._evidence.get(user, {}), shown, user_var))
    return scores, vectors, chol, item_variance(shown, positives, tau2)


def _check_prior_var(prior_var: float | None) -> None:
    if prior_var is not None and not prior_var > 0:
        raise ValueError(f"prior_var must be None or > 0, got {prior_var!r}")


class ThompsonSampling(Greedy):
    """The top ``k`` of scores drawn from the ranker's posterior (Thompson sampling).

    For :class:`~river_torchrec.reco.TwoTowerRanker` the posterior is the Bayesian last
    layer of the module docstring: one draw of the user's vector from
    ``N(u_hat, Lambda_u^-1)`` per call and one draw of each item's logit offset from
    ``N(0, sigma_j^2)``, held until the item gets new evidence (:func:`held_normals`). For
    :class:`~river_torchrec.reco.CTRRanker` it is a Laplace approximation of each item's
    bias, for :class:`~river_torchrec.reco.MostPopular` a Gamma posterior of each item's
    rate (the rankers' own ``_sampled_scores``).

    Parameters
    ----------
    scale
        Multiplies the posterior standard deviation: 1 is the posterior, above 1 explores
        more, 0 is greedy.
    prior_var
        Prior variance of the user's part of an average item's logit (two-tower rankers);
        ``None``: the empirical-Bayes between-item variance ``tau^2``.
    hold
        Hold each item's offset draw until the item gets new evidence, so that every user
        sees the same ordering of the cold items until one of them is shown (``False``: a
        fresh draw per call, the textbook version). In ``bench_exploration.py``'s development
        runs (3,000 rounds, one seed) the two were within noise of each other (clicks 0.80x
        vs 0.84x greedy's in ``stable``, 0.74x vs 0.75x in ``repeat``).

    Examples
    --------
    >>> ThompsonSampling(scale=0.5)
    ThompsonSampling(scale=0.5)

    """

    name = "thompson"

    def __init__(self, scale: float = 1.0, prior_var: float | None = None, hold: bool = True) -> None:
        if not scale >= 0:
            raise ValueError(f"scale must be >= 0, got {scale!r}")
        _check_prior_var(prior_var)
        self.scale = scale
        self.prior_var = prior_var
        self.hold = bool(hold)

    def scores(self, ranker: Any, user: Any, x: dict | None, rng: np.random.Generator) -> np.ndarray:
        """One draw of every item's score from the posterior."""
        if not _has_vectors(ranker):
            return ranker._sampled_scores(user, x, rng, self.scale)
        scores, vectors, chol, item_var = _posterior(ranker, user, x, self.prior_var)
        # The user draw comes first and always, so the generator's stream does not depend on `hold`.
        e = rng.standard_normal(vectors.shape[1])
        if self.scale == 0:
            return scores
        noise = np.zeros(len(scores))
        if chol is not None:
            # z ~ N(0, Lambda_u^-1): solve L^T z = e with L L^T = Lambda_u.
            noise += vectors @ np.linalg.solve(chol.T, e).astype(vectors.dtype)
        if item_var.any():
            if self.hold:
                eps = held_normals(int(getattr(ranker, "seed", 0) or 0), ranker._catalogue.shown[: len(scores)])
            else:
                eps = rng.standard_normal(len(scores))
            noise += np.sqrt(item_var) * eps
        return scores + self.scale * noise

    def __repr__(self) -> str:
        extra = "" if self.prior_var is None else f", prior_var={self.prior_var!r}"
        extra += "" if self.hold else ", hold=False"
        return f"ThompsonSampling(scale={self.scale!r}{extra})"


class UpperConfidenceBound(Greedy):
    """The top ``k`` of ``score + alpha * posterior standard deviation`` (LinUCB-style).

    The posterior is :class:`ThompsonSampling`'s: for a two-tower ranker the standard
    deviation of item ``j``'s logit is ``sqrt(v_j^T Lambda_u^-1 v_j + sigma_j^2)``; for
    :class:`~river_torchrec.reco.CTRRanker` that of its bias, ``1 / sqrt(1 + n_j / 4)``;
    for :class:`~river_torchrec.reco.MostPopular` that of its Gamma posterior,
    ``sqrt(1 + positives_j)``. Deterministic: the same model state gives the same list.

    Parameters
    ----------
    alpha
        Width of the bound in standard deviations (0 is greedy). The default, 0.5, did
        better than 1 in ``bench_exploration.py``'s development runs (3,000 rounds).
    prior_var
        As for :class:`ThompsonSampling`.

    Examples
    --------
    >>> UpperConfidenceBound(alpha=1.0)
    UpperConfidenceBound(alpha=1.0)

    """

    name = "ucb"

    def __init__(self, alpha: float = 0.5, prior_var: float | None = None) -> None:
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        _check_prior_var(prior_var)
        self.alpha = alpha
        self.prior_var = prior_var

    def std(self, ranker: Any, user: Any, x: dict | None) -> tuple[np.ndarray, np.ndarray]:
        """The model's scores and their posterior standard deviations, both ``[N]``."""
        cat = ranker._catalogue
        n = len(cat)
        if _has_vectors(ranker):
            from scipy.linalg import solve_triangular

            scores, vectors, chol, item_var = _posterior(ranker, user, x, self.prior_var)
            var = item_var.copy()
            if chol is not None:
                # v^T (L L^T)^-1 v = |L^-1 v|^2, for all items in one triangular solve.
                half = solve_triangular(chol, vectors.T.astype(np.float64), lower=True)
                var += np.einsum("ij,ij->j", half, half)
            return scores, np.sqrt(var)
        scores = np.asarray(ranker._catalogue_scores(user, x), dtype=np.float64)
        if hasattr(ranker, "model_"):
            return scores, 1.0 / np.sqrt(1.0 + cat.shown[:n] / 4.0)
        return scores, np.sqrt(1.0 + cat.positives[:n])

    def scores(self, ranker: Any, user: Any, x: dict | None, rng: np.random.Generator) -> np.ndarray:
        """The optimistic scores ``score + alpha * std``."""
        scores, std = self.std(ranker, user, x)
        return scores + self.alpha * std

    def __repr__(self) -> str:
        extra = "" if self.prior_var is None else f", prior_var={self.prior_var!r}"
        return f"UpperConfidenceBound(alpha={self.alpha!r}{extra})"


_NAMES = {"greedy": Greedy, "epsilon": EpsilonGreedy, "thompson": ThompsonSampling}


def make_policy(explore: str | Greedy | None) -> Greedy:
    """A policy from a name (``"greedy"``, ``"epsilon"``, ``"thompson"``), a policy, or None (greedy).

    ``UpperConfidenceBound`` is passed as an object (``explore=UpperConfidenceBound(alpha=1)``).
    """
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
