"""Exponential decay of the learning rate towards a floor."""

from __future__ import annotations

import math

from river_torchrec.optim.schedulers.base import Scheduler

__all__ = ["ExponentialDecay"]


class ExponentialDecay(Scheduler):
    r"""Halve the distance to a floor every ``half_life`` events.

    With :math:`t` the number of events observed before a step,

    .. math::
        m(t) = f + (1 - f)\, 2^{-t / h}

    where :math:`h` is ``half_life`` and :math:`f` is ``floor``. The floor keeps a stream
    learner able to adapt however long it runs; ``floor=0`` decays to nothing.

    Parameters
    ----------
    half_life
        Events after which the multiplier has come half-way down to ``floor`` (> 0).
    floor
        The limit of the multiplier, in [0, 1].

    Examples
    --------
    >>> from river_torchrec.optim.schedulers import ExponentialDecay
    >>> sched = ExponentialDecay(half_life=1_000, floor=0.2)
    >>> sched.multiplier()
    1.0
    >>> sched.observe([0.5] * 1_000)
    >>> sched.multiplier()  # 0.2 + 0.8 / 2
    0.6
    >>> sched.observe([0.5] * 1_000)
    >>> sched.multiplier()  # 0.2 + 0.8 / 4
    0.4

    """

    def __init__(self, half_life: float = 10_000, floor: float = 0.1) -> None:
        super().__init__()
        if not (isinstance(half_life, (int, float)) and math.isfinite(half_life) and half_life > 0):
            raise ValueError(f"half_life must be a finite number > 0, got {half_life!r}")
        if not (isinstance(floor, (int, float)) and 0.0 <= floor <= 1.0):
            raise ValueError(f"floor must be in [0, 1], got {floor!r}")
        self.half_life = half_life
        self.floor = floor

    def multiplier(self) -> float:
        return self.floor + (1.0 - self.floor) * 0.5 ** (self.n_events / self.half_life)

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"half_life": 50, "floor": 0.0}
