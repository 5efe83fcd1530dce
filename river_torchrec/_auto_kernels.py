"""Compiled one-event steps of :class:`~river_torchrec.auto.SharedRowsFM` (numba, optional).

A factorization machine step on one event is a few dozen tiny array operations; in NumPy
each costs about a microsecond of dispatch, which made the fast FM member cost more than a
fifth of a compiled DeepFM step. Here prediction and learning are one compiled call each,
over the member's own arrays. Without numba (or with ``RIVER_TORCHREC_NO_KERNEL=1``, the
switch of :mod:`river_torchrec._kernels`) :class:`~river_torchrec.auto.SharedRowsFM` runs
its NumPy code instead; the two agree to float32 rounding (``tests/test_auto_shared.py``).
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["available", "fm_kernels", "mix_kernel", "auto_kernels"]

_cached: tuple | None = None
_failed = False
_logit_kernel = None  # the compiled _fm_logit, which the compiled _fm_learn calls
_mix: object = None
_mix_failed = False
_auto: tuple | None = None
_auto_failed = False
_learn_kernel = None  # the compiled _fm_learn
_mix_update_kernel = None  # the compiled _mix_update
_P_MIN = 1e-15  # as river's LogLoss clips (and OnlineMixture)

#: What :func:`fm_learn` returns.
OK, NONFINITE_LOSS, NONFINITE_STEP = 0, 1, 2


def available() -> bool:
    """Whether numba can be imported (``RIVER_TORCHREC_NO_KERNEL=1`` says no)."""
    if _failed or os.environ.get("RIVER_TORCHREC_NO_KERNEL"):
        return False
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _fm_logit(table, dense, ids, vals, scratch):
    """The FM logit of one event; ``scratch[0]`` receives the sum of the scaled factors.

    ``table`` holds each row's weights and then its Adagrad sums (``[capacity, 2 * width]``),
    ``dense`` the bias and its sum.
    """
    n, width = len(ids), table.shape[1] // 2
    logit = np.float64(dense[0])
    squares = np.float64(0.0)
    for k in range(width - 1):
        scratch[0, k] = 0.0
    for f in range(n):
        v = vals[f]
        if v == 0.0:
            continue
        r = ids[f]
        logit += table[r, 0] * v
        for k in range(width - 1):
            e = table[r, k + 1] * v
            scratch[0, k] += e
            squares += e * e
    pairs = np.float64(0.0)
    for k in range(width - 1):
        pairs += np.float64(scratch[0, k]) * scratch[0, k]
    return logit + 0.5 * (pairs - squares)


def _fm_learn(table, dense, ids, vals, hyper, scratch):
    """One Adagrad step on one event (``hyper``: lr, s0, eps, label, weight), written only
    if every new value is finite. ``scratch``: ``[3 n + 1, width]``."""
    n, width = len(ids), table.shape[1] // 2
    lr, s0, eps, y, w = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    z = _logit_kernel(table, dense, ids, vals, scratch)
    if not math.isfinite(z):
        return 1
    loss = max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))
    if not math.isfinite(loss * w):
        return 1
    p = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    d = np.float32((p - y) * w)
    # Positions sharing a row (absent fields on the padding row) add up into the first one.
    first = np.empty(n, dtype=np.int64)
    for f in range(n):
        first[f] = f
        for g in range(f):
            if ids[g] == ids[f]:
                first[f] = first[g]
                break
    grad, new_rows, new_sums = 1, 1 + n, 1 + 2 * n  # scratch row offsets
    for f in range(n):
        for k in range(width):
            scratch[grad + f, k] = 0.0
    for f in range(n):
        v = vals[f]
        u = grad + first[f]
        r = ids[f]
        scratch[u, 0] += v * d
        for k in range(width - 1):
            scratch[u, k + 1] += (d * (scratch[0, k] - table[r, k + 1] * v)) * v
    finite = True
    for f in range(n):
        if first[f] != f:
            continue
        r = ids[f]
        for k in range(width):
            g = scratch[grad + f, k]
            s = table[r, width + k] + g * g
            std = (math.sqrt(s + s0) if s0 else math.sqrt(s)) + eps
            new = table[r, k] - np.float32(lr * g / std)
            scratch[new_rows + f, k] = new
            scratch[new_sums + f, k] = s
            if not (math.isfinite(new) and math.isfinite(s)):
                finite = False
    sb = dense[1] + d * d
    stdb = (math.sqrt(sb + s0) if s0 else math.sqrt(sb)) + eps
    nb = dense[0] - np.float32(lr * d / stdb)
    if not (finite and math.isfinite(nb) and math.isfinite(sb)):
        return 2
    padding = False
    for f in range(n):
        if first[f] != f:
            continue
        r = ids[f]
        if r == 0:
            padding = True
        for k in range(width):
            table[r, k] = scratch[new_rows + f, k]
            table[r, width + k] = scratch[new_sums + f, k]
    if padding:
        for k in range(width):
            table[0, k] = 0.0
    dense[0] = nb
    dense[1] = sb
    return 0


def fm_kernels() -> tuple | None:
    """``(fm_predict, fm_learn)`` compiled (once per process, cached on disk), or None."""
    global _cached, _failed
    if _cached is not None or not available():
        return _cached
    try:
        import numba

        jit = numba.njit(cache=True, nogil=True, fastmath=False)
        global _logit_kernel
        logit = _logit_kernel = jit(_fm_logit)
        learn = jit(_fm_learn)
        # Compile now, on tiny arrays, so that a failure falls back before any event is seen.
        table = np.zeros((2, 6), dtype=np.float32)
        dense = np.zeros(2, dtype=np.float32)
        ids = np.zeros(1, dtype=np.intp)
        vals = np.ones(1, dtype=np.float32)
        scratch = np.zeros((4, 3), dtype=np.float32)
        logit(table, dense, ids, vals, scratch)
        learn(table, dense, ids, vals, np.array([0.1, 1.0, 1e-10, 1.0, 1.0]), scratch)
    except Exception:  # noqa: BLE001 - any numba failure means: use the NumPy code
        _failed = True
        return None
    _cached = (logit, learn)
    return _cached


def _mix_update(state, probas, label, weight, share, decay, margin, baseline):
    """OnlineMixture._update_python on its state array, in the same order of operations."""
    n = len(probas)
    losses = np.empty(n)
    for i in range(n):
        q = probas[i] if label > 0.5 else 1.0 - probas[i]
        losses[i] = -math.log(q if q > _P_MIN else _P_MIN) * weight
    top = -math.inf
    for i in range(n):
        a = state[n + i] - losses[i]
        state[n + i] = a
        if a > top:
            top = a
    total = 0.0
    for i in range(n):
        total += math.exp(state[n + i] - top)
    norm = top + math.log(total)
    for i in range(n):
        state[i] = math.exp(state[n + i] - norm)
    rate = share
    n_target = 0
    if baseline < 0:
        n_target = n
    else:
        ref = losses[baseline]
        for i in range(n):
            lead = decay * state[3 * n + i] + (ref - losses[i])
            state[3 * n + i] = lead
            if i != baseline and lead > margin:
                n_target += 1
        if n_target:
            led = state[4 * n + 1]
            rate = max(share, 1.0 / (led + 2))
            state[4 * n + 1] = led + 1
            state[4 * n + 2] += -math.log1p(-rate)
    if rate:
        keep = 1.0 - rate
        for i in range(n):
            v = keep * state[i]
            if baseline < 0:
                v += rate / n
            elif n_target:
                if i != baseline and state[3 * n + i] > margin:
                    v += rate / n_target
            elif i == baseline:
                v += rate
            state[i] = v
    for i in range(n):
        state[n + i] = math.log(state[i]) if state[i] > 0 else -math.inf
        state[2 * n + i] += losses[i]
    state[4 * n] += 1


def mix_kernel():
    """The compiled :meth:`OnlineMixture._update_one` (once per process, cached on disk), or None."""
    global _mix, _mix_failed
    if _mix is not None or _mix_failed or not available():
        return _mix
    try:
        import numba

        kernel = numba.njit(cache=True, nogil=True)(_mix_update)
        kernel(np.zeros(4 * 2 + 3), np.array([0.5, 0.5]), 1.0, 1.0, 0.1, 0.5, 1.0, 0)
    except Exception:  # noqa: BLE001 - any numba failure means: use the Python code
        _mix_failed = True
        return None
    _mix = kernel
    return _mix


def _auto_predict(table, dense, ids, vals, scratch, state, probas, q0, q1):
    """AutoCTRClassifier's prediction once its classifier member gave ``q1``: the FM's
    probability and the mixture's, the members' probabilities written into ``probas``."""
    z = _logit_kernel(table, dense, ids, vals, scratch)
    if z >= 0:
        q2 = 1.0 / (1.0 + math.exp(-z))
    else:
        e = math.exp(z)
        q2 = e / (1.0 + e)
    if q2 != q2:
        q2 = 0.5
    q1 = 0.0 if q1 < 0.0 else 1.0 if q1 > 1.0 else q1
    probas[0], probas[1], probas[2] = q0, q1, q2
    p = state[0] * q0 + state[1] * q1 + state[2] * q2
    return 0.0 if p < 0.0 else 1.0 if p > 1.0 else p


def _auto_learn(table, dense, ids, vals, hyper, scratch, state, probas, params):
    """The FM's step and then the mixture's update (``params``: share, decay, margin,
    baseline); returns the FM step's status (the mixture learns the event either way)."""
    status = _learn_kernel(table, dense, ids, vals, hyper, scratch)
    _mix_update_kernel(state, probas, hyper[3], hyper[4], params[0], params[1], params[2], int(params[3]))
    return status


def auto_kernels() -> tuple | None:
    """``(auto_predict, auto_learn)`` compiled, or None (then the separate steps run)."""
    global _auto, _auto_failed, _learn_kernel, _mix_update_kernel
    if _auto is not None or _auto_failed or not available():
        return _auto
    fm, mix = fm_kernels(), mix_kernel()
    if fm is None or mix is None:
        _auto_failed = True
        return None
    try:
        import numba

        _learn_kernel, _mix_update_kernel = fm[1], mix
        jit = numba.njit(cache=True, nogil=True)
        predict, learn = jit(_auto_predict), jit(_auto_learn)
        table = np.zeros((2, 6), dtype=np.float32)
        dense = np.zeros(2, dtype=np.float32)
        ids = np.zeros(1, dtype=np.intp)
        vals = np.ones(1, dtype=np.float32)
        scratch = np.zeros((4, 3), dtype=np.float32)
        state = np.zeros(4 * 3 + 3)
        state[:3] = 1 / 3
        probas = np.zeros(3)
        predict(table, dense, ids, vals, scratch, state, probas, 0.5, 0.5)
        learn(table, dense, ids, vals, np.array([0.1, 1.0, 1e-10, 1.0, 1.0]), scratch, state, probas,
              np.array([0.01, 0.5, 1.0, 0.0]))
    except Exception:  # noqa: BLE001 - any numba failure means: use the separate steps
        _auto_failed = True
        return None
    _auto = (predict, learn)
    return _auto
