"""Log-squared bucketing of count-like numeric features."""

from __future__ import annotations

import math
import typing
from typing import Any

import numpy as np
import pandas as pd
from river import base

from ._common import as_field_tuple, is_missing, is_number, object_column

__all__ = ["LogBucketizer", "log_bucket"]


def _small_value_token(value: float) -> str:
    # Integral floats are written as ints so that `3` and `3.0` (which pandas produces when an
    # int column holds a missing value) land in the same category.
    if value.is_integer():
        return str(int(value))
    return repr(value)


def log_bucket(value: float) -> str:
    """Bucket token for a single real number.

    Parameters
    ----------
    value
        A real number; NaN is not accepted (missing values are handled by the caller).

    Returns
    -------
    `"b{floor(log(v)**2)}"` for `v > 2`, `"-b{floor(log(-v)**2)}"` for `v < -2`, `"inf"` or
    `"-inf"` for infinities and the value itself (integral values without a decimal part) for
    `-2 <= v <= 2`.

    Examples
    --------

    >>> from river_torchrec.features.log_bucketizer import log_bucket
    >>> [log_bucket(v) for v in (0, 1.0, 1.5, 2, 3, 1000, -50, float("inf"))]
    ['0', '1', '1.5', '2', 'b1', 'b47', '-b15', 'inf']

    """
    v = float(value)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v > 2.0:
        return f"b{math.floor(math.log(v) ** 2)}"
    if v < -2.0:
        return f"-b{math.floor(math.log(-v) ** 2)}"
    return _small_value_token(v)


class LogBucketizer(base.MiniBatchTransformer):
    """Turn numeric features into categorical log-squared buckets.

    This is the discretisation used by the winning solution of the Criteo display advertising
    challenge: a value `v > 2` goes to bucket `floor(log(v) ** 2)`, any other value is kept as its
    own category. Buckets widen as values grow, so heavy-tailed counts (impressions, dwell
    times...) end up with a few dozen categories that downstream models embed or one-hot encode.

    Output values are **strings**, so that downstream models treat them as categories:

    * `v > 2` gives `"b{floor(log(v) ** 2)}"`, e.g. `1000 -> "b47"`. The `b` prefix keeps bucket
      `1` (values in `(2.72, 7.39)`) apart from the raw value `1`.
    * `v < -2` gives the mirrored bucket `"-b{floor(log(-v) ** 2)}"`, e.g. `-50 -> "-b15"`; the
      original rule only covers non-negative counts, and mirroring keeps large negative values
      from becoming one category each.
    * `-2 <= v <= 2` gives the value itself: `"0"`, `"1"`, `"-1"`, `"1.5"`. Integral values are
      written without a decimal part, so `1` and `1.0` share a category. Note that a continuous
      feature living in `[-2, 2]` would produce one category per distinct value: this
      transformer is meant for count-like features.
    * `inf` and `-inf` give `"inf"` and `"-inf"`.

    Other values:

    * bools are flags, not magnitudes: they are left untouched, even in a named field.
    * missing values (None, NaN, `pd.NA`) in a bucketized field are left out of the output of
      `transform_one` (river's convention for a missing feature); `transform_many` puts None in
      the (object) column. With `fields=None` only fields holding a number are bucketized, so a
      NaN is left out but a None is passed through unchanged.
    * with `fields=None`, strings and other non-numeric values pass through. When a field is
      named explicitly, any other value (e.g. a string) raises a `TypeError` naming the field.

    The transformer is stateless: `learn_one` and `learn_many` do nothing.

    Parameters
    ----------
    fields
        The fields to bucketize. `None` means every field holding a number.

    Examples
    --------

    >>> from river_torchrec.features import LogBucketizer

    >>> bucketizer = LogBucketizer()
    >>> x = {"impressions": 1000, "clicks": 2, "balance": -50, "ratio": 0.5,
    ...      "is_mobile": True, "site": "a.com", "price": float("nan")}
    >>> bucketizer.transform_one(x)
    {'impressions': 'b47', 'clicks': '2', 'balance': '-b15', 'ratio': '0.5',
     'is_mobile': True, 'site': 'a.com'}

    Naming fields restricts the transformation to them, and turns unexpected values into errors:

    >>> bucketizer = LogBucketizer(fields=["impressions"])
    >>> bucketizer.transform_one(x)
    {'impressions': 'b47', 'clicks': 2, 'balance': -50, 'ratio': 0.5,
     'is_mobile': True, 'site': 'a.com', 'price': nan}

    >>> bucketizer.transform_one({"impressions": "many"})
    Traceback (most recent call last):
    ...
    TypeError: LogBucketizer: field 'impressions' must hold a number, got str 'many'

    The same goes for mini-batches:

    >>> import pandas as pd
    >>> X = pd.DataFrame({"impressions": [1000, 3, None], "site": ["a", "b", "c"]})
    >>> bucketizer.transform_many(X)
      impressions site
    0         b47    a
    1          b1    b
    2        None    c

    """

    def __init__(self, fields: typing.Iterable[base.typing.FeatureName] | None = None) -> None:
        self.fields = fields
        self._fields = as_field_tuple(fields)

    @classmethod
    def _unit_test_params(cls) -> typing.Iterator[dict[str, Any]]:
        yield {}
        yield {"fields": ("gallup", "ordinal_date")}

    def _bad_value(self, field: base.typing.FeatureName, value: Any) -> TypeError:
        return TypeError(
            f"{type(self).__name__}: field {field!r} must hold a number, "
            f"got {type(value).__name__} {value!r}"
        )

    def transform_one(
        self, x: dict[base.typing.FeatureName, Any]
    ) -> dict[base.typing.FeatureName, Any]:
        if self._fields is None:
            out = {}
            for field, value in x.items():
                if not is_number(value):
                    out[field] = value
                elif not is_missing(value):
                    out[field] = log_bucket(value)
            return out

        out = dict(x)
        for field in self._fields:
            if field not in x:
                continue
            value = x[field]
            if is_missing(value):
                del out[field]
            elif is_number(value):
                out[field] = log_bucket(value)
            elif not isinstance(value, (bool, np.bool_)):
                raise self._bad_value(field, value)
        return out

    def transform_many(self, X: pd.DataFrame) -> pd.DataFrame:
        out = X.copy()
        if self._fields is None:
            for col in X.columns:
                dtype = X[col].dtype
                numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(
                    dtype
                )
                # Object columns may hold numbers among other things; typed non-numeric columns
                # (strings, bools, datetimes) cannot, so they are left alone.
                if not (numeric or dtype == object):
                    continue
                out[col] = object_column(
                    [
                        (None if is_missing(v) else log_bucket(v)) if is_number(v) else v
                        for v in X[col].tolist()
                    ],
                    X.index,
                )
            return out

        for field in self._fields:
            if field not in X.columns:
                continue
            values = []
            for v in X[field].tolist():
                if is_missing(v):
                    values.append(None)
                elif is_number(v):
                    values.append(log_bucket(v))
                elif isinstance(v, (bool, np.bool_)):
                    values.append(v)
                else:
                    raise self._bad_value(field, v)
            out[field] = object_column(values, X.index)
        return out
