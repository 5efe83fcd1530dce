"""Online gradient descent."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from river_torchrec.optim.base import DenseGrad, Updater

__all__ = ["OGD"]


class OGD(Updater):
    r"""Online gradient descent: :math:`\theta \leftarrow \theta - \eta g`.

    One step per event (or per ``batch_size`` events when the classifier buffers); an
    embedding row moves only when an event uses it. Matches ``torch.optim.SGD`` without
    momentum on dense parameters.

    Parameters
    ----------
    lr
        Learning rate :math:`\eta`. The default is the best of the sweep of
        ``benchmarks/bench_updaters.py`` (DeepFM on SyntheticCTR and Criteo; plain SGD
        on a deep model is unstable from about 0.03 there).
    clip_norm
        Optional joint gradient-norm bound.

    Examples
    --------
    >>> from river import evaluate, metrics
    >>> from river_torchrec import CTRClassifier, datasets, optim
    >>> model = CTRClassifier(model="lr", optimizer=optim.OGD(lr=0.05))
    >>> evaluate.progressive_val_score(datasets.SyntheticCTR(n_events=2_000, seed=1), model, metrics.LogLoss())
    LogLoss: 0.3...

    """

    def __init__(self, lr: float = 0.003, clip_norm: float | None = None) -> None:
        super().__init__(lr=lr, clip_norm=clip_norm)

    numpy_state = {}

    def _numpy_update(self, param, grad, state, lr):
        return param - lr * grad, {}

    def _dense_steps(self, dense: Sequence[DenseGrad], lr: float) -> None:
        torch._foreach_add_([d.param for d in dense], [d.grad for d in dense], alpha=-lr)

    def _dense_step(self, name: str, param: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        param.add_(grad, alpha=-lr)

    def _sparse_step(
        self, name: str, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float
    ) -> None:
        table[rows] = (table[rows].float() - lr * grad).to(table.dtype)
