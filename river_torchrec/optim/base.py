"""The updater protocol: dense parameters get a full step, embedding tables only touched rows."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from river import base

__all__ = ["Updater", "DenseGrad", "SparseGrad"]

#: NumPy types whose zeros can back a torch tensor of each dtype (``torch.from_numpy``).
_NUMPY_LAYOUT = {torch.float32: np.float32, torch.float64: np.float64, torch.int64: np.int64}


@dataclass
class DenseGrad:
    """A dense parameter and its gradient; ``name`` is stable while the tensor may be replaced."""

    name: str
    param: torch.Tensor
    grad: torch.Tensor


@dataclass
class SparseGrad:
    """Gradients of the ``rows`` (unique, sorted) of an embedding ``table`` called ``name``."""

    name: str
    table: torch.Tensor
    rows: torch.Tensor
    grad: torch.Tensor


def _zeros(shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Zeros; on CPU in ``calloc``-ed memory (``np.zeros``), which the operating system
    backs only where it is written.

    ``torch.zeros`` writes every page: the state of a table's spare capacity (up to a
    quarter of its rows) would be resident before any of those rows is handed out.
    """
    layout = _NUMPY_LAYOUT.get(dtype)
    if torch.device(device).type != "cpu" or layout is None:
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.zeros(tuple(shape), dtype=layout))


def _fit(state: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Zero-pad ``state`` at the end of each dimension to ``shape``.

    Tables grow by appending rows and first layers by appending input columns, so the
    state of every existing coordinate keeps its index.
    """
    if state.shape == shape:
        return state
    fitted = _zeros(shape, state.dtype, state.device)
    common = tuple(slice(0, min(a, b)) for a, b in zip(state.shape, shape))
    fitted[common] = state[common]
    return fitted


class Updater(base.Base, abc.ABC):
    """Base class of updaters.

    An updater is a river-style object (``clone()``-able, picklable) holding its
    hyper-parameters and per-coordinate state. :class:`~river_torchrec.CTRClassifier`
    calls :meth:`step` once per learning step with the dense gradients and, for each
    embedding table, the gradients of the rows the batch touched, so the cost of a step
    depends on the batch, not on the size of the tables.

    Parameters
    ----------
    lr
        Base learning rate (a scheduler multiplies it).
    clip_norm
        If set, gradients are rescaled so their joint L2 norm (dense and sparse together)
        is at most ``clip_norm``.

    """

    #: Name of the ``__init__`` argument that sets the base learning rate
    #: (``make_updater(name, lr)`` passes ``lr`` under this name).
    lr_name: ClassVar[str] = "lr"

    #: The per-coordinate state of the NumPy twin of :meth:`step`, ``{key: initial value}``
    #: (``{}``: stateless), or None without a twin. The estimator takes one-event steps on
    #: CPU with the twin. Only a class that declares it in its own body has a twin, so a
    #: subclass that changes the arithmetic falls back to :meth:`step` unless it declares
    #: (and implements) its own.
    numpy_state: ClassVar[dict[str, float] | None] = None

    #: The twin's per-parameter scalar state of dense parameters, ``{key: initial value}``
    #: (Adam's step count: one float per parameter, not per coordinate). :meth:`_numpy_update`
    #: gets it as one number when every parameter holds the same value, else per coordinate.
    numpy_scalar_state: ClassVar[dict[str, float]] = {}

    def __init__(self, lr: float, clip_norm: float | None = None) -> None:
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"{self.lr_name} must be a finite number >= 0, got {lr!r}")
        if clip_norm is not None and not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ValueError(f"clip_norm must be a finite number > 0 or None, got {clip_norm!r}")
        self.lr = lr
        self.clip_norm = clip_norm
        self.n_steps = 0
        self._state: dict[str, dict[str, torch.Tensor]] = {}

    # ----------------------------------------------------------------- state

    def _buffer(self, name: str, key: str, like: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Per-coordinate state ``key`` of parameter ``name``, shaped and placed like ``like``."""
        slots = self._state.setdefault(name, {})
        buf = slots.get(key)
        if buf is None:
            if fill == 0.0:
                buf = _zeros(like.shape, torch.float32, like.device)
            else:
                buf = torch.full_like(like, fill, dtype=torch.float32)
        elif buf.shape != like.shape or buf.device != like.device:
            buf = _fit(buf.to(like.device), like.shape)
        slots[key] = buf
        return buf

    def _row_buffer(self, name: str, key: str, table: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Per-row state (one value per embedding row) of table ``name``."""
        slots = self._state.setdefault(name, {})
        buf = slots.get(key)
        n = table.shape[0]
        if buf is None:
            if fill == 0.0:
                buf = _zeros((n,), torch.float32, table.device)
            else:
                buf = torch.full((n,), fill, dtype=torch.float32, device=table.device)
        elif buf.shape[0] != n or buf.device != table.device:
            buf = _fit(buf.to(table.device), torch.Size((n,)))
        slots[key] = buf
        return buf

    def reset_rows(self, name: str, rows: Sequence[int]) -> None:
        """Forget the state of ``rows`` of table ``name`` (they were given to new keys)."""
        slots = self._state.get(name)
        if not slots or not len(rows):
            return
        for buf in slots.values():
            idx = torch.as_tensor(rows, device=buf.device)
            idx = idx[idx < buf.shape[0]]
            buf[idx] = 0

    def reset_state(self) -> None:
        """Forget all moments and accumulators, e.g. after a drift."""
        self._state.clear()

    def state_dict(self) -> dict[str, torch.Tensor | int | float]:
        """Flat ``{"<param>/<slot>": tensor}`` state plus ``"n_steps"``; safetensors-friendly."""
        out: dict[str, torch.Tensor | int | float] = {"n_steps": self.n_steps}
        for name, slots in self._state.items():
            for key, buf in slots.items():
                out[f"{name}/{key}"] = buf
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor | int | float]) -> None:
        self._state = {}
        self.n_steps = int(state.get("n_steps", 0))
        for full, buf in state.items():
            if full == "n_steps":
                continue
            name, key = full.rsplit("/", 1)
            self._state.setdefault(name, {})[key] = torch.as_tensor(buf).clone()

    # ------------------------------------------------------------------ step

    def select(
        self, ids: torch.Tensor, values: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch a step learns from, given the newly arrived events (these by default).

        :class:`~river_torchrec.optim.OSGD` overrides it to mix the new events with a
        random draw of recent ones.
        """
        return ids, values, y, w

    def _clip(self, dense: Sequence[DenseGrad], sparse: Sequence[SparseGrad]) -> None:
        grads = [d.grad for d in dense] + [s.grad for s in sparse]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        scale = torch.clamp(self.clip_norm / (norm + 1e-12), max=1.0)
        for g in grads:
            g.mul_(scale)

    @torch.no_grad()
    def step(
        self, dense: Sequence[DenseGrad], sparse: Sequence[SparseGrad], lr_scale: float = 1.0
    ) -> None:
        """Apply one update. ``lr_scale`` is the scheduler's multiplier of ``lr``."""
        if self.clip_norm is not None:
            self._clip(dense, sparse)
        self.n_steps += 1
        lr = self.lr * lr_scale
        if dense:
            self._dense_steps(dense, lr)
        for s in sparse:
            self._sparse_step(s.name, s.table, s.rows, s.grad, lr)

    def _dense_steps(self, dense: Sequence[DenseGrad], lr: float) -> None:
        """Update every dense parameter; updaters override it with ``torch._foreach_*`` kernels,
        since a one-event step is dominated by per-tensor dispatch, not arithmetic."""
        for d in dense:
            self._dense_step(d.name, d.param, d.grad, lr)

    # ------------------------------------------------------ NumPy twin

    @property
    def has_numpy_twin(self) -> bool:
        """Whether this very class implements the NumPy twin of its step."""
        return type(self).__dict__.get("numpy_state") is not None

    def _numpy_update(
        self, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """New values of ``param`` and of its ``state`` after one step, computed out of place
        (nothing is written): the arithmetic of ``_dense_step``, on float32 arrays."""
        raise TypeError(f"{type(self).__name__} has no NumPy twin")

    def _numpy_row_state(self, name: str, table: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state tensors of table ``name`` that :meth:`_numpy_row_update` reads, by key."""
        return {key: self._buffer(name, key, table, fill) for key, fill in (self.numpy_state or {}).items()}

    def _numpy_row_update(
        self, rows: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:meth:`_numpy_update` for touched table rows (``state`` gathered at those rows)."""
        return self._numpy_update(rows, grad, state, lr)

    @abc.abstractmethod
    def _dense_step(self, name: str, param: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """Update every coordinate of ``param`` in place."""

    @abc.abstractmethod
    def _sparse_step(
        self, name: str, table: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float
    ) -> None:
        """Update ``table[rows]`` in place; leave every other row and its state alone."""

    @classmethod
    def _unit_test_params(cls):
        # river's convention: a classmethod yielding keyword arguments to build test instances.
        yield {}
