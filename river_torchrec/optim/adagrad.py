"""Adagrad, per coordinate and row-wise (one accumulator per embedding row)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from river_torchrec.optim.base import DenseGrad, Updater

__all__ = ["Adagrad", "RowWiseAdagrad"]


class Adagrad(Updater):
    r"""Adagrad (Duchi et al., 2011), lazy on embedding rows.

    .. math::
        s \leftarrow s + g^2,\quad
        \theta \leftarrow \theta - \eta \frac{g}{\sqrt{s_0 + s} + \epsilon}

    per coordinate, with :math:`s_0` the ``initial_accumulator_value``. On dense
    parameters it is ``torch.optim.Adagrad`` (without ``lr_decay`` and ``weight_decay``),
    :math:`\epsilon` included outside the square root as there. An embedding row's
    accumulator grows only when an event touches the row, so Adagrad is lazy by nature:
    a step on a few rows equals the full-table step, whose other rows have zero gradient.

    The state keeps the sum of squared gradients without :math:`s_0`, so coordinates
    added when a parameter grows, and rows recycled for new keys, start from
    :math:`s_0` like fresh ones.

    Parameters
    ----------
    lr
        Learning rate :math:`\eta`. The default is the best of the sweep of
        ``benchmarks/bench_updaters.py`` (DeepFM, SyntheticCTR and Criteo).
    eps
        Term added to the denominator, outside the square root.
    initial_accumulator_value
        Starting value :math:`s_0` of every accumulator.
    clip_norm
        Optional joint gradient-norm bound.

    Examples
    --------
    >>> import torch
    >>> from river_torchrec.optim import Adagrad, DenseGrad
    >>> w = torch.zeros(2)
    >>> updater = Adagrad(lr=0.1)
    >>> for _ in range(2):
    ...     updater.step([DenseGrad("w", w, torch.tensor([1.0, -2.0]))], [])
    >>> w  # -0.1 * (1 + 1/sqrt(2)) for both, whatever the scale of the gradient
    tensor([-0.1707,  0.1707])

    """

    def __init__(
        self,
        lr: float = 0.02,
        eps: float = 1e-10,
        initial_accumulator_value: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr=lr, clip_norm=clip_norm)
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        if not initial_accumulator_value >= 0:
            raise ValueError(f"initial_accumulator_value must be >= 0, got {initial_accumulator_value!r}")
        self.eps = eps
        self.initial_accumulator_value = initial_accumulator_value

    numpy_state = {"sum_sq": 0.0}

    def _numpy_update(self, param, grad, state, lr):
        sum_sq = grad * grad
        sum_sq += state["sum_sq"]
        std = np.sqrt(sum_sq + self.initial_accumulator_value if self.initial_accumulator_value else sum_sq)
        std += self.eps
        step = lr * grad
        step /= std
        return np.subtract(param, step, out=step), {"sum_sq": sum_sq}

    def _dense_steps(self, dense: Sequence[DenseGrad], lr: float) -> None:
        # The same element-wise arithmetic as _dense_step, one kernel per operation for all tensors.
        params = [d.param for d in dense]
        grads = [d.grad for d in dense]
        sums = [self._buffer(d.name, "sum_sq", d.param) for d in dense]
        torch._foreach_addcmul_(sums, grads, grads)
        std = torch._foreach_add(sums, self.initial_accumulator_value)
        torch._foreach_sqrt_(std)
        torch._foreach_add_(std, self.eps)
        torch._foreach_addcdiv_(params, grads, std, value=-lr)

    def _dense_step(self, name: str, param: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        s = self._buffer(name, "sum_sq", param)
        s.addcmul_(grad, grad)
        std = s.add(self.initial_accumulator_value).sqrt_().add_(self.eps)
        param.addcdiv_(grad, std, value=-lr)

    def _sparse_step(
        self, name: str, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float
    ) -> None:
        s_all = self._buffer(name, "sum_sq", table)
        s = s_all[rows].addcmul_(grad, grad)
        s_all[rows] = s
        std = s.add_(self.initial_accumulator_value).sqrt_().add_(self.eps)
        table[rows] = (table[rows].float() - lr * grad / std).to(table.dtype)

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"lr": 0.1, "initial_accumulator_value": 0.1, "clip_norm": 1.0}


class RowWiseAdagrad(Adagrad):
    r"""Row-wise Adagrad: one accumulator per embedding row, as in TorchRec/FBGEMM.

    For a touched row :math:`r` of width :math:`d`,

    .. math::
        s_r \leftarrow s_r + \frac{1}{d} \sum_j g_{rj}^2,\quad
        \theta_r \leftarrow \theta_r - \eta \frac{g_r}{\sqrt{s_0 + s_r} + \epsilon}

    which is FBGEMM's ``EXACT_ROWWISE_ADAGRAD`` (the mean of the squared gradients of
    the row, :math:`\epsilon` outside the square root). It keeps one float per row instead
    of one per coordinate, which matters for tables of millions of rows, and shares the
    row's step size between its columns. Dense parameters (MLP layers, the bias) have no
    rows to share: they get per-coordinate :class:`Adagrad` with the same ``lr`` and
    ``eps``.

    Parameters
    ----------
    lr
        Learning rate :math:`\eta` (default: best of the sweep of ``benchmarks/bench_updaters.py``).
    eps
        Term added to the denominator, outside the square root (FBGEMM's default).
    initial_accumulator_value
        Starting value :math:`s_0` of every accumulator.
    clip_norm
        Optional joint gradient-norm bound.

    Examples
    --------
    >>> import torch
    >>> from river_torchrec.optim import RowWiseAdagrad, SparseGrad
    >>> table = torch.zeros(3, 2)
    >>> updater = RowWiseAdagrad(lr=0.1)
    >>> updater.step([], [SparseGrad("t", table, torch.tensor([1]), torch.tensor([[3.0, 4.0]]))])
    >>> table[1]  # s = (9 + 16) / 2, step 0.1 * g / sqrt(12.5)
    tensor([-0.0849, -0.1131])
    >>> table[2]  # untouched
    tensor([0., 0.])

    """

    def __init__(
        self,
        lr: float = 0.01,
        eps: float = 1e-8,
        initial_accumulator_value: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(
            lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value, clip_norm=clip_norm
        )

    numpy_state = {"sum_sq": 0.0}

    def _numpy_row_state(self, name, table):
        return {"sum_sq_row": self._row_buffer(name, "sum_sq_row", table)}

    def _numpy_row_update(self, rows, grad, state, lr):
        s = state["sum_sq_row"] + (grad * grad).mean(axis=1)
        std = np.sqrt(s + self.initial_accumulator_value if self.initial_accumulator_value else s)
        std += self.eps
        return rows - lr * grad / std[:, None], {"sum_sq_row": s}

    def _sparse_step(
        self, name: str, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float
    ) -> None:
        s_all = self._row_buffer(name, "sum_sq_row", table)
        s = s_all[rows] + grad.square().mean(dim=1)
        s_all[rows] = s
        std = s.add_(self.initial_accumulator_value).sqrt_().add_(self.eps).unsqueeze(-1)
        table[rows] = (table[rows].float() - lr * grad / std).to(table.dtype)
