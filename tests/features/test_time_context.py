from __future__ import annotations

import datetime as dt
import math
import pickle
import random

import numpy as np
import pandas as pd
import pytest
from river import base, compose

from river_torchrec.features import TimeContext

UTC = dt.timezone.utc


class _Recorder(base.Classifier):
    """A final step that records the features it learns from."""

    def __init__(self):
        self.seen = []

    def learn_one(self, x, y):
        self.seen.append(dict(x))

    def predict_proba_one(self, x):
        return {True: 0.5, False: 0.5}


@pytest.mark.parametrize(
    "timestamp, hour, weekday",
    [
        (0, "0", "thu"),  # 1970-01-01 00:00:00 UTC was a Thursday
        (-1, "23", "wed"),  # one second earlier
        (1_700_000_000, "22", "tue"),  # 2023-11-14 22:13:20 UTC
        (1_700_000_000.75, "22", "tue"),
        (np.int64(86_400 * 4 + 3600 * 5), "5", "mon"),  # 1970-01-05 05:00
        (dt.datetime(2024, 2, 29, 23, 59, 59), "23", "thu"),  # naive is UTC
        (dt.datetime(2024, 3, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), "22", "thu"),
        (pd.Timestamp("2024-03-03 12:00", tz="US/Eastern"), "17", "sun"),
        (np.datetime64("2024-03-04T08:15"), "8", "mon"),
    ],
)
def test_hour_and_weekday(timestamp, hour, weekday):
    out = TimeContext().transform_one({"timestamp": timestamp})
    assert out == {"timestamp": timestamp, "hour": hour, "weekday": weekday}


def test_hour_and_weekday_agree_with_datetime():
    rng = random.Random(0)
    context = TimeContext(timestamp_field="t", hour_name="h", weekday_name="d")
    for _ in range(2000):
        t = rng.uniform(-2e9, 4e9)
        expected = dt.datetime.fromtimestamp(t, tz=UTC)
        out = context.transform_one({"t": t})
        assert out["h"] == str(expected.hour)
        assert out["d"] == ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][expected.weekday()]


def test_gaps_hand_computed():
    context = TimeContext(user_field="user", item_field="item")
    stream = [
        {"timestamp": 100, "user": "u1", "item": "i1"},
        {"timestamp": 160, "user": "u1", "item": "i2"},
        {"timestamp": 200, "user": "u2", "item": "i1"},
        {"timestamp": 230.5, "user": "u1", "item": "i1"},
    ]
    gaps = []
    for x in stream:
        out = context.transform_one(x)
        gaps.append((out.get("secs_since_user"), out.get("secs_since_item")))
        context.learn_one(x)
    assert gaps == [(None, None), (60.0, None), (None, 100.0), (70.5, 30.5)]
    assert context.last_seen("user", "u1") == 230.5
    assert context.last_seen("item", "i2") == 160


def test_never_seen_gap_is_left_out_and_transform_is_pure():
    context = TimeContext(user_field="user")
    x = {"timestamp": 10, "user": "u"}
    first = context.transform_one(x)
    assert "secs_since_user" not in first
    assert context.transform_one(x) == first  # transforming does not record anything
    context.learn_one(x)
    assert context.transform_one(x)["secs_since_user"] == 0.0
    assert context.transform_one({"timestamp": 25, "user": "u"})["secs_since_user"] == 15.0


def test_out_of_order_events_keep_the_latest_timestamp():
    context = TimeContext(user_field="user")
    context.learn_one({"timestamp": 100, "user": "u"})
    context.learn_one({"timestamp": 50, "user": "u"})  # late event
    assert context.last_seen("user", "u") == 100
    assert context.transform_one({"timestamp": 90, "user": "u"})["secs_since_user"] == -10.0


@pytest.mark.parametrize("missing", [None, math.nan, pd.NaT, np.datetime64("NaT")])
def test_missing_timestamp(missing):
    context = TimeContext(user_field="user")
    x = {"timestamp": missing, "user": "u"}
    context.learn_one(x)
    assert context.last_seen("user", "u") is None
    assert context.transform_one(x) == x
    assert context.transform_one({"user": "u"}) == {"user": "u"}  # absent timestamp


def test_missing_user_gives_time_features_only():
    context = TimeContext(user_field="user")
    context.learn_one({"timestamp": 0, "user": None})
    assert context.transform_one({"timestamp": 3600, "user": None}) == {
        "timestamp": 3600,
        "user": None,
        "hour": "1",
        "weekday": "thu",
    }


@pytest.mark.parametrize(
    "x, error, field",
    [
        ({"timestamp": "2024-01-01"}, TypeError, "'timestamp'"),
        ({"timestamp": True}, TypeError, "'timestamp'"),
        ({"timestamp": dt.date(2024, 1, 1)}, TypeError, "'timestamp'"),
        ({"timestamp": math.inf}, ValueError, "'timestamp'"),
        ({"timestamp": 5, "user": ["u1"]}, TypeError, "'user'"),
    ],
)
def test_bad_input_raises_naming_the_field_and_leaves_state_unchanged(x, error, field):
    context = TimeContext(user_field="user")
    context.learn_one({"timestamp": 0, "user": "u0"})
    before = pickle.dumps(context)
    with pytest.raises(error, match=field):
        context.learn_one(x)
    with pytest.raises(error, match=field):
        context.transform_one(x)
    batch = pd.DataFrame([{"timestamp": 1, "user": "u1"}, x]).astype(object)
    with pytest.raises(error, match=field):
        context.learn_many(batch)
    assert pickle.dumps(context) == before


def test_max_tracked_bounds_memory():
    context = TimeContext(user_field="user", item_field="item", max_tracked=50)
    for i in range(2000):
        context.learn_one({"timestamp": i, "user": f"u{i}", "item": f"i{i % 10}"})
    stores = [store for _, _, store in context._trackers]
    assert [len(store) for store in stores] == [50, 10]
    assert context.last_seen("user", "u0") is None
    assert context.last_seen("user", "u1999") == 1999


def test_transform_many_dtypes():
    context = TimeContext(user_field="user")
    context.learn_one({"timestamp": 0, "user": "a"})
    X = pd.DataFrame({"timestamp": [3600.0, np.nan, 7200.0], "user": ["a", "a", "b"]})
    out = context.transform_many(X)
    assert out["hour"].tolist() == ["1", None, "2"]
    assert out["weekday"].tolist() == ["thu", None, "thu"]
    assert out["secs_since_user"].dtype == np.float64
    assert out["secs_since_user"].tolist()[0] == 3600.0
    assert np.isnan(out["secs_since_user"].tolist()[1:]).all()
    # datetime64 columns work too
    X = pd.DataFrame({"timestamp": pd.to_datetime(["1970-01-01 01:00", None]), "user": ["a", "a"]})
    assert context.transform_many(X)["secs_since_user"].tolist()[0] == 3600.0


def test_learn_many_reaches_the_learn_one_state():
    rng = random.Random(0)
    rows = [{"timestamp": rng.uniform(0, 1e6), "user": rng.randint(0, 30)} for _ in range(500)]
    one = TimeContext(user_field="user", max_tracked=10)
    many = one.clone()
    for x in rows:
        one.learn_one(x)
    for start in range(0, len(rows), 64):
        many.learn_many(pd.DataFrame(rows[start : start + 64]))
    assert list(one._trackers[0][2].items()) == list(many._trackers[0][2].items())


def test_pipeline_transforms_before_learning():
    """In a river Pipeline the gap seen in training is the gap to the previous event, not 0."""
    recorder = _Recorder()
    model = compose.Pipeline(TimeContext(user_field="user"), recorder)
    for t in [0, 30, 100]:
        model.learn_one({"timestamp": t, "user": "u"}, True)
    assert [x.get("secs_since_user") for x in recorder.seen] == [None, 30.0, 70.0]


def test_output_names_must_be_distinct():
    with pytest.raises(ValueError, match="distinct"):
        TimeContext(user_field="u", item_field="i", user_gap_name="gap", item_gap_name="gap")
    with pytest.raises(ValueError, match="kind"):
        TimeContext().last_seen("session", "s1")
