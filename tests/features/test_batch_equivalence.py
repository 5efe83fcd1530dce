"""`transform_many`/`learn_many` agree with `transform_one`/`learn_one` on a click stream.

The stream has missing values in every form a dict stream can have them (absent keys, None,
NaN). In a DataFrame all of these become None or NaN, so the comparison treats "absent", None and
NaN as the same missing value; everything else must be equal.
"""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest

from river_torchrec.features import (
    DecayedCTREncoder,
    FeatureCrosser,
    FrequencyFilter,
    LogBucketizer,
    QuantileBinner,
    TimeContext,
)
from river_torchrec.features._common import is_missing


def _click_stream(n: int, seed: int = 0) -> list[tuple[dict, bool]]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        x = {
            "timestamp": 1_700_000_000 + 37 * i,
            "user": rng.choice([f"u{k}" for k in range(8)] + [None]),
            "item": f"i{rng.randint(0, 5)}",
            "imps": rng.choice([0, 1, 2, 3, 40, 5000]),
            "price": rng.choice([0.5, 2.5, 19.99, math.nan]),
            "is_mobile": rng.random() < 0.5,
        }
        for key in ("user", "imps", "price", "is_mobile", "timestamp"):
            if rng.random() < 0.1:
                del x[key]
        events.append((x, rng.random() < 0.3))
    return events


TRANSFORMERS = {
    "LogBucketizer": LogBucketizer(),
    "LogBucketizer-fields": LogBucketizer(fields=["imps", "price", "is_mobile"]),
    "QuantileBinner": QuantileBinner(n_bins=3, warm_up=10, refresh_every=15),
    "QuantileBinner-fields": QuantileBinner(n_bins=4, fields=["imps"], warm_up=5, refresh_every=3),
    "FeatureCrosser": FeatureCrosser([("user", "item"), ("item", "is_mobile", "user")]),
    "FrequencyFilter": FrequencyFilter(min_count=3),
    "FrequencyFilter-fields": FrequencyFilter(min_count=2, fields=["user", "imps"], max_tracked=5),
    "DecayedCTREncoder": DecayedCTREncoder(["user", "item"], half_life=20, prior_strength=2.0),
    "DecayedCTREncoder-bounded": DecayedCTREncoder(
        ["user", "item"], max_tracked=4, keep_original=False
    ),
    "TimeContext": TimeContext(user_field="user", item_field="item", max_tracked=6),
}


def _assert_rows_match(one_rows: list[dict], frame: pd.DataFrame) -> None:
    assert len(frame) == len(one_rows)
    for i, one in enumerate(one_rows):
        many = frame.iloc[i].to_dict()
        for key in set(one) | set(many):
            a, b = one.get(key), many.get(key)
            if is_missing(a) or is_missing(b):
                assert is_missing(a) and is_missing(b), (i, key, a, b)
            elif isinstance(a, float) or isinstance(b, float):
                assert a == pytest.approx(b, rel=1e-12), (i, key, a, b)
            else:
                assert a == b, (i, key, a, b)


def _learn_one(transformer, x, y):
    if transformer._supervised:
        transformer.learn_one(x, y)
    else:
        transformer.learn_one(x)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transform_many_matches_transform_one(name):
    transformer = TRANSFORMERS[name].clone()
    stream = _click_stream(160)
    for x, y in stream[:100]:
        _learn_one(transformer, x, y)
    rows = [x for x, _ in stream[100:]]
    X = pd.DataFrame(rows, index=range(1000, 1000 + len(rows)))
    out = transformer.transform_many(X)
    assert list(out.index) == list(X.index)
    _assert_rows_match([transformer.transform_one(x) for x in rows], out)


@pytest.mark.parametrize("name", TRANSFORMERS)
def test_learn_many_matches_learn_one(name):
    stream = _click_stream(200, seed=1)
    one = TRANSFORMERS[name].clone()
    many = TRANSFORMERS[name].clone()
    for x, y in stream:
        _learn_one(one, x, y)
    for start in range(0, len(stream), 37):
        chunk = stream[start : start + 37]
        X = pd.DataFrame([x for x, _ in chunk])
        y = pd.Series([y for _, y in chunk])
        if many._supervised:
            many.learn_many(X, y)
        else:
            many.learn_many(X)
    for x, _ in _click_stream(50, seed=2):
        assert one.transform_one(x) == many.transform_one(x)
