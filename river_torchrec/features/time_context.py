"""Calendar and recency features from event timestamps."""

from __future__ import annotations

import collections
import datetime as dt
import math
import typing
from typing import Any

import numpy as np
import pandas as pd
from river import base

from ._common import check_max_tracked, is_missing, is_number, object_column

__all__ = ["TimeContext", "WEEKDAYS"]

#: Weekday tokens, indexed by `datetime.weekday()` (Monday is 0).
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

_SECONDS_PER_DAY = 86_400
# 1970-01-01, day 0 of the Unix epoch, was a Thursday.
_EPOCH_WEEKDAY = 3


class TimeContext(base.MiniBatchTransformer):
    """Hour of day, day of week and time since the user or item was last seen.

    From the timestamp in `timestamp_field`, the transformer adds:

    * `hour_name`: the hour of day in UTC, as a string `"0"` to `"23"`;
    * `weekday_name`: the day of week in UTC, as a string `"mon"` to `"sun"`.

    Both are categorical strings, so that downstream models treat them as categories rather than
    as magnitudes (hour 23 is not "more" than hour 0).

    When `user_field` (resp. `item_field`) is given, it also adds `user_gap_name` (resp.
    `item_gap_name`): the number of seconds (a float) between the event's timestamp and the most
    recent timestamp learned for the same user (resp. item). A user never seen (or forgotten)
    gives no gap: the key is left out of the output of `transform_one` and is NaN in
    `transform_many`. Learning keeps the *latest* timestamp, so a late event does not move it
    back; a gap can be negative when an event is older than the last one learned.

    **Timestamps.** Either epoch seconds (int or float, UTC) or `datetime` objects (including
    `pd.Timestamp` and `np.datetime64`): an aware datetime is converted to UTC, a naive one is
    taken to be UTC already. A missing timestamp (absent, None, NaN, `NaT`) gives no time
    features and is not learned. A timestamp of any other type (str, bool, `date`...) raises a
    `TypeError`, and an infinite one a `ValueError`, naming the field; so does an unhashable user
    or item. On any error, neither `learn_one` nor `learn_many` changes the state.

    **What is learned.** `learn_one` records the last-seen timestamps; `transform_one` is pure and
    only reads what was learned before it is called, so the current event is never its own "last
    seen". For this reason the transformer reports `_supervised = True` (the label is ignored): a
    river `Pipeline` then calls `transform_one` before `learn_one` on each event, as it does for
    supervised transformers. Otherwise a pipeline would learn the event first, and every gap seen
    in training would be 0.

    **Memory.** With `max_tracked=n`, at most `n` users and `n` items are remembered; the least
    recently learned are forgotten first (an `OrderedDict`, O(1) per event).

    All original fields, the timestamp included, are kept.

    Parameters
    ----------
    timestamp_field
        The field holding the event time.
    user_field
        The field holding the user id, if any.
    item_field
        The field holding the item id, if any.
    hour_name
        Name of the hour-of-day output.
    weekday_name
        Name of the day-of-week output.
    user_gap_name
        Name of the seconds-since-user-last-seen output.
    item_gap_name
        Name of the seconds-since-item-last-seen output.
    max_tracked
        Maximum number of users, and of items, remembered. `None` means no bound.

    Examples
    --------

    >>> import datetime as dt
    >>> from river_torchrec.features import TimeContext

    >>> context = TimeContext(user_field="user")
    >>> stream = [
    ...     {"timestamp": 1_700_000_000, "user": "u1"},  # Tuesday 2023-11-14 22:13:20 UTC
    ...     {"timestamp": 1_700_000_090, "user": "u1"},
    ...     {"timestamp": dt.datetime(2023, 11, 15, 1, 0), "user": "u1"},
    ... ]
    >>> for x in stream:
    ...     print(context.transform_one(x))
    ...     context.learn_one(x)
    {'timestamp': 1700000000, 'user': 'u1', 'hour': '22', 'weekday': 'tue'}
    {'timestamp': 1700000090, 'user': 'u1', 'hour': '22', 'weekday': 'tue', 'secs_since_user': 90.0}
    {'timestamp': datetime.datetime(2023, 11, 15, 1, 0), 'user': 'u1', 'hour': '1',
     'weekday': 'wed', 'secs_since_user': 9910.0}

    Aware datetimes are converted to UTC:

    >>> paris = dt.timezone(dt.timedelta(hours=1))
    >>> context.transform_one({"timestamp": dt.datetime(2023, 11, 15, 0, 30, tzinfo=paris)})
    {'timestamp': datetime.datetime(2023, 11, 15, 0, 30, tzinfo=...), 'hour': '23',
     'weekday': 'tue'}

    """

    def __init__(
        self,
        timestamp_field: base.typing.FeatureName = "timestamp",
        user_field: base.typing.FeatureName | None = None,
        item_field: base.typing.FeatureName | None = None,
        hour_name: base.typing.FeatureName = "hour",
        weekday_name: base.typing.FeatureName = "weekday",
        user_gap_name: base.typing.FeatureName = "secs_since_user",
        item_gap_name: base.typing.FeatureName = "secs_since_item",
        max_tracked: int | None = None,
    ) -> None:
        check_max_tracked(max_tracked)
        names = [hour_name, weekday_name]
        for id_field, gap_name in ((user_field, user_gap_name), (item_field, item_gap_name)):
            if id_field is not None:
                names.append(gap_name)
        if len(set(names)) != len(names):
            raise ValueError(f"output names must be distinct, got {names}")
        self.timestamp_field = timestamp_field
        self.user_field = user_field
        self.item_field = item_field
        self.hour_name = hour_name
        self.weekday_name = weekday_name
        self.user_gap_name = user_gap_name
        self.item_gap_name = item_gap_name
        self.max_tracked = max_tracked

        # (id field, output name, last-seen store) for each of user and item that is enabled.
        self._trackers: tuple[tuple[Any, Any, collections.OrderedDict], ...] = tuple(
            (field, name, collections.OrderedDict())
            for field, name in ((user_field, user_gap_name), (item_field, item_gap_name))
            if field is not None
        )

    @property
    def _supervised(self) -> bool:
        # Not about labels: river pipelines transform supervised steps *before* learning them,
        # which is the order that keeps the current event from being its own "last seen".
        return True

    @classmethod
    def _unit_test_params(cls) -> typing.Iterator[dict[str, Any]]:
        yield {}
        yield {
            "timestamp_field": "ordinal_date",
            "user_field": "gallup",
            "item_field": "rasmussen",
            "max_tracked": 100,
        }

    @classmethod
    def _unit_test_skips(cls) -> set[str]:
        return {
            # River's check reads a key missing from transform_one's output as 0.0, whereas
            # transform_many marks a never-seen user's gap as NaN, so the two can only agree on
            # streams where every user was seen before. tests/features/test_time_context.py checks
            # the equivalence with a comparison that treats "absent" and NaN alike.
            "check_transform_many_matches_transform_one",
        }

    def last_seen(self, kind: str, key: Any) -> float | None:
        """Epoch seconds at which the user (`kind="user"`) or item (`kind="item"`) was last seen."""
        if kind not in ("user", "item"):
            raise ValueError(f"kind must be 'user' or 'item', got {kind!r}")
        name = self.user_gap_name if kind == "user" else self.item_gap_name
        for _, tracked_name, store in self._trackers:
            if tracked_name == name:
                return store.get(key)
        return None

    # Parsing

    def _error_prefix(self, field: base.typing.FeatureName) -> str:
        return f"{type(self).__name__}: field {field!r}"

    def _seconds(self, x: dict[base.typing.FeatureName, Any]) -> float | None:
        """Epoch seconds (UTC) of the event, or None when it has no timestamp."""
        value = x.get(self.timestamp_field)
        if is_missing(value):
            return None
        if isinstance(value, np.datetime64):
            if np.isnat(value):
                return None
            value = pd.Timestamp(value)
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.timezone.utc)
            return value.timestamp()
        if is_number(value):
            seconds = float(value)
            if not math.isfinite(seconds):
                raise ValueError(
                    f"{self._error_prefix(self.timestamp_field)} must be a finite timestamp, "
                    f"got {value!r}"
                )
            return seconds
        raise TypeError(
            f"{self._error_prefix(self.timestamp_field)} must hold epoch seconds (int or float) "
            f"or a datetime, got {type(value).__name__} {value!r}"
        )

    def _ids(self, x: dict[base.typing.FeatureName, Any]) -> list[Any]:
        """The user/item ids of `x` (None where missing), one per tracker."""
        ids = []
        for field, _, _ in self._trackers:
            value = x.get(field)
            if is_missing(value):
                ids.append(None)
                continue
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    f"{self._error_prefix(field)} must hold a hashable id, "
                    f"got {type(value).__name__} {value!r}"
                ) from None
            ids.append(value)
        return ids

    # Learning

    def _learn(self, seconds: float | None, ids: list[Any]) -> None:
        if seconds is None:
            return
        for (_, _, store), key in zip(self._trackers, ids):
            if key is None:
                continue
            previous = store.pop(key, None)
            # pop + insert moves the key to the most-recently-used end in O(1).
            store[key] = seconds if previous is None else max(previous, seconds)
            if self.max_tracked is not None and len(store) > self.max_tracked:
                store.popitem(last=False)

    def learn_one(self, x: dict[base.typing.FeatureName, Any], y: Any = None) -> None:
        """Record when the event's user and item were seen. `y` is ignored."""
        self._learn(self._seconds(x), self._ids(x))

    def learn_many(self, X: pd.DataFrame, y: pd.Series | None = None) -> None:
        """Record last-seen timestamps from `X`, row by row. `y` is ignored."""
        # Parse the whole batch before learning, so that a bad row leaves the state unchanged.
        parsed = [(self._seconds(x), self._ids(x)) for x in X.to_dict(orient="records")]
        for seconds, ids in parsed:
            self._learn(seconds, ids)

    # Transforming

    def _features(
        self, x: dict[base.typing.FeatureName, Any]
    ) -> dict[base.typing.FeatureName, Any]:
        seconds = self._seconds(x)
        ids = self._ids(x)
        if seconds is None:
            return {}
        day, rest = divmod(seconds, _SECONDS_PER_DAY)
        features: dict[base.typing.FeatureName, Any] = {
            self.hour_name: str(int(rest // 3600)),
            self.weekday_name: WEEKDAYS[int((day + _EPOCH_WEEKDAY) % 7)],
        }
        for (_, name, store), key in zip(self._trackers, ids):
            if key is None:
                continue
            last = store.get(key)
            if last is not None:
                features[name] = seconds - last
        return features

    def transform_one(
        self, x: dict[base.typing.FeatureName, Any]
    ) -> dict[base.typing.FeatureName, Any]:
        out = dict(x)
        out.update(self._features(x))
        return out

    def transform_many(self, X: pd.DataFrame) -> pd.DataFrame:
        rows = [self._features(x) for x in X.to_dict(orient="records")]
        out = X.copy()
        for name in (self.hour_name, self.weekday_name):
            out[name] = object_column([row.get(name) for row in rows], X.index)
        for _, name, _ in self._trackers:
            out[name] = pd.Series(
                [row.get(name, np.nan) for row in rows], index=X.index, dtype="float64"
            )
        return out
