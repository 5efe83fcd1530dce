"""Learning-rate schedulers, time-based and drift-aware."""

from __future__ import annotations

from river_torchrec.optim.schedulers.base import Scheduler
from river_torchrec.optim.schedulers.constant import Constant
from river_torchrec.optim.schedulers.cosine_restarts import CosineRestarts
from river_torchrec.optim.schedulers.drift_aware import DriftAwareLR
from river_torchrec.optim.schedulers.exponential_decay import ExponentialDecay
from river_torchrec.optim.schedulers.inverse_sqrt import InverseSqrt

__all__ = [
    "Constant",
    "CosineRestarts",
    "DriftAwareLR",
    "ExponentialDecay",
    "InverseSqrt",
    "Scheduler",
]
