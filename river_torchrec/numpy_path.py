"""One-event prediction and learning in NumPy: the CPU twin of the estimator's torch path.

On a single event a CTR model is a few dozen tiny operations, and each torch operation
costs several microseconds of dispatch against about one for NumPy. For ``batch_size=1``
on CPU, :class:`~river_torchrec.CTRClassifier` therefore runs the model's NumPy twin
(:meth:`~river_torchrec.nn.CTRModel.numpy_forward`) and the updater's
(:meth:`~river_torchrec.optim.Updater._numpy_update`) on NumPy views of the very torch
tensors the torch path uses: the weights stay torch tensors, and both paths can be mixed
freely. Tests hold the two paths to 1e-6 of each other.

To update every dense parameter with a handful of operations instead of a handful per
parameter, the dense parameters (and the updater's state for them) are made views of
one flat tensor each, the layout ``FSDP`` uses for its flat parameters. The layout is
rebuilt, by copying, whenever a parameter or a state tensor has been replaced (the first
layer widens when a field arrives; ``reset_state`` drops the state).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from river_torchrec import _kernels
from river_torchrec.encoding import FLOAT32_MAX as _FLOAT32_MAX
from river_torchrec.encoding import parse_features
from river_torchrec.nn import PADDING_ROW, CTRModel, DynamicEmbedding

if TYPE_CHECKING:
    from river_torchrec.learner import OnlineLearner as CTRClassifier

__all__ = ["NumpyPath"]

_TABLE = "embedding.weight"
_NO_STATE = np.zeros((1, 1), dtype=np.float32)
_data_ptr = torch.Tensor.data_ptr


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)  # z < 0 (or NaN): no overflow
    return e / (1.0 + e)


def _bce(z: float, y: float) -> float:
    """Binary cross-entropy of a logit, stable for large ``|z|``; inf or NaN for a non-finite one."""
    if not math.isfinite(z):
        return math.inf if z == z else math.nan
    return max(z, 0.0) - z * y + math.log1p(math.exp(-abs(z)))


def _table(net: CTRModel) -> DynamicEmbedding:
    """``net.embedding``, read from the module's own dict: torch's ``Module.__getattr__`` is a
    Python function, and the one-event path asks for the table several times per event."""
    table = net._modules.get("embedding")
    return table if table is not None else net.embedding


def _table_weight(net: CTRModel) -> torch.Tensor:
    """``net.embedding.weight`` (a buffer of :class:`DynamicEmbedding`), the same way."""
    table = _table(net)
    weight = table._buffers.get("weight")
    return weight if weight is not None else table.weight


def _finite(arrays: list[np.ndarray]) -> bool:
    """True when no array holds a NaN or an infinity."""
    for a in arrays:
        # A NaN or an infinity makes the dot product non-finite, and the BLAS dot is the
        # cheapest reduction there is; only when it is (or overflows) is each element tested.
        if not math.isfinite(np.vdot(a, a)) and not np.isfinite(a).all():
            return False
    return True


class _Prediction:
    """The last prediction, which the next ``learn`` may start from."""

    __slots__ = ("version", "x", "types", "ids", "vals", "known", "logit", "cache", "rows")

    def __init__(self, version, x, types, ids, vals, known, logit, cache, rows) -> None:
        self.version, self.x, self.types = version, x, types
        self.ids, self.vals, self.known = ids, vals, known
        self.logit, self.cache, self.rows = logit, cache, rows


class _Layout:
    """The flat dense parameters of one model (and the updater state for them), as NumPy views."""

    __slots__ = (
        "net", "params", "updater", "ptrs", "flat", "arrays", "grads", "grad_flat", "state", "plan",
        "dense_state", "checks", "scalars", "starts", "sizes", "kernel", "tensors", "has_state", "copied",
        "versions",
    )

    def __init__(self, clf: CTRClassifier, with_state: bool = True) -> None:
        net = clf.model_
        params = clf._trainable()
        updater = clf._updater
        self.net, self.params, self.updater = net, params, updater
        spans, total = [], 0
        for _, p in params:
            spans.append((total, total + p.numel()))
            total += p.numel()
        code = _kernel_code(clf)
        kernel = None
        if code is not None:
            # The compiled step: parameters, their state and all scratch space in one workspace.
            kernel = _Kernel(net, code, [n for n, _ in params], spans, total, updater)
            flat = torch.from_numpy(kernel.ws[:total])
        else:
            flat = torch.empty(total, dtype=torch.float32)
        # A layout for predictions only copies the parameters and leaves them where they are
        # (a prediction moves no storage: a pickle taken before it stays byte for byte the
        # same); it is valid while no step was taken and no parameter was written in place.
        self.copied = kernel is not None and not with_state
        with torch.no_grad():
            for (_, p), (a, b) in zip(params, spans):
                flat[a:b] = p.detach().reshape(-1)
            if not self.copied:
                for (_, p), (a, b) in zip(params, spans):
                    p.data = flat[a:b].view(p.shape)
        self.flat = flat.numpy()
        self.tensors = [p for _, p in params]
        self.ptrs = list(map(_data_ptr, self.tensors))
        # Steps write through ``p.data`` (no version bump) but count in the estimator's version.
        self.versions = [clf._version] + [p._version for p in self.tensors] if self.copied else None
        self.arrays = {n: self.flat[a:b].reshape(p.shape) for (n, p), (a, b) in zip(params, spans)}
        self.grad_flat = np.zeros(total, dtype=np.float32)
        self.grads = {n: self.grad_flat[a:b].reshape(p.shape) for (n, p), (a, b) in zip(params, spans)}
        self.state: dict[str, tuple[np.ndarray, list[tuple[str, torch.Tensor]]]] = {}
        # Without state (a layout built by a prediction, which must create no updater state),
        # the layout serves predictions only; the first learning step builds the full one.
        self.has_state = with_state
        for key, fill in (updater.numpy_state or {}).items() if with_state else ():
            bufs = [updater._buffer(n, key, p, fill) for n, p in params]
            state_flat = torch.cat([b.detach().reshape(-1).float() for b in bufs]) if bufs else torch.zeros(0)
            if kernel is not None:
                # The only state key of the kernel's updaters: into the workspace.
                into = torch.from_numpy(kernel.ws[kernel.off["state"] : kernel.off["state"] + total])
                into.copy_(state_flat)
                state_flat = into
            views = []
            for (n, p), (a, b) in zip(params, spans):
                view = state_flat[a:b].view(p.shape)
                updater._state[n][key] = view
                views.append((n, view))
            self.state[key] = (state_flat.numpy(), views)
        self.dense_state = {key: flat for key, (flat, _) in self.state.items()}
        # One float per parameter (Adam's step count), each parameter's 0-d state a view of it.
        self.starts = np.array([a for a, _ in spans], dtype=np.intp)
        self.sizes = np.array([b - a for a, b in spans], dtype=np.intp)
        self.scalars: dict[str, tuple[np.ndarray, list[tuple[str, torch.Tensor]]]] = {}
        for key, fill in updater.numpy_scalar_state.items() if with_state else ():
            bufs = [updater._buffer(n, key, torch.empty(()), fill) for n, _ in params]
            scalar_flat = torch.stack([b.detach().reshape(()).float() for b in bufs]) if bufs else torch.zeros(0)
            views = []
            for i, (n, _) in enumerate(params):
                view = scalar_flat[i]
                updater._state[n][key] = view
                views.append((n, view))
            self.scalars[key] = (scalar_flat.numpy(), views)
        # (parameter name, state key, the view the updater must still hold there)
        self.checks = [
            (n, key, view)
            for group in (self.state, self.scalars)
            for key, (_, views) in group.items()
            for n, view in views
        ]
        self.plan = net.numpy_plan()
        self.kernel = kernel

    def valid(self, clf: CTRClassifier, with_state: bool) -> bool:
        """Still the model's parameters (and, ``with_state``, the updater's state tensors)."""
        if self.net is not clf.model_ or self.updater is not clf._updater or self.params is not clf._trainable():
            return False
        # A storage moved under a view (``share_memory_``, ``p.data = ...``) changes its address.
        if list(map(_data_ptr, self.tensors)) != self.ptrs:
            return False
        if self.copied and [clf._version] + [p._version for p in self.tensors] != self.versions:
            return False
        if with_state:
            if not self.has_state:
                return False
            state = self.updater._state
            for n, key, view in self.checks:
                slots = state.get(n)
                if slots is None or slots.get(key) is not view:
                    return False
        return True

    def unflatten(self) -> None:
        """Give every parameter and state tensor its own storage again (values unchanged)."""
        if self.copied:
            return  # the parameters never left their own storage
        with torch.no_grad():
            for _, p in self.params:
                p.data = p.data.clone()
        state = self.updater._state
        for n, key, view in self.checks:
            if state.get(n, {}).get(key) is view:
                state[n][key] = view.clone()


#: The updaters the compiled step implements, by exact class name (a subclass may change the arithmetic).
_KERNEL_UPDATERS = _kernels.UPDATER_CODES


def _kernel_code(clf: CTRClassifier) -> int | None:
    """The kernel's updater code when the compiled step applies to the estimator, else None."""
    if not clf._use_kernel or not _kernels.available():
        return None
    net, updater = clf.model_, clf._updater
    cls = type(updater)
    code = _KERNEL_UPDATERS.get(cls.__name__)
    if code is None or cls.__module__.rsplit(".", 1)[0] != "river_torchrec.optim":
        return None
    if code != _kernels.OGD and not (updater.eps > 0 or updater.initial_accumulator_value > 0):
        # 0 / 0 on a coordinate without gradient: the torch path rejects such steps, and
        # the kernel, which skips coordinates without gradient, would not.
        return None
    terms = type(net).__dict__.get("numpy_terms")
    if not terms or not set(terms) <= {"linear", "fm", "mlp"} or not net.uses_linear:
        return None
    try:
        _kernels.kernels()
    except Exception:  # noqa: BLE001 - a numba that cannot compile: the NumPy twin runs instead
        return None
    return code


class _Kernel:
    """The workspace and plan of the compiled step (:mod:`river_torchrec._kernels`) for one layout."""

    __slots__ = ("ws", "plan", "off", "fcap", "code", "ids_at", "vals_at", "forward", "learn", "eps", "s0")

    def __init__(
        self, net: CTRModel, code: int, names: list[str], spans: list[tuple[int, int]], total: int, updater
    ) -> None:
        K = _kernels
        start = {n: a for n, (a, _) in zip(names, spans)}
        layers = net.numpy_plan()
        shapes = {n: b - a for n, (a, b) in zip(names, spans)}
        widths = [shapes[b] for _, b, _ in layers]
        width = _table(net).dim
        # Room for twice today's fields: a new field of an FM or LR changes no parameter.
        fcap = max(16, 2 * net.n_fields)
        off, size = K.workspace_layout(total, code != K.OGD, fcap, width, widths)
        self.ws = np.zeros(size, dtype=np.float32)
        n_layers = len(layers)
        plan = np.zeros(K.HEADER + 5 * n_layers + 2 * fcap, dtype=np.int64)
        terms = net.numpy_terms
        head = {
            K.P_FIELDS: net.n_fields, K.P_WIDTH: width, K.P_LINEAR: int("linear" in terms),
            K.P_FM: int("fm" in terms), K.P_LAYERS: n_layers, K.P_BIAS: start["bias"], K.P_CODE: code,
            K.P_FCAP: fcap, K.P_PARAMS: total, K.P_STATE: off["state"], K.P_NEWP: off["newp"],
            K.P_NEWS: off["news"], K.P_VALS: off["vals"], K.P_X: off["x"], K.P_ACTS: off["acts"],
            K.P_DACTS: off["dacts"], K.P_TOTAL: off["total"], K.P_DIN: off["din"], K.P_RGRAD: off["rgrad"],
            K.P_RNEW: off["rnew"], K.P_RSNEW: off["rsnew"],
            K.P_IDS: K.HEADER + 5 * n_layers, K.P_REP: K.HEADER + 5 * n_layers + fcap,
        }
        for slot, value in head.items():
            plan[slot] = value
        for i, (w, b, relu) in enumerate(layers):
            n_out = shapes[b]
            plan[K.HEADER + 5 * i : K.HEADER + 5 * i + 5] = (start[w], start[b], n_out, shapes[w] // n_out, int(relu))
        self.plan, self.off, self.fcap, self.code = plan, off, fcap, code
        self.ids_at, self.vals_at = int(plan[K.P_IDS]), off["vals"]
        self.forward, self.learn = K.kernels()
        self.eps = float(getattr(updater, "eps", 0.0))
        self.s0 = float(getattr(updater, "initial_accumulator_value", 0.0))

    def load(self, ids: list[int], vals: list[float]) -> int:
        """Put the event's row ids and values where the kernel reads them; its field count."""
        n = len(ids)
        self.plan[self.ids_at : self.ids_at + n] = ids
        self.ws[self.vals_at : self.vals_at + n] = vals
        return n


class NumpyPath:
    """The NumPy twin of :class:`~river_torchrec.CTRClassifier`'s one-event steps.

    Holds no learned state of its own, only views: the estimator keeps it in its
    never-pickled memo. :meth:`applies` says when the twin applies; the estimator
    falls back to the torch path otherwise.

    The model must declare ``numpy_terms`` and the updater ``numpy_state`` in their own
    class bodies (the built-in LR, FM, DeepFM and Wide&Deep, and OGD, Adagrad,
    RowWiseAdagrad, Adam and FTRLProximal do); the table must be float32 on CPU;
    ``batch_size`` must be 1 and no distributed gradient hook may be set.
    """

    __slots__ = ("_layout", "_table", "_row_views", "_applies", "entry")

    def __init__(self) -> None:
        self._layout: _Layout | None = None
        self._table: tuple[torch.Tensor, np.ndarray] | None = None
        self._row_views: tuple | None = None
        self._applies: tuple | None = None
        self.entry: _Prediction | None = None

    def applies(self, clf: CTRClassifier) -> bool:
        """Whether the twin applies to the estimator's model, updater and settings now."""
        net = clf.model_
        weight = _table_weight(net)
        cached = self._applies
        if cached is not None:
            k = cached[0]
            if (
                k[0] is net
                and k[1] is clf._updater
                and k[2] is weight
                and k[3] == clf.batch_size
                and k[4] is clf._grad_hook
            ):
                return cached[1]
        key = (net, clf._updater, weight, clf.batch_size, clf._grad_hook)
        ok = (
            clf.batch_size == 1
            and clf._grad_hook is None
            and type(net).__dict__.get("numpy_terms") is not None
            and clf._updater.has_numpy_twin
            and weight.dtype == torch.float32
            and weight.device.type == "cpu"
            and all(p.device.type == "cpu" and p.dtype == torch.float32 for _, p in clf._trainable())
        )
        self._applies = (key, ok)
        return ok

    def _table_view(self, weight: torch.Tensor) -> np.ndarray:
        cached = self._table
        if cached is None or cached[0] is not weight:
            cached = self._table = (weight, weight.numpy())
        return cached[1]

    def _row_state(self, clf: CTRClassifier, weight: torch.Tensor) -> dict[str, np.ndarray]:
        """NumPy views of the updater's state for the table's rows, by key."""
        cached = self._row_views
        slots = clf._updater._state.get(_TABLE)
        if (
            cached is not None
            and cached[0] is weight
            and slots is not None
            and all(slots.get(key) is t for key, t, _ in cached[1])
        ):
            # The same table and state tensors as last step: no need to ask the updater.
            return cached[2]
        items = [(key, t, t.detach().numpy()) for key, t in clf._updater._numpy_row_state(_TABLE, weight).items()]
        views = {key: a for key, _, a in items}
        self._row_views = (weight, items, views)
        return views

    def unflatten(self) -> None:
        """Undo the flat layout (before pickling: a view pickles its whole storage)."""
        if self._layout is not None:
            self._layout.unflatten()
        self._layout = self._table = self._applies = self._row_views = None
        self.entry = None

    # ------------------------------------------------------------ steps

    @staticmethod
    def _arrange(clf: CTRClassifier, parsed: list, learn: bool) -> tuple[list[int], list[float], bool]:
        """Row ids and values of every field slot (what ``_tensors`` makes tensors of), and,
        for a prediction, whether learning the same event would find exactly these rows
        and change nothing while looking them up."""
        clipper = clf._clipper
        if clipper is not None:
            parsed = clipper.clip_event(parsed, learn)
        enc = clf._encoder
        net = clf.model_
        known = False
        if learn:
            # Keys in slot order: rows are handed out in the order keys are looked up.
            slots, keys, values = enc.arrange(parsed, True)
            net.add_fields(len(enc))
            rows = clf._lookup(keys, True) if keys else []
        else:
            # Nothing is allocated when predicting, so the order does not matter (no sort).
            slot_of = enc.slots
            slots, keys, values = [], [], []
            for field, key, value in parsed:
                slot = slot_of.get(field)
                if slot is not None:
                    slots.append(slot)
                    keys.append((field, key))
                    values.append(value)
            table = net.embedding
            rows, known = table.peek(keys)
            known = known and len(slots) == len(parsed) and clipper is None and table.max_rows is None
        n_fields = net.n_fields
        ids, vals = [PADDING_ROW] * n_fields, [0.0] * n_fields
        for slot, row, value in zip(slots, rows, values):
            ids[slot] = row
            vals[slot] = value
        return ids, vals, known

    @staticmethod
    def _arrange_dict(clf: CTRClassifier, x: dict) -> tuple[list[int], list[float], bool] | None:
        """:meth:`_arrange` of a prediction straight from the dict, parsing and looking up in
        one pass; None when the event needs :func:`parse_features` (any value but a str, a
        finite int or float, or None; a clipper, hashing or ``max_rows``), which then validates it."""
        if type(x) is not dict or clf._clipper is not None:
            return None
        net = clf.model_
        table = _table(net)
        if table.mode == "hash" or table.max_rows is not None:
            return None
        slot_of, hot, row_of, oov = clf._encoder.slots, table._rows._cache, table._rows.get, table._oov
        log = clf._log_numeric
        n_fields = net.n_fields
        ids, vals = [PADDING_ROW] * n_fields, [0.0] * n_fields
        known = True
        for field, v in x.items():
            t = type(v)
            if t is str:
                k, value = (field, v), 1.0
            elif t is float or t is int:
                if not -_FLOAT32_MAX <= v <= _FLOAT32_MAX:
                    return None  # NaN or out of range: parse_features says what it means
                k = (field, None)
                value = math.copysign(math.log1p(abs(v)), v) if log else float(v)
            elif v is None:
                continue
            else:
                return None
            slot = slot_of.get(field)
            if slot is None:
                known = False
                continue
            row = hot.get(k) or row_of(k)
            if row is None:
                known = False
                row = oov.get(field, PADDING_ROW)
            ids[slot] = row
            vals[slot] = value
        return ids, vals, known

    def predict(self, clf: CTRClassifier, x: dict, parsed: list | None = None) -> float:
        """P(click) of an event; remembers the forward pass for the next :meth:`learn`.
        ``parsed``: :func:`parse_features` of ``x``, done here when not given."""
        arranged = self._arrange_dict(clf, x) if parsed is None else None
        if arranged is None:
            if parsed is None:
                parsed = parse_features(x, clf._log_numeric, clf._nan_missing)
            arranged = self._arrange(clf, parsed, learn=False)
        ids, vals, known = arranged
        net: CTRModel = clf.model_
        lay = self._layout
        ok = lay is not None and lay.valid(clf, with_state=False)
        if not ok and _kernel_code(clf) is not None:
            # The compiled forward pass from the first prediction on, so that a model predicts
            # the same before and after its first step (or a checkpoint's reload) bit for bit.
            if lay is not None:
                lay.unflatten()
            lay = self._layout = _Layout(clf, with_state=False)
            ok = True
        if ok:
            kernel = lay.kernel
            if kernel is not None and len(ids) <= kernel.fcap:
                n = kernel.load(ids, vals)
                logit = kernel.forward(self._table_view(_table_weight(net)), kernel.ws, kernel.plan, n)
                types = tuple(map(type, x.values())) if known else None
                # The cache is the kernel: its workspace holds this forward pass until the next one.
                self.entry = _Prediction(clf._version, dict(x) if known else None, types, ids, vals, known, logit, kernel, None)
                return _sigmoid(logit)
            plan, arrays = lay.plan, lay.arrays
        else:
            # No flat layout before the first step: prediction must not create updater state.
            plan = net.numpy_plan()
            arrays = {n: p.detach().numpy() for n, p in clf._trainable()}
        rows = self._table_view(_table_weight(net))[ids]
        with np.errstate(all="ignore"):  # an overflowing logit predicts 0.5, with the torch path's warning
            logit, cache = net.numpy_forward(plan, arrays, rows, np.array(vals, dtype=np.float32))
        types = tuple(map(type, x.values())) if known else None
        self.entry = _Prediction(clf._version, dict(x) if known else None, types, ids, vals, known, logit, cache, rows)
        return _sigmoid(logit)

    def known_entry(self, clf: CTRClassifier, x: dict) -> _Prediction | None:
        """The last prediction when it was of this very event (same values, same types),
        every field and value known, and nothing learned since; else None."""
        entry = self.entry
        if (
            entry is not None
            and entry.known
            and entry.version == clf._version
            and x == entry.x
            and tuple(map(type, x.values())) == entry.types
        ):
            return entry
        return None

    def learn(self, clf: CTRClassifier, x: dict, y: float, w: float) -> None:
        """One step on one event, with the torch path's semantics (rejection included)."""
        entry = self.known_entry(clf, x)
        if entry is not None:
            # Progressive validation learns the event it just predicted: when every field
            # and value was known then, parsing and looking it up again would give the same
            # rows and change nothing (no new field, row, count or recency).
            ids, vals = entry.ids, entry.vals
            clf._rows_recycled = False
        else:
            ids, vals, _ = self._arrange(clf, parse_features(x, clf._log_numeric, clf._nan_missing), learn=True)
        updater = clf._updater
        lay = self._layout
        snapshot = None
        if lay is None or not lay.valid(clf, with_state=True) or (lay.kernel is not None and len(ids) > lay.kernel.fcap):
            # Building the layout may create updater state, which a rejected step must drop.
            snapshot = {n: dict(slots) for n, slots in updater._state.items()}
            if lay is not None:
                lay.unflatten()
            lay = self._layout = _Layout(clf)
        elif updater.numpy_state and _TABLE not in updater._state:
            snapshot = {n: dict(slots) for n, slots in updater._state.items()}
        if lay.kernel is not None:
            entry, self.entry = self.entry, None
            reason = self._kernel_step(clf, lay.kernel, entry, ids, vals, y, w)
        else:
            with np.errstate(all="ignore"):  # overflows are caught below, as non-finite values
                reason = self._step(clf, lay, ids, vals, y, w)
        if reason is not None:
            if snapshot is not None:
                self.unflatten()
                updater._state = snapshot
            clf._reject(reason)

    def _step(
        self, clf: CTRClassifier, lay: _Layout, ids: list[int], vals: list[float], y: float, w: float
    ) -> str | None:
        """Compute the step out of place and write it if every value is finite; else say why not."""
        net: CTRModel = clf.model_
        updater = clf._updater
        weight = _table_weight(net)
        table = self._table_view(weight)
        entry, self.entry = self.entry, None
        if (
            entry is not None
            and entry.version == clf._version
            and not clf._rows_recycled
            and entry.ids == ids
            and entry.vals == vals
        ):
            logit, cache, rows = entry.logit, entry.cache, entry.rows
        else:
            rows = table[ids]
            logit, cache = net.numpy_forward(lay.plan, lay.arrays, rows, np.array(vals, dtype=np.float32))
        clf._version += 1

        loss = _bce(logit, y)
        if not math.isfinite(loss * w):
            return "a non-finite loss"
        d_rows = net.numpy_backward(lay.plan, lay.arrays, lay.grads, cache, (_sigmoid(logit) - y) * w)
        grad = lay.grad_flat
        if len(set(ids)) < len(ids):
            # Positions sharing a row (absent fields on the padding row, hash collisions)
            # add up into one gradient for the row, as the torch path's index_add does.
            idx, inverse = np.unique(ids, return_inverse=True)
            row_grad = np.zeros((len(idx), d_rows.shape[1]), dtype=np.float32)
            np.add.at(row_grad, inverse, d_rows)
            rows = table[idx]
        else:
            # An index array, made once: NumPy would convert a list for each of four uses.
            idx, row_grad = np.array(ids, dtype=np.intp), d_rows
        if updater.clip_norm is not None:
            norm = math.sqrt(float(np.dot(grad, grad)) + float(np.vdot(row_grad, row_grad)))
            scale = np.float32(min(updater.clip_norm / (norm + 1e-12), 1.0))
            grad, row_grad = grad * scale, row_grad * scale

        lr = updater.lr * (clf.scheduler.multiplier() if clf.scheduler is not None else 1.0)
        dense_state = lay.dense_state
        if lay.scalars:
            dense_in = dict(dense_state)
            for key, (values, _) in lay.scalars.items():
                first = values[0] if len(values) else 0.0
                # The same value for every parameter (the usual case) goes in as one number.
                same = (values == first).all()
                dense_in[key] = float(first) if same else np.repeat(values.astype(np.float64), lay.sizes)
        else:
            dense_in = dense_state
        new_flat, new_state = updater._numpy_update(lay.flat, grad, dense_in, lr)
        row_state = self._row_state(clf, weight)
        new_rows, new_row_state = updater._numpy_row_update(
            rows, row_grad, {k: a[idx] for k, a in row_state.items()}, lr
        )
        if not _finite([new_flat, new_rows, *new_state.values(), *new_row_state.values()]):
            return "a non-finite gradient, weight or optimizer state"
        lay.flat[...] = new_flat
        for key, value in new_state.items():
            if key in lay.scalars:
                lay.scalars[key][0][...] = value if np.ndim(value) == 0 else value[lay.starts]
            else:
                dense_state[key][...] = value
        table[idx] = new_rows
        for key, value in new_row_state.items():
            row_state[key][idx] = value
        if PADDING_ROW in ids:
            table[PADDING_ROW] = 0
        updater.n_steps += 1
        if clf.scheduler is not None:
            clf.scheduler.observe([loss], updater)
        return None

    def _kernel_step(
        self, clf: CTRClassifier, kernel: _Kernel, entry: _Prediction | None, ids: list[int], vals: list[float],
        y: float, w: float,
    ) -> str | None:
        """:meth:`_step` as one compiled call (same arithmetic, same rejection)."""
        weight = _table_weight(clf.model_)
        table = self._table_view(weight)
        reuse = (
            entry is not None
            and entry.cache is kernel
            and entry.version == clf._version
            and not clf._rows_recycled
            and entry.ids == ids
            and entry.vals == vals
        )
        if reuse:
            n, logit = len(ids), entry.logit
        else:
            n, logit = kernel.load(ids, vals), 0.0
        rstate = self._kernel_row_state(clf, weight, kernel)
        updater = clf._updater
        scheduler = clf.scheduler
        lr = updater.lr * (scheduler.multiplier() if scheduler is not None else 1.0)
        clip = updater.clip_norm
        # Fixed argument types: each new combination would be compiled anew.
        status, loss = kernel.learn(
            table, rstate, kernel.ws, kernel.plan, n, float(logit), bool(reuse), float(y), float(w), float(lr),
            kernel.eps, kernel.s0, 0.0 if clip is None else float(clip),
        )
        clf._version += 1
        if status:
            return "a non-finite loss" if status == 1 else "a non-finite gradient, weight or optimizer state"
        updater.n_steps += 1
        if scheduler is not None:
            scheduler.observe([loss], updater)
        return None

    def _kernel_row_state(self, clf: CTRClassifier, weight: torch.Tensor, kernel: _Kernel) -> np.ndarray:
        """The table's row state as the kernel reads it: ``[rows, width]`` (Adagrad), ``[rows, 1]``
        (row-wise Adagrad) or a placeholder (OGD, stateless)."""
        views = self._row_state(clf, weight)
        if kernel.code == _kernels.OGD:
            return _NO_STATE
        state = views["sum_sq"] if kernel.code == _kernels.ADAGRAD else views["sum_sq_row"]
        return state if state.ndim == 2 else state.reshape(-1, 1)
