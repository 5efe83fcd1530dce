"""Lazy Adam: embedding rows keep their own moments and their own step count."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from river_torchrec.optim.base import Updater

__all__ = ["Adam"]


class Adam(Updater):
    r"""Adam (Kingma & Ba, 2015), lazy on embedding rows.

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
        v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
        \theta \leftarrow \theta - \eta \frac{m / (1-\beta_1^t)}{\sqrt{v/(1-\beta_2^t)} + \epsilon}

    Dense parameters get ordinary Adam, identical to ``torch.optim.Adam`` (with
    ``weight_decay`` added to the gradient as there). An embedding row's moments move only
    when an event touches the row, and ``t`` is *the row's own* number of updates: a row
    seen for the first time after a million steps gets the full bias correction of a
    first step instead of an undamped, too-small one. This is the choice of lazy Adam
    implementations such as TensorFlow's ``LazyAdam``, made exact per row.

    Parameters
    ----------
    lr
        Learning rate :math:`\eta`.
    betas
        Decay rates of the first and second moments.
    eps
        Term added to the denominator.
    weight_decay
        L2 penalty added to the gradient (touched rows only, for tables).
    clip_norm
        Optional joint gradient-norm bound.

    Examples
    --------
    >>> from river import evaluate, metrics
    >>> from river_torchrec import CTRClassifier, datasets, optim
    >>> model = CTRClassifier(model="fm", optimizer=optim.Adam(lr=0.01))
    >>> evaluate.progressive_val_score(datasets.SyntheticCTR(n_events=2_000, seed=1), model, metrics.LogLoss())
    LogLoss: 0.3...

    """

    def __init__(
        self,
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr=lr, clip_norm=clip_norm)
        if not all(0 <= b < 1 for b in betas) or len(betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got {eps!r} and {weight_decay!r}")
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay

    numpy_state = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    numpy_scalar_state = {"step": 0.0}

    def _moments(
        self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """New first and second moments (out of place), weight decay folded into the gradient."""
        b1, b2 = self.betas
        if self.weight_decay:
            grad = grad + np.float32(self.weight_decay) * param
        m = state["exp_avg"] + np.float32(1 - b1) * (grad - state["exp_avg"])  # torch's lerp for weights < 0.5
        v = state["exp_avg_sq"] * np.float32(b2)
        v += np.float32(1 - b2) * (grad * grad)
        return m, v

    def _corrected_step(self, m: np.ndarray, v: np.ndarray, t: Any, lr: float) -> np.ndarray:
        """``lr * m_hat / (sqrt(v_hat) + eps)`` for step counts ``t`` (a number, or an array that
        broadcasts against ``m``), with the bias corrections in float64 as torch computes them."""
        b1, b2 = self.betas
        bias1, bias2_sqrt = 1 - np.power(b1, t), np.sqrt(1 - np.power(b2, t))
        denom = np.sqrt(v)
        denom /= np.asarray(bias2_sqrt, dtype=np.float32)
        denom += np.float32(self.eps)
        step = np.divide(m, denom, out=denom)
        step *= np.asarray(lr / bias1, dtype=np.float32)
        return step

    def _numpy_update(
        self, param: np.ndarray, grad: np.ndarray, state: dict[str, Any], lr: float
    ) -> tuple[np.ndarray, dict[str, Any]]:
        m, v = self._moments(param, grad, state)
        t = state["step"] + 1  # one number when every parameter has the same count (the usual case)
        step = self._corrected_step(m, v, t, lr)
        return np.subtract(param, step, out=step), {"exp_avg": m, "exp_avg_sq": v, "step": t}

    def _numpy_row_state(self, name: str, table: torch.Tensor) -> dict[str, torch.Tensor]:
        # The moments per coordinate (numpy_state), the step count per row.
        return {**super()._numpy_row_state(name, table), "step": self._row_buffer(name, "step", table)}

    def _numpy_row_update(
        self, rows: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m, v = self._moments(rows, grad, state)
        t = state["step"] + np.float32(1)
        step = self._corrected_step(m, v, t.astype(np.float64)[:, None], lr)
        return np.subtract(rows, step, out=step), {"exp_avg": m, "exp_avg_sq": v, "step": t}

    def _dense_step(self, name: str, param: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        b1, b2 = self.betas
        if self.weight_decay:
            grad = grad.add(param, alpha=self.weight_decay)
        m = self._buffer(name, "exp_avg", param)
        v = self._buffer(name, "exp_avg_sq", param)
        t = self._buffer(name, "step", torch.empty(()))
        t.add_(1)
        step = float(t)
        m.lerp_(grad, 1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        bias1 = 1 - b1**step
        bias2_sqrt = (1 - b2**step) ** 0.5
        denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
        param.addcdiv_(m, denom, value=-lr / bias1)

    def _sparse_step(
        self, name: str, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float
    ) -> None:
        b1, b2 = self.betas
        theta = table[rows].float()
        if self.weight_decay:
            grad = grad + self.weight_decay * theta
        m_all = self._buffer(name, "exp_avg", table)
        v_all = self._buffer(name, "exp_avg_sq", table)
        t_all = self._row_buffer(name, "step", table)
        t = t_all[rows] + 1
        t_all[rows] = t
        m = m_all[rows].lerp_(grad, 1 - b1)
        v = v_all[rows].mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_all[rows] = m
        v_all[rows] = v
        # Bias corrections in float64, as torch.optim.Adam computes them from Python floats:
        # in float32, 1 - 0.999**1 is off by 1e-5 relative.
        t64 = t.double()
        bias1 = (1 - b1**t64).to(m.dtype).unsqueeze(-1)
        bias2_sqrt = (1 - b2**t64).sqrt().to(m.dtype).unsqueeze(-1)
        theta = theta - lr * (m / bias1) / (v.sqrt() / bias2_sqrt + self.eps)
        table[rows] = theta.to(table.dtype)
