"""Two generated regimes where online learners fail: sparse low-rate logs and repeat visits.

:class:`SparseCTR` is a display-ad log where nearly every user is new and clicks are rare,
so a learner that gives every id its own weights overfits and can lose to the running
click rate. :class:`RepeatVisits` is the opposite: a handful of users meet a handful of
items again and again, and a learner with steps sized for one-off ids learns too slowly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from river.datasets import base

__all__ = ["SparseCTR", "RepeatVisits"]

#: Categorical fields of :class:`SparseCTR`, in order, with their number of values
#: (``None``: one value per user) and whether they carry planted signal.
SPARSE_FIELDS: tuple[tuple[str, int | None, bool], ...] = (
    ("user_id", None, True),
    ("ad_group", 900, True),
    ("campaign", 150, False),
    ("advertiser", 38, True),
    ("creative_size", 7, False),
    ("site_id", 2_000, False),
    ("site_category", 20, True),
    ("app_id", 1_500, False),
    ("device_type", 4, True),
    ("device_model", 800, False),
    ("os", 5, False),
    ("browser", 8, False),
    ("region", 50, False),
    ("hour", 24, True),
    ("banner_pos", 6, True),
)
_PREFIX = {
    "user_id": "u",
    "ad_group": "ag",
    "campaign": "cp",
    "advertiser": "adv",
    "creative_size": "cs",
    "site_id": "s",
    "site_category": "sc",
    "app_id": "app",
    "device_type": "dt",
    "device_model": "dm",
    "os": "os",
    "browser": "br",
    "region": "r",
    "hour": "h",
    "banner_pos": "bp",
}
#: Standard deviation of the planted logit effects of each signal field (times ``signal``).
_EFFECT_SD = {
    "user_id": 0.8,
    "ad_group": 0.6,
    "advertiser": 0.3,
    "site_category": 0.3,
    "device_type": 0.3,
    "hour": 0.2,
    "banner_pos": 0.4,
}
_PRICE_EFFECT = -0.3  # per standard deviation of log price: dearer ads are clicked less
_INTERACTION_SD = 0.4  # device_type x banner_pos


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _calibrated_intercept(logits: np.ndarray, rate: float) -> float:
    """The intercept ``b`` with ``mean(sigmoid(logits + b)) == rate`` (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if _sigmoid(logits + mid).mean() < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _mean_logloss(p: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


class SparseCTR(base.SyntheticDataset):
    """A sparse, low-rate display-ad log: most users are seen once, clicks are rare.

    Each event is an impression with 15 categorical fields and a price. About
    ``1 - repeat_fraction`` of the impressions come from a user never seen before (with the
    defaults, about 8,300 distinct users in 10,000 events); ad groups (900, Zipf-popular)
    roll up into campaigns and advertisers; sites, apps and device models have long tails
    of rarely seen values. This is the regime where an online learner's per-id weights are
    mostly noise: with ``signal=0`` the clicks do not depend on the features at all, and the
    best one can do is the running click rate.

    With ``signal > 0`` a hidden logistic model plants effects on the user, the ad group,
    the advertiser, the site category, the device type, the hour and the banner position,
    a ``device_type`` x ``banner_pos`` interaction and a price effect, each scaled by
    ``signal``; the other fields (``campaign``, ``site_id``, ``app_id``, ...) are noise. An
    intercept is calibrated on the stream itself so that the mean click probability is
    ``positive_rate`` exactly.

    Parameters
    ----------
    n_events
        Number of events.
    positive_rate
        Mean click probability, in (0, 1).
    signal
        Scale of the planted effects; 0 makes every click an independent coin flip.
    repeat_fraction
        Share of the impressions that come from a returning user (drawn uniformly from the
        users seen so far).
    seed
        Random seed; the stream is deterministic given it.

    Examples
    --------
    >>> from river_torchrec.datasets import SparseCTR
    >>> dataset = SparseCTR(n_events=2_000, seed=1)
    >>> x, y = next(iter(dataset))
    >>> len(x), sorted(x)[:3], type(x["price"]).__name__
    (16, ['ad_group', 'advertiser', 'app_id'], 'float')
    >>> users = {x["user_id"] for x, _ in dataset}
    >>> len(users) > 0.8 * 2_000
    True

    The oracle (the probabilities the labels were drawn from) is known; without signal it is
    the constant rate:

    >>> SparseCTR(n_events=1_000, signal=0.0).bayes_logloss() == SparseCTR(
    ...     n_events=1_000, signal=0.0).constant_logloss()
    True

    """

    def __init__(
        self,
        n_events: int = 10_000,
        positive_rate: float = 0.0435,
        signal: float = 1.0,
        repeat_fraction: float = 0.17,
        seed: int = 42,
    ) -> None:
        if n_events < 1:
            raise ValueError(f"n_events must be positive, got {n_events}")
        if not 0 < positive_rate < 1:
            raise ValueError(f"positive_rate must be in (0, 1), got {positive_rate}")
        if not (math.isfinite(signal) and signal >= 0):
            raise ValueError(f"signal must be finite and >= 0, got {signal}")
        if not 0 <= repeat_fraction < 1:
            raise ValueError(f"repeat_fraction must be in [0, 1), got {repeat_fraction}")
        super().__init__(task=base.BINARY_CLF, n_features=len(SPARSE_FIELDS) + 1, n_samples=n_events)
        self.n_events = n_events
        self.positive_rate = positive_rate
        self.signal = signal
        self.repeat_fraction = repeat_fraction
        self.seed = seed

    def _arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """Codes of every field, the prices, the click probabilities and the labels."""
        n = self.n_events
        rng = np.random.default_rng(self.seed)
        codes: dict[str, np.ndarray] = {}
        returning = rng.random(n) < self.repeat_fraction
        returning[0] = False
        n_before = np.cumsum(~returning) - (~returning)  # users that exist before event t
        codes["user_id"] = np.where(
            returning, np.floor(rng.random(n) * np.maximum(n_before, 1)).astype(np.int64), n_before
        )
        for name, size, _ in SPARSE_FIELDS[1:]:
            if name in ("campaign", "advertiser"):
                continue
            weights = 1.0 / np.arange(1, size + 1) ** (1.0 if size > 30 else 0.5)
            codes[name] = rng.choice(size, size=n, p=weights / weights.sum())
        # Ad groups roll up: 6 ad groups per campaign, 4 campaigns per advertiser.
        codes["campaign"] = codes["ad_group"] // 6
        codes["advertiser"] = codes["campaign"] // 4
        price = np.round(np.exp(rng.normal(0.0, 0.8, size=n)) * 0.5, 3)

        # A separate generator: the planted effects do not shift when the events change.
        effects = np.random.default_rng(self.seed + 1)
        logits = np.zeros(n)
        for name, size, signal in SPARSE_FIELDS:
            if not signal:
                continue
            n_values = int(codes[name].max()) + 1 if size is None else size
            logits += effects.normal(0.0, _EFFECT_SD[name], size=n_values)[codes[name]]
        inter = effects.normal(0.0, _INTERACTION_SD, size=(4, 6))
        logits += inter[codes["device_type"], codes["banner_pos"]]
        log_price = np.log(price + 1e-3)
        logits += _PRICE_EFFECT * (log_price - log_price.mean()) / (log_price.std() + 1e-12)
        logits *= self.signal
        p = _sigmoid(logits + _calibrated_intercept(logits, self.positive_rate))
        y = rng.random(n) < p
        return codes, price, p, y

    def iter_with_proba(self) -> Iterator[tuple[dict[str, str | float], bool, float]]:
        """``(x, y, p)`` with ``p`` the probability ``y`` was drawn from."""
        codes, price, p, y = self._arrays()
        columns = [
            (name, [f"{_PREFIX[name]}{c}" for c in codes[name].tolist()]) for name, _, _ in SPARSE_FIELDS
        ]
        prices = price.tolist()
        for t, (label, proba) in enumerate(zip(y.tolist(), p.tolist())):
            x: dict[str, str | float] = {name: values[t] for name, values in columns}
            x["price"] = prices[t]
            yield x, label, proba

    def __iter__(self) -> Iterator[tuple[dict[str, str | float], bool]]:
        for x, y, _ in self.iter_with_proba():
            yield x, y

    def bayes_logloss(self) -> float:
        """Mean log loss of the true probabilities over the stream."""
        _, _, p, y = self._arrays()
        return _mean_logloss(p, y)

    def constant_logloss(self) -> float:
        """Mean log loss of the constant ``positive_rate``, the best feature-free guess."""
        _, _, _, y = self._arrays()
        return _mean_logloss(np.full(len(y), self.positive_rate), y)


class RepeatVisits(base.SyntheticDataset):
    """A small repeat-visit stream: a few users meet a few items over and over.

    Every event is a uniformly drawn (user, item) pair, ``{"user_id": "u3", "item_id":
    "i7"}``. A share ``hot_fraction`` of the pairs (chosen once, at random) is clicked with
    probability ``hot_rate``, the others with ``cold_rate``: the click rate is a property of
    the pair, not of the user or the item alone, so a model must learn the interaction.
    With the defaults (12 x 12, 29 hot pairs at 0.5, the rest at 0.05, 12,000 events) the
    Bayes-optimal log loss is about 0.298 and the base rate's about 0.406.

    Parameters
    ----------
    n_events
        Number of events.
    n_users
        Number of users.
    n_items
        Number of items.
    hot_fraction
        Share of the pairs with the high click rate.
    hot_rate
        Click probability of a hot pair.
    cold_rate
        Click probability of every other pair.
    seed
        Random seed; the stream is deterministic given it.

    Examples
    --------
    >>> from river_torchrec.datasets import RepeatVisits
    >>> dataset = RepeatVisits(seed=0)
    >>> next(iter(dataset))[0]
    {'user_id': 'u8', 'item_id': 'i8'}
    >>> round(dataset.bayes_logloss(), 3), round(dataset.base_rate_logloss(), 3)
    (0.298, 0.406)

    """

    def __init__(
        self,
        n_events: int = 12_000,
        n_users: int = 12,
        n_items: int = 12,
        hot_fraction: float = 0.2,
        hot_rate: float = 0.5,
        cold_rate: float = 0.05,
        seed: int = 42,
    ) -> None:
        if n_events < 1 or n_users < 1 or n_items < 1:
            raise ValueError(
                f"n_events, n_users and n_items must be positive, got {n_events}, {n_users}, {n_items}"
            )
        for name, value in (("hot_fraction", hot_fraction), ("hot_rate", hot_rate), ("cold_rate", cold_rate)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        super().__init__(task=base.BINARY_CLF, n_features=2, n_samples=n_events)
        self.n_events = n_events
        self.n_users = n_users
        self.n_items = n_items
        self.hot_fraction = hot_fraction
        self.hot_rate = hot_rate
        self.cold_rate = cold_rate
        self.seed = seed

    @property
    def _n_hot(self) -> int:
        return int(round(self.hot_fraction * self.n_users * self.n_items))

    def hot_pairs(self) -> set[tuple[int, int]]:
        """The ``(user, item)`` indices of the pairs clicked at ``hot_rate``."""
        rng = np.random.default_rng(self.seed)
        flat = rng.choice(self.n_users * self.n_items, size=self._n_hot, replace=False)
        return {(int(f) // self.n_items, int(f) % self.n_items) for f in flat}

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        flat = rng.choice(self.n_users * self.n_items, size=self._n_hot, replace=False)
        hot = np.zeros(self.n_users * self.n_items, dtype=bool)
        hot[flat] = True
        users = rng.integers(self.n_users, size=self.n_events)
        items = rng.integers(self.n_items, size=self.n_events)
        p = np.where(hot[users * self.n_items + items], self.hot_rate, self.cold_rate)
        y = rng.random(self.n_events) < p
        return users, items, p, y

    def iter_with_proba(self) -> Iterator[tuple[dict[str, str], bool, float]]:
        """``(x, y, p)`` with ``p`` the probability ``y`` was drawn from."""
        users, items, p, y = self._arrays()
        for u, i, label, proba in zip(users.tolist(), items.tolist(), y.tolist(), p.tolist()):
            yield {"user_id": f"u{u}", "item_id": f"i{i}"}, label, proba

    def __iter__(self) -> Iterator[tuple[dict[str, str], bool]]:
        for x, y, _ in self.iter_with_proba():
            yield x, y

    def bayes_logloss(self) -> float:
        """Expected log loss per event of the true probabilities (the pair rates)."""
        hot = self._n_hot / (self.n_users * self.n_items)
        return hot * _entropy(self.hot_rate) + (1 - hot) * _entropy(self.cold_rate)

    def base_rate_logloss(self) -> float:
        """Expected log loss per event of the overall click rate, which ignores the pair."""
        hot = self._n_hot / (self.n_users * self.n_items)
        return _entropy(hot * self.hot_rate + (1 - hot) * self.cold_rate)


def _entropy(p: float) -> float:
    return -sum(q * math.log(q) for q in (p, 1 - p) if q > 0)
