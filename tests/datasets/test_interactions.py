"""SyntheticInteractions: determinism, the choice model, the shift, side features, oracle."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from river_torchrec.datasets import SyntheticInteractions
from river_torchrec.evaluate import evaluate_ranking


def test_deterministic_and_seeded():
    a = SyntheticInteractions(n_events=500, n_users=40, n_items=30, seed=3)
    assert list(a) == list(a)
    assert list(a) == list(SyntheticInteractions(n_events=500, n_users=40, n_items=30, seed=3))
    assert list(a) != list(SyntheticInteractions(n_events=500, n_users=40, n_items=30, seed=4))


def test_positives_never_repeat_and_negatives_follow_each_choice():
    stream = SyntheticInteractions(n_events=600, n_users=20, n_items=50, n_negatives=2, seed=1)
    events = list(stream)
    assert len(events) == len(stream) == 1_800
    picked: dict[str, set[str]] = collections.defaultdict(set)
    for n in range(0, len(events), 3):
        (u, i, y, _), *negatives = events[n : n + 3]
        assert y is True and i not in picked[u]
        picked[u].add(i)
        for nu, ni, ny, _ in negatives:
            assert (nu, ny) == (u, False) and ni not in picked[u]
        assert len({i, *(ni for _, ni, _, _ in negatives)}) == 3
    assert stream.shift_at == 300 * 3


def test_choices_follow_popularity_when_taste_is_off():
    # With taste_strength=0, P(item) = w_i / sum(w): with many users each choosing about
    # once, the frequencies must match those weights (within 4 binomial standard errors).
    stream = SyntheticInteractions(n_events=6_000, n_users=100_000, n_items=6,
                                   taste_strength=0.0, activity_exponent=0.0, seed=7)
    counts = collections.Counter(i for _, i, _, _ in stream)
    w = stream._pop / stream._pop.sum()
    for j in range(6):
        p = w[j]
        se = np.sqrt(p * (1 - p) / 6_000)
        assert abs(counts[f"i{j}"] / 6_000 - p) < 4 * se
    # The oracle ranking is then the popularity order, for every user and time.
    order = [f"i{j}" for j in np.argsort(-w)]
    assert stream.top_k("u5", k=6, t=0) == order == stream.top_k("u9", k=6, t=5_000)


def test_preference_closed_form_and_the_shift():
    stream = SyntheticInteractions(n_events=100, n_users=10, n_items=8, seed=2)
    u = stream._user_index["u3"]
    expected = stream.taste_strength * stream._attr @ stream._taste[u] + stream._log_pop
    items = [f"i{j}" for j in range(8)]
    assert np.allclose(stream.preference("u3", items, t=0), expected)
    before = stream.preference("u3", items, t=stream.shift_at - 1)
    after = stream.preference("u3", items, t=stream.shift_at)
    assert np.allclose(before, expected) and not np.allclose(after, expected)
    steady = SyntheticInteractions(n_events=100, n_users=10, n_items=8, shift_fraction=0.0, seed=2)
    assert np.allclose(steady.preference("u3", items, 0), steady.preference("u3", items, 99))
    assert SyntheticInteractions(n_events=100, shift_at=-1).shift_at is None
    assert stream.top_k("u3", k=3, t=0, exclude=["i0"]) == [
        items[j] for j in np.argsort(-expected) if j != 0
    ][:3]
    with pytest.raises(KeyError, match="unknown user or item 'nobody'"):
        stream.preference("nobody", items, 0)


def test_side_features_correlate_with_the_hidden_vectors():
    stream = SyntheticInteractions(n_events=10, n_users=2_000, n_items=2_000, seed=0)
    ages = np.array([x["user_age"] for x in stream._user_x])
    years = np.array([x["item_year"] for x in stream._item_x])
    assert np.corrcoef(ages, stream._taste[:, 0])[0, 1] > 0.95
    assert np.corrcoef(years, stream._attr[:, 1])[0, 1] > 0.95
    # Users of one segment share tastes: their mean taste is far from the overall mean.
    segments = np.array([x["user_segment"] for x in stream._user_x])
    spread = [np.linalg.norm(stream._taste[segments == s].mean(axis=0)) for s in set(segments)]
    assert min(spread) > 0.3
    _, _, _, x = next(iter(stream))
    assert sorted(x) == ["item_genre", "item_year", "user_age", "user_segment"]
    assert next(iter(SyntheticInteractions(n_events=10, side_features=False)))[3] == {}


def test_oracle_beats_popularity_and_adapts_at_the_shift():
    class Popular:
        def __init__(self):
            self.counts = collections.Counter()

        def learn_one(self, user, item, y, x=None):
            self.counts[item] += 1

        def rank(self, user, items, x=None):
            return sorted(items, key=lambda i: -self.counts[i])

    stream = SyntheticInteractions(n_events=4_000, n_users=300, n_items=150, seed=5)
    report = evaluate_ranking(stream, {"oracle": stream.oracle(), "popular": Popular()})
    assert report["oracle"].hit_rate > 2 * report["popular"].hit_rate
    assert report["oracle"].hit_rate > 0.3
    # A frozen oracle (stuck before the shift) is worse after it than the real one.
    frozen = stream.oracle()
    frozen.learn_one = lambda *a, **k: None
    late = evaluate_ranking(stream, {"oracle": stream.oracle(), "frozen": frozen})
    after = late["oracle"].steps >= stream.shift_at
    assert late["oracle"].hit_rate > late["frozen"].hit_rate
    hits = {name: (r.ranks[after] <= 10).mean() for name, r in late.items()}
    assert hits["oracle"] > hits["frozen"] + 0.1
    assert stream.oracle().predict_one("u1", "i1") == pytest.approx(
        float(stream.preference("u1", ["i1"], 0)[0])
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"n_events": 0}, "n_events must be a positive integer, got 0"),
        ({"n_items": 1}, "n_items must be at least 2, got 1"),
        ({"shift_fraction": 1.5}, r"shift_fraction must be in \[0, 1\], got 1.5"),
        ({"n_negatives": 500}, r"n_negatives must be an integer in \[0, n_items\), got 500"),
        ({"shift_at": 0}, r"shift_at must be in \(0, n_events\), or -1 for no shift, got 0"),
        ({"taste_strength": -1.0}, "taste_strength and the exponents must be non-negative"),
    ],
)
def test_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match="^" + message + "$"):
        SyntheticInteractions(**kwargs)
