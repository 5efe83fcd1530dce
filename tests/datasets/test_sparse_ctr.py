"""SparseCTR and RepeatVisits: schema, determinism, calibration and the planted signal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from river.datasets import base

from river_torchrec.datasets import RepeatVisits, SparseCTR
from river_torchrec.datasets.sparse_ctr import SPARSE_FIELDS


def test_sparse_schema_and_determinism() -> None:
    dataset = SparseCTR(n_events=3_000, seed=5)
    assert isinstance(dataset, base.SyntheticDataset) and dataset.task == base.BINARY_CLF
    assert dataset.n_features == 16 and dataset.n_samples == 3_000
    events = list(dataset)
    assert events == list(SparseCTR(n_events=3_000, seed=5))
    assert events != list(SparseCTR(n_events=3_000, seed=6))
    names = [name for name, _, _ in SPARSE_FIELDS]
    for x, y in events:
        assert type(y) is bool
        assert list(x) == [*names, "price"]
        assert all(type(x[k]) is str for k in names)
        assert type(x["price"]) is float and x["price"] >= 0


def test_sparse_is_sparse_and_low_rate() -> None:
    dataset = SparseCTR(n_events=10_000, seed=42)
    events = list(dataset.iter_with_proba())
    users = {x["user_id"] for x, _, _ in events}
    ad_groups = {x["ad_group"] for x, _, _ in events}
    # Most users are seen once: about 83% of the events bring a new user.
    assert 0.80 * 10_000 < len(users) < 0.86 * 10_000
    assert 500 < len(ad_groups) <= 900
    assert {x["campaign"] for x, _, _ in events} <= {f"cp{i}" for i in range(150)}
    # The intercept is calibrated on the stream: the mean click probability is the rate.
    p = np.array([q for _, _, q in events])
    assert p.mean() == pytest.approx(0.0435, abs=1e-9)
    assert abs(np.mean([y for _, y, _ in events]) - 0.0435) < 0.006


def test_sparse_signal_lives_only_in_the_planted_fields() -> None:
    dataset = SparseCTR(n_events=5_000, seed=1)
    planted = [name for name, _, signal in SPARSE_FIELDS if signal]
    by_key: dict[tuple, set] = {}
    for x, _, p in dataset.iter_with_proba():
        by_key.setdefault((*(x[k] for k in planted), x["price"]), set()).add(round(p, 12))
    # The noise fields (site_id, app_id, campaign, ...) never change the probability.
    assert all(len(ps) == 1 for ps in by_key.values())
    assert dataset.bayes_logloss() < dataset.constant_logloss() - 0.01


def test_sparse_without_signal_is_a_coin() -> None:
    dataset = SparseCTR(n_events=2_000, signal=0.0, seed=3)
    ps = {p for _, _, p in dataset.iter_with_proba()}
    assert len(ps) == 1 and ps.pop() == pytest.approx(0.0435, abs=1e-9)
    assert dataset.bayes_logloss() == pytest.approx(dataset.constant_logloss(), abs=1e-9)
    # Same features with or without signal: only the labels' probabilities change.
    assert [x for x, _ in dataset] == [x for x, _ in SparseCTR(n_events=2_000, signal=2.0, seed=3)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_events": 0}, "n_events must be positive, got 0"),
        ({"positive_rate": 1.0}, r"positive_rate must be in \(0, 1\), got 1.0"),
        ({"signal": -1.0}, "signal must be finite and >= 0, got -1.0"),
        ({"repeat_fraction": 1.0}, r"repeat_fraction must be in \[0, 1\), got 1.0"),
    ],
)
def test_sparse_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SparseCTR(**kwargs)


def test_repeat_visits_pairs_and_rates() -> None:
    dataset = RepeatVisits(seed=3)
    hot = dataset.hot_pairs()
    assert len(hot) == 29  # a fifth of 12 x 12
    events = list(dataset.iter_with_proba())
    assert len(events) == 12_000 and events == list(RepeatVisits(seed=3).iter_with_proba())
    counts = {True: [0, 0], False: [0, 0]}
    for x, y, p in events:
        pair = (int(x["user_id"][1:]), int(x["item_id"][1:]))
        assert p == (0.5 if pair in hot else 0.05)
        counts[pair in hot][0] += y
        counts[pair in hot][1] += 1
    assert abs(counts[True][0] / counts[True][1] - 0.5) < 0.04
    assert abs(counts[False][0] / counts[False][1] - 0.05) < 0.01
    h = 29 / 144
    entropy = lambda q: -(q * math.log(q) + (1 - q) * math.log(1 - q))  # noqa: E731
    assert dataset.bayes_logloss() == pytest.approx(h * entropy(0.5) + (1 - h) * entropy(0.05), rel=1e-12)
    assert dataset.base_rate_logloss() == pytest.approx(entropy(h * 0.5 + (1 - h) * 0.05), rel=1e-12)
    with pytest.raises(ValueError, match=r"hot_rate must be in \[0, 1\], got 2"):
        RepeatVisits(hot_rate=2)
    with pytest.raises(ValueError, match="n_events, n_users and n_items must be positive, got 10, 0, 12"):
        RepeatVisits(n_events=10, n_users=0)
