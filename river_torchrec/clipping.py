"""Clip numeric features to a robust running scale, so one corrupted value cannot wreck a model."""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable

import numpy as np

__all__ = ["NumericClipper"]

Parsed = list[tuple[Hashable, Hashable, float]]


class NumericClipper:
    r"""Clip each numeric field to :math:`\pm k` times a running scale of its magnitudes.

    The scale of a field is a running geometric mean of its nonzero magnitudes, kept in
    the log domain. It starts as the median of the first ``warmup`` nonzero magnitudes
    (nothing is clipped before), then moves with every value learned:

    .. math::
        s \leftarrow s + r_n \left(\min(\log|x|,\ s + \log k) - s\right),\quad
        r_n = \max(1/n,\ \text{decay})

    A value is clipped to :math:`\pm k e^s` *before* the update, and the update uses the
    clipped magnitude, so an outlier of any size moves the scale by at most
    :math:`r_n \log k` in the log domain: a 1% share of values a million times too large
    inflates the scale by about 5% for ``k=100``. Zeros are never clipped and do not move
    the scale, so a sparse field (mostly zeros) keeps the scale of its nonzero values.
    The cost is O(1) per value and the state is two floats per field.

    Parameters
    ----------
    k
        Clip bound, in multiples of the scale.
    warmup
        Nonzero values of a field seen (and never clipped) before its scale is set.
    decay
        Smallest update rate of the scale: the scale forgets with a horizon of about
        ``1 / decay`` values, so it follows a field whose range drifts.

    Examples
    --------
    >>> clipper = NumericClipper(k=10, warmup=3)
    >>> [clipper.clip("price", v, learn=True) for v in (2.0, 4.0, 8.0)]
    [2.0, 4.0, 8.0]
    >>> clipper.scale("price")
    4.0
    >>> clipper.clip("price", -1e6, learn=False)
    -40.0
    >>> clipper.clip("unseen", 1e6, learn=False)
    1000000.0

    """

    def __init__(self, k: float = 100.0, warmup: int = 20, decay: float = 1e-3) -> None:
        if not k > 1:
            raise ValueError(f"k must be > 1, got {k!r}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup!r}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        self.k = k
        self.warmup = warmup
        self.decay = decay
        self._log_k = math.log(k)
        # field -> [log scale, values seen, log magnitudes while warming up (else None)]
        self._stats: dict[Hashable, list] = {}

    def scale(self, field: Hashable) -> float | None:
        """The scale of a field, or None while it is warming up."""
        st = self._stats.get(field)
        return None if st is None or st[2] is not None else math.exp(st[0])

    def clip(self, field: Hashable, value: float, learn: bool) -> float:
        """The clipped value; when learning, the field's scale is then updated."""
        if value == 0:
            return value
        st = self._stats.get(field)
        if st is None:
            if not learn:
                return value
            st = self._stats[field] = [0.0, 0, []]
        log_a = math.log(abs(value))
        if st[2] is not None:
            if learn:
                st[1] += 1
                st[2].append(log_a)
                if len(st[2]) >= self.warmup:
                    st[0], st[2] = statistics.median(st[2]), None
            return value
        bound = st[0] + self._log_k
        if learn:
            st[1] += 1
            st[0] += max(1.0 / st[1], self.decay) * (min(log_a, bound) - st[0])
        return math.copysign(math.exp(bound), value) if log_a > bound else value

    def clip_event(self, parsed: Parsed, learn: bool) -> Parsed:
        """Clip the numeric values (value key ``None``) of a parsed event."""
        out = parsed
        for i, (field, key, value) in enumerate(parsed):
            if key is None:
                clipped = self.clip(field, value, learn)
                if clipped != value:
                    if out is parsed:
                        out = list(parsed)
                    out[i] = (field, key, clipped)
        return out

    def clip_array(self, field: Hashable, x: np.ndarray, learn: bool) -> np.ndarray:
        """Clip a column of a frame (NaN is missing and kept).

        When learning, the scale moves once for the whole column, by the mean of the
        clipped log magnitudes with the weight that ``len(x)`` single updates would give it.
        """
        a = np.abs(x)
        nonzero = np.isfinite(a) & (a > 0)
        st = self._stats.get(field)
        if st is not None and st[2] is None:
            limit = math.exp(st[0] + self._log_k)
            x = np.where(nonzero & (a > limit), np.copysign(limit, x), x)
        if not learn or not nonzero.any():
            return x
        logs = np.log(a[nonzero])
        if st is None:
            st = self._stats[field] = [0.0, 0, []]
        if st[2] is not None:
            take = logs[: self.warmup - len(st[2])]
            st[2].extend(take.tolist())
            st[1] += len(take)
            logs = logs[len(take) :]
            if len(st[2]) >= self.warmup:
                st[0], st[2] = statistics.median(st[2]), None
            if st[2] is not None or not len(logs):
                return x
        target = float(np.minimum(logs, st[0] + self._log_k).mean())
        n = len(logs)
        rate = max(1.0 / (st[1] + 1), self.decay)
        st[1] += n
        st[0] += (1.0 - (1.0 - rate) ** n) * (target - st[0])
        return x
