"""SyntheticCTR: determinism, calibration, drift, ground truth and realism properties."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from river import compose, linear_model, metrics, optim, preprocessing
from river.datasets import base

from river_torchrec.datasets import SyntheticCTR
from river_torchrec.datasets.synthetic import CATEGORICAL, NUMERIC


def _constant_logloss(rate: float) -> float:
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


def test_is_a_river_synthetic_dataset() -> None:
    dataset = SyntheticCTR(n_events=100)
    assert isinstance(dataset, base.SyntheticDataset)
    assert dataset.task == base.BINARY_CLF
    assert dataset.n_samples == 100
    assert "SyntheticCTR" in repr(dataset) and "positive_rate" in repr(dataset)
    assert len(list(dataset)) == 100
    assert len(list(dataset.take(7))) == 7


def test_python_types_and_schema() -> None:
    dataset = SyntheticCTR(n_events=500, seed=3)
    for x, y in dataset:
        assert type(y) is bool
        assert list(x) == [*CATEGORICAL, *NUMERIC]
        assert all(type(x[k]) is str for k in CATEGORICAL)
        assert all(type(x[k]) is float and math.isfinite(x[k]) for k in NUMERIC)
        assert x["price"] > 0 and x["user_activity"] > 0 and x["item_age_days"] >= 0
        assert 0 <= x["position_score"] <= 1
        assert 0 <= int(x["hour"]) < 24 and len(x["hour"]) == 2


@pytest.mark.parametrize(
    "n_numeric,names",
    [(0, []), (2, ["price", "user_activity"]), (6, [*NUMERIC, "noise_0", "noise_1"])],
)
def test_n_numeric(n_numeric: int, names: list[str]) -> None:
    dataset = SyntheticCTR(n_events=50, n_numeric=n_numeric)
    assert dataset.n_features == 8 + n_numeric
    xs = [x for x, _ in dataset]
    assert all(list(x) == [*CATEGORICAL, *names] for x in xs)
    # The shown features never change the rest of the stream.
    reference = [x for x, _ in SyntheticCTR(n_events=50, n_numeric=4)]
    assert [{k: x[k] for k in CATEGORICAL} for x in xs] == [
        {k: x[k] for k in CATEGORICAL} for x in reference
    ]


def test_deterministic_given_seed() -> None:
    dataset = SyntheticCTR(n_events=3_000, seed=11, drift="gradual")
    first = list(dataset.iter_with_proba())
    assert first == list(dataset.iter_with_proba())
    assert [(x, y) for x, y, _ in first] == list(dataset)
    assert list(SyntheticCTR(n_events=3_000, seed=11, drift="gradual")) == list(dataset)
    assert list(SyntheticCTR(n_events=3_000, seed=12, drift="gradual")) != list(dataset)
    unseeded = SyntheticCTR(n_events=200, seed=None)
    assert list(unseeded) == list(unseeded)


def test_fast_enough() -> None:
    start = time.perf_counter()
    n = sum(1 for _ in SyntheticCTR(n_events=50_000))
    assert n == 50_000
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("rate", [0.1, 0.3])
@pytest.mark.parametrize("drift", [None, "abrupt", "recurring"])
def test_positive_rate_is_calibrated(rate: float, drift: str | None) -> None:
    ys = [y for _, y in SyntheticCTR(n_events=20_000, positive_rate=rate, drift=drift, seed=5)]
    assert abs(sum(ys) / len(ys) - rate) < 0.02


@pytest.mark.parametrize(
    "drift,kwargs,points",
    [
        (None, {}, []),
        ("abrupt", {}, [5_000]),
        ("abrupt", {"drift_at": 1_234}, [1_234]),
        ("gradual", {}, [5_000]),
        ("recurring", {}, [2_500, 5_000, 7_500]),
        ("recurring", {"drift_at": 3_000}, [3_000, 6_000, 9_000]),
    ],
)
def test_drift_points(drift: str | None, kwargs: dict, points: list[int]) -> None:
    assert SyntheticCTR(n_events=10_000, drift=drift, **kwargs).drift_points == points


@pytest.mark.parametrize("drift", ["abrupt", "gradual", "recurring"])
def test_drift_changes_the_concept_where_announced(drift: str) -> None:
    n = 8_000
    stable = list(SyntheticCTR(n_events=n, seed=2).iter_with_proba())
    drifting = SyntheticCTR(n_events=n, seed=2, drift=drift)
    moved = list(drifting.iter_with_proba())
    # Features never depend on the concept, only the click probabilities do.
    assert [x for x, _, _ in moved] == [x for x, _, _ in stable]
    p_old = np.array([p for _, _, p in stable])
    p_new = np.array([p for _, _, p in moved])
    changed = ~np.isclose(p_old, p_new, rtol=1e-12, atol=0)
    if drift == "abrupt":
        assert not changed[:4_000].any() and changed[4_000:].all()
    elif drift == "gradual":
        width = drifting.drift_width
        assert width == 800
        assert not changed[: 4_000 - width // 2].any() and changed[4_000 + width // 2 :].all()
        # The transition starts at once: no event of the window still follows the old concept.
        assert changed[4_000 - width // 2 : 4_000 + width // 2].all()
    else:
        assert drifting.drift_points == [2_000, 4_000, 6_000]
        assert not changed[:2_000].any() and changed[2_000:4_000].all()
        assert not changed[4_000:6_000].any() and changed[6_000:].all()


def test_bayes_logloss_beats_the_base_rate() -> None:
    dataset = SyntheticCTR(n_events=20_000, positive_rate=0.1, seed=8)
    triples = list(dataset.iter_with_proba())
    ys = np.array([y for _, y, _ in triples])
    ps = np.array([p for _, _, p in triples])
    manual = -np.mean(np.where(ys, np.log(ps), np.log1p(-ps)))
    assert dataset.bayes_logloss() == pytest.approx(manual, rel=1e-9)
    assert dataset.bayes_logloss() < 0.9 * _constant_logloss(ys.mean())


def test_new_ids_keep_arriving() -> None:
    xs = [x for x, _ in SyntheticCTR(n_events=20_000, seed=4)]
    q = len(xs) // 4
    for key in ("item_id", "user_id"):
        early = {x[key] for x in xs[:q]}
        late = {x[key] for x in xs[-q:]}
        assert len(late) > 1.2 * len(early)
        assert len(late - early) > 0.2 * len(late)
    # Zipf popularity: the top 10 % of items get a large share of impressions.
    counts = np.sort(np.unique([x["item_id"] for x in xs], return_counts=True)[1])[::-1]
    assert counts[: len(counts) // 10].sum() > 0.4 * len(xs)


def _linear_gap(interaction_scale: float) -> float:
    """Progressive log loss of one-hot logistic regression minus the Bayes log loss."""
    dataset = SyntheticCTR(
        n_events=10_000, positive_rate=0.3, seed=0, interaction_scale=interaction_scale
    )
    model = compose.Pipeline(
        compose.TransformerUnion(
            compose.SelectType(str) | preprocessing.OneHotEncoder(),
            compose.SelectType(float) | preprocessing.StandardScaler(),
        ),
        linear_model.LogisticRegression(optimizer=optim.SGD(0.05)),
    )
    logloss = metrics.LogLoss()
    for x, y in dataset:
        logloss.update(y, model.predict_proba_one(x).get(True, 0.5))
        model.learn_one(x, y)
    return logloss.get() - dataset.bayes_logloss()


def test_interactions_matter() -> None:
    with_interactions = _linear_gap(1.0)
    first_order_only = _linear_gap(0.0)
    # A linear model cannot reach the oracle when interactions drive clicks...
    assert with_interactions > 0.08
    # ...and the shortfall is mostly due to the interactions, not to learning the biases.
    assert with_interactions > first_order_only + 0.05


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_events": 0},
        {"positive_rate": 0.0},
        {"positive_rate": 1.0},
        {"drift": "sudden"},
        {"drift": "abrupt", "drift_at": 0},
        {"drift": "abrupt", "drift_at": 100},
        {"drift": "gradual", "drift_width": 0},
        {"n_numeric": -1},
        {"new_id_fraction": 1.0},
    ],
)
def test_invalid_parameters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticCTR(**{"n_events": 100, **kwargs})
