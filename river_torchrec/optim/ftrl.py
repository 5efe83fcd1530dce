"""FTRL-Proximal: per-coordinate learning rates and L1-exact sparsity."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from river_torchrec.optim.base import Updater

__all__ = ["FTRLProximal"]


class FTRLProximal(Updater):
    r"""FTRL-Proximal (McMahan et al., 2013), lazy on embedding rows.

    Each coordinate keeps :math:`z` and :math:`n` (the sum of squared gradients); its
    weight is a function of them,

    .. math::
        w = \begin{cases} 0 & |z| \le \lambda_1 \\
        -\left(\frac{\beta + \sqrt{n}}{\alpha} + \lambda_2\right)^{-1}
        \left(z - \operatorname{sgn}(z)\lambda_1\right) & \text{otherwise,}\end{cases}

    and a step with gradient :math:`g` (taken at the current :math:`w`) does
    :math:`\sigma = (\sqrt{n + g^2} - \sqrt{n}) / \alpha`,
    :math:`z \leftarrow z + g - \sigma w`, :math:`n \leftarrow n + g^2`, then writes the
    new :math:`w` into the parameter: Algorithm 1 of the paper, with the weights kept
    up to date instead of being recomputed before each prediction (the same thing, as a
    coordinate's :math:`z, n` change only when it is updated).

    ``alpha`` is the learning rate: ``lr`` reads and sets it, ``make_updater("ftrl", lr)``
    passes ``lr`` as ``alpha``, and a scheduler's multiplier scales it in both the
    :math:`\sigma` and the weight formulas of the step (with a constant multiplier the
    algorithm is the paper's; a multiplier of 0 pauses learning, state included).

    Unlike a linear model, factor columns of embedding rows and dense layers start from
    random weights, which :math:`z = n = 0` would map to zero (collapsing every factor and
    hidden unit onto the same value). So when a coordinate is first updated (``n = 0``:
    never, or not since :meth:`reset_rows` / :meth:`reset_state` / growth), its :math:`z`
    is set to :math:`-(\beta/\alpha + \lambda_2)\,w - \operatorname{sgn}(w)\lambda_1`,
    which reproduces its current weight :math:`w`; weights that start at zero (first-order
    columns, the bias) get :math:`z = 0` as in the paper. A coordinate whose gradient has
    always been exactly zero keeps its weight untouched. After a drift, :meth:`reset_state`
    keeps the model and restarts every per-coordinate learning rate from :math:`\alpha/\beta`.

    With ``l1 = 0`` this matches river's ``optim.FTRLProximal`` in a
    ``linear_model.LogisticRegression`` whose intercept is learned as a constant feature
    of value 1 (``intercept_lr=0``), except for river's order of operations: river writes
    the weights computed from :math:`z, n` *before* folding the new gradient in, so its
    predictions use weights one update old. River also leaves a weight at its last value,
    rather than 0, once :math:`|z|` falls back under :math:`\lambda_1`.

    Parameters
    ----------
    alpha
        Learning rate :math:`\alpha`. The default, the paper's and river's, is also the best
        of the sweep of ``benchmarks/bench_updaters.py`` (DeepFM, SyntheticCTR and Criteo).
    beta
        :math:`\beta` of the per-coordinate rate :math:`\alpha / (\beta + \sqrt{n})`.
    l1
        L1 strength :math:`\lambda_1`: weights with :math:`|z| \le \lambda_1` are exactly 0.
    l2
        L2 strength :math:`\lambda_2`.
    clip_norm
        Optional joint gradient-norm bound.

    Examples
    --------
    >>> import torch
    >>> from river_torchrec.optim import FTRLProximal, SparseGrad
    >>> table = torch.zeros(4, 1)
    >>> updater = FTRLProximal(alpha=0.1, beta=1.0, l1=0.5, l2=0.0)
    >>> g = torch.tensor([[2.0], [0.3]])
    >>> updater.step([], [SparseGrad("t", table, torch.tensor([1, 2]), g)])
    >>> table.flatten()  # row 1: -(2 - 0.5) / ((1 + 2) / 0.1); row 2: |z| = 0.3 <= l1
    tensor([ 0.0000, -0.0500,  0.0000,  0.0000])

    References
    ----------
    McMahan, H.B. et al., 2013. Ad click prediction: a view from the trenches. KDD.

    """

    lr_name = "alpha"

    def __init__(
        self,
        alpha: float = 0.05,
        beta: float = 1.0,
        l1: float = 0.0,
        l2: float = 1.0,
        clip_norm: float | None = None,
    ) -> None:
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        for name, value in (("beta", beta), ("l1", l1), ("l2", l2)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if beta == 0 and l2 == 0:
            raise ValueError("beta and l2 cannot both be 0: the weight of a new coordinate is undefined")
        self.alpha = alpha
        self.beta = beta
        self.l1 = l1
        self.l2 = l2
        super().__init__(lr=alpha, clip_norm=clip_norm)

    @property
    def lr(self) -> float:
        """The learning rate, i.e. ``alpha``."""
        return self.alpha

    @lr.setter
    def lr(self, value: float) -> None:
        self.alpha = value

    def _weights(self, z: torch.Tensor, n: torch.Tensor, alpha: float) -> torch.Tensor:
        w = (z - z.sign() * self.l1) / ((self.beta + n.sqrt()) / alpha + self.l2)
        return torch.where(z.abs() > self.l1, -w, torch.zeros_like(w))

    def _update(
        self, z: torch.Tensor, n: torch.Tensor, w: torch.Tensor, g: torch.Tensor, alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New ``(z, n, w)`` of coordinates with weights ``w`` and gradients ``g``."""
        fresh = n == 0
        if bool(fresh.any()):
            z0 = -(self.beta / alpha + self.l2) * w - w.sign() * self.l1
            z = torch.where(fresh, z0, z)
        sigma = ((n + g * g).sqrt() - n.sqrt()) / alpha
        z = z + g - sigma * w
        n = n + g * g
        # Coordinates that have only ever had zero gradients keep their weight bit for bit,
        # rather than going through the w -> z -> w round trip.
        w = torch.where(n == 0, w, self._weights(z, n, alpha))
        return z, n, w

    numpy_state = {"z": 0.0, "n": 0.0}

    def _numpy_update(
        self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any], lr: float
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """:meth:`_update` in NumPy, out of place."""
        z, n = state["z"], state["n"]
        if lr <= 0:  # a scheduler paused learning: nothing moves
            return param.copy(), {"z": z.copy(), "n": n.copy()}
        fresh = n == 0
        if fresh.any():
            z0 = np.float32(-(self.beta / lr + self.l2)) * param - np.sign(param) * np.float32(self.l1)
            z = np.where(fresh, z0, z)
        n_new = n + grad * grad
        sigma = (np.sqrt(n_new) - np.sqrt(n)) / np.float32(lr)
        z = z + grad - sigma * param
        rate = (np.float32(self.beta) + np.sqrt(n_new)) / np.float32(lr) + np.float32(self.l2)
        w = (z - np.sign(z) * np.float32(self.l1)) / rate
        w = np.where(np.abs(z) > self.l1, -w, np.float32(0.0))
        w = np.where(n_new == 0, param, w)
        return w.astype(np.float32, copy=False), {"z": z, "n": n_new}

    def _dense_step(self, name: str, param: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        if lr <= 0:  # a scheduler paused learning; alpha = 0 has no weights
            return
        z = self._buffer(name, "z", param)
        n = self._buffer(name, "n", param)
        z_new, n_new, w_new = self._update(z, n, param.float(), grad, lr)
        z.copy_(z_new)
        n.copy_(n_new)
        param.copy_(w_new)

    def _sparse_step(
        self, name: str, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float
    ) -> None:
        if lr <= 0:
            return
        z_all = self._buffer(name, "z", table)
        n_all = self._buffer(name, "n", table)
        z, n, w = self._update(z_all[rows], n_all[rows], table[rows].float(), grad, lr)
        z_all[rows] = z
        n_all[rows] = n
        table[rows] = w.to(table.dtype)

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"alpha": 0.1, "beta": 0.5, "l1": 0.01, "l2": 0.0, "clip_norm": 1.0}
