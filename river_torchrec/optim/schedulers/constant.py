"""A constant learning rate."""

from __future__ import annotations

from river_torchrec.optim.schedulers.base import Scheduler

__all__ = ["Constant"]


class Constant(Scheduler):
    """Keep the updater's learning rate as it is: ``multiplier() == 1``.

    Examples
    --------
    >>> from river_torchrec.optim.schedulers import Constant
    >>> Constant().multiplier()
    1.0

    """

    def multiplier(self) -> float:
        return 1.0
