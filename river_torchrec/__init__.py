"""Online CTR and recommendation models in PyTorch that learn from every event."""

from __future__ import annotations

from river_torchrec import nn, optim
from river_torchrec.classifier import CTRClassifier

__version__ = "0.1.0"

__all__ = ["CTRClassifier", "nn", "optim", "__version__"]
