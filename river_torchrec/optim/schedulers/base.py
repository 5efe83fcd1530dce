"""The scheduler protocol: a multiplier of the updater's learning rate, fed with per-event losses."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING

from river import base

if TYPE_CHECKING:
    from river_torchrec.optim.base import Updater

__all__ = ["Scheduler"]


class Scheduler(base.Base, abc.ABC):
    """Base class of learning-rate schedulers.

    :class:`~river_torchrec.CTRClassifier` reads :meth:`multiplier` before each step
    (the step uses ``updater.lr * multiplier()``) and, after the step, calls
    :meth:`observe` with the loss of each event of the step, computed before the update
    (the progressive, out-of-sample loss) and with the updater, which a drift-aware
    scheduler may reset.

    """

    def __init__(self) -> None:
        self.n_events = 0

    @abc.abstractmethod
    def multiplier(self) -> float:
        """Factor applied to the updater's base learning rate for the next step."""

    def observe(self, losses: Sequence[float], updater: Updater | None = None) -> None:
        """Record the losses of the events of the last step."""
        self.n_events += len(losses)
