from __future__ import annotations

import math
import pickle
import random

import pandas as pd
import pytest
from river import stats

from river_torchrec.features import QuantileBinner


def test_cold_bin_before_warm_up():
    binner = QuantileBinner(n_bins=4, warm_up=5, refresh_every=3)
    assert binner.transform_one({"p": 1.0, "q": 7}) == {"p": "q?", "q": "q?"}
    for v in [5, 1, 4, 2]:
        binner.learn_one({"p": v})
        assert binner.edges("p") is None
        assert binner.transform_one({"p": 3}) == {"p": "q?"}


def test_hand_computed_bins():
    # With exactly 5 values, P² markers are the sorted values, and the estimate is the middle one.
    binner = QuantileBinner(n_bins=2, warm_up=5, refresh_every=3)
    for v in [5, 1, 4, 2, 3]:
        binner.learn_one({"p": v})
    assert binner.edges("p") == [3.0]
    out = [binner.transform_one({"p": v})["p"] for v in [-math.inf, 0, 2.99, 3, 3.0, 100, math.inf]]
    # bisect_right: a value equal to an edge goes to the upper bin
    assert out == ["q0", "q0", "q0", "q1", "q1", "q1", "q1"]


def test_edges_frozen_between_refreshes():
    binner = QuantileBinner(n_bins=4, warm_up=5, refresh_every=3)
    for v in [5, 1, 4, 2, 3]:
        binner.learn_one({"p": v})
    assert binner.edges("p") == [2.0, 3.0, 4.0]

    # Two more values move the estimators, not the edges...
    for v in [10, 10]:
        binner.learn_one({"p": v})
        assert binner.edges("p") == [2.0, 3.0, 4.0]
        assert binner.transform_one({"p": 3.5}) == {"p": "q2"}
    estimates = sorted(q.get() for q in binner._quantiles["p"])
    assert estimates != [2.0, 3.0, 4.0]

    # ...until the third, which refreshes them to the current estimates (count 5 + 3 = 8).
    binner.learn_one({"p": 10})
    assert binner.edges("p") == sorted(q.get() for q in binner._quantiles["p"])
    assert binner.edges("p") != [2.0, 3.0, 4.0]


def test_refresh_schedule_matches_independent_estimators():
    """Edges equal the sorted river quantiles exactly at counts warm_up + k * refresh_every."""
    rng = random.Random(3)
    n_bins, warm_up, refresh_every = 5, 20, 7
    binner = QuantileBinner(n_bins=n_bins, warm_up=warm_up, refresh_every=refresh_every)
    reference = [stats.Quantile(i / n_bins) for i in range(1, n_bins)]
    expected = None
    for count in range(1, 200):
        v = rng.lognormvariate(0, 1)
        binner.learn_one({"p": v})
        for q in reference:
            q.update(v)
        if count >= warm_up and (count - warm_up) % refresh_every == 0:
            expected = sorted(q.get() for q in reference)
        assert binner.edges("p") == expected


def test_same_value_same_bin_between_refreshes():
    rng = random.Random(0)
    binner = QuantileBinner(n_bins=10, warm_up=50, refresh_every=100)
    probes = [rng.gauss(0, 1) for _ in range(20)]
    previous = None
    for count in range(1, 600):
        binner.learn_one({"p": rng.gauss(0.01 * count, 1)})  # drifting stream
        bins = [binner.transform_one({"p": v})["p"] for v in probes]
        refreshed = count >= 50 and (count - 50) % 100 == 0
        if previous is not None and not refreshed:
            assert bins == previous
        previous = bins


def test_output_labels_and_pass_through():
    binner = QuantileBinner(n_bins=3, warm_up=3)
    for v in range(10):
        binner.learn_one({"p": v, "site": "a", "flag": True})
    out = binner.transform_one({"p": 4, "site": "a", "flag": True, "none": None, "nan": math.nan})
    assert out["p"] in {"q0", "q1", "q2"}
    assert out["site"] == "a" and out["flag"] is True and out["none"] is None
    assert "nan" not in out  # a missing number is left out
    assert binner.edges("site") is None and binner.edges("flag") is None


def test_non_finite_values_are_not_learned():
    binner = QuantileBinner(n_bins=2, warm_up=2, refresh_every=1)
    for v in [math.inf, -math.inf, math.nan, None, True]:
        binner.learn_one({"p": v})
    assert binner.edges("p") is None and binner._counts.get("p", 0) == 0


def test_learn_many_reaches_the_learn_one_state():
    rng = random.Random(1)
    rows = [
        {k: rng.expovariate(1) for k in rng.sample(["a", "b", "c"], rng.randint(1, 3))}
        for _ in range(300)
    ]
    one = QuantileBinner(n_bins=4, warm_up=10, refresh_every=25)
    many = one.clone()
    for x in rows:
        one.learn_one(x)
    for start in range(0, len(rows), 64):
        many.learn_many(pd.DataFrame(rows[start : start + 64]))
    for field in "abc":
        assert one.edges(field) == many.edges(field)
    X = pd.DataFrame(rows[:50])
    assert one.transform_many(X).equals(many.transform_many(X))


@pytest.mark.parametrize("bad", ["12", [1.0], object()])
def test_bad_value_in_named_field(bad):
    binner = QuantileBinner(n_bins=2, fields=["p", "q"], warm_up=2)
    for v in range(5):
        binner.learn_one({"p": v, "q": v})
    before = pickle.dumps(binner)
    with pytest.raises(TypeError, match="'q'"):
        binner.learn_one({"p": 1.0, "q": bad})  # p is valid but must not be learned either
    with pytest.raises(TypeError, match="'q'"):
        binner.learn_many(pd.DataFrame({"p": [1.0, 2.0], "q": pd.Series([1.0, bad], dtype=object)}))
    with pytest.raises(TypeError, match="'q'"):
        binner.transform_one({"q": bad})
    assert pickle.dumps(binner) == before
    # unnamed fields are not validated
    assert QuantileBinner().transform_one({"q": "12"}) == {"q": "12"}


@pytest.mark.parametrize(
    "params, error",
    [
        ({"n_bins": 1}, ValueError),
        ({"n_bins": 2.5}, TypeError),
        ({"warm_up": 0}, ValueError),
        ({"refresh_every": 0}, ValueError),
    ],
)
def test_bad_params(params, error):
    with pytest.raises(error):
        QuantileBinner(**params)

def test_a_pipeline_learns_each_event_with_the_bins_it_predicted_with():
    from river import base as river_base
    from river import compose

    class Recorder(river_base.Classifier):
        def __init__(self):
            self.seen = []

        def learn_one(self, x, y):
            self.seen.append(("learn", x["v"]))

        def predict_proba_one(self, x):
            self.seen.append(("predict", x["v"]))
            return {True: 0.5, False: 0.5}

    recorder = Recorder()
    pipeline = compose.Pipeline(QuantileBinner(n_bins=2, warm_up=3, refresh_every=1), recorder)
    for v in [1.0, 2.0, 3.0, 4.0, 5.0]:
        pipeline.predict_proba_one({"v": v})
        pipeline.learn_one({"v": v}, True)
    predicted = [v for what, v in recorder.seen if what == "predict"]
    learned = [v for what, v in recorder.seen if what == "learn"]
    assert predicted == learned
    assert predicted[:3] == ["q?"] * 3 and predicted[3] in ("q0", "q1")
