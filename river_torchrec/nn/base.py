"""What every CTR model shares: an embedding table, a global bias and growable fields."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from river_torchrec.nn.embedding import DynamicEmbedding
from river_torchrec.nn.mlp import MLP

__all__ = ["CTRModel", "pad_parameter"]


def pad_parameter(module: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    """Replace ``module.<name>`` by a zero-padded copy of the given (larger) shape.

    New coordinates start at zero, so an output that ignored them before still does:
    the model's function on old inputs is unchanged.
    """
    old = getattr(module, name)
    new = torch.zeros(shape, dtype=old.dtype, device=old.device)
    new[tuple(slice(0, s) for s in old.shape)] = old.detach()
    setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))


class CTRModel(nn.Module):
    """Base class of CTR models over a :class:`DynamicEmbedding`.

    A batch is two ``[batch, n_fields]`` tensors: ``ids`` (table rows) and ``values``.
    A categorical field has value 1 and the row of its value; a numeric field has its
    own single row and the number as value, so the model sees ``value * row``: the FM
    treatment that puts numeric and categorical inputs in one representation. An absent
    field has value 0 and the padding row, so it contributes nothing.

    Subclasses set ``uses_linear`` (column 0 of each row is then a first-order weight and
    ``embedding_dim`` columns follow), implement :meth:`forward`, and grow any layer that
    depends on the number of fields in :meth:`_grow_fields`.

    A model may also implement the manual-gradient pair :meth:`forward_cached` /
    :meth:`backward_cached` (and set ``supports_manual_grad``): the estimator then skips
    autograd, whose bookkeeping dominates the cost of a one-event step. The built-in models
    do, and their hand-written gradients are tested against autograd.

    Models whose logit is made of the usual terms list them in ``numpy_terms`` and get a
    one-event NumPy twin of that pair (:meth:`numpy_forward` / :meth:`numpy_backward`),
    which the estimator uses for ``batch_size=1`` on CPU: on a single event a NumPy
    operation costs about a microsecond against several for a torch one.

    Parameters
    ----------
    embedding_dim
        Width of the factor part of each row.
    table
        Keyword arguments for :class:`DynamicEmbedding` (mode, n_buckets, min_count, ...).

    """

    uses_linear: bool = True
    supports_manual_grad: bool = False
    #: Terms of the logit besides the bias, for the NumPy twin: ``"linear"`` (first-order
    #: weights), ``"fm"`` (pairwise factor interactions) and ``"mlp"`` (``self.mlp`` over the
    #: concatenated scaled factors). None: no twin (the torch path is always used).
    numpy_terms: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, embedding_dim: int = 8, table: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        width = embedding_dim + (1 if self.uses_linear else 0)
        self.embedding = DynamicEmbedding(
            max(width, 1), zero_cols=1 if self.uses_linear else 0, **(table or {})
        )
        self.bias = nn.Parameter(torch.zeros(()))
        self.n_fields = 0

    def add_fields(self, n_fields: int) -> None:
        """Make room for ``n_fields`` fields in total; learned weights are kept."""
        if n_fields > self.n_fields:
            old, self.n_fields = self.n_fields, n_fields
            self._grow_fields(old, n_fields)

    def _grow_fields(self, old: int, new: int) -> None:
        """Grow field-dependent layers from ``old`` to ``new`` fields (none by default)."""

    def rows(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First-order terms ``[B, F]`` and scaled factors ``[B, F, k]`` of a batch."""
        table = self.embedding(ids)
        if self.uses_linear:
            linear = table[..., 0] * values
            factors = table[..., 1:] * values.unsqueeze(-1)
        else:
            linear = torch.zeros_like(values)
            factors = table * values.unsqueeze(-1)
        return linear, factors

    def forward(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise TypeError(f"{type(self).__name__} must implement forward(ids, values) -> logits")

    # ------------------------------------------------------ manual gradients

    def _gather(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows ``[B, F, W]`` (no autograd), first-order terms ``[B, F]``, factors ``[B, F, k]``."""
        table = self.embedding.weight[ids].float()
        return table, table[..., 0] * values, table[..., 1:] * values.unsqueeze(-1)

    def _row_grads(
        self, ids: torch.Tensor, values: torch.Tensor, d_linear: torch.Tensor | None, d_factors: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum the per-position gradients of the scaled rows into one gradient per touched row."""
        b, f = ids.shape
        d_rows = torch.zeros(b, f, self.embedding.dim, device=values.device)
        if d_linear is not None:
            d_rows[..., 0] = d_linear * values
        if d_factors is not None:
            d_rows[..., 1:] = d_factors * values.unsqueeze(-1)
        rows, inverse = torch.unique(ids, return_inverse=True)
        grads = torch.zeros(len(rows), self.embedding.dim, device=values.device)
        grads.index_add_(0, inverse.view(-1), d_rows.view(b * f, self.embedding.dim))
        return rows, grads

    def forward_cached(self, ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Logits and what :meth:`backward_cached` needs, without autograd."""
        raise TypeError(f"{type(self).__name__} has no manual gradients; use autograd")

    def backward_cached(
        self, cache: dict, d_logits: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Gradients given ``d loss / d logits``: ``({param name: grad}, touched rows, row grads)``."""
        raise TypeError(f"{type(self).__name__} has no manual gradients; use autograd")

    # ------------------------------------------------- one-event NumPy twin

    def numpy_plan(self) -> list[tuple[str, str, bool]]:
        """The layers of the deep part, as :meth:`MLP.numpy_plan` gives them (empty without one)."""
        return self.mlp.numpy_plan("mlp.") if "mlp" in (self.numpy_terms or ()) else []

    def numpy_forward(
        self, plan: list[tuple[str, str, bool]], arrays: dict[str, np.ndarray], rows: np.ndarray, values: np.ndarray
    ) -> tuple[float, tuple]:
        """The logit of one event and what :meth:`numpy_backward` needs.

        ``arrays`` holds NumPy views of the dense parameters by name, ``rows`` the event's
        ``[n_fields, width]`` float32 table rows and ``values`` its ``[n_fields]`` values.
        The same arithmetic as :meth:`forward_cached`, in float32 but for the final sum.
        """
        terms = self.numpy_terms or ()
        logit = float(arrays["bias"])
        if "linear" in terms:
            logit += float(rows[:, 0] @ values)
        factors = total = acts = None
        if "fm" in terms or "mlp" in terms:
            factors = rows[:, 1:] * values[:, None]
        if "fm" in terms:
            total = factors.sum(axis=0)
            logit += 0.5 * float(total @ total - np.vdot(factors, factors))
        if "mlp" in terms:
            out, acts = MLP.numpy_forward(plan, arrays, factors.reshape(-1))
            logit += float(out[0])
        return logit, (values, factors, total, acts, rows.shape[1])

    def numpy_backward(
        self,
        plan: list[tuple[str, str, bool]],
        arrays: dict[str, np.ndarray],
        grads: dict[str, np.ndarray],
        cache: tuple,
        d_logit: float,
    ) -> np.ndarray:
        """Write the dense gradients into ``grads`` and return the ``[n_fields, width]`` gradients
        of the event's rows (one per position; positions sharing a row are summed by the caller)."""
        values, factors, total, acts, width = cache
        terms = self.numpy_terms or ()
        d_rows = np.zeros((len(values), width), dtype=np.float32)
        if "linear" in terms:
            np.multiply(values, np.float32(d_logit), out=d_rows[:, 0])
        if factors is not None:
            d_factors = np.float32(d_logit) * (total - factors) if "fm" in terms else None
            if "mlp" in terms:
                d_flat = MLP.numpy_backward(plan, arrays, grads, acts, np.array([d_logit], dtype=np.float32))
                d_flat = d_flat.reshape(factors.shape)
                d_factors = d_flat if d_factors is None else d_factors + d_flat
            np.multiply(d_factors, values[:, None], out=d_rows[:, 1:])
        grads["bias"][...] = d_logit
        return d_rows
