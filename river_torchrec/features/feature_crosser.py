"""Crosses of categorical features."""

from __future__ import annotations

import typing
from typing import Any

import pandas as pd
from river import base

from ._common import is_missing, object_column

__all__ = ["FeatureCrosser", "CROSS_SEPARATOR"]

#: Joins field names and values in a cross. U+00D7 MULTIPLICATION SIGN, unlikely to occur in ids.
CROSS_SEPARATOR = "\u00d7"


def _normalise_groups(pairs: Any) -> tuple[tuple[base.typing.FeatureName, ...], ...]:
    if isinstance(pairs, (str, bytes)):
        raise TypeError("pairs must be a sequence of tuples of field names, got a string")
    try:
        groups = [group for group in pairs]
    except TypeError:
        raise TypeError(
            f"pairs must be a sequence of tuples of field names, got {type(pairs).__name__}"
        ) from None
    normalised = []
    for group in groups:
        # A single pair passed without the outer sequence, e.g. `FeatureCrosser(("a", "b"))`,
        # shows up as a group that is a string: refuse it rather than cross characters.
        if isinstance(group, (str, bytes)) or not isinstance(group, (tuple, list)):
            raise TypeError(
                "pairs must be a sequence of tuples of field names, e.g. [('user', 'item')]; "
                f"got an element {group!r}"
            )
        if len(group) < 2:
            raise ValueError(f"a cross needs at least two fields, got {tuple(group)!r}")
        normalised.append(tuple(group))
    return tuple(normalised)


class FeatureCrosser(base.MiniBatchTransformer):
    """Add crosses (conjunctions) of categorical features.

    Each group of fields `(a, b, ...)` adds a new field named `f"{a}×{b}×..."` whose value is
    `f"{x[a]}×{x[b]}×..."`, the values rendered with `str`. The separator is `×` (U+00D7).
    Original fields are kept. Groups may hold more than two fields.

    A cross is missing as soon as one of its parts is: when a field is absent, None, NaN or
    `pd.NA`, the crossed key is left out of the output of `transform_one`, and `transform_many`
    puts None in the (object) column.

    Because values are rendered with `str`, `1` and `1.0` give different crosses. In
    `transform_many` an integer column holding a missing value has been turned into floats by
    pandas, and crosses then read `"1.0"`; cast such columns to a nullable integer or string
    dtype if they must match `transform_one` on the original dicts. Any value can be rendered, so
    this transformer raises only on malformed `pairs`, when it is created. A crossed name that
    already is a field of `x` is overwritten.

    The transformer is stateless: `learn_one` and `learn_many` do nothing.

    Parameters
    ----------
    pairs
        A sequence of tuples of field names, e.g. `[("user_id", "item_category")]`.

    Examples
    --------

    >>> from river_torchrec.features import FeatureCrosser

    >>> crosser = FeatureCrosser([("user_id", "item_category"), ("device", "hour", "site")])
    >>> crosser.transform_one({"user_id": 42, "item_category": "shoes", "device": "ios"})
    {'user_id': 42, 'item_category': 'shoes', 'device': 'ios',
     'user_id×item_category': '42×shoes'}

    >>> import pandas as pd
    >>> X = pd.DataFrame({"user_id": ["u1", None], "item_category": ["shoes", "hats"],
    ...                   "device": ["ios", "web"], "hour": [13, 14], "site": ["a", "b"]})
    >>> crosser.transform_many(X)[["user_id×item_category", "device×hour×site"]]
      user_id×item_category device×hour×site
    0              u1×shoes         ios×13×a
    1                  None         web×14×b

    """

    def __init__(self, pairs: typing.Sequence[tuple[base.typing.FeatureName, ...]]) -> None:
        self.pairs = pairs
        self._groups = _normalise_groups(pairs)
        self._names = tuple(CROSS_SEPARATOR.join(map(str, group)) for group in self._groups)

    @classmethod
    def _unit_test_params(cls) -> typing.Iterator[dict[str, Any]]:
        yield {"pairs": (("gallup", "ipsos"),)}
        yield {"pairs": (("gallup", "rasmussen", "you_gov"), ("ordinal_date", "ipsos"))}

    @property
    def crossed_names(self) -> tuple[str, ...]:
        """The names of the fields this transformer adds, in the order of `pairs`."""
        return self._names

    def transform_one(
        self, x: dict[base.typing.FeatureName, Any]
    ) -> dict[base.typing.FeatureName, Any]:
        out = dict(x)
        for name, group in zip(self._names, self._groups):
            parts = []
            for field in group:
                value = x.get(field)
                if is_missing(value):
                    break
                parts.append(str(value))
            else:
                out[name] = CROSS_SEPARATOR.join(parts)
        return out

    def transform_many(self, X: pd.DataFrame) -> pd.DataFrame:
        out = X.copy()
        n = len(X)
        for name, group in zip(self._names, self._groups):
            if not all(field in X.columns for field in group):
                values: list = [None] * n
            else:
                columns = [X[field].tolist() for field in group]
                values = [
                    None
                    if any(is_missing(v) for v in row)
                    else CROSS_SEPARATOR.join(str(v) for v in row)
                    for row in zip(*columns)
                ]
            out[name] = object_column(values, X.index)
        return out
