"""Streaming quantile binning with edges that only move on a schedule."""

from __future__ import annotations

import bisect
import math
import numbers
import typing
from typing import Any

import numpy as np
import pandas as pd
from river import base, stats

from ._common import as_field_tuple, is_missing, is_number, object_column

__all__ = ["QuantileBinner"]


def _check_positive_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


class QuantileBinner(base.MiniBatchTransformer):
    """Map numeric features to categorical quantile bins estimated on the stream.

    For each field, `n_bins - 1` running quantiles (`q = 1/n_bins, ..., (n_bins-1)/n_bins`) are
    tracked with river's P² estimator (`river.stats.Quantile`, O(1) memory per quantile). A value
    `v` goes to bin `i` when `i` of the bin edges are `<= v`, and the output is the string
    `f"q{i}"`, from `"q0"` (below every edge) to `f"q{n_bins - 1}"`.

    **Stability rule.** The quantile estimates move with every event, but a categorical feature
    whose categories silently drift is hard for a downstream model to learn. So the transformer
    does not read the estimators directly: it bins with a *snapshot* of the edges that is taken
    when a field has learned `warm_up` values, and refreshed each time it has learned
    `refresh_every` more (i.e. at counts `warm_up`, `warm_up + refresh_every`,
    `warm_up + 2 * refresh_every`, ...). Between two refreshes the mapping from value to bin is a
    fixed function. The snapshot is sorted, because P² estimates of neighbouring quantiles can
    cross on small samples.

    **Training and serving see the same bins.** `transform_one` is pure and bins with the
    snapshot taken *before* it is called. The transformer reports `_supervised = True` (the
    label is ignored), so a river `Pipeline` transforms each event before learning it, as at
    prediction time; otherwise, on the event that triggers a refresh, the model downstream
    would learn from other bins than it predicted with.

    **Cold start.** Until a field's first snapshot (fewer than `warm_up` values learned, or a
    field never seen), every value of that field goes to the bin `"q?"`.

    Other values:

    * bools are flags: they are neither learned nor binned (passed through).
    * missing values (None, NaN, `pd.NA`) are not learned, and are left out of the output of
      `transform_one`; `transform_many` puts None in the (object) column. With `fields=None`
      only fields holding a number are binned, so a NaN is left out but a None passes through.
    * infinities are not learned (they would wreck the estimators) but are binned: `-inf` goes
      to `"q0"` and `inf` to the last bin.
    * with `fields=None`, strings and other non-numeric values pass through. When a field is
      named explicitly, any other value raises a `TypeError` naming the field, and neither
      `learn_one` nor `learn_many` changes the state when that happens.

    `learn_many` gives exactly the state of a `learn_one` loop over the rows; `transform_many` gives
    the values of `transform_one` (with None where `transform_one` leaves a key out).

    Parameters
    ----------
    n_bins
        Number of bins, at least 2.
    fields
        The fields to bin. `None` means every field holding a number.
    warm_up
        Number of values a field must have learned before its first set of edges is taken.
    refresh_every
        Number of values learned between two refreshes of a field's edges.

    Examples
    --------

    >>> from river_torchrec.features import QuantileBinner

    >>> binner = QuantileBinner(n_bins=4, warm_up=100, refresh_every=1000)
    >>> binner.transform_one({"price": 42.0})
    {'price': 'q?'}

    >>> for i in range(100):
    ...     binner.learn_one({"price": float(i)})
    >>> binner.edges("price")
    [24.0, 49.0, 74.0]
    >>> binner.transform_one({"price": 10.0, "site": "a.com"})
    {'price': 'q0', 'site': 'a.com'}
    >>> binner.transform_one({"price": 74.0})
    {'price': 'q3'}

    The edges do not move until 1000 more values have been learned, however skewed they are:

    >>> for i in range(999):
    ...     binner.learn_one({"price": 1000.0})
    >>> binner.edges("price")
    [24.0, 49.0, 74.0]
    >>> binner.transform_one({"price": 1000.0})
    {'price': 'q3'}
    >>> binner.learn_one({"price": 1000.0})
    >>> [round(edge) for edge in binner.edges("price")]
    [925, 1000, 1000]
    >>> binner.transform_one({"price": 500.0})
    {'price': 'q0'}

    """

    COLD_BIN = "q?"

    def __init__(
        self,
        n_bins: int = 10,
        fields: typing.Iterable[base.typing.FeatureName] | None = None,
        warm_up: int = 100,
        refresh_every: int = 1000,
    ) -> None:
        _check_positive_int("n_bins", n_bins, 2)
        _check_positive_int("warm_up", warm_up, 1)
        _check_positive_int("refresh_every", refresh_every, 1)
        self.n_bins = n_bins
        self.fields = fields
        self.warm_up = warm_up
        self.refresh_every = refresh_every

        self._fields = as_field_tuple(fields)
        self._labels = tuple(f"q{i}" for i in range(n_bins))
        self._quantiles: dict[base.typing.FeatureName, list[stats.Quantile]] = {}
        self._counts: dict[base.typing.FeatureName, int] = {}
        self._edges: dict[base.typing.FeatureName, list[float]] = {}

    @classmethod
    def _unit_test_params(cls) -> typing.Iterator[dict[str, Any]]:
        yield {}
        yield {"n_bins": 4, "fields": ("gallup", "rasmussen"), "warm_up": 10, "refresh_every": 7}

    def edges(self, field: base.typing.FeatureName) -> list[float] | None:
        """The bin edges currently used for `field`, or None before its first snapshot."""
        edges = self._edges.get(field)
        return None if edges is None else list(edges)

    # Learning

    def _bad_value(self, field: base.typing.FeatureName, value: Any) -> TypeError:
        return TypeError(
            f"{type(self).__name__}: field {field!r} must hold a number, "
            f"got {type(value).__name__} {value!r}"
        )

    def _check_named_value(self, field: base.typing.FeatureName, value: Any) -> None:
        if not (is_number(value) or is_missing(value) or isinstance(value, (bool, np.bool_))):
            raise self._bad_value(field, value)

    def _learnable(self, value: Any) -> bool:
        return is_number(value) and math.isfinite(value)

    def _learn_values(self, field: base.typing.FeatureName, values: typing.Iterable[Any]) -> None:
        quantiles = self._quantiles.get(field)
        count = self._counts.get(field, 0)
        for value in values:
            if not self._learnable(value):
                continue
            if quantiles is None:
                quantiles = self._quantiles[field] = [
                    stats.Quantile(i / self.n_bins) for i in range(1, self.n_bins)
                ]
            v = float(value)
            for q in quantiles:
                q.update(v)
            count += 1
            if count >= self.warm_up and (count - self.warm_up) % self.refresh_every == 0:
                self._edges[field] = sorted(q.get() for q in quantiles)
        if quantiles is not None:
            self._counts[field] = count

    @property
    def _supervised(self) -> bool:
        # Not about labels: river pipelines transform supervised steps *before* learning them,
        # so an event is binned with the edges in force before it was learned.
        return True

    def learn_one(self, x: dict[base.typing.FeatureName, Any], y: Any = None) -> None:
        if self._fields is None:
            items = [(f, v) for f, v in x.items() if self._learnable(v)]
        else:
            items = [(f, x[f]) for f in self._fields if f in x]
            # Validate everything before touching the state, so a bad event changes nothing.
            for field, value in items:
                self._check_named_value(field, value)
        for field, value in items:
            self._learn_values(field, (value,))

    def learn_many(self, X: pd.DataFrame, y: pd.Series | None = None) -> None:
        # Fields are independent, so learning column by column, in row order, reaches the same
        # state as a learn_one loop over the rows.
        columns = {col: X[col].tolist() for col in self._columns(X)}
        if self._fields is not None:
            for field, values in columns.items():
                for value in values:
                    self._check_named_value(field, value)
        for field, values in columns.items():
            self._learn_values(field, values)

    # Transforming

    def _columns(self, X: pd.DataFrame) -> list:
        if self._fields is None:
            return list(X.columns)
        return [f for f in self._fields if f in X.columns]

    def _bin(self, field: base.typing.FeatureName, value: Any) -> str:
        edges = self._edges.get(field)
        if edges is None:
            return self.COLD_BIN
        return self._labels[bisect.bisect_right(edges, float(value))]

    def transform_one(
        self, x: dict[base.typing.FeatureName, Any]
    ) -> dict[base.typing.FeatureName, Any]:
        if self._fields is None:
            out = {}
            for field, value in x.items():
                if not is_number(value):
                    out[field] = value
                elif not is_missing(value):
                    out[field] = self._bin(field, value)
            return out

        out = dict(x)
        for field in self._fields:
            if field not in x:
                continue
            value = x[field]
            self._check_named_value(field, value)
            if is_missing(value):
                del out[field]
            elif is_number(value):
                out[field] = self._bin(field, value)
        return out

    def transform_many(self, X: pd.DataFrame) -> pd.DataFrame:
        out = X.copy()
        for field in self._columns(X):
            values = X[field].tolist()
            if self._fields is None and not any(is_number(v) for v in values):
                continue
            new = []
            for value in values:
                if self._fields is not None:
                    self._check_named_value(field, value)
                if is_missing(value):
                    new.append(None)
                elif is_number(value):
                    new.append(self._bin(field, value))
                else:
                    new.append(value)
            out[field] = object_column(new, X.index)
        return out
