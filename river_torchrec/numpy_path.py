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

from river_torchrec.encoding import parse_features
from river_torchrec.nn import PADDING_ROW, CTRModel, DynamicEmbedding

if TYPE_CHECKING:
    from river_torchrec.learner import OnlineLearner as CTRClassifier

__all__ = ["NumpyPath"]

_TABLE = "embedding.weight"


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
        "dense_state", "checks", "scalars", "starts", "sizes",
    )

    def __init__(self, clf: CTRClassifier) -> None:
        net = clf.model_
        params = clf._trainable()
        updater = clf._updater
        self.net, self.params, self.updater = net, params, updater
        spans, total = [], 0
        for _, p in params:
            spans.append((total, total + p.numel()))
            total += p.numel()
        flat = torch.empty(total, dtype=torch.float32)
        with torch.no_grad():
            for (_, p), (a, b) in zip(params, spans):
                flat[a:b] = p.detach().reshape(-1)
            for (_, p), (a, b) in zip(params, spans):
                p.data = flat[a:b].view(p.shape)
        self.flat = flat.numpy()
        self.ptrs = [p.data_ptr() for _, p in params]
        self.arrays = {n: self.flat[a:b].reshape(p.shape) for (n, p), (a, b) in zip(params, spans)}
        self.grad_flat = np.zeros(total, dtype=np.float32)
        self.grads = {n: self.grad_flat[a:b].reshape(p.shape) for (n, p), (a, b) in zip(params, spans)}
        self.state: dict[str, tuple[np.ndarray, list[tuple[str, torch.Tensor]]]] = {}
        for key, fill in (updater.numpy_state or {}).items():
            bufs = [updater._buffer(n, key, p, fill) for n, p in params]
            state_flat = torch.cat([b.detach().reshape(-1).float() for b in bufs]) if bufs else torch.zeros(0)
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
        for key, fill in updater.numpy_scalar_state.items():
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

    def valid(self, clf: CTRClassifier, with_state: bool) -> bool:
        """Still the model's parameters (and, ``with_state``, the updater's state tensors)."""
        if self.net is not clf.model_ or self.updater is not clf._updater or self.params is not clf._trainable():
            return False
        # A storage moved under a view (``share_memory_``, ``p.data = ...``) changes its address.
        for (_, p), ptr in zip(self.params, self.ptrs):
            if p.data_ptr() != ptr:
                return False
        if with_state:
            state = self.updater._state
            for n, key, view in self.checks:
                slots = state.get(n)
                if slots is None or slots.get(key) is not view:
                    return False
        return True

    def unflatten(self) -> None:
        """Give every parameter and state tensor its own storage again (values unchanged)."""
        with torch.no_grad():
            for _, p in self.params:
                p.data = p.data.clone()
        state = self.updater._state
        for n, key, view in self.checks:
            if state.get(n, {}).get(key) is view:
                state[n][key] = view.clone()


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
            table = _table(net)
            if table.mode != "hash" and clipper is None and table.max_rows is None:
                # The common case in one pass (``lookup(learn=False)`` inlined); ``known``: every
                # field and value has its own row, so a learned event's lookup would find these
                # rows and change nothing. Nothing is allocated, so the order does not matter.
                # The vocabulary's cache of hot keys first: a dict lookup, no fingerprint.
                slot_of, hot, row_of, oov = enc.slots, table._rows._cache, table._rows.get, table._oov
                n_fields = net.n_fields
                ids, vals = [PADDING_ROW] * n_fields, [0.0] * n_fields
                known = True
                for field, key, value in parsed:
                    slot = slot_of.get(field)
                    if slot is None:
                        known = False
                        continue
                    k = (field, key)
                    row = hot.get(k) or row_of(k)
                    if row is None:
                        known = False
                        row = oov.get(field, PADDING_ROW)
                    ids[slot] = row
                    vals[slot] = value
                return ids, vals, known
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

    def predict(self, clf: CTRClassifier, x: dict, parsed: list) -> float:
        """P(click) of an event; remembers the forward pass for the next :meth:`learn`."""
        ids, vals, known = self._arrange(clf, parsed, learn=False)
        net: CTRModel = clf.model_
        lay = self._layout
        if lay is not None and lay.valid(clf, with_state=False):
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

    def learn(self, clf: CTRClassifier, x: dict, y: float, w: float) -> None:
        """One step on one event, with the torch path's semantics (rejection included)."""
        entry = self.entry
        if (
            entry is not None
            and entry.known
            and entry.version == clf._version
            and x == entry.x
            and tuple(map(type, x.values())) == entry.types
        ):
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
        if lay is None or not lay.valid(clf, with_state=True):
            # Building the layout may create updater state, which a rejected step must drop.
            snapshot = {n: dict(slots) for n, slots in updater._state.items()}
            if lay is not None:
                lay.unflatten()
            lay = self._layout = _Layout(clf)
        elif updater.numpy_state and _TABLE not in updater._state:
            snapshot = {n: dict(slots) for n, slots in updater._state.items()}
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
