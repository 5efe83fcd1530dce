"""Online CTR and recommendation models in PyTorch that learn from every event.

Subpackages and the estimator are imported lazily, so ``river_torchrec.features`` and
``river_torchrec.datasets`` can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["AutoCTRClassifier", "CTRClassifier", "load_pipeline", "save_pipeline", "compat", "datasets", "distributed", "evaluate", "features", "nn", "optim", "reco", "__version__"]

if TYPE_CHECKING:
    from river_torchrec.auto import AutoCTRClassifier
    from river_torchrec.classifier import CTRClassifier


def __getattr__(name: str) -> Any:
    if name == "CTRClassifier":
        from river_torchrec.classifier import CTRClassifier

        return CTRClassifier
    if name == "AutoCTRClassifier":
        from river_torchrec.auto import AutoCTRClassifier

        return AutoCTRClassifier
    if name in {"save_pipeline", "load_pipeline"}:
        from river_torchrec import pipeline_checkpoint

        return getattr(pipeline_checkpoint, name)
    if name in {"compat", "datasets", "distributed", "evaluate", "features", "nn", "optim", "reco"}:
        return importlib.import_module(f"river_torchrec.{name}")
    raise AttributeError(f"module 'river_torchrec' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
