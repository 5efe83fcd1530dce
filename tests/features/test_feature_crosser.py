from __future__ import annotations

import math

import pandas as pd
import pytest

from river_torchrec.features import FeatureCrosser


def test_pair_cross_exact():
    crosser = FeatureCrosser([("user_id", "item_category")])
    x = {"user_id": "u7", "item_category": "shoes", "price": 3.5}
    out = crosser.transform_one(x)
    assert out == {
        "user_id": "u7",
        "item_category": "shoes",
        "price": 3.5,
        "user_id\u00d7item_category": "u7\u00d7shoes",
    }
    assert x == {"user_id": "u7", "item_category": "shoes", "price": 3.5}  # not mutated
    assert crosser.crossed_names == ("user_id×item_category",)


def test_triple_and_non_string_values():
    crosser = FeatureCrosser([("a", "b", "c"), ("c", "a")])
    out = crosser.transform_one({"a": 1, "b": 2.5, "c": True})
    assert out["a×b×c"] == "1×2.5×True"
    assert out["c×a"] == "True×1"


@pytest.mark.parametrize("missing", [None, math.nan, pd.NA])
def test_missing_part_gives_missing_cross(missing):
    crosser = FeatureCrosser([("a", "b"), ("a", "c")])
    out = crosser.transform_one({"a": "x", "b": missing})
    assert out == {"a": "x", "b": missing}  # no a×b (b missing), no a×c (c absent)


def test_learning_is_a_no_op():
    crosser = FeatureCrosser([("a", "b")])
    crosser.learn_one({"a": 1, "b": 2})
    crosser.learn_many(pd.DataFrame({"a": [1], "b": [2]}))
    assert crosser.transform_one({"a": 1, "b": 2})["a×b"] == "1×2"


def test_transform_many():
    crosser = FeatureCrosser([("u", "i"), ("u", "absent")])
    X = pd.DataFrame({"u": ["u1", "u2", None], "i": [10, 20, 30]}, index=[5, 6, 7])
    out = crosser.transform_many(X)
    assert list(out.columns) == ["u", "i", "u×i", "u×absent"]
    assert out["u×i"].tolist() == ["u1×10", "u2×20", None]
    assert out["u×absent"].tolist() == [None, None, None]
    assert list(out.index) == [5, 6, 7]
    assert list(X.columns) == ["u", "i"]


@pytest.mark.parametrize(
    "pairs, error",
    [
        (("user", "item"), TypeError),  # one pair without the outer sequence
        ("user×item", TypeError),
        ([("user",)], ValueError),
        ([()], ValueError),
        (42, TypeError),
        ([42], TypeError),
    ],
)
def test_bad_pairs(pairs, error):
    with pytest.raises(error):
        FeatureCrosser(pairs)
