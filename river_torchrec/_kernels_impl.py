"""The numba functions of :mod:`river_torchrec._kernels` (imported only when numba is installed)."""

from __future__ import annotations

import math

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - _kernels.available() is then False and nothing here runs
    numba = None

from river_torchrec._kernels import (
    ADAGRAD, HEADER, OGD, P_ACTS, P_BIAS, P_CODE, P_DACTS, P_DIN, P_FM, P_IDS, P_LAYERS, P_LINEAR,
    P_NEWP, P_NEWS, P_PARAMS, P_REP, P_RGRAD, P_RNEW, P_RSNEW, P_STATE, P_TOTAL, P_VALS, P_WIDTH,
    P_X, ROWWISE_ADAGRAD,
)

# Reassociation lets LLVM vectorise the dot products (the NumPy twin's BLAS sums in its own
# order too); no flag that assumes finite values, as rejection depends on seeing them.
# error_model="numpy": a division by zero gives inf or NaN (rejected as such) instead of
# raising, and lets LLVM vectorise the updates.
if numba is not None:
    jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
    plain_jit = numba.njit(cache=True, nogil=True)
else:  # importable without numba (pytest's doctest collection imports every module)
    jit = plain_jit = lambda f: f  # noqa: E731



@jit
def forward(table, ws, plan, n_fields):
    """The logit of the event whose row ids are in the plan and values in the workspace;
    leaves the scaled factors, the FM sums and every layer's output in the workspace."""
    width = plan[P_WIDTH]
    k = width - 1
    ids = plan[plan[P_IDS] : plan[P_IDS] + n_fields]
    vals = ws[plan[P_VALS] : plan[P_VALS] + n_fields]
    x = ws[plan[P_X] : plan[P_X] + n_fields * k]
    logit = np.float64(ws[plan[P_BIAS]])
    lin = np.float32(0.0)
    for f in range(n_fields):
        row = table[ids[f]]
        v = vals[f]
        lin += row[0] * v
        xf = x[f * k : f * k + k]
        for j in range(k):
            xf[j] = row[1 + j] * v
    if plan[P_LINEAR]:
        logit += lin
    if plan[P_FM]:
        total = ws[plan[P_TOTAL] : plan[P_TOTAL] + k]
        total[:] = 0.0
        for f in range(n_fields):
            xf = x[f * k : f * k + k]
            for j in range(k):
                total[j] += xf[j]
        sq_total = np.float32(0.0)
        for j in range(k):
            sq_total += total[j] * total[j]
        sq = np.float32(0.0)
        for i in range(n_fields * k):
            sq += x[i] * x[i]
        logit += 0.5 * np.float64(sq_total - sq)
    n_layers = plan[P_LAYERS]
    if n_layers:
        inp = x
        a_off = plan[P_ACTS]
        for layer in range(n_layers):
            h = HEADER + 5 * layer
            w_off, b_off, n_out, n_in, relu = plan[h], plan[h + 1], plan[h + 2], plan[h + 3], plan[h + 4]
            weight = ws[w_off : w_off + n_out * n_in]
            bias = ws[b_off : b_off + n_out]
            out = ws[a_off : a_off + n_out]
            for i in range(n_out):
                wi = weight[i * n_in : i * n_in + n_in]
                acc = np.float32(0.0)
                for m in range(n_in):
                    acc += wi[m] * inp[m]
                acc += bias[i]
                if relu != 0 and acc < 0:
                    acc = np.float32(0.0)
                out[i] = acc
            inp = out
            a_off += n_out
        logit += inp[0]
    return logit

@jit
def adagrad_block(param, state, new_p, new_s, di, inp, scale, lr32, eps32, s032):
    """New values of one row of a layer's weights under Adagrad (gradient ``di * inp``);
    0 when all are finite, NaN otherwise."""
    zero = np.float32(0.0)
    chk = np.float32(0.0)
    for m in range(param.shape[0]):
        g = (di * inp[m]) * scale
        s = g * g + state[m]
        std = np.sqrt(s + s032) + eps32
        p = param[m] - (lr32 * g) / std
        new_s[m] = s
        new_p[m] = p
        chk += p * zero + s * zero  # NaN exactly when p or s is not finite
    return chk

@jit
def ogd_block(param, new_p, di, inp, scale, lr32):
    zero = np.float32(0.0)
    chk = np.float32(0.0)
    for m in range(param.shape[0]):
        p = param[m] - lr32 * ((di * inp[m]) * scale)
        new_p[m] = p
        chk += p * zero
    return chk

@jit
def learn(table, rstate, ws, plan, n_fields, logit, reuse, y, w, lr, eps, s0, clip):
    """One step on the event; ``(0, loss)`` when written, ``(1, loss)`` for a non-finite
    loss and ``(2, loss)`` for a non-finite gradient, weight or state (nothing written)."""
    if not reuse:
        logit = forward(table, ws, plan, n_fields)
    if math.isfinite(logit):
        loss = max(logit, 0.0) - logit * y + math.log1p(math.exp(-abs(logit)))
    elif logit != logit:
        loss = math.nan
    else:
        loss = math.inf
    if not math.isfinite(loss * w):
        return 1, loss
    if logit >= 0:
        p = 1.0 / (1.0 + math.exp(-logit))
    else:
        e = math.exp(logit)
        p = e / (1.0 + e)
    d = np.float32((p - y) * w)
    width = plan[P_WIDTH]
    k = width - 1
    code = plan[P_CODE]
    n_params = plan[P_PARAMS]
    ids = plan[plan[P_IDS] : plan[P_IDS] + n_fields]
    rep = plan[plan[P_REP] : plan[P_REP] + n_fields]
    for f in range(n_fields):
        rep[f] = f
        for j in range(f):
            if ids[j] == ids[f]:
                rep[f] = j
                break
    vals = ws[plan[P_VALS] : plan[P_VALS] + n_fields]
    x = ws[plan[P_X] : plan[P_X] + n_fields * k]
    din = ws[plan[P_DIN] : plan[P_DIN] + n_fields * k]
    total = ws[plan[P_TOTAL] : plan[P_TOTAL] + k]
    params = ws[:n_params]
    new_p = ws[plan[P_NEWP] : plan[P_NEWP] + n_params]
    stateful = code != OGD
    state = ws[plan[P_STATE] : plan[P_STATE] + (n_params if stateful else 0)]
    new_s = ws[plan[P_NEWS] : plan[P_NEWS] + (n_params if stateful else 0)]
    lr32, eps32, s032 = np.float32(lr), np.float32(eps), np.float32(s0)
    zero = np.float32(0.0)

    # ---- backward: the deltas of every layer (after its ReLU mask), then of the input
    n_layers = plan[P_LAYERS]
    acts0, dacts0 = plan[P_ACTS], plan[P_DACTS]
    norm2 = np.float64(d) * np.float64(d)  # the bias
    din[:] = 0.0
    if n_layers:
        # Offsets of each layer's output in the activations (and deltas) region.
        at = acts0
        for layer in range(n_layers - 1):
            at += plan[HEADER + 5 * layer + 2]
        ws[dacts0 + (at - acts0)] = d  # the output layer: width 1, no ReLU
        for layer in range(n_layers - 1, -1, -1):
            h = HEADER + 5 * layer
            w_off, n_out, n_in, relu = plan[h], plan[h + 2], plan[h + 3], plan[h + 4]
            out = ws[at : at + n_out]
            dout = ws[dacts0 + (at - acts0) : dacts0 + (at - acts0) + n_out]
            if relu != 0:
                for i in range(n_out):
                    if not out[i] > 0:
                        dout[i] = 0.0
            if layer == 0:
                inp, dinp = x, din
                prev = at
            else:
                prev = at - plan[HEADER + 5 * (layer - 1) + 2]
                inp = ws[prev : prev + n_in]
                dinp = ws[dacts0 + (prev - acts0) : dacts0 + (prev - acts0) + n_in]
                dinp[:] = 0.0
            sq_in = np.float32(0.0)
            for m in range(n_in):
                sq_in += inp[m] * inp[m]
            weight = ws[w_off : w_off + n_out * n_in]
            for i in range(n_out):
                di = dout[i]
                if di != 0:
                    norm2 += np.float64(di) * di * (np.float64(sq_in) + 1.0)
                    wi = weight[i * n_in : i * n_in + n_in]
                    for m in range(n_in):
                        dinp[m] += di * wi[m]
            at = prev

    # ---- gradients of the event's rows, positions sharing a row summed into the first
    rgrad = ws[plan[P_RGRAD] : plan[P_RGRAD] + n_fields * width]
    rgrad[:] = 0.0
    linear, fm = plan[P_LINEAR] != 0, plan[P_FM] != 0
    for f in range(n_fields):
        v = vals[f]
        gr = rgrad[rep[f] * width : rep[f] * width + width]
        if linear:
            gr[0] += v * d
        for j in range(k):
            g = din[f * k + j]
            if fm:
                g = d * (total[j] - x[f * k + j]) + g
            gr[1 + j] += g * v
    for f in range(n_fields):
        if rep[f] == f:
            for c in range(width):
                norm2 += np.float64(rgrad[f * width + c]) * rgrad[f * width + c]
    scale = np.float32(1.0)
    if clip > 0:
        scale = np.float32(min(clip / (math.sqrt(norm2) + 1e-12), 1.0))

    # ---- the update, out of place: new values into the workspace, tested, then written
    chk = np.float32(0.0)
    b = plan[P_BIAS]
    g = d * scale
    if stateful:
        s = g * g + state[b]
        std = np.sqrt(s + s032) + eps32
        new_s[b] = s
        new_p[b] = params[b] - (lr32 * g) / std
        chk += s * zero
    else:
        new_p[b] = params[b] - lr32 * g
    chk += new_p[b] * zero
    inp = x
    at = acts0
    for layer in range(n_layers):
        h = HEADER + 5 * layer
        w_off, b_off, n_out, n_in = plan[h], plan[h + 1], plan[h + 2], plan[h + 3]
        dout = ws[dacts0 + (at - acts0) : dacts0 + (at - acts0) + n_out]
        for i in range(n_out):
            di = dout[i]
            if di == 0:  # a zero gradient leaves the row and its state as they are
                continue
            lo, hi = w_off + i * n_in, w_off + i * n_in + n_in
            if stateful:
                chk += adagrad_block(params[lo:hi], state[lo:hi], new_p[lo:hi], new_s[lo:hi], di, inp, scale, lr32, eps32, s032)
                gb = di * scale
                sb = gb * gb + state[b_off + i]
                std = np.sqrt(sb + s032) + eps32
                new_s[b_off + i] = sb
                new_p[b_off + i] = params[b_off + i] - (lr32 * gb) / std
                chk += sb * zero
            else:
                chk += ogd_block(params[lo:hi], new_p[lo:hi], di, inp, scale, lr32)
                new_p[b_off + i] = params[b_off + i] - lr32 * (di * scale)
            chk += new_p[b_off + i] * zero
        inp = ws[at : at + n_out]
        at += n_out
    rnew = ws[plan[P_RNEW] : plan[P_RNEW] + n_fields * width]
    rsnew = ws[plan[P_RSNEW] : plan[P_RSNEW] + n_fields * width]
    for f in range(n_fields):
        if rep[f] != f:
            continue
        row, srow = table[ids[f]], rstate[ids[f]] if code != OGD else rstate[0]
        gr = rgrad[f * width : f * width + width]
        nr = rnew[f * width : f * width + width]
        if code == OGD:
            for c in range(width):
                nr[c] = row[c] - lr32 * (gr[c] * scale)
                chk += nr[c] * zero
        elif code == ADAGRAD:
            ns = rsnew[f * width : f * width + width]
            for c in range(width):
                gc = gr[c] * scale
                sc = gc * gc + srow[c]
                std = np.sqrt(sc + s032) + eps32
                ns[c] = sc
                nr[c] = row[c] - (lr32 * gc) / std
                chk += nr[c] * zero + sc * zero
        else:
            mean = np.float32(0.0)
            for c in range(width):
                gc = gr[c] * scale
                mean += gc * gc
            sc = srow[0] + mean / np.float32(width)
            std = np.sqrt(sc + s032) + eps32
            rsnew[f * width] = sc
            chk += sc * zero
            for c in range(width):
                nr[c] = row[c] - (lr32 * (gr[c] * scale)) / std
                chk += nr[c] * zero
    if chk != 0:  # NaN: something is not finite
        return 2, loss

    # ---- commit
    params[b] = new_p[b]
    if stateful:
        state[b] = new_s[b]
    at = acts0
    for layer in range(n_layers):
        h = HEADER + 5 * layer
        w_off, b_off, n_out, n_in = plan[h], plan[h + 1], plan[h + 2], plan[h + 3]
        dout = ws[dacts0 + (at - acts0) : dacts0 + (at - acts0) + n_out]
        for i in range(n_out):
            if dout[i] == 0:
                continue
            lo, hi = w_off + i * n_in, w_off + i * n_in + n_in
            params[lo:hi] = new_p[lo:hi]
            params[b_off + i] = new_p[b_off + i]
            if stateful:
                state[lo:hi] = new_s[lo:hi]
                state[b_off + i] = new_s[b_off + i]
        at += n_out
    padding = False
    for f in range(n_fields):
        if rep[f] != f:
            continue
        r = ids[f]
        padding = padding or r == 0
        table[r] = rnew[f * width : f * width + width]
        if code == ADAGRAD:
            rstate[r] = rsnew[f * width : f * width + width]
        elif code == ROWWISE_ADAGRAD:
            rstate[r, 0] = rsnew[f * width]
    if padding:
        table[0] = 0.0
    return 0, loss



# --------------------------------------------------------------- the poisoning defence's frames

_EPS = 1e-6


@plain_jit
def _decay(t, t_last, half_life):
    return 2.0 ** (-(t - t_last) / half_life) if t != t_last else 1.0


@plain_jit
def _binary_kl(r, b):
    r = min(max(r, _EPS), 1.0 - _EPS)
    b = min(max(b, _EPS), 1.0 - _EPS)
    return r * math.log(r / b) + (1.0 - r) * math.log((1.0 - r) / (1.0 - b))


# Plain IEEE arithmetic in the order of DefenceTransaction.weigh (no fastmath), so that a frame
# gets bit for bit the weights of its rows weighed one by one.
@plain_jit
def defence_frame(
    ucode, kcode, labels, weights, probas, user_int, user_float, key_state, key_int, scalars, counts, params, out
):
    """:meth:`DefenceTransaction.weigh` of every row of a frame, in order.

    ``ucode[i]``: the row's sender (-1: none), ``kcode[f, i]``: its key in item field ``f``
    (-1: none). Per sender ``user_int[u] = (events, first, unused, has an entry, last row)`` and
    ``user_float[u] = (granted, its t, has an entry)``; per key ``key_state[k] = (n_new, c_new,
    n_old, c_old)`` and ``key_int[k] = (t, has an entry, last row)``: initial values in, final
    ones out. ``scalars``: clock, population (n, s, t), total granted
    (total, t), weight removed; ``counts``: flagged, limited, clipped. ``params``: min_history,
    min_age, warmup, half_life, alarm_nats, prior_strength, flagged_weight, max_share (< 0:
    none), burst_allowance, share_half_life, max_logit_gradient (< 0: none).
    """
    min_history, min_age, warmup = params[0], params[1], params[2]
    half_life, alarm, prior = params[3], params[4], params[5]
    flagged_weight, max_share, burst = params[6], params[7], params[8]
    share_half_life, max_grad = params[9], params[10]
    t = scalars[0]
    pop_n, pop_s, pop_t = scalars[1], scalars[2], scalars[3]
    tot_g, tot_t = scalars[4], scalars[5]
    removed = scalars[6]
    n_fields = kcode.shape[0]
    for i in range(labels.shape[0]):
        label, weight = labels[i], weights[i]
        t += 1.0
        w = weight
        u = ucode[i]
        newcomer = False
        if u >= 0:
            if user_int[u, 3] != 0:
                count, first = user_int[u, 0], user_int[u, 1]
            else:
                count, first = 0, np.int64(t)
            newcomer = count < min_history or (t - first) - count < min_age
            user_int[u, 0], user_int[u, 1], user_int[u, 3], user_int[u, 4] = count + 1, first, 1, i
        f = _decay(t, pop_t, half_life)
        if n_fields:
            p0 = (pop_s * f + 0.5) / (pop_n * f + 1.0)
            factor = 1.0
            for fi in range(n_fields):
                k = kcode[fi, i]
                if k < 0:
                    continue
                if key_int[k, 1] != 0:
                    fk = _decay(t, key_int[k, 0], half_life)
                    n_new, c_new = key_state[k, 0] * fk, key_state[k, 1] * fk
                    n_old, c_old = key_state[k, 2] * fk, key_state[k, 3] * fk
                else:
                    n_new = c_new = n_old = c_old = 0.0
                if newcomer:
                    n_new, c_new = n_new + 1.0, c_new + label
                    if t > warmup and n_new > 0:
                        baseline = (c_old + prior * p0) / (n_old + prior)
                        nats = n_new * _binary_kl(c_new / n_new, baseline) if n_new > 0 else 0.0
                        if nats > alarm:
                            if (label - baseline) * (c_new / n_new - baseline) > 0:
                                factor = min(factor, flagged_weight)
                else:
                    n_old, c_old = n_old + 1.0, c_old + label
                key_state[k, 0], key_state[k, 1], key_state[k, 2], key_state[k, 3] = n_new, c_new, n_old, c_old
                key_int[k, 0], key_int[k, 1], key_int[k, 2] = np.int64(t), 1, i
            if factor < 1.0:
                counts[0] += 1
                w *= factor
        pop_n, pop_s, pop_t = pop_n * f + 1.0, pop_s * f + label, t
        if u >= 0 and max_share >= 0:
            if user_float[u, 2] != 0:
                g = user_float[u, 0] * _decay(t, user_float[u, 1], share_half_life)
            else:
                g = 0.0
            total = tot_g * _decay(t, tot_t, share_half_life)
            cap = max_share * total + burst
            granted = min(w, max(0.0, cap - g))
            if granted < w:
                counts[1] += 1
            user_float[u, 0], user_float[u, 1], user_float[u, 2] = g + granted, t, 1.0
            tot_g, tot_t = total + granted, t
            w = granted
        if max_grad >= 0 and probas.shape[0]:
            p = probas[i]
            gr = abs(p - label) * w
            if gr > max_grad:
                w = max_grad / abs(p - label)
                counts[2] += 1
        removed += weight - w
        out[i] = w
    scalars[0] = t
    scalars[1], scalars[2], scalars[3] = pop_n, pop_s, pop_t
    scalars[4], scalars[5] = tot_g, tot_t
    scalars[6] = removed
