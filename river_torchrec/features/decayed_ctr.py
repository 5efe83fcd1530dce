"""Time-decayed, smoothed click-through rate per categorical value."""

from __future__ import annotations

import collections
import math
import typing
from typing import Any

import numpy as np
import pandas as pd
from river import base

from ._common import as_field_tuple, check_max_tracked, is_missing, is_number

__all__ = ["DecayedCTREncoder"]


class DecayedCTREncoder(base.SupervisedTransformer, base.MiniBatchSupervisedTransformer):
    """Encode categorical values by their time-decayed, smoothed click-through rate.

    For each value of each field, the encoder tracks exponentially decayed clicks `c` and
    impressions `n`. Time is the number of `learn_one` calls: after `half_life` further events, an
    event weighs half as much. Decay is lazy: each value stores the step of its last update and is
    brought up to date when it is read or written, so an event costs O(number of fields) whatever
    the number of tracked values.

    For each field present in `x` it outputs two numeric features:

    * `f"{field}_ctr"` = `(c + prior_strength * g) / (n + prior_strength)`, where `g` is the
      global CTR, itself decayed the same way over all events (`g = 0.5` before any label). An
      unseen value therefore gets `g`.
    * `f"{field}_log_imps"` = `log(1 + n)`, so the model can tell confident rates from priors.

    **Leakage.** `transform_one` is pure and only uses the labels learned before it is called.
    Call it *before* `learn_one` on each event (progressive validation); a river `Pipeline` does
    this for supervised transformers. Learning first would let the encoding of a rare value (e.g.
    an event id) reveal that event's own label.

    **Labels.** `y` is the click: a bool, or a finite number >= 0 (1/0, or a click count for
    aggregated events; numbers above 1 are accepted and simply weigh more). Anything else raises a
    `TypeError` or `ValueError`.

    **Other values.** A field that is absent, None, NaN or `pd.NA` gives no output (and is not
    learned); `transform_many` puts NaN in its columns. Values are keyed as Python keys are, so
    `1`, `1.0` and `True` share statistics. An unhashable value raises a `TypeError` naming the
    field. On any error, neither `learn_one` nor `learn_many` changes the state.

    **Memory.** With `max_tracked=n`, at most `n` (field, value) statistics are kept across all
    fields; the least recently learned are forgotten and start again from the prior.

    `learn_many` is a `learn_one` loop over the rows, in order; `transform_many` gives the values
    of `transform_one`.

    Parameters
    ----------
    fields
        The categorical fields to encode.
    half_life
        Number of events after which a click or impression weighs half. `math.inf` disables decay.
    prior_strength
        Weight, in impressions, of the global CTR prior. Must be > 0.
    max_tracked
        Maximum number of (field, value) statistics kept. `None` means no bound.
    keep_original
        Whether to keep the encoded fields in the output.

    Examples
    --------

    >>> from river_torchrec.features import DecayedCTREncoder

    With `half_life=1`, each event halves the weight of the past:

    >>> encoder = DecayedCTREncoder(fields=["ad"], half_life=1, prior_strength=1.0)
    >>> stream = [({"ad": "a"}, True), ({"ad": "a"}, False), ({"ad": "b"}, True)]
    >>> for x, y in stream:
    ...     print(encoder.transform_one({"ad": "a"}))
    ...     encoder.learn_one(x, y)
    {'ad': 'a', 'ad_ctr': 0.5, 'ad_log_imps': 0.0}
    {'ad': 'a', 'ad_ctr': 1.0, 'ad_log_imps': 0.6931...}
    {'ad': 'a', 'ad_ctr': 0.3333..., 'ad_log_imps': 0.9162...}
    >>> encoder.transform_one({"ad": "a"})
    {'ad': 'a', 'ad_ctr': 0.5510..., 'ad_log_imps': 0.5596...}
    >>> encoder.global_ctr
    0.7142...

    An unseen value gets the global CTR:

    >>> encoder.transform_one({"ad": "z"})
    {'ad': 'z', 'ad_ctr': 0.7142..., 'ad_log_imps': 0.0}

    """

    #: Global CTR used before any label has been learned.
    DEFAULT_CTR = 0.5

    def __init__(
        self,
        fields: typing.Iterable[base.typing.FeatureName],
        half_life: float = 10_000,
        prior_strength: float = 10.0,
        max_tracked: int | None = None,
        keep_original: bool = True,
    ) -> None:
        if fields is None:
            raise TypeError("fields must name the categorical fields to encode")
        if not is_number(half_life) or not half_life > 0:
            raise ValueError(f"half_life must be a number > 0, got {half_life!r}")
        if not is_number(prior_strength) or not (0 < prior_strength < math.inf):
            raise ValueError(f"prior_strength must be a finite number > 0, got {prior_strength!r}")
        check_max_tracked(max_tracked)
        self.fields = fields
        self.half_life = half_life
        self.prior_strength = prior_strength
        self.max_tracked = max_tracked
        self.keep_original = keep_original

        self._fields: tuple = as_field_tuple(fields)  # type: ignore[assignment]
        self._names = tuple((f"{f}_ctr", f"{f}_log_imps") for f in self._fields)
        self._gamma = 0.5 ** (1.0 / half_life)
        self._step = 0
        self._global_clicks = 0.0
        self._global_imps = 0.0
        # (field, value) -> [decayed clicks, decayed impressions, step of last update]
        self._stats: collections.OrderedDict[tuple[Any, Any], list] = collections.OrderedDict()

    @classmethod
    def _unit_test_params(cls) -> typing.Iterator[dict[str, Any]]:
        yield {"fields": ("gallup",)}
        yield {
            "fields": ("gallup", "ordinal_date"),
            "half_life": 50,
            "prior_strength": 2.0,
            "max_tracked": 20,
            "keep_original": False,
        }

    @property
    def global_ctr(self) -> float:
        """The decayed CTR over all learned events (`DEFAULT_CTR` before any)."""
        if self._global_imps == 0.0:
            return self.DEFAULT_CTR
        return self._global_clicks / self._global_imps

    # Learning

    def _click(self, y: Any) -> float:
        if isinstance(y, (bool, np.bool_)):
            return float(y)
        if not is_number(y):
            raise TypeError(
                f"{type(self).__name__}: y must be a bool or a number, got {type(y).__name__} {y!r}"
            )
        click = float(y)
        if not (math.isfinite(click) and click >= 0.0):
            raise ValueError(f"{type(self).__name__}: y must be finite and >= 0, got {y!r}")
        return click

    def _check_hashable(self, field: base.typing.FeatureName, value: Any) -> None:
        try:
            hash(value)
        except TypeError:
            raise TypeError(
                f"{type(self).__name__}: field {field!r} must hold a hashable categorical "
                f"value, got {type(value).__name__} {value!r}"
            ) from None

    def _keys(self, x: dict[base.typing.FeatureName, Any]) -> list[tuple[Any, Any]]:
        keys = []
        for field in self._fields:
            value = x.get(field)
            if not is_missing(value):
                self._check_hashable(field, value)
                keys.append((field, value))
        return keys

    def _learn(self, keys: list[tuple[Any, Any]], click: float) -> None:
        self._step += 1
        step, gamma = self._step, self._gamma
        self._global_clicks = self._global_clicks * gamma + click
        self._global_imps = self._global_imps * gamma + 1.0
        stats = self._stats
        for key in keys:
            # pop + insert moves the key to the most-recently-used end in O(1).
            s = stats.pop(key, None)
            if s is None:
                s = [click, 1.0, step]
            else:
                decay = gamma ** (step - s[2])
                s[0] = s[0] * decay + click
                s[1] = s[1] * decay + 1.0
                s[2] = step
            stats[key] = s
        if self.max_tracked is not None:
            while len(stats) > self.max_tracked:
                stats.popitem(last=False)

    def learn_one(self, x: dict[base.typing.FeatureName, Any], y: base.typing.Target) -> None:
        click = self._click(y)
        self._learn(self._keys(x), click)

    def learn_many(self, X: pd.DataFrame, y: pd.Series) -> None:
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        # Validate the whole batch before learning, so that a bad row leaves the state unchanged.
        clicks = [self._click(label) for label in list(y)]
        rows = [self._keys(x) for x in X.to_dict(orient="records")]
        for keys, click in zip(rows, clicks):
            self._learn(keys, click)

    # Transforming

    def _encode(
        self, field: base.typing.FeatureName, value: Any, prior: float
    ) -> tuple[float, float]:
        s = self._stats.get((field, value))
        if s is None:
            clicks = imps = 0.0
        else:
            decay = self._gamma ** (self._step - s[2])
            clicks, imps = s[0] * decay, s[1] * decay
        ctr = (clicks + self.prior_strength * prior) / (imps + self.prior_strength)
        return ctr, math.log1p(imps)

    def transform_one(
        self, x: dict[base.typing.FeatureName, Any]
    ) -> dict[base.typing.FeatureName, Any]:
        out = dict(x)
        prior = self.global_ctr
        for field, (ctr_name, imps_name) in zip(self._fields, self._names):
            value = x.get(field)
            if not self.keep_original:
                out.pop(field, None)
            if is_missing(value):
                continue
            self._check_hashable(field, value)
            out[ctr_name], out[imps_name] = self._encode(field, value, prior)
        return out

    def transform_many(self, X: pd.DataFrame) -> pd.DataFrame:
        prior = self.global_ctr
        n = len(X)
        new_columns = {}
        for field, (ctr_name, imps_name) in zip(self._fields, self._names):
            values = X[field].tolist() if field in X.columns else [None] * n
            ctrs = np.full(n, np.nan)
            log_imps = np.full(n, np.nan)
            for i, value in enumerate(values):
                if is_missing(value):
                    continue
                self._check_hashable(field, value)
                ctrs[i], log_imps[i] = self._encode(field, value, prior)
            new_columns[ctr_name] = ctrs
            new_columns[imps_name] = log_imps
        if self.keep_original:
            out = X.copy()
        else:
            out = X.drop(columns=[f for f in self._fields if f in X.columns])
        for name, column in new_columns.items():
            out[name] = pd.Series(column, index=X.index)
        return out
