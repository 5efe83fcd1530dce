"""The learning core shared by every estimator: events to tensors to one guarded step.

:class:`~river_torchrec.CTRClassifier` and the rankers of :mod:`river_torchrec.reco` both
subclass :class:`OnlineLearner`: it owns the model, the updater, the scheduler, the field
encoder, the dict and frame conversion, table growth, the numeric guard, the one-event
NumPy fast path and checkpoints. An estimator adds only its river-facing API (what a
label is and what a prediction means), so neither estimator imports the other.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from river_torchrec.clipping import NumericClipper
from river_torchrec.encoding import FLOAT32_MAX, MISSING_POLICIES, NUMERIC, FieldEncoder, nan_refused, parse_features
from river_torchrec.guard import StepGuard
from river_torchrec.labels import binary_label, frame_weights, sample_weight
from river_torchrec.nn import MODELS, PADDING_ROW, CTRModel, DynamicEmbedding
from river_torchrec.numpy_path import NumpyPath
from river_torchrec.optim import DenseGrad, SparseGrad, Updater, make_updater

__all__ = [
    "OnlineLearner",
    "EMBEDDING_DTYPES",
    "binary_label",
    "locked",
    "resolve_device",
    "sample_weight",
    "frame_weights",
]

def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA, then MPS, then CPU; anything else is passed to ``torch.device``."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


class _Memo:
    """The forward pass of the last ``predict_proba_one``, which ``learn_one`` may reuse.

    Progressive validation predicts an event and then learns it: when nothing has changed in
    between, the learning step starts from the prediction's activations instead of running
    the forward pass again. Prediction stays pure, as the memo never alters an output; it is
    never pickled or copied.

    It also keeps the model's trainable parameters, which change only when fields are added:
    walking ``named_parameters()`` on every step cost about 8% of a one-event DeepFM step,
    and the :class:`~river_torchrec.numpy_path.NumpyPath` of one-event CPU steps.
    """

    __slots__ = ("entry", "params", "numpy")

    def __init__(self) -> None:
        self.entry: tuple | None = None
        self.params: tuple[object, int, list] | None = None
        self.numpy: NumpyPath | None = None

    def __reduce__(self) -> tuple:
        return (_Memo, ())

    def __deepcopy__(self, memo: dict) -> _Memo:
        return _Memo()


class _Lock:
    """A re-entrant lock that pickles, deep-copies and clones as a fresh, unlocked one.

    Held by learning, prediction and :meth:`CTRClassifier.save`, so a prediction never
    sees half a step. A plain ``threading.RLock`` cannot be pickled or deep-copied, which
    would break ``pickle``, ``copy.deepcopy`` and ``clone(include_attributes=True)``.
    """

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def __reduce__(self) -> tuple:
        return (_Lock, ())


def locked(method: Callable) -> Callable:
    """Run ``method`` while holding the estimator's lock."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


def _no_nan(p: np.ndarray) -> np.ndarray:
    """Probabilities with NaN (an overflowing logit, e.g. inf - inf) replaced by 0.5."""
    nan = np.isnan(p)
    if nan.any():
        warnings.warn(
            "the model's output overflowed to NaN (numeric inputs far too large?); predicting 0.5",
            RuntimeWarning,
        )
        p = np.where(nan, 0.5, p)
    return p


EMBEDDING_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _nullable(series: pd.Series) -> bool:
    """Whether a numeric column is of a pandas nullable type, whose ``NA`` cells mean missing."""
    return isinstance(series.dtype, pd.api.extensions.ExtensionDtype)


class OnlineLearner:
    """The model, updater and conversion core of an online estimator (not an estimator itself).

    A subclass stores the constructor parameters listed in :data:`CORE_PARAMS` as
    attributes of the same names (river's convention) and calls :meth:`_setup`. Events
    reach the core as feature dicts with a label in [0, 1] and a weight: the loss is the
    (soft-label) binary cross-entropy of the model's logit, so clicks, ratings rescaled
    to [0, 1] and sampled negatives all learn through one path.
    """

    #: Called by each training step between ``backward`` and the update as
    #: ``hook(dense, sparse, loss, n_events) -> (dense, sparse, loss)``. None (the class
    #: default, so a plain classifier pays one attribute test) except while
    #: :mod:`river_torchrec.distributed` sets it on an instance to merge every worker's
    #: gradients into the step of the global batch.
    _grad_hook: Callable | None = None

    #: Whether one-event steps on CPU may take the NumPy twin of the torch path
    #: (:mod:`river_torchrec.numpy_path`); tests switch it off on an instance to compare.
    _use_numpy: bool = True

    #: Whether the NumPy twin may run its one-event steps as one compiled call
    #: (:mod:`river_torchrec._kernels`, with numba installed); tests switch it off to compare.
    _use_kernel: bool = True

    #: ``missing="nan-is-missing"``: a NaN feature value is missing, in dicts and frames
    #: alike (the class default serves estimators pickled before the parameter existed).
    _nan_missing: bool = True

    #: False: the loss is the weighted binary cross-entropy of the logits. True: it is
    #: :meth:`_objective`, which a subclass overrides (the rankers' pairwise BPR loss); the
    #: step then takes d loss / d logits by autograd on the logits alone, so models with
    #: hand-written gradients keep them, and the NumPy twin (BCE only) is not used. A
    #: subclass may also define ``_objective_grad(logits, y, w) -> (losses, loss, d_logits)``,
    #: :meth:`_objective` with its gradient in closed form, which the step then uses instead.
    _custom_loss: bool = False

    def _setup(self) -> None:
        """Validate the core parameters and build the model, updater and encoder."""
        clip_numeric = self.clip_numeric
        if clip_numeric is not None and not (isinstance(clip_numeric, (int, float)) and clip_numeric > 1):
            raise ValueError(f"clip_numeric must be a number > 1 or None, got {clip_numeric!r}")
        self._clipper = NumericClipper(k=clip_numeric) if clip_numeric is not None else None
        self._lock = _Lock()
        batch_size, embedding_dtype, numeric = self.batch_size, self.embedding_dtype, self.numeric
        embeddings, device = self.embeddings, self.device
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if embedding_dtype not in EMBEDDING_DTYPES:
            raise ValueError(
                f"embedding_dtype must be one of {sorted(EMBEDDING_DTYPES)}, got {embedding_dtype!r}"
            )
        if numeric not in ("log", "raw"):
            raise ValueError(f"numeric must be 'log' or 'raw', got {numeric!r}")
        self._log_numeric = numeric == "log"
        missing = getattr(self, "missing", MISSING_POLICIES[0])
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {list(MISSING_POLICIES)}, got {missing!r}")
        self._nan_missing = missing == MISSING_POLICIES[0]
        if embeddings not in ("dynamic", "hash"):
            raise ValueError(f"embeddings must be 'dynamic' or 'hash', got {embeddings!r}")
        self._device = resolve_device(device)
        self._updater = make_updater(self.optimizer, self.lr)
        self._encoder = FieldEncoder()
        self._buffer: list[tuple[Any, float, float]] = []
        self.n_rejected_ = 0
        self.model_ = self._build_model()
        self._version = 0  # bumped by every step: a memoised forward pass is stale after it
        self._rows_recycled = False
        self._memo = _Memo()

    def __getstate__(self) -> dict:
        # Views of a flat tensor pickle their whole storage each: hand every parameter its own first.
        if self._memo.numpy is not None:
            self._memo.numpy.unflatten()
        return self.__dict__.copy()

    def _last_rows(self) -> tuple[list[int], list[float]] | None:
        """Row ids and values (one per field slot) of the last one-event prediction of the NumPy
        twin or compiled path, when every key of that event had a row and no step was taken
        since; else None."""
        fast = self._memo.numpy
        entry = fast.entry if fast is not None else None
        if entry is None or not entry.known or entry.version != self._version:
            return None
        return entry.ids, entry.vals

    def _numpy(self) -> NumpyPath | None:
        """The NumPy twin, when it applies to this model, updater and device."""
        if not self._use_numpy or self._custom_loss:
            return None
        fast = self._memo.numpy
        if fast is None:
            fast = self._memo.numpy = NumpyPath()
        return fast if fast.applies(self) else None

    # ------------------------------------------------------------- building

    def _build_model(self) -> CTRModel:
        if isinstance(self.model, str):
            try:
                cls = MODELS[self.model.lower()]
            except KeyError:
                raise ValueError(
                    f"unknown model {self.model!r}; expected one of {sorted(MODELS)} or a CTRModel subclass"
                ) from None
        elif isinstance(self.model, type) and issubclass(self.model, CTRModel):
            cls = self.model
        else:
            raise TypeError(f"model must be a name or a CTRModel subclass, got {self.model!r}")
        table = {
            "mode": self.embeddings,
            "n_buckets": self.n_buckets,
            "min_count": self.min_count,
            "max_rows": self.max_rows,
            "seed": self.seed,
            "dtype": EMBEDDING_DTYPES[self.embedding_dtype],
        }
        # Forking the global RNG keeps model construction reproducible without
        # disturbing the user's own random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = cls(
                embedding_dim=self.embedding_dim,
                hidden_units=tuple(self.hidden_units or ()),
                table=table,
                **self._model_kwargs(),
            )
        if getattr(net, "embedding", None) is None or not isinstance(net.embedding, DynamicEmbedding):
            raise TypeError(f"{cls.__name__} must keep its DynamicEmbedding in .embedding")
        return net.to(self._device)

    def _model_kwargs(self) -> dict:
        """Extra keyword arguments of the model class (``model_params``; rankers add their own)."""
        return dict(self.model_params or {})

    @property
    def updater(self) -> Updater:
        """The updater that applies the gradients (the ``optimizer`` object when one was given)."""
        return self._updater

    @property
    def n_fields(self) -> int:
        return len(self._encoder)


    # ------------------------------------------------------------- encoding

    def _lookup(self, keys: list[tuple], learn: bool, counts: Sequence[int] | None = None) -> list[int]:
        net = self.model_
        # The module's own dict: torch's Module.__getattr__ is a Python function.
        table = net._modules.get("embedding")
        if table is None:
            table = net.embedding
        rows = table.lookup(keys, learn=learn, counts=counts)
        if learn:
            # Only asked for when there are some: pop_recycled assigns through Module.__setattr__.
            recycled = table.pop_recycled() if getattr(table, "_recycled", True) else None
            self._rows_recycled = bool(recycled)
            if recycled:
                self._updater.reset_rows("embedding.weight", recycled)
        return rows

    def _tensors(self, events: list, learn: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, F]`` ids and values of parsed events (registering fields when learning)."""
        enc = self._encoder
        if self._clipper is not None:
            events = [self._clipper.clip_event(p, learn) for p in events]
        arranged = [enc.arrange(p, learn) for p in events]
        if learn:
            self.model_.add_fields(len(enc))
        n_fields = self.model_.n_fields
        flat_keys = [k for _, keys, _ in arranged for k in keys]
        rows = self._lookup(flat_keys, learn) if flat_keys else []
        if len(events) == 1:
            # One event (the per-event hot path): plain lists beat numpy scatter here.
            ids_row, vals_row = [PADDING_ROW] * n_fields, [0.0] * n_fields
            for slot, row, value in zip(arranged[0][0], rows, arranged[0][2]):
                ids_row[slot] = row
                vals_row[slot] = value
            return (
                torch.tensor([ids_row], dtype=torch.int64, device=self._device),
                torch.tensor([vals_row], dtype=torch.float32, device=self._device),
            )
        ids = np.zeros((len(events), n_fields), dtype=np.int64)
        vals = np.zeros((len(events), n_fields), dtype=np.float32)
        i = 0
        for b, (slots, keys, values) in enumerate(arranged):
            n = len(slots)
            ids[b, slots] = rows[i : i + n]
            vals[b, slots] = values
            i += n
        return (
            torch.from_numpy(ids).to(self._device),
            torch.from_numpy(vals).to(self._device),
        )

    def _parse_frame(self, X: pd.DataFrame, learn: bool) -> list[tuple[Hashable, bool, Any]]:
        """Validate a frame, changing nothing: ``(column, is_numeric, data)`` per column used.

        A numeric column gives its float64 values (NaN: missing), any other column its
        factorised codes with the ``(column, key)`` and value of each distinct value.
        """
        if not isinstance(X, pd.DataFrame):
            raise TypeError(f"X must be a pandas DataFrame, got {type(X).__name__}")
        if X.columns.has_duplicates:
            raise ValueError(f"X has duplicate columns: {sorted(set(X.columns[X.columns.duplicated()]), key=repr)}")
        slots = self._encoder.slots
        parsed = []
        for col in X.columns:
            if not learn and col not in slots:
                continue
            series = X[col]
            if series.dtype.kind in "iuf":
                x = series.to_numpy(dtype=np.float64, na_value=np.nan)
                if (np.abs(x) > FLOAT32_MAX).any():
                    raise ValueError(
                        f"feature {col!r} has infinite values or values beyond float32's range; "
                        "numeric features must be finite (NaN means missing unless missing='error')"
                    )
                if not self._nan_missing:
                    nan = np.isnan(x)
                    if _nullable(series):
                        nan &= ~series.isna().to_numpy()  # NA cells of a nullable column are missing
                    if nan.any():
                        raise nan_refused(col, f" in row {int(np.argmax(nan))}")
                if self._log_numeric:
                    x = np.sign(x) * np.log1p(np.abs(x))
                parsed.append((col, True, x))
                continue
            if not self._nan_missing and series.hasnans:
                # None and pandas.NA stay missing; a float NaN among the values is refused.
                nan = series.map(lambda v: isinstance(v, float) and v != v).to_numpy(dtype=bool)
                if nan.any():
                    raise nan_refused(col, f" in row {int(np.argmax(nan))}")
            try:
                codes, uniques = pd.factorize(series, use_na_sentinel=True)
            except TypeError as e:
                raise TypeError(f"feature {col!r} has values that are not categories: {e}") from None
            values = uniques.tolist()
            if values and set(map(type, values)) == {str}:
                # The usual categorical column: every key is the string itself, weight 1.
                keys, weights = [(col, u) for u in values], [1.0] * len(values)
            else:
                keys, weights = [], []
                for u in values:
                    parsed_u = parse_features({col: u}, self._log_numeric, self._nan_missing)
                    ((_, key, value),) = parsed_u or ((None, None, 0.0),)
                    keys.append((col, key))
                    weights.append(value)
            parsed.append((col, False, (codes, keys, weights)))
        return parsed

    def _frame_tensors(
        self, X: pd.DataFrame, learn: bool, parsed: list | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, F]`` ids and values of a frame; NaN and None in a frame mean missing."""
        if parsed is None:
            parsed = self._parse_frame(X, learn)
        enc = self._encoder
        if learn:
            enc.register([col for col, _, _ in parsed])
            self.model_.add_fields(len(enc))
        # Slot order, as events are: rows are handed out in the order keys are looked up.
        parsed = sorted(parsed, key=lambda t: enc.slots[t[0]])
        n = len(X)
        n_fields = self.model_.n_fields
        ids = np.zeros((n, n_fields), dtype=np.int64)
        vals = np.zeros((n, n_fields), dtype=np.float32)
        for col, numeric, data in parsed:
            slot = enc.slots[col]
            if numeric:
                x = data
                present = ~np.isnan(x)
                if present.any():
                    if self._clipper is not None:
                        x = self._clipper.clip_array(col, x, learn)
                    (row,) = self._lookup([(col, NUMERIC)], learn)
                    ids[:, slot] = np.where(present, row, PADDING_ROW)
                    vals[:, slot] = np.where(present, x, 0.0)
                continue
            codes, keys, weights = data
            counts = np.bincount(codes[codes >= 0], minlength=len(keys)).tolist()
            rows = np.asarray(self._lookup(keys, learn, counts) if keys else [], dtype=np.int64)
            weights_arr = np.asarray(weights, dtype=np.float32)
            present = codes >= 0
            safe = np.where(present, codes, 0)
            if len(rows):
                ids[:, slot] = np.where(present, rows[safe], PADDING_ROW)
                vals[:, slot] = np.where(present, weights_arr[safe], 0.0)
        return torch.from_numpy(ids).to(self._device), torch.from_numpy(vals).to(self._device)

    # ------------------------------------------------------------- learning

    def _step(
        self,
        ids: torch.Tensor,
        vals: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        forward: tuple[torch.Tensor, dict] | None = None,
    ) -> None:
        n_new = len(y)
        selected = self._updater.select(ids, vals, y, w)
        if selected[0] is not ids:
            forward = None
        ids, vals, y, w = selected
        self._version += 1
        net = self.model_
        table = net.embedding
        losses, loss, dense, sparse = self._gradients(ids, vals, y, w, self._trainable(), forward)
        if self._grad_hook is not None:
            # Before the finiteness test, so that every worker accepts or rejects the same step.
            dense, sparse, loss = self._grad_hook(dense, sparse, loss, len(y))

        if not math.isfinite(float(loss)):
            self._reject("a non-finite loss")
            return
        scale = self.scheduler.multiplier() if self.scheduler is not None else 1.0
        # A NaN or inf gradient spreads to what the step writes, so one test afterwards
        # covers gradients, weights and updater state alike.
        guard = StepGuard(self._updater, dense, sparse)
        self._updater.step(dense, sparse, lr_scale=scale)
        if not guard.ok():
            guard.restore()
            self._reject("a non-finite gradient, weight or optimizer state")
            return
        with torch.no_grad():
            table.weight[PADDING_ROW] = 0
        if self.scheduler is not None:
            # Only the newly arrived events (first in the batch) are out-of-sample.
            self.scheduler.observe(losses[:n_new].detach().cpu().tolist(), self._updater)
        self._after_step(ids)

    def _after_step(self, ids: torch.Tensor) -> None:
        """Called after every accepted torch step with the ``[B, F]`` rows it learned from
        (the updater's selection included); only those rows and the dense parameters moved.
        A no-op here; rankers refresh their cached item vectors from it."""

    def _objective(self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-event losses and the loss to minimise: the weighted binary cross-entropy,
        mean over the batch. A subclass that overrides it sets ``_custom_loss``, so the
        hand-written gradients take d loss / d logits by autograd instead of BCE's closed form.
        """
        losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        return losses, (losses * w).sum() / len(y)

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` pairs of the model, recomputed only when fields were added."""
        net = self.model_
        cached = self._memo.params
        if cached is None or cached[0] is not net or cached[1] != net.n_fields:
            params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
            cached = self._memo.params = (net, net.n_fields, params)
        return cached[2]

    def _gradients(
        self,
        ids: torch.Tensor,
        vals: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        params: list[tuple[str, torch.nn.Parameter]],
        forward: tuple[torch.Tensor, dict] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, list[DenseGrad], list[SparseGrad]]:
        """Per-event losses, the mean weighted loss, and its dense and touched-row gradients.

        ``forward`` is a memoised ``forward_cached`` result for exactly these inputs and weights.
        """
        net = self.model_
        table = net.embedding
        n = len(y)
        if net.supports_manual_grad:
            # Hand-written gradients (tested against autograd): for a one-event step the
            # autograd graph costs more than the arithmetic.
            with torch.no_grad():
                logits, cache = forward if forward is not None else net.forward_cached(ids, vals)
                closed = getattr(self, "_objective_grad", None) if self._custom_loss else None
                if closed is not None:
                    # The subclass's closed form: no autograd graph on the logits.
                    losses, loss, d_logits = closed(logits, y, w)
                elif self._custom_loss:
                    with torch.enable_grad():
                        leaf = logits.detach().requires_grad_()
                        losses, loss = self._objective(leaf, y, w)
                        (d_logits,) = torch.autograd.grad(loss, leaf)
                    losses, loss = losses.detach(), loss.detach()
                else:
                    losses, loss = self._objective(logits, y, w)
                    d_logits = (torch.sigmoid(logits) - y) * w / n  # d BCE / d logits, in closed form
                grads, rows, row_grads = net.backward_cached(cache, d_logits)
            dense = [DenseGrad(name, p.data, grads[name]) for name, p in params]
            return losses, loss, dense, [SparseGrad("embedding.weight", table.weight, rows, row_grads)]
        logits = net(ids, vals)
        losses, loss = self._objective(logits, y, w)
        for _, p in params:
            p.grad = None
        loss.backward()
        dense = [DenseGrad(name, p.data, p.grad) for name, p in params if p.grad is not None]
        sparse = [SparseGrad("embedding.weight", table.weight, table.last_rows, table.last_leaf.grad)]
        table.release()
        for _, p in params:
            # The DenseGrads hold the gradients; the parameters need not (smaller pickles).
            p.grad = None
        return losses.detach(), loss.detach(), dense, sparse

    def _reject(self, why: str) -> None:
        self.n_rejected_ += 1
        warnings.warn(f"{type(self).__name__} rejected a step: {why}; the weights were left unchanged", RuntimeWarning)

    def _learn_events(self, events: list) -> None:
        ids, vals = self._tensors([p for p, _, _ in events], learn=True)
        y = torch.tensor([t for _, t, _ in events], dtype=torch.float32, device=self._device)
        w = torch.tensor([s for _, _, s in events], dtype=torch.float32, device=self._device)
        self._step(ids, vals, y, w, self._memoised_forward(ids, vals))

    def _memoised_forward(self, ids: torch.Tensor, vals: torch.Tensor) -> tuple | None:
        """The last prediction's forward pass if it was made on these inputs with these weights."""
        entry, self._memo.entry = self._memo.entry, None
        if entry is None or self._rows_recycled:
            return None
        version, m_ids, m_vals, forward = entry
        if version != self._version or m_ids.shape != ids.shape:
            return None
        if not (torch.equal(m_ids, ids) and torch.equal(m_vals, vals)):
            return None
        return forward


    # ----------------------------------------------------------- prediction

    def _learn_event(self, x: dict, label: float, weight: float) -> None:
        """Learn one validated event: a step now (``batch_size=1``) or into the buffer."""
        if self.batch_size == 1:
            fast = self._numpy()
            if fast is not None:
                self._memo.entry = None
                fast.learn(self, x, label, weight)
                return
        event = (parse_features(x, self._log_numeric, self._nan_missing), label, weight)
        if self.batch_size == 1:
            self._learn_events([event])
            return
        self._buffer.append(event)
        if len(self._buffer) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            events, self._buffer = self._buffer, []
            self._learn_events(events)

    def _learn_frame(self, X: pd.DataFrame, labels: Any, weights: Any) -> None:
        """One step on the mean loss of a frame of validated labels and weights."""
        # Validate the whole frame before flushing or registering anything.
        parsed = self._parse_frame(X, learn=True)
        self._flush()
        ids, vals = self._frame_tensors(X, learn=True, parsed=parsed)
        self._step(
            ids,
            vals,
            # torch.tensor copies: pandas may hand out read-only arrays.
            torch.tensor(labels, dtype=torch.float32, device=self._device),
            torch.tensor(weights, dtype=torch.float32, device=self._device),
        )

    def _learn_batch(self, events: list[tuple[dict, float, float]]) -> None:
        """One step on the mean loss of several ``(x, label, weight)`` events (all validated
        before anything changes); buffered events are flushed first."""
        parsed = [(parse_features(x, self._log_numeric, self._nan_missing), y, w) for x, y, w in events]
        self._flush()
        if parsed:
            self._learn_events(parsed)

    def _predict_event(self, x: dict) -> float:
        """P(y = 1) of one event; nothing in the model changes."""
        fast = self._numpy()
        if fast is not None:
            p = fast.predict(self, x)
            if p != p:
                p = float(_no_nan(np.array([p]))[0])
            return p
        parsed = parse_features(x, self._log_numeric, self._nan_missing)
        ids, vals = self._tensors([parsed], learn=False)
        net = self.model_
        if net.supports_manual_grad:
            with torch.no_grad():
                logits, cache = net.forward_cached(ids, vals)
            self._memo.entry = (self._version, ids, vals, (logits, cache))
            p = float(torch.sigmoid(logits)[0])
        else:
            p = float(self._proba(ids, vals)[0])
        if p != p:
            p = float(_no_nan(np.array([p]))[0])
        return p

    def _predict_events(self, events: list[dict]) -> np.ndarray:
        """P(y = 1) of several events in one batched forward pass."""
        if not events:
            return np.zeros(0)
        ids, vals = self._tensors([parse_features(x, self._log_numeric, self._nan_missing) for x in events], learn=False)
        return self._proba(ids, vals)

    def _proba_frame(self, X: pd.DataFrame) -> np.ndarray:
        ids, vals = self._frame_tensors(X, learn=False)
        return self._proba(ids, vals) if len(X) else np.zeros(0)

    @torch.inference_mode()
    def _proba(self, ids: torch.Tensor, vals: torch.Tensor) -> np.ndarray:
        return _no_nan(torch.sigmoid(self.model_(ids, vals)).double().cpu().numpy())


    # ---------------------------------------------------------- checkpoints

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint directory atomically (see :func:`river_torchrec.persistence.save`)."""
        from river_torchrec import persistence

        persistence.save(self, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | None = None, trusted_classes: Sequence[type] = ()
    ) -> OnlineLearner:
        """Read a checkpoint, verified and never unpickled (see :func:`river_torchrec.persistence.load`)."""
        from river_torchrec import persistence

        model = persistence.load(path, device=device, trusted_classes=trusted_classes)
        if not isinstance(model, cls):
            raise persistence.CheckpointError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

