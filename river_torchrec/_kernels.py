"""Compiled one-event steps: the forward pass, backward pass and update of a built-in model in one call.

The NumPy twin (:mod:`river_torchrec.numpy_path`) spends a one-event step in a few dozen
NumPy calls of about a microsecond each; here the same arithmetic is one `numba
<https://numba.pydata.org>`_ function per prediction and one per learning step, over the
very arrays the twin uses (the table's rows, the flat dense parameters and the updater's
state, all views of the torch tensors). numba is optional (``pip install
river-torchrec[fast]``): without it, or for a model or updater the kernel does not cover,
the NumPy twin runs instead, with the same results to 1e-6.

Covered: the models whose logit is made of ``numpy_terms`` (LR, FM, DeepFM, Wide&Deep: a
bias, first-order weights, FM interactions and a ReLU MLP over the scaled factors) with
:class:`~river_torchrec.optim.OGD`, :class:`~river_torchrec.optim.Adagrad` and
:class:`~river_torchrec.optim.RowWiseAdagrad` (exactly those classes: a subclass may change
the arithmetic). Functions are compiled on first use and cached on disk (``cache=True``),
so only the first process pays the compilation.

Everything a call needs lives in four arrays, because each array argument costs numba
about 0.2 µs of dispatch: the table, the table's row state, one float32 *workspace*
(the dense parameters, their state and all scratch space, see :func:`workspace_layout`)
and one int64 *plan* (offsets, shapes and the event's row ids).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["available", "kernels", "UPDATER_CODES", "workspace_layout", "HEADER"]

#: Updater codes of the kernel.
OGD, ADAGRAD, ROWWISE_ADAGRAD = 0, 1, 2
UPDATER_CODES = {"OGD": OGD, "Adagrad": ADAGRAD, "RowWiseAdagrad": ROWWISE_ADAGRAD}

# Plan header slots (int64): shapes, flags and workspace offsets; the MLP layers (5 ints
# each: weight offset, bias offset, n_out, n_in, ReLU) follow, then the event's row ids.
(
    P_FIELDS, P_WIDTH, P_LINEAR, P_FM, P_LAYERS, P_BIAS, P_CODE, P_FCAP, P_PARAMS,
    P_STATE, P_NEWP, P_NEWS, P_VALS, P_X, P_ACTS, P_DACTS, P_TOTAL, P_DIN, P_RGRAD,
    P_RNEW, P_RSNEW, P_IDS, P_REP,
) = range(23)
HEADER = 23

_kernels: tuple | None = None
_failed = False


_importable: bool | None = None


def available() -> bool:
    """Whether numba can be imported (``RIVER_TORCHREC_NO_KERNEL=1`` says no)."""
    global _importable
    if _failed or os.environ.get("RIVER_TORCHREC_NO_KERNEL"):
        return False
    if _importable is None:
        try:
            import numba  # noqa: F401
        except ImportError:
            _importable = False
        else:
            _importable = True
    return _importable


def workspace_layout(
    n_params: int, has_state: bool, fcap: int, width: int, widths: list[int]
) -> tuple[dict[str, int], int]:
    """Offsets of the workspace regions and its size in float32s.

    ``n_params`` dense parameters (and as many state values when ``has_state``), room for
    ``fcap`` fields of ``width`` columns each (``width - 1`` factors), and the outputs of MLP
    layers of ``widths``.
    """
    k = max(width - 1, 0)
    sizes = [
        ("params", n_params), ("state", n_params if has_state else 0), ("newp", n_params),
        ("news", n_params if has_state else 0), ("vals", fcap), ("x", fcap * k), ("acts", sum(widths)),
        ("dacts", sum(widths)), ("total", k), ("din", fcap * k), ("rgrad", fcap * width),
        ("rnew", fcap * width), ("rsnew", fcap * width),
    ]
    out, at = {}, 0
    for name, n in sizes:
        out[name] = at
        at += n
    return out, at


def kernels() -> tuple[Any, Any]:
    """``(forward, learn)``, compiled on first use (and loaded from numba's cache after)."""
    global _kernels, _failed
    if _kernels is None:
        try:
            _kernels = _compile()
        except Exception:  # pragma: no cover - a broken numba install: the NumPy twin runs
            _failed = True
            raise
    return _kernels


def _compile() -> tuple[Any, Any]:
    from river_torchrec import _kernels_impl

    return _kernels_impl.forward, _kernels_impl.learn
