from __future__ import annotations

import math
import pickle

import numpy as np
import pandas as pd
import pytest

from river_torchrec.features import LogBucketizer
from river_torchrec.features.log_bucketizer import log_bucket


@pytest.mark.parametrize(
    "value, expected",
    [
        # v > 2: floor(log(v) ** 2), hand-computed
        (3, "b1"),  # log(3)^2 = 1.207
        (2.5, "b0"),  # log(2.5)^2 = 0.840
        (7, "b3"),  # log(7)^2 = 3.787
        (8, "b4"),  # log(8)^2 = 4.324
        (100, "b21"),  # log(100)^2 = 21.208
        (1000, "b47"),  # log(1000)^2 = 47.717
        (10**6, "b190"),  # log(1e6)^2 = 190.868
        (np.int64(100), "b21"),
        (np.float32(100.0), "b21"),
        # -2 <= v <= 2: the value itself, integral values without decimals
        (2, "2"),
        (2.0, "2"),
        (1, "1"),
        (0, "0"),
        (-0.0, "0"),
        (0.5, "0.5"),
        (-1, "-1"),
        (-2, "-2"),
        # v < -2: mirrored buckets
        (-3, "-b1"),
        (-1000, "-b47"),
        # infinities
        (math.inf, "inf"),
        (-math.inf, "-inf"),
    ],
)
def test_log_bucket_values(value, expected):
    assert log_bucket(value) == expected


def test_default_buckets_every_number_and_leaves_the_rest():
    x = {
        "imps": 1000,
        "clicks": 1,
        "neg": -50,
        "flag": True,
        "np_flag": np.bool_(False),
        "site": "a.com",
        "none": None,
        "nan": math.nan,
        "np_nan": np.float64("nan"),
    }
    assert LogBucketizer().transform_one(x) == {
        "imps": "b47",
        "clicks": "1",
        "neg": "-b15",
        "flag": True,
        "np_flag": np.bool_(False),
        "site": "a.com",
        "none": None,  # not a number, so not a bucketized field: passed through
        # NaNs are numbers that are missing: left out
    }


def test_named_fields_only():
    x = {"imps": 1000, "clicks": 5, "flag": True, "missing": None}
    bucketizer = LogBucketizer(fields=["imps", "flag", "missing", "absent"])
    # bools untouched even when named; missing values left out; absent fields ignored
    assert bucketizer.transform_one(x) == {"imps": "b47", "clicks": 5, "flag": True}
    # a bare string is one field name, not a sequence of characters
    assert LogBucketizer(fields="imps").transform_one(x)["clicks"] == 5


def test_outputs_are_strings():
    out = LogBucketizer().transform_one({f"f{i}": v for i, v in enumerate([-5, 0, 1.5, 2, 9e9])})
    assert all(isinstance(v, str) for v in out.values())


def test_input_not_mutated_and_stateless():
    bucketizer = LogBucketizer()
    before = pickle.dumps(bucketizer)
    x = {"a": 10}
    bucketizer.learn_one(x)
    bucketizer.learn_many(pd.DataFrame([x]))
    assert bucketizer.transform_one(x) == {"a": "b5"}
    assert x == {"a": 10}
    assert pickle.dumps(bucketizer) == before


@pytest.mark.parametrize("bad", ["12", b"12", [1], object()])
def test_bad_value_in_named_field_raises_type_error_naming_the_field(bad):
    bucketizer = LogBucketizer(fields=["imps"])
    with pytest.raises(TypeError, match="'imps'"):
        bucketizer.transform_one({"imps": bad})
    with pytest.raises(TypeError, match="'imps'"):
        bucketizer.transform_many(pd.DataFrame({"imps": [1, bad]}, dtype=object))


def test_bad_value_in_unnamed_field_passes_through():
    assert LogBucketizer().transform_one({"imps": "12"}) == {"imps": "12"}


def test_transform_many_values():
    X = pd.DataFrame(
        {
            "imps": [1000.0, 3.0, np.nan],
            "clicks": [0, 1, 2],
            "site": ["a", "b", None],
            "flag": [True, False, True],
            "mixed": pd.Series([5, "x", None], index=[10, 11, 12], dtype=object),
        },
        index=[10, 11, 12],
    )
    out = LogBucketizer().transform_many(X)
    assert list(out.index) == [10, 11, 12]
    assert out["imps"].tolist() == ["b47", "b1", None]
    assert out["clicks"].tolist() == ["0", "1", "2"]
    pd.testing.assert_series_equal(out["site"], X["site"])  # string column untouched
    assert out["flag"].tolist() == [True, False, True]
    assert out["mixed"].tolist() == ["b2", "x", None]  # log(5)^2 = 2.59
    # the input frame is left alone
    assert X["imps"].iloc[0] == 1000.0
