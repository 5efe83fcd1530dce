"""Cosine annealing with warm restarts (SGDR), in events."""

from __future__ import annotations

import math

from river_torchrec.optim.schedulers.base import Scheduler

__all__ = ["CosineRestarts"]


class CosineRestarts(Scheduler):
    r"""Cosine annealing from 1 down to ``min_multiplier``, restarting every cycle.

    Cycle :math:`i` (from 0) lasts :math:`T_i = p \cdot r^i` events, :math:`p` being
    ``period`` and :math:`r` ``period_mult``. With :math:`\tau` the number of events
    observed since the current cycle started (the stream's first event starts cycle 0),

    .. math::
        m = m_{\min} + (1 - m_{\min})\, \frac{1 + \cos(\pi \tau / T_i)}{2}

    as in SGDR (Loshchilov & Hutter, 2017) and ``torch.optim.lr_scheduler.CosineAnnealingWarmRestarts``
    with epochs replaced by events. The restarts give a stream learner regular windows of
    large steps, which is a blind way of adapting to drift.

    Parameters
    ----------
    period
        Events in the first cycle (>= 1).
    min_multiplier
        The multiplier at the end of each cycle, in [0, 1].
    period_mult
        Factor by which each cycle is longer than the previous one (>= 1).

    Examples
    --------
    >>> from river_torchrec.optim.schedulers import CosineRestarts
    >>> sched = CosineRestarts(period=100, min_multiplier=0.0)
    >>> sched.multiplier()
    1.0
    >>> sched.observe([0.5] * 50)
    >>> sched.multiplier()  # half-way down the first cycle
    0.5
    >>> sched.observe([0.5] * 50)
    >>> sched.multiplier()  # a new cycle starts
    1.0

    References
    ----------
    Loshchilov, I. and Hutter, F. (2017). SGDR: Stochastic gradient descent with warm restarts.
    ICLR.

    """

    def __init__(self, period: int = 10_000, min_multiplier: float = 0.1, period_mult: float = 1) -> None:
        super().__init__()
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise ValueError(f"period must be an integer >= 1, got {period!r}")
        if not (isinstance(min_multiplier, (int, float)) and 0.0 <= min_multiplier <= 1.0):
            raise ValueError(f"min_multiplier must be in [0, 1], got {min_multiplier!r}")
        if not (isinstance(period_mult, (int, float)) and math.isfinite(period_mult) and period_mult >= 1):
            raise ValueError(f"period_mult must be a finite number >= 1, got {period_mult!r}")
        self.period = period
        self.min_multiplier = min_multiplier
        self.period_mult = period_mult

    def _position(self) -> tuple[float, float]:
        """Events since the current cycle started, and the cycle's length."""
        t = self.n_events
        if self.period_mult == 1:
            return t % self.period, self.period
        # Cycles grow geometrically, so this walks O(log t) cycles.
        start, length = 0.0, float(self.period)
        while t >= start + length:
            start += length
            length *= self.period_mult
        return t - start, length

    def multiplier(self) -> float:
        tau, length = self._position()
        lo = self.min_multiplier
        return lo + (1.0 - lo) * (1.0 + math.cos(math.pi * tau / length)) / 2.0

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"period": 10, "min_multiplier": 0.0, "period_mult": 2}
