"""Learning-rate schedulers, time-based and drift-aware."""

from __future__ import annotations

from river_torchrec.optim.schedulers.base import Scheduler
from river_torchrec.optim.schedulers.constant import Constant

__all__ = ["Constant", "Scheduler"]
