"""Updaters that touch only the embedding rows a batch used, and learning-rate schedulers."""

from __future__ import annotations

from river_torchrec.optim import schedulers
from river_torchrec.optim.adagrad import Adagrad, RowWiseAdagrad
from river_torchrec.optim.adam import Adam
from river_torchrec.optim.base import DenseGrad, SparseGrad, Updater
from river_torchrec.optim.ftrl import FTRLProximal
from river_torchrec.optim.ogd import OGD
from river_torchrec.optim.osgd import OSGD

__all__ = [
    "Adagrad",
    "Adam",
    "DenseGrad",
    "FTRLProximal",
    "OGD",
    "OSGD",
    "RowWiseAdagrad",
    "SparseGrad",
    "Updater",
    "schedulers",
    "make_updater",
]

#: Names accepted by ``CTRClassifier(optimizer=...)``.
UPDATERS: dict[str, type[Updater]] = {
    "sgd": OGD,
    "ogd": OGD,
    "adam": Adam,
    "adagrad": Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "ftrl": FTRLProximal,
    "osgd": OSGD,
}


def make_updater(optimizer: str | Updater, lr: float | None = None) -> Updater:
    """An updater from a name (``"adam"``, ``"sgd"``, ...) or the updater itself."""
    if isinstance(optimizer, Updater):
        if lr is not None:
            raise ValueError("lr is for optimizer names; set the learning rate on the updater object")
        return optimizer
    try:
        cls = UPDATERS[optimizer.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown optimizer {optimizer!r}; expected one of {sorted(UPDATERS)} or an Updater"
        ) from None
    return cls() if lr is None else cls(**{cls.lr_name: lr})
