"""Replace rare categorical values with a shared token."""

from __future__ import annotations

import collections
import numbers
import typing
from typing import Any

import pandas as pd
from river import base

from ._common import as_field_tuple, check_max_tracked, is_missing, object_column

__all__ = ["FrequencyFilter"]


class FrequencyFilter(base.MiniBatchTransformer):
    """Replace categorical values seen fewer than `min_count` times with `"<rare>"`.

    Long-tail ids (users, ads, sites seen once) are noise for a downstream model and waste
    embedding rows. This transformer counts, per field, how many times each value has been learned
    and replaces the values counted fewer than `min_count` times with the token `"<rare>"`. The
    token is a value of the same field, so it is per-field for any downstream encoder (e.g.
    `site=<rare>` and `user=<rare>` stay distinct).

    **What counts.** `learn_one` counts the event; `transform_one` is pure and reads the counts
    learned *before* it is called. The first time a value is met, `transform_one` therefore sees
    a count of 0. To keep training and serving consistent this transformer reports
    `_supervised = True` (the label is ignored): a river `Pipeline` then calls `transform_one`
    before `learn_one` on every event, exactly as at prediction time, instead of counting the
    event before transforming it, which would make a value look one event more frequent during
    training than when serving.

    **Which fields.** With `fields=None`, string values are categorical and everything else passes
    through. Named fields are categorical whatever their type (integer ids included); a value
    that cannot be counted (unhashable, e.g. a list) raises a `TypeError` naming the field and
    leaves the state unchanged. Missing values (None, NaN, `pd.NA`) are neither counted nor
    replaced. Values are keyed as Python keys are, so `1`, `1.0` and `True` share a count.

    **Memory.** Counts are exact. With `max_tracked=None` they grow with the number of distinct
    values. With `max_tracked=n`, at most `n` (field, value) counts are kept across all fields:
    after each event the least recently *learned* ones are forgotten (an `OrderedDict`, O(1) per
    value), and a forgotten value starts again from zero. If a single event holds more than
    `max_tracked` categorical values, which of them survive depends on their order in the event.

    `learn_many` is a `learn_one` loop over the rows; `transform_many` gives the values of
    `transform_one`.

    Parameters
    ----------
    min_count
        A value counted fewer than `min_count` times is rare.
    fields
        The categorical fields. `None` means every field holding a string.
    max_tracked
        Maximum number of (field, value) counts kept. `None` means no bound.

    Examples
    --------

    >>> from river_torchrec.features import FrequencyFilter

    >>> rare = FrequencyFilter(min_count=2)
    >>> stream = [
    ...     {"site": "a.com", "user": "u1", "price": 3.5},
    ...     {"site": "a.com", "user": "u2", "price": 1.0},
    ...     {"site": "a.com", "user": "u1", "price": 2.0},
    ... ]
    >>> for x in stream:
    ...     print(rare.transform_one(x))
    ...     rare.learn_one(x)
    {'site': '<rare>', 'user': '<rare>', 'price': 3.5}
    {'site': '<rare>', 'user': '<rare>', 'price': 1.0}
    {'site': 'a.com', 'user': '<rare>', 'price': 2.0}
    >>> rare.transform_one({"site": "a.com", "user": "u1"})
    {'site': 'a.com', 'user': 'u1'}
    >>> rare.count("user", "u1")
    2

    """

    RARE = "<rare>"

    def __init__(
        self,
        min_count: int = 2,
        fields: typing.Iterable[base.typing.FeatureName] | None = None,
        max_tracked: int | None = None,
    ) -> None:
        if not isinstance(min_count, numbers.Integral) or isinstance(min_count, bool):
            raise TypeError(f"min_count must be an int, got {type(min_count).__name__}")
        if min_count < 0:
            raise ValueError(f"min_count must be >= 0, got {min_count}")
        check_max_tracked(max_tracked)
        self.min_count = min_count
        self.fields = fields
        self.max_tracked = max_tracked

        self._fields = as_field_tuple(fields)
        self._counts: collections.OrderedDict[tuple[Any, Any], int] = collections.OrderedDict()

    @property
    def _supervised(self) -> bool:
        # Not about labels: river pipelines transform supervised steps *before* learning them,
        # which is the order that keeps the current event out of its own count.
        return True

    @classmethod
    def _unit_test_params(cls) -> typing.Iterator[dict[str, Any]]:
        yield {}
        yield {"min_count": 3, "fields": ("gallup", "rasmussen")}
        yield {"fields": ("ordinal_date", "gallup"), "max_tracked": 50}

    def count(self, field: base.typing.FeatureName, value: Any) -> int:
        """How many times `value` has been learned for `field` (0 when unknown or forgotten)."""
        return self._counts.get((field, value), 0)

    # Learning

    def _check_named_value(self, field: base.typing.FeatureName, value: Any) -> None:
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"{type(self).__name__}: field {field!r} must hold a hashable categorical value, "
                f"got {type(value).__name__} {value!r}"
            ) from None

    def _keys(self, x: dict[base.typing.FeatureName, Any]) -> list[tuple[Any, Any]]:
        if self._fields is None:
            return [(f, v) for f, v in x.items() if isinstance(v, str)]
        keys = []
        for field in self._fields:
            if field not in x:
                continue
            value = x[field]
            self._check_named_value(field, value)
            if not is_missing(value):
                keys.append((field, value))
        return keys

    def _learn_keys(self, keys: list[tuple[Any, Any]]) -> None:
        counts = self._counts
        for key in keys:
            # pop + insert moves the key to the most-recently-used end in O(1).
            counts[key] = counts.pop(key, 0) + 1
        if self.max_tracked is not None:
            while len(counts) > self.max_tracked:
                counts.popitem(last=False)

    def learn_one(self, x: dict[base.typing.FeatureName, Any], y: Any = None) -> None:
        """Count the categorical values of `x`. `y` is ignored."""
        self._learn_keys(self._keys(x))

    def learn_many(self, X: pd.DataFrame, y: pd.Series | None = None) -> None:
        """Count the categorical values of `X`, row by row. `y` is ignored."""
        # Keys are collected (and validated) for the whole batch first, so that a bad value
        # leaves the state unchanged.
        batch = [self._keys(x) for x in X.to_dict(orient="records")]
        for keys in batch:
            self._learn_keys(keys)

    # Transforming

    def _filter(self, field: base.typing.FeatureName, value: Any) -> Any:
        if self._counts.get((field, value), 0) < self.min_count:
            return self.RARE
        return value

    def transform_one(
        self, x: dict[base.typing.FeatureName, Any]
    ) -> dict[base.typing.FeatureName, Any]:
        if self._fields is None:
            return {f: self._filter(f, v) if isinstance(v, str) else v for f, v in x.items()}
        out = dict(x)
        for field in self._fields:
            if field not in x:
                continue
            value = x[field]
            self._check_named_value(field, value)
            if not is_missing(value):
                out[field] = self._filter(field, value)
        return out

    def transform_many(self, X: pd.DataFrame) -> pd.DataFrame:
        out = X.copy()
        columns = list(X.columns) if self._fields is None else [f for f in self._fields if f in X]
        for field in columns:
            values = X[field].tolist()
            if self._fields is None:
                if not any(isinstance(v, str) for v in values):
                    continue
                new = [self._filter(field, v) if isinstance(v, str) else v for v in values]
            else:
                new = []
                for value in values:
                    self._check_named_value(field, value)
                    new.append(value if is_missing(value) else self._filter(field, value))
            out[field] = object_column(new, X.index)
        return out
