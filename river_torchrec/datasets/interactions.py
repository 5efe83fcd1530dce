"""A synthetic stream of user-item interactions whose Bayes-optimal ranking is known."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import numpy as np

__all__ = ["OracleRanker", "SyntheticInteractions"]

_N_SEGMENTS = 8
_N_GENRES = 12
#: Keys of `x` describing the user and the item (with `side_features`).
USER_FEATURES = ("user_segment", "user_age")
ITEM_FEATURES = ("item_genre", "item_year")


class SyntheticInteractions:
    """Users with latent tastes choosing items, with popularity skew and a taste shift.

    Every user `u` has a hidden taste vector `θ_u` and every item `i` a hidden attribute
    vector `φ_i` (`n_factors` dimensions, entries normal with variance `n_factors ** -0.5`,
    so `θ_u · φ_i` has unit variance). At each event an active user (users are Zipf-active
    with exponent `activity_exponent`) picks one item among those they have not picked yet,
    with probability proportional to `exp(s(u, i))`, where

        s(u, i) = taste_strength * θ_u · φ_i + log w_i

    and `w_i` is the item's Zipf popularity (exponent `popularity_exponent`, popularity ranks
    shuffled against item ids). At event `shift_at`, a random `shift_fraction` of the users
    get a fresh taste vector: their old history stops predicting what they choose next, the
    adaptation a recommender needs after a change of season or of life.

    Each event is `(user, item, y, x)`: `user` (`"u17"`), `item` (`"i4"`), `y = True` and,
    with `side_features`, `x` holding features that correlate with the hidden vectors (as
    demographics and item metadata do): `user_segment` (`"s0"`..`"s7"`, the user's nearest
    of 8 taste prototypes, computed from the taste before the shift, so it is stale after
    it), `user_age` (a number tied to the first taste factor), `item_genre` (`"g0"`..`"g11"`,
    nearest of 12 attribute prototypes) and `item_year` (tied to the second attribute
    factor). With `n_negatives > 0`, each choice is followed by that many shown-but-not-
    clicked events `(user, other_item, False, x)`, the other items drawn by popularity.

    **Oracle.** Since the choice probability is increasing in `s(u, i)`, ranking any
    candidate set by `s` at the current event is the Bayes-optimal ranking.
    `preference(user, items, t)` returns `s`, `top_k(user, k, t)` the best `k` items, and
    `oracle()` a river ranker doing this in test-then-learn order (it counts the events it
    learns to know the time), to put as the ceiling row of a ranking benchmark.

    The stream is deterministic given `seed` and is regenerated on each iteration.

    Parameters
    ----------
    n_events
        Number of positive interactions (choices).
    n_users
        Number of users.
    n_items
        Number of items.
    n_factors
        Dimension of the hidden vectors.
    taste_strength
        Weight of the personal taste term: `0` makes popularity the whole story.
    popularity_exponent
        Zipf exponent of item popularity.
    activity_exponent
        Zipf exponent of user activity.
    shift_at
        Event index of the taste shift; `None` for `n_events // 2`; `-1` for no shift.
    shift_fraction
        Fraction of the users whose taste is redrawn at the shift.
    side_features
        Whether `x` carries the user and item side features (otherwise `x` is `{}`).
    n_negatives
        Shown-but-not-clicked events after each choice.
    seed
        Random seed.

    Attributes
    ----------
    shift_at
        The event index of the shift (counting choices and negatives alike), or `None`.
    user_features
        The keys of `x` describing the user (empty without `side_features`).
    item_features
        The keys of `x` describing the event's item: pass them to
        `evaluate_ranking(item_features=...)` so that rankers do not see the chosen item's
        features in the context they rank with.

    Examples
    --------

    >>> from river_torchrec.datasets import SyntheticInteractions

    >>> stream = SyntheticInteractions(n_events=1_000, n_users=50, n_items=40, seed=1)
    >>> for user, item, y, x in stream:
    ...     print(user, item, y, x)
    ...     break
    u20 i27 True {'user_segment': 's0', 'user_age': 38.0, 'item_genre': 'g10',
     'item_year': 2010.0}

    The oracle's preferred items for that user, before and after the shift:

    >>> stream.top_k("u20", k=3, t=0), stream.top_k("u20", k=3, t=stream.shift_at)
    (['i27', 'i0', 'i24'], ['i26', 'i9', 'i22'])

    """

    def __init__(
        self,
        n_events: int = 20_000,
        n_users: int = 1_000,
        n_items: int = 500,
        n_factors: int = 8,
        taste_strength: float = 2.5,
        popularity_exponent: float = 0.8,
        activity_exponent: float = 0.5,
        shift_at: int | None = None,
        shift_fraction: float = 1.0,
        side_features: bool = True,
        n_negatives: int = 0,
        seed: int | None = 42,
    ) -> None:
        for name, value in (("n_events", n_events), ("n_users", n_users), ("n_items", n_items),
                            ("n_factors", n_factors)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if n_items < 2:
            raise ValueError(f"n_items must be at least 2, got {n_items}")
        if not 0.0 <= shift_fraction <= 1.0:
            raise ValueError(f"shift_fraction must be in [0, 1], got {shift_fraction}")
        if not isinstance(n_negatives, int) or not 0 <= n_negatives < n_items:
            raise ValueError(f"n_negatives must be an integer in [0, n_items), got {n_negatives!r}")
        if taste_strength < 0 or popularity_exponent < 0 or activity_exponent < 0:
            raise ValueError("taste_strength and the exponents must be non-negative")
        if shift_at is None:
            shift_at = n_events // 2
        if shift_at != -1 and not 0 < shift_at < n_events:
            raise ValueError(f"shift_at must be in (0, n_events), or -1 for no shift, got {shift_at}")

        self.n_events = n_events
        self.n_users = n_users
        self.n_items = n_items
        self.n_factors = n_factors
        self.taste_strength = taste_strength
        self.popularity_exponent = popularity_exponent
        self.activity_exponent = activity_exponent
        self.shift_fraction = shift_fraction
        self.side_features = side_features
        self.n_negatives = n_negatives
        self.seed = seed
        self.user_features: tuple[str, ...] = USER_FEATURES if side_features else ()
        self.item_features: tuple[str, ...] = ITEM_FEATURES if side_features else ()
        self._shift_choice = None if shift_at == -1 else shift_at
        # Index of the shift in the emitted stream, where every choice brings its negatives.
        self.shift_at: int | None = (
            None if shift_at == -1 else shift_at * (1 + n_negatives)
        )
        world, self._stream_seed = np.random.SeedSequence(seed).spawn(2)
        self._build(np.random.default_rng(world))

    # ------------------------------------------------------------------ the hidden world

    def _build(self, rng: np.random.Generator) -> None:
        nu, ni, f = self.n_users, self.n_items, self.n_factors
        sd = f**-0.25
        self._taste = rng.normal(0.0, sd, size=(nu, f))
        self._taste_after = self._taste.copy()
        moved = rng.random(nu) < self.shift_fraction
        self._taste_after[moved] = rng.normal(0.0, sd, size=(int(moved.sum()), f))
        self._attr = rng.normal(0.0, sd, size=(ni, f))
        self._log_pop = -self.popularity_exponent * np.log(rng.permutation(ni) + 1.0)
        self._pop = np.exp(self._log_pop)
        activity = (rng.permutation(nu) + 1.0) ** -self.activity_exponent
        self._activity_cdf = np.cumsum(activity / activity.sum())
        self._users = [f"u{j}" for j in range(nu)]
        self._items = [f"i{j}" for j in range(ni)]
        self._user_index = {u: j for j, u in enumerate(self._users)}
        self._item_index = {i: j for j, i in enumerate(self._items)}

        segments = np.argmax(self._taste @ rng.normal(size=(f, _N_SEGMENTS)), axis=1)
        genres = np.argmax(self._attr @ rng.normal(size=(f, _N_GENRES)), axis=1)
        ages = np.clip(np.round(35.0 + 12.0 * self._taste[:, 0] / sd), 16, 80)
        years = np.round(2000.0 + 6.0 * self._attr[:, min(1, f - 1)] / sd)
        self._user_x = [
            {"user_segment": f"s{s}", "user_age": float(a)} for s, a in zip(segments, ages)
        ]
        self._item_x = [
            {"item_genre": f"g{g}", "item_year": float(y)} for g, y in zip(genres, years)
        ]

    def _tastes(self, t: int) -> np.ndarray:
        after = self.shift_at is not None and t >= self.shift_at
        return self._taste_after if after else self._taste

    def _context(self, u: int, i: int) -> dict[str, Any]:
        if not self.side_features:
            return {}
        return {**self._user_x[u], **self._item_x[i]}

    # ------------------------------------------------------------------ public API

    def __len__(self) -> int:
        return self.n_events * (1 + self.n_negatives)

    def __iter__(self) -> Iterator[tuple[str, str, bool, dict[str, Any]]]:
        rng = np.random.default_rng(self._stream_seed)
        ni = self.n_items
        consumed = np.zeros((self.n_users, ni), dtype=bool)
        n_consumed = np.zeros(self.n_users, dtype=np.int64)
        strength = self.taste_strength
        t = 0
        for choice in range(self.n_events):
            u = int(np.searchsorted(self._activity_cdf, rng.random(), side="right"))
            u = min(u, self.n_users - 1)
            while n_consumed[u] >= ni - self.n_negatives:  # this user has seen everything
                u = int(rng.integers(self.n_users))
            taste = self._tastes(t)[u]
            logits = strength * (self._attr @ taste) + self._log_pop
            weights = np.exp(logits - logits.max())
            weights[consumed[u]] = 0.0
            cdf = np.cumsum(weights)
            i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            i = min(i, ni - 1)
            consumed[u, i] = True
            n_consumed[u] += 1
            yield self._users[u], self._items[i], True, self._context(u, i)
            t += 1
            if self.n_negatives:
                shown = self._pop.copy()
                shown[consumed[u]] = 0.0
                others = rng.choice(ni, size=self.n_negatives, replace=False, p=shown / shown.sum())
                for j in others.tolist():
                    yield self._users[u], self._items[j], False, self._context(u, j)
                    t += 1

    def preference(self, user: Hashable, items: Iterable[Hashable], t: int) -> np.ndarray:
        """The hidden score `s(user, item)` at event `t`, for each item.

        Unknown users or items raise a `KeyError` naming them.

        """
        try:
            u = self._user_index[user]
            rows = np.fromiter((self._item_index[i] for i in items), dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"unknown user or item {e.args[0]!r}") from None
        taste = self._tastes(t)[u]
        return self.taste_strength * (self._attr[rows] @ taste) + self._log_pop[rows]

    def top_k(
        self, user: Hashable, k: int = 10, t: int = 0, exclude: Iterable[Hashable] = ()
    ) -> list[str]:
        """The `k` items the user most likely picks at event `t`, best first."""
        excluded = set(exclude)
        items = [i for i in self._items if i not in excluded]
        scores = self.preference(user, items, t)
        return [items[j] for j in np.argsort(-scores, kind="stable")[:k]]

    def oracle(self) -> OracleRanker:
        """A ranker that knows the hidden scores, for test-then-learn evaluation."""
        return OracleRanker(self)


class OracleRanker:
    """Ranks by the true preference of a `SyntheticInteractions` stream at the current event.

    Learning does nothing but advance the clock: feed it every event of the stream, in
    order, as `evaluate_ranking` does, and it ranks with the tastes in force at that event.

    """

    def __init__(self, stream: SyntheticInteractions) -> None:
        self.stream = stream
        self.t = 0

    def learn_one(self, user: Hashable, item: Hashable, y: Any, x: dict | None = None) -> None:
        self.t += 1

    def predict_one(self, user: Hashable, item: Hashable, x: dict | None = None) -> float:
        return float(self.stream.preference(user, [item], self.t)[0])

    def rank(self, user: Hashable, items: Iterable[Hashable], x: dict | None = None) -> list:
        items = list(items)
        if not items:
            return []
        scores = self.stream.preference(user, items, self.t)
        return [items[j] for j in np.argsort(-scores, kind="stable")]
