"""A synthetic click stream with a known, optionally drifting, ground-truth click model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
from river.datasets import base

__all__ = ["SyntheticCTR"]

Drift = Literal["abrupt", "gradual", "recurring"]

CATEGORICAL = (
    "user_id",
    "item_id",
    "item_category",
    "user_segment",
    "device",
    "site",
    "ad_position",
    "hour",
)
NUMERIC = ("price", "user_activity", "item_age_days", "position_score")

SEGMENTS = (
    "casual",
    "bargain_hunter",
    "family",
    "student",
    "professional",
    "tech_enthusiast",
    "retired",
    "power_user",
)
DEVICES = ("mobile", "desktop", "tablet")
AD_POSITIONS = ("top", "inline", "sidebar", "bottom", "interstitial")

_N_CATEGORIES = 20
_N_SITES = 30
_N_FACTORS = 8
_N_DAYS = 14  # simulated calendar span of the stream, whatever n_events is
_FRESH_SHARE = 0.1  # share of impressions that promote recently added items
_CHUNK = 8192
_CALIBRATION_SIZE = 20_000


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class SyntheticCTR(base.SyntheticDataset):
    """A realistic synthetic click stream whose true click probabilities are known.

    Each event is an ad impression: a user (from a Zipf-popular pool that keeps growing, as
    new users sign up during the stream) sees an item (likewise Zipf-popular, with newly
    added items getting a share of promoted exposure) on some site, device, ad position and
    hour of day. Whether it is clicked is drawn from a hidden logistic model with

    * first-order effects for every user, item, category, segment, device, site, position and
      hour, plus smooth effects of the numeric features (cheap items, active users, fresh
      items and prominent slots are clicked more);
    * pairwise interactions that a linear model on one-hot features cannot represent:
      `user_segment` × `item_category`, `device` × `ad_position`, and hidden user and item
      latent vectors whose dot product is added to the logit (the structure a factorization
      machine or two-tower model is built to recover).

    An intercept is calibrated once, at construction, on a deterministic sample of 20,000
    events, so that the click rate is about `positive_rate`. The calibration is done per
    concept and over the whole stream, so drift changes *who* clicks, not how often.

    The stream has `8 + n_numeric` features:

    * categorical (`str`): `user_id` (`"u17"`), `item_id` (`"i4"`), `item_category`
      (`"cat03"`), `user_segment`, `device`, `site` (`"site07"`), `ad_position`, `hour`
      (`"00"`..`"23"`, following a daily traffic cycle over a simulated 14 days);
    * numeric (`float`): `price` (log-normal, heavy-tailed), `user_activity` (sessions per
      week, heavy-tailed), `item_age_days` and `position_score` (in [0, 1], tied to
      `ad_position`), in that order, the first `n_numeric` of them being shown; beyond four,
      `noise_0`, `noise_1`, ... are pure standard-normal noise. Hidden numeric features still
      drive the clicks: they play the part of signals the logs did not record.

    Ids are numbered in order of arrival, so the id space grows over the stream, like the
    auto-increment keys of a real product.

    **Drift.** With `drift="abrupt"`, the item effects and all interaction weights (segment ×
    category, device × position, item latent vectors) are redrawn at event `drift_at`. With
    `"gradual"`, the click probability moves linearly from the old concept to the new one over
    `drift_width` events centred on `drift_at`. With `"recurring"`, the two concepts swap
    every `drift_at` events. `drift_points` lists the event indices where the concept changes
    (the centre, for gradual drift). The features themselves never depend on `drift`: the
    same seed gives the same `x` stream with or without drift.

    **Ground truth.** Iterating yields `(x, y)` pairs as every river dataset does. To compare
    a model against the best achievable score, `iter_with_proba()` yields `(x, y, p)` where
    `p` is the true click probability of that event (what `y` was drawn from; an oracle that
    also knows the hidden numeric features and the current concept), and `bayes_logloss()`
    returns the mean log loss of those probabilities over the whole stream, computed without
    building any dict.

    The stream is deterministic given `seed` (iterating twice gives the same events) and
    generated in vectorised chunks; 50,000 events take a fraction of a second.

    Parameters
    ----------
    n_events
        Number of events in the stream.
    n_users
        Total number of users, of which `1 - new_id_fraction` exist from the start.
    n_items
        Total number of items, likewise.
    drift
        `None`, `"abrupt"`, `"gradual"` or `"recurring"`.
    positive_rate
        Target click rate, in (0, 1).
    seed
        Random seed. With `None`, a fresh seed is drawn once, at construction.
    drift_at
        Event index of the drift (abrupt, gradual), or the period (recurring). Defaults to
        `n_events // 2`, or `n_events // 4` for recurring drift, so that the first concept
        comes back within the stream.
    drift_width
        Width, in events, of a gradual drift. Defaults to `n_events // 10`.
    n_numeric
        Number of numeric features shown in `x`.
    interaction_scale
        Multiplier of all interaction weights: `0` gives a purely first-order (logistic
        regression-friendly) click model, larger values make interactions dominate.
    popularity_exponent
        Exponent of the Zipf popularity of users, items and sites.
    new_id_fraction
        Fraction of the users and of the items that arrive during the stream, at uniformly
        random times, rather than existing from the start.

    Attributes
    ----------
    drift_points
        Event indices where the concept changes, sorted.
    feature_names
        The keys of every `x`, in order.
    intercepts
        The calibrated intercept of each concept.

    Examples
    --------

    >>> from river_torchrec.datasets import SyntheticCTR

    >>> dataset = SyntheticCTR(n_events=1_000, positive_rate=0.1, seed=42)
    >>> dataset.n_features
    12

    >>> for x, y in dataset.take(1):
    ...     print(x, y)
    {'user_id': 'u47', 'item_id': 'i182', 'item_category': 'cat01', 'user_segment': 'casual',
     'device': 'mobile', 'site': 'site05', 'ad_position': 'sidebar', 'hour': '00',
     'price': 19.02, 'user_activity': 1.774, 'item_age_days': 18.913,
     'position_score': 0.4869} False

    The same events, with the probability each label was drawn from:

    >>> for x, y, p in dataset.iter_with_proba():
    ...     print(x["item_id"], y, round(p, 4))
    ...     break
    i182 False 0.0158

    The click rate is calibrated, and the oracle scores better than predicting that rate:

    >>> dataset = SyntheticCTR(n_events=20_000, positive_rate=0.1, seed=1)
    >>> ys = [y for _, y in dataset]
    >>> round(sum(ys) / len(ys), 2)
    0.1
    >>> dataset.bayes_logloss() < 0.325  # log loss of the constant 0.1 predictor
    True

    Drift points are known in advance:

    >>> SyntheticCTR(n_events=10_000, drift="recurring", drift_at=2_500).drift_points
    [2500, 5000, 7500]

    """

    def __init__(
        self,
        n_events: int = 50_000,
        n_users: int = 1_000,
        n_items: int = 500,
        drift: Drift | None = None,
        positive_rate: float = 0.1,
        seed: int | None = 42,
        drift_at: int | None = None,
        drift_width: int | None = None,
        n_numeric: int = 4,
        interaction_scale: float = 1.0,
        popularity_exponent: float = 1.1,
        new_id_fraction: float = 0.5,
    ) -> None:
        if n_events < 1:
            raise ValueError(f"n_events must be positive, got {n_events}")
        if n_users < 1 or n_items < 1:
            raise ValueError("n_users and n_items must be positive")
        if drift not in (None, "abrupt", "gradual", "recurring"):
            raise ValueError(
                f"drift must be None, 'abrupt', 'gradual' or 'recurring', got {drift!r}"
            )
        if not 0.0 < positive_rate < 1.0:
            raise ValueError(f"positive_rate must be in (0, 1), got {positive_rate}")
        if n_numeric < 0:
            raise ValueError(f"n_numeric must be non-negative, got {n_numeric}")
        if not 0.0 <= new_id_fraction < 1.0:
            raise ValueError(f"new_id_fraction must be in [0, 1), got {new_id_fraction}")
        if popularity_exponent < 0:
            raise ValueError("popularity_exponent must be non-negative")

        if drift is not None:
            if drift_at is None:
                drift_at = n_events // 4 if drift == "recurring" else n_events // 2
            if not 0 < drift_at < n_events:
                raise ValueError(f"drift_at must be in (0, n_events), got {drift_at}")
        if drift == "gradual":
            if drift_width is None:
                drift_width = max(1, n_events // 10)
            if drift_width < 1:
                raise ValueError(f"drift_width must be positive, got {drift_width}")

        super().__init__(
            task=base.BINARY_CLF,
            n_features=len(CATEGORICAL) + n_numeric,
            n_samples=n_events,
            n_classes=2,
            n_outputs=1,
        )
        self.n_events = n_events
        self.n_users = n_users
        self.n_items = n_items
        self.drift = drift
        self.positive_rate = positive_rate
        self.seed = seed
        self.drift_at = drift_at
        self.drift_width = drift_width
        self.n_numeric = n_numeric
        self.interaction_scale = interaction_scale
        self.popularity_exponent = popularity_exponent
        self.new_id_fraction = new_id_fraction

        self.drift_points: list[int] = self._drift_points()
        self.feature_names: list[str] = [*CATEGORICAL, *self._numeric_names()]

        # Independent child streams, so that e.g. n_numeric or drift never shift the
        # random draws behind the other features.
        root = np.random.SeedSequence(seed)
        world_ss, calib_ss, self._stream_ss, self._noise_ss = root.spawn(4)
        self._build_world(np.random.default_rng(world_ss))
        self.intercepts: tuple[float, float] = self._calibrate(np.random.default_rng(calib_ss))

    # ------------------------------------------------------------------ public API

    def __iter__(self) -> Iterator[tuple[dict[str, str | float], bool]]:
        for x, y, _ in self.iter_with_proba():
            yield x, y

    def iter_with_proba(self) -> Iterator[tuple[dict[str, str | float], bool, float]]:
        """Iterate over `(x, y, p)` triples, `p` being the true click probability of `x`.

        The `(x, y)` pairs are exactly those of iterating over the dataset itself.

        """
        names = self.feature_names
        for cols, y, p in self._chunks():
            values = self._columns_as_lists(cols)
            for row, yi, pi in zip(zip(*values), y.tolist(), p.tolist()):
                yield dict(zip(names, row)), yi, pi

    def bayes_logloss(self) -> float:
        """Mean log loss of the true click probabilities over the whole stream.

        No model can do better in expectation, so this is the floor to compare a model's
        progressive log loss with.

        """
        total = 0.0
        for _, y, p in self._chunks():
            p = np.clip(p, 1e-15, 1 - 1e-15)
            total -= float(np.where(y, np.log(p), np.log1p(-p)).sum())
        return total / self.n_events

    # ------------------------------------------------------------------ the hidden world

    def _numeric_names(self) -> list[str]:
        extra = [f"noise_{j}" for j in range(max(0, self.n_numeric - len(NUMERIC)))]
        return [*NUMERIC, *extra][: self.n_numeric]

    def _drift_points(self) -> list[int]:
        if self.drift is None:
            return []
        assert self.drift_at is not None
        if self.drift == "recurring":
            return list(range(self.drift_at, self.n_events, self.drift_at))
        return [self.drift_at]

    def _concept_weight(self, t: np.ndarray) -> np.ndarray:
        """Weight of the second concept at event indices `t` (0 = first concept only)."""
        if self.drift is None:
            return np.zeros(len(t))
        if self.drift == "abrupt":
            return (t >= self.drift_at).astype(float)
        if self.drift == "gradual":
            start = self.drift_at - self.drift_width / 2
            return np.clip((t - start + 0.5) / self.drift_width, 0.0, 1.0)
        return ((t // self.drift_at) % 2).astype(float)

    def _zipf_weights(self, n: int, rng: np.random.Generator) -> np.ndarray:
        # Popularity ranks are shuffled against arrival order: a newcomer can become a hit.
        ranks = rng.permutation(n) + 1.0
        return ranks ** (-self.popularity_exponent)

    def _arrivals(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Event index at which each id (in id order) becomes available."""
        n_initial = max(1, n - int(round(n * self.new_id_fraction)))
        later = np.sort(rng.integers(0, self.n_events, size=n - n_initial))
        return np.concatenate([np.zeros(n_initial, dtype=np.int64), later])

    def _build_world(self, rng: np.random.Generator) -> None:
        s = self.interaction_scale
        nu, ni = self.n_users, self.n_items

        # Calendar: invert a daily traffic curve (peak in the evening, trough at night) so
        # that event index -> hours since start, and the hour feature cycles realistically.
        grid = np.linspace(0.0, 24.0 * _N_DAYS, 24 * _N_DAYS * 12 + 1)
        intensity = 1.0 + 0.7 * np.sin(2 * np.pi * (grid % 24 - 13.0) / 24.0)
        cum = np.concatenate([[0.0], np.cumsum((intensity[1:] + intensity[:-1]) / 2)])
        self._clock_grid, self._clock_cum = grid, cum / cum[-1]

        # Users.
        self._user_arrival = self._arrivals(nu, rng)
        self._user_cumw = np.cumsum(self._zipf_weights(nu, rng))
        self._user_segment = rng.choice(
            len(SEGMENTS), size=nu, p=[0.25, 0.15, 0.15, 0.12, 0.12, 0.08, 0.08, 0.05]
        )
        self._user_device = rng.choice(len(DEVICES), size=nu, p=[0.6, 0.3, 0.1])
        self._user_activity = np.minimum(2.0 * (rng.pareto(1.5, size=nu) + 1.0), 500.0)
        self._user_bias = rng.normal(0.0, 0.4, size=nu)
        factor_sd = _N_FACTORS**-0.25  # dot products of two such vectors have unit sd
        self._user_factors = rng.normal(0.0, factor_sd, size=(nu, _N_FACTORS))

        # Items.
        self._item_arrival = self._arrivals(ni, rng)
        self._item_cumw = np.cumsum(self._zipf_weights(ni, rng))
        cat_w = (np.arange(_N_CATEGORIES) + 1.0) ** -0.8
        self._item_category = rng.choice(_N_CATEGORIES, size=ni, p=cat_w / cat_w.sum())
        category_price = rng.normal(3.0, 0.6, size=_N_CATEGORIES)
        self._item_log_price = category_price[self._item_category] + rng.normal(0.0, 0.6, ni)
        # Items present from the start already have a shelf life (in days).
        self._item_initial_age = np.where(
            self._item_arrival == 0, rng.exponential(60.0, size=ni), 0.0
        )

        # Context.
        site_cumw = np.cumsum(self._zipf_weights(_N_SITES, rng))
        self._site_p = np.diff(site_cumw, prepend=0.0) / site_cumw[-1]
        self._position_p = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
        self._position_base = np.array([0.85, 0.65, 0.35, 0.45, 0.75])

        # First-order effects shared by both concepts.
        self._category_bias = rng.normal(0.0, 0.3, size=_N_CATEGORIES)
        self._segment_bias = rng.normal(0.0, 0.2, size=len(SEGMENTS))
        self._device_bias = np.array([0.0, -0.15, 0.1]) + rng.normal(0.0, 0.05, 3)
        self._site_bias = rng.normal(0.0, 0.3, size=_N_SITES)
        self._position_bias = rng.normal(0.0, 0.2, size=len(AD_POSITIONS))
        hours = np.arange(24)
        self._hour_bias = 0.25 * np.sin(2 * np.pi * (hours - 15) / 24) + rng.normal(0, 0.05, 24)

        # What drift redraws: item effects and every interaction weight. Both concepts are
        # drawn even without drift so the first concept is the same whatever `drift` is.
        self._item_bias = rng.normal(0.0, 0.5, size=(2, ni))
        self._item_factors = rng.normal(0.0, factor_sd, size=(2, ni, _N_FACTORS))
        self._seg_cat = s * rng.normal(0.0, 0.8, size=(2, len(SEGMENTS), _N_CATEGORIES))
        self._dev_pos = s * rng.normal(0.0, 0.5, size=(2, len(DEVICES), len(AD_POSITIONS)))

    def _sample_ids(
        self, t: np.ndarray, arrival: np.ndarray, cumw: np.ndarray, u: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ids drawn for events `t` from uniforms `u`, and how many ids were available."""
        # Only ids that have arrived by event t are eligible; they form a prefix of the id
        # range, so Zipf sampling is a search in the prefix of the cumulative weights.
        n_avail = np.searchsorted(arrival, t, side="right")
        idx = np.searchsorted(cumw, u * cumw[n_avail - 1], side="right")
        return np.minimum(idx, n_avail - 1), n_avail

    def _draw(self, t: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Features (as indices and floats) of events at indices `t`."""
        n = len(t)
        hours_elapsed = np.interp((t + 0.5) / self.n_events, self._clock_cum, self._clock_grid)

        user, _ = self._sample_ids(t, self._user_arrival, self._user_cumw, rng.random(n))
        item, n_items = self._sample_ids(t, self._item_arrival, self._item_cumw, rng.random(n))
        # Promoted exposure for the most recently added items, as feeds do for new content.
        fresh = rng.random(n) < _FRESH_SHARE
        window = np.minimum(n_items, max(1, self.n_items // 20))
        fresh_item = n_items - 1 - (rng.random(n) * window).astype(np.int64)
        item = np.where(fresh, fresh_item, item)

        device = np.where(
            rng.random(n) < 0.85, self._user_device[user], rng.integers(0, len(DEVICES), n)
        )
        site = rng.choice(_N_SITES, size=n, p=self._site_p)
        position = rng.choice(len(AD_POSITIONS), size=n, p=self._position_p)

        arrival_hours = np.interp(
            (self._item_arrival[item] + 0.5) / self.n_events, self._clock_cum, self._clock_grid
        )
        age = self._item_initial_age[item] + np.maximum(hours_elapsed - arrival_hours, 0) / 24
        return {
            "user": user,
            "item": item,
            "category": self._item_category[item],
            "segment": self._user_segment[user],
            "device": device,
            "site": site,
            "position": position,
            "hour": (hours_elapsed.astype(np.int64)) % 24,
            # Occasional discounts on the list price.
            "price": np.exp(self._item_log_price[item]) * rng.uniform(0.8, 1.0, n),
            "user_activity": self._user_activity[user] * rng.lognormal(0.0, 0.2, n),
            "item_age_days": age,
            "position_score": np.clip(
                self._position_base[position] + rng.normal(0.0, 0.08, n), 0.0, 1.0
            ),
        }

    def _logits(self, f: dict[str, np.ndarray], concept: int) -> np.ndarray:
        """Click logit of each event under `concept`, without the intercept."""
        user, item = f["user"], f["item"]
        logit = (
            self._user_bias[user]
            + self._item_bias[concept, item]
            + self._category_bias[f["category"]]
            + self._segment_bias[f["segment"]]
            + self._device_bias[f["device"]]
            + self._site_bias[f["site"]]
            + self._position_bias[f["position"]]
            + self._hour_bias[f["hour"]]
            # Numeric effects on the log scale, where these heavy-tailed quantities act.
            - 0.5 * (np.log(f["price"]) - 3.0)
            + 0.3 * (np.log1p(f["user_activity"]) - 1.7)
            - 0.2 * (np.log1p(f["item_age_days"]) - 2.5)
            + 1.0 * (f["position_score"] - 0.6)
        )
        logit += self._seg_cat[concept, f["segment"], f["category"]]
        logit += self._dev_pos[concept, f["device"], f["position"]]
        dot = np.einsum("ij,ij->i", self._user_factors[user], self._item_factors[concept, item])
        logit += self.interaction_scale * dot
        return logit

    def _calibrate(self, rng: np.random.Generator) -> tuple[float, float]:
        """Intercept of each concept giving a mean click probability of `positive_rate`."""
        t = np.linspace(0, self.n_events - 1, _CALIBRATION_SIZE).astype(np.int64)
        features = self._draw(t, rng)
        intercepts = []
        for concept in (0, 1):
            logits = self._logits(features, concept)
            # The mean probability is increasing in the intercept: bisection converges surely.
            lo, hi = -30.0, 30.0
            for _ in range(60):
                mid = (lo + hi) / 2
                if _sigmoid(logits + mid).mean() < self.positive_rate:
                    lo = mid
                else:
                    hi = mid
            intercepts.append((lo + hi) / 2)
        return intercepts[0], intercepts[1]

    # ------------------------------------------------------------------ streaming

    def _chunks(self) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]]:
        """Yield `(features, y, p)` arrays, chunk by chunk; fresh generators every time."""
        rng = np.random.default_rng(self._stream_ss)
        noise_rng = np.random.default_rng(self._noise_ss)
        n_noise = max(0, self.n_numeric - len(NUMERIC))
        b0, b1 = self.intercepts
        for start in range(0, self.n_events, _CHUNK):
            t = np.arange(start, min(start + _CHUNK, self.n_events))
            f = self._draw(t, rng)
            w = self._concept_weight(t)
            p = (1 - w) * _sigmoid(self._logits(f, 0) + b0)
            if w.any():
                p += w * _sigmoid(self._logits(f, 1) + b1)
            y = rng.random(len(t)) < p
            if n_noise:
                f["noise"] = noise_rng.standard_normal((len(t), n_noise))
            yield f, y, p

    def _columns_as_lists(self, f: dict[str, np.ndarray]) -> list[list]:
        """Columns in `feature_names` order, as Python str/float lists."""
        cols: list[list] = [
            [f"u{i}" for i in f["user"].tolist()],
            [f"i{i}" for i in f["item"].tolist()],
            [_CATEGORY_NAMES[i] for i in f["category"].tolist()],
            [SEGMENTS[i] for i in f["segment"].tolist()],
            [DEVICES[i] for i in f["device"].tolist()],
            [_SITE_NAMES[i] for i in f["site"].tolist()],
            [AD_POSITIONS[i] for i in f["position"].tolist()],
            [_HOUR_NAMES[i] for i in f["hour"].tolist()],
        ]
        numeric = [
            np.round(f["price"], 2),
            np.round(f["user_activity"], 3),
            np.round(f["item_age_days"], 3),
            np.round(f["position_score"], 4),
        ]
        if "noise" in f:
            numeric.extend(np.round(f["noise"], 4).T)
        cols.extend(col.tolist() for col in numeric[: self.n_numeric])
        return cols


_CATEGORY_NAMES = tuple(f"cat{j:02d}" for j in range(_N_CATEGORIES))
_SITE_NAMES = tuple(f"site{j:02d}" for j in range(_N_SITES))
_HOUR_NAMES = tuple(f"{h:02d}" for h in range(24))
