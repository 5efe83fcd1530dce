"""Linear warm-up, then inverse-square-root decay."""

from __future__ import annotations

import math

from river_torchrec.optim.schedulers.base import Scheduler

__all__ = ["InverseSqrt"]


class InverseSqrt(Scheduler):
    r"""Warm up linearly, then decay as the inverse square root of time.

    With :math:`t` the number of events observed before a step and :math:`s = t + 1` (the
    step's first event, counted from 1),

    .. math::
        m(t) = \min\left(\frac{s}{w}, \sqrt{\frac{w}{s}}\right)

    where :math:`w` is ``warmup``: the multiplier climbs linearly to 1 over the first
    ``warmup`` events, peaks at ``s = warmup`` and then falls as :math:`1/\sqrt{s}`
    (the schedule of "Attention is all you need", normalised to peak at 1). The warm-up
    keeps the first, noisy steps of a fresh model small; ``warmup=1`` gives plain
    :math:`1/\sqrt{s}` decay.

    Parameters
    ----------
    warmup
        Length of the linear warm-up, in events (>= 1).

    Examples
    --------
    >>> from river_torchrec.optim.schedulers import InverseSqrt
    >>> sched = InverseSqrt(warmup=100)
    >>> sched.multiplier()  # s = 1
    0.01
    >>> sched.observe([0.5] * 99)
    >>> sched.multiplier()  # s = 100: the peak
    1.0
    >>> sched.observe([0.5] * 300)
    >>> sched.multiplier()  # s = 400: sqrt(100 / 400)
    0.5

    """

    def __init__(self, warmup: int = 1000) -> None:
        super().__init__()
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an integer >= 1, got {warmup!r}")
        self.warmup = warmup

    def multiplier(self) -> float:
        s = self.n_events + 1
        return min(s / self.warmup, math.sqrt(self.warmup / s))

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"warmup": 1}
