"""Undo a learning step that left a non-finite number in the weights or the optimizer state."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from river_torchrec.optim.base import DenseGrad, SparseGrad, Updater

__all__ = ["StepGuard"]

def _flat_copies(tensors: list[torch.Tensor], copy: bool = True) -> list[tuple[list[int], torch.Tensor]]:
    """One flat copy per dtype (``copy=False``: a flat view may do, for reading).

    One fused flatten costs a single call into torch; a ``clone`` (or a ``reshape`` for a
    ``cat``) per tensor costs one each, and a step of a small model writes dozens of tensors.
    """
    if not tensors:
        return []
    dtype = tensors[0].dtype
    if all(t.dtype == dtype for t in tensors):
        groups = [list(range(len(tensors)))]
    else:
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(i)
        groups = list(by_dtype.values())
    out = []
    for idx in groups:
        if len(idx) == 1 and copy:  # the flatten of a single tensor is a view, not a copy
            out.append((idx, tensors[idx[0]].flatten().clone()))
        else:
            out.append((idx, _flatten_dense_tensors([tensors[i] for i in idx])))
    return out


class StepGuard:
    """A copy of everything one :meth:`Updater.step` may write, taken just before it.

    A step writes the dense parameters, the rows it touched of each embedding table, and
    the updater state of those same coordinates (whole tensors for dense parameters, the
    touched rows, along the first dimension, for tables). The guard copies exactly that,
    so its cost is that of the step, not of the size of the tables.

    After the step, :meth:`ok` sums everything the step wrote, in float64: a NaN or an
    infinity anywhere, and only that, makes the sum non-finite. :meth:`restore` then
    writes every value back into the very tensors it came from and gives the updater back
    its own state tensors and ``n_steps``, dropping any state the step created or
    re-allocated: the weights and the updater state are then identical, down to their
    pickles, to what they were.

    State an updater keeps besides its per-parameter state (such as the replay buffer of
    :class:`~river_torchrec.optim.OSGD`) is not rolled back.

    Parameters
    ----------
    updater
        The updater about to step.
    dense
        The dense gradients of the step.
    sparse
        The sparse (table-row) gradients of the step.

    Examples
    --------
    >>> import torch
    >>> from river_torchrec.optim import OGD, DenseGrad
    >>> w = torch.ones(3)
    >>> updater = OGD(lr=1.0)
    >>> step = [DenseGrad("w", w, torch.tensor([0.5, float("nan"), 0.5]))]
    >>> guard = StepGuard(updater, step, [])
    >>> updater.step(step, [])
    >>> guard.ok()
    False
    >>> guard.restore()
    >>> w, updater.n_steps
    (tensor([1., 1., 1.]), 0)

    """

    __slots__ = ("_updater", "_dense", "_sparse", "_tensors", "_n_steps", "_full", "_rowed", "_copies", "_row_copies")

    def __init__(self, updater: Updater, dense: Sequence[DenseGrad], sparse: Sequence[SparseGrad]) -> None:
        self._updater = updater
        self._dense = dense
        self._sparse = sparse
        # References, not copies: restore() writes the saved values back into these very
        # tensors and gives them back to the updater, dropping any it created or replaced.
        # (The per-parameter state of the Updater base class, read directly: this runs on
        # every step, and state_dict() would build and parse a string key per tensor.)
        self._tensors = {name: dict(slots) for name, slots in updater._state.items()}
        self._n_steps = updater.n_steps
        self._full, self._rowed = self._written()
        self._copies = _flat_copies(self._full)
        self._row_copies = [t.index_select(0, rows) for t, rows in self._rowed]

    def _written(self) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
        """Tensors a step writes whole, and ``(tensor, rows)`` pairs it writes in part."""
        dense_names = {d.name for d in self._dense}
        tables = {s.name: s for s in self._sparse}
        full = [d.param for d in self._dense]
        rowed = [(s.table, s.rows) for s in self._sparse]
        for name, slots in self._updater._state.items():
            if name in dense_names:
                full.extend(slots.values())
                continue
            s = tables.get(name)
            if s is None:
                continue
            for t in slots.values():
                rows = s.rows
                if t.shape[0] < s.table.shape[0]:
                    # The table grew and the updater pads its state only when it steps:
                    # the rows beyond have no state yet (restore() drops the padded copy).
                    rows = rows[rows < t.shape[0]]
                rowed.append((t, rows))
        return full, rowed

    def ok(self) -> bool:
        """True when every value the step wrote is finite."""
        full, rowed = self._written()  # again: the step may have created or replaced state
        parts = full + [t.index_select(0, rows) for t, rows in rowed]
        # Summed in float64: only a NaN or an infinity, never a large finite sum, makes it non-finite.
        return all(
            math.isfinite(float(flat.sum(dtype=torch.float64) if flat.is_floating_point() else 0))
            for _, flat in _flat_copies(parts, copy=False)
        )

    @torch.no_grad()
    def restore(self) -> None:
        """Put back every value and the updater state as they were before the step."""
        for idx, flat in self._copies:
            tensors = [self._full[i] for i in idx]
            for t, saved in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
                t.copy_(saved)
        for (t, rows), saved in zip(self._rowed, self._row_copies):
            t.index_copy_(0, rows, saved)
        self._updater._state = self._tensors
        self._updater.n_steps = self._n_steps
