from __future__ import annotations

import gc
import math
import pickle
import random

import pandas as pd
import pytest
from river import base, compose

from river_torchrec.features import FrequencyFilter


class _Recorder(base.Classifier):
    """A final step that records the features it learns from."""

    def __init__(self):
        self.seen = []

    def learn_one(self, x, y):
        self.seen.append(dict(x))

    def predict_proba_one(self, x):
        return {True: 0.5, False: 0.5}


def test_hand_computed_stream():
    rare = FrequencyFilter(min_count=2)
    stream = [
        {"site": "a", "user": "u1", "price": 1.0},
        {"site": "a", "user": "u2", "price": 2.0},
        {"site": "b", "user": "u1", "price": 3.0},
        {"site": "a", "user": "u1", "price": 4.0},
    ]
    outputs = []
    for x in stream:
        outputs.append(rare.transform_one(x))
        rare.learn_one(x)
    assert outputs == [
        {"site": "<rare>", "user": "<rare>", "price": 1.0},  # a: 0, u1: 0
        {"site": "<rare>", "user": "<rare>", "price": 2.0},  # a: 1, u2: 0
        {"site": "<rare>", "user": "<rare>", "price": 3.0},  # b: 0, u1: 1
        {"site": "a", "user": "u1", "price": 4.0},  # a: 2, u1: 2
    ]
    assert [rare.count("site", v) for v in "ab"] == [3, 1]
    assert rare.count("user", "u1") == 3 and rare.count("user", "nobody") == 0


def test_transform_one_is_pure_and_uses_counts_learned_before():
    rare = FrequencyFilter(min_count=1)
    x = {"site": "a"}
    assert rare.transform_one(x) == {"site": "<rare>"}
    assert rare.transform_one(x) == {"site": "<rare>"}  # transforming does not count
    rare.learn_one(x)
    assert rare.transform_one(x) == {"site": "a"}
    assert x == {"site": "a"}


def test_min_count_zero_keeps_everything():
    assert FrequencyFilter(min_count=0).transform_one({"s": "new"}) == {"s": "new"}


def test_named_fields_count_any_hashable_and_numbers_pass_through_otherwise():
    rare = FrequencyFilter(min_count=1, fields=["user_id", "is_new"])
    x = {"user_id": 42, "is_new": False, "site": "a", "gap": None}
    assert rare.transform_one(x) == {
        "user_id": "<rare>",
        "is_new": "<rare>",
        "site": "a",
        "gap": None,
    }
    rare.learn_one(x)
    assert rare.transform_one(x) == x
    # Without named fields only strings are categorical.
    rare = FrequencyFilter(min_count=5)
    assert rare.transform_one({"user_id": 42, "price": 1.5, "s": "x"}) == {
        "user_id": 42,
        "price": 1.5,
        "s": "<rare>",
    }


@pytest.mark.parametrize("missing", [None, math.nan])
def test_missing_values_are_neither_counted_nor_replaced(missing):
    rare = FrequencyFilter(fields=["user"])
    rare.learn_one({"user": missing})
    assert len(rare._counts) == 0
    out = rare.transform_one({"user": missing})
    assert out["user"] is missing


def test_lru_eviction_is_exact():
    rare = FrequencyFilter(min_count=1, max_tracked=2)
    for v in ["a", "b", "a", "c"]:
        rare.learn_one({"s": v})
    # b was the least recently learned when c arrived
    assert dict(rare._counts) == {("s", "a"): 2, ("s", "c"): 1}
    assert rare.transform_one({"s": "b"}) == {"s": "<rare>"}
    rare.learn_one({"s": "b"})  # a forgotten value starts again from zero
    assert rare.count("s", "b") == 1 and rare.count("s", "a") == 0


def test_memory_is_bounded_with_max_tracked_on_ever_new_values():
    def run(max_tracked, n):
        rare = FrequencyFilter(fields=["event_id", "site"], max_tracked=max_tracked)
        sizes = []
        for i in range(n):
            rare.learn_one({"event_id": f"e{i}", "site": f"s{i % 7}"})
            if (i + 1) % (n // 4) == 0:
                gc.collect()
                sizes.append(rare._raw_memory_usage)
        return rare, sizes

    bounded, sizes = run(max_tracked=500, n=8_000)
    assert len(bounded._counts) == 500
    assert sizes[-1] <= sizes[0] * 1.1  # a plateau, not growth
    assert bounded.count("site", "s3") > 0  # frequent values survive eviction

    unbounded, unbounded_sizes = run(max_tracked=None, n=8_000)
    assert len(unbounded._counts) == 8_007
    assert unbounded_sizes[-1] > 3 * unbounded_sizes[0]


def test_learn_many_reaches_the_learn_one_state():
    rng = random.Random(0)
    rows = [
        {"s": rng.choice("abcdefgh"), "t": rng.choice("xyz"), "n": rng.random()} for _ in range(300)
    ]
    one = FrequencyFilter(min_count=3, max_tracked=6)
    many = one.clone()
    for x in rows:
        one.learn_one(x)
    for start in range(0, len(rows), 50):
        many.learn_many(pd.DataFrame(rows[start : start + 50]))
    assert list(one._counts.items()) == list(many._counts.items())


def test_bad_value_in_named_field_raises_and_leaves_state_unchanged():
    rare = FrequencyFilter(fields=["user", "tags"])
    rare.learn_one({"user": "u1", "tags": "a"})
    before = pickle.dumps(rare)
    with pytest.raises(TypeError, match="'tags'"):
        rare.learn_one({"user": "u1", "tags": ["a", "b"]})
    with pytest.raises(TypeError, match="'tags'"):
        rare.learn_many(
            pd.DataFrame({"user": ["u1", "u2"], "tags": pd.Series(["a", ["b"]], dtype=object)})
        )
    with pytest.raises(TypeError, match="'tags'"):
        rare.transform_one({"tags": {"a": 1}})
    assert pickle.dumps(rare) == before


@pytest.mark.parametrize(
    "params, error",
    [
        ({"min_count": -1}, ValueError),
        ({"min_count": 1.5}, TypeError),
        ({"max_tracked": 0}, ValueError),
    ],
)
def test_bad_params(params, error):
    with pytest.raises(error):
        FrequencyFilter(**params)


def test_pipeline_transforms_before_learning():
    """In a river Pipeline, training sees the same counts as serving: the event is not counted
    before it is transformed."""
    recorder = _Recorder()
    model = compose.Pipeline(FrequencyFilter(min_count=2), recorder)
    for _ in range(3):
        model.learn_one({"s": "a"}, True)
    # counts seen when transforming: 0, 1, 2
    assert [x["s"] for x in recorder.seen] == ["<rare>", "<rare>", "a"]
