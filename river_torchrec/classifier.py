"""The river-facing CTR classifier: dicts and DataFrames in, a PyTorch CTR model learning online."""

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
from river import base

from river_torchrec.clipping import NumericClipper
from river_torchrec.encoding import FLOAT32_MAX, NUMERIC, FieldEncoder, parse_features
from river_torchrec.explain import Explanation, explain_event
from river_torchrec.guard import StepGuard
from river_torchrec.nn import MODELS, PADDING_ROW, CTRModel, DynamicEmbedding
from river_torchrec.numpy_path import NumpyPath
from river_torchrec.optim import DenseGrad, SparseGrad, Updater, make_updater
from river_torchrec.optim.schedulers import Scheduler

__all__ = ["CTRClassifier"]


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


def _locked(method: Callable) -> Callable:
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


_EMBEDDING_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _label(y: Any) -> float:
    if isinstance(y, (bool, np.bool_)):
        return float(y)
    if isinstance(y, (int, float, np.integer, np.floating)) and (y == 0 or y == 1):
        return float(y)
    raise ValueError(f"label must be a bool or 0/1, got {y!r} ({type(y).__name__})")


def _weight(w: Any) -> float:
    f = float(w)
    if not math.isfinite(f) or f < 0:
        raise ValueError(f"sample weight must be finite and >= 0, got {w!r}")
    return f


class CTRClassifier(base.MiniBatchClassifier):
    """A binary CTR classifier that learns a PyTorch model from every event.

    Each feature is a *field*: a ``str`` or ``bool`` value is categorical and gets its own
    embedding row; an ``int`` or ``float`` is numeric, with one row per field scaled by the
    value; ``None`` is missing. Fields may appear and disappear at any time: a new field
    grows the model, an absent one contributes nothing.

    Parameters
    ----------
    model
        ``"lr"``, ``"fm"``, ``"deepfm"``, ``"widedeep"``, ``"dcnv2"``, or a subclass of
        :class:`river_torchrec.nn.CTRModel`, built with ``embedding_dim``, ``hidden_units``,
        ``table`` and ``model_params``.
    embedding_dim
        Width of each embedding row (LR ignores it).
    hidden_units
        Hidden layers of the deep part (DeepFM, Wide&Deep, DCN-v2).
    embeddings
        ``"dynamic"`` (collisionless, growing) or ``"hash"`` (``n_buckets`` fixed rows).
    n_buckets
        Rows of the table in ``"hash"`` mode.
    min_count
        ``"dynamic"`` mode: occurrences before a categorical value gets its own row; until
        then it shares its field's out-of-vocabulary row.
    max_rows
        ``"dynamic"`` mode: bound on the rows, evicting the least recently used ones.
    optimizer
        An updater from :mod:`river_torchrec.optim` or a name (``"adagrad"``, ``"adam"``,
        ``"ftrl"``, ``"sgd"``, ...). The default, Adagrad at lr 0.02, won the documented sweep
        of ``benchmarks/bench_updaters.py`` on the synthetic stream and the Criteo sample.
    lr
        Learning rate when ``optimizer`` is a name (the updater's default otherwise).
    scheduler
        A scheduler from :mod:`river_torchrec.optim.schedulers`; constant rate if None.
    batch_size
        1: one step per event (pure online gradient descent). k > 1: ``learn_one`` buffers
        events and takes one step per k; predictions use the weights of the last step.
        :meth:`flush` applies a partial buffer.
    device
        ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``.
    seed
        Seed of the weight initialisation.
    model_params
        Extra keyword arguments of the model class (e.g. ``{"n_cross_layers": 3}``).
    embedding_dtype
        Storage type of the embedding rows: ``"float32"``, or ``"float16"`` / ``"bfloat16"`` to
        halve the memory of the tables (rows are computed on in float32 and rounded back when
        updated, as McMahan et al. (2013) did with 16-bit weights).
    numeric
        ``"log"``: a numeric value ``v`` enters the model as ``sign(v) * log(1 + |v|)``,
        which leaves small values nearly as they are and keeps raw counts, prices and
        outliers from blowing up the logits (click logs are full of them). ``"raw"``: as
        given, for inputs already scaled (e.g. by ``preprocessing.StandardScaler``).
    clip_numeric
        If set, each numeric value (after ``numeric``) is clipped to ``clip_numeric`` times
        a robust running scale of its field (:class:`river_torchrec.clipping.NumericClipper`):
        a corrupted value (say a price a million times too large) then cannot wreck the
        weights. Off by default: ``numeric="log"`` already tames outliers, and ``"raw"``
        promises inputs as given. ``10`` is a good value with ``numeric="raw"``.

    Attributes
    ----------
    model_
        The :class:`torch.nn.Module`.
    n_rejected_
        Steps rejected because they produced a non-finite loss, gradient or weight.

    Notes
    -----
    **Bad input** (the full policy is in ``docs/bad_input.md``): a feature value that is
    not ``str``/``bool``/``int``/``float``/``None``, a NaN, an infinity or a number
    beyond the float32 range, a label other than ``bool``/0/1, a negative or non-finite
    weight, or a frame whose lengths disagree raises a ``TypeError`` or ``ValueError``
    that names the field, and leaves the estimator exactly as it was. ``{}`` is an event
    with every field absent: it predicts from the bias (and the deep part's response to
    an empty input) and learning from it moves no embedding row. Fields unseen while
    learning are ignored by predictions. Strings of any length are accepted as they are.

    **Numeric faults**: a step whose loss, gradients, new weights or new optimizer state
    hold a NaN or an infinity is undone (weights and updater state back to what they
    were), counted in ``n_rejected_`` and reported with a ``RuntimeWarning``.

    **Speed**: with ``batch_size=1`` on CPU, LR, FM, DeepFM and Wide&Deep trained by OGD,
    Adagrad, RowWiseAdagrad, Adam or FTRLProximal run a NumPy twin of the torch step on
    views of the same tensors (:mod:`river_torchrec.numpy_path`, equal to the torch path
    within 1e-6), about six times faster per event; ``learn_one`` also reuses the work of the
    ``predict_proba_one`` that progressive validation makes just before on the same event.

    **Threads**: learning, prediction and :meth:`save` hold one re-entrant lock, so
    predictions made while another thread learns see the weights before or after a step,
    never between.

    **Checkpoints**: :meth:`save` and :meth:`load` write and read a directory of
    safetensors and JSON files, atomically and with checksums, never unpickling
    (:mod:`river_torchrec.persistence`). ``pickle`` and ``copy.deepcopy`` work as well.

    Examples
    --------
    >>> from river import evaluate, metrics
    >>> from river_torchrec import CTRClassifier, datasets
    >>> model = CTRClassifier(model="deepfm", seed=1)
    >>> evaluate.progressive_val_score(
    ...     datasets.SyntheticCTR(n_events=2_000, seed=1), model, metrics.LogLoss()
    ... )
    LogLoss: 0.3...

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

    def __init__(
        self,
        model: str | type[CTRModel] = "deepfm",
        embedding_dim: int = 8,
        hidden_units: Sequence[int] = (64, 32),
        embeddings: str = "dynamic",
        n_buckets: int = 2**18,
        min_count: int = 1,
        max_rows: int | None = None,
        optimizer: str | Updater = "adagrad",
        lr: float | None = None,
        scheduler: Scheduler | None = None,
        batch_size: int = 1,
        device: str = "cpu",
        seed: int = 42,
        model_params: dict | None = None,
        numeric: str = "log",
        embedding_dtype: str = "float32",
        clip_numeric: float | None = None,
    ) -> None:
        self.model = model
        self.embedding_dim = embedding_dim
        self.hidden_units = hidden_units
        self.embeddings = embeddings
        self.n_buckets = n_buckets
        self.min_count = min_count
        self.max_rows = max_rows
        self.optimizer = optimizer
        self.lr = lr
        self.scheduler = scheduler
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.model_params = model_params
        self.numeric = numeric
        self.embedding_dtype = embedding_dtype
        self.clip_numeric = clip_numeric

        if clip_numeric is not None and not (isinstance(clip_numeric, (int, float)) and clip_numeric > 1):
            raise ValueError(f"clip_numeric must be a number > 1 or None, got {clip_numeric!r}")
        self._clipper = NumericClipper(k=clip_numeric) if clip_numeric is not None else None
        self._lock = _Lock()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if embedding_dtype not in _EMBEDDING_DTYPES:
            raise ValueError(
                f"embedding_dtype must be one of {sorted(_EMBEDDING_DTYPES)}, got {embedding_dtype!r}"
            )
        if numeric not in ("log", "raw"):
            raise ValueError(f"numeric must be 'log' or 'raw', got {numeric!r}")
        self._log_numeric = numeric == "log"
        if embeddings not in ("dynamic", "hash"):
            raise ValueError(f"embeddings must be 'dynamic' or 'hash', got {embeddings!r}")
        self._device = resolve_device(device)
        self._updater = make_updater(optimizer, lr)
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

    def _numpy(self) -> NumpyPath | None:
        """The NumPy twin, when it applies to this model, updater and device."""
        if not self._use_numpy:
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
            "dtype": _EMBEDDING_DTYPES[self.embedding_dtype],
        }
        # Forking the global RNG keeps model construction reproducible without
        # disturbing the user's own random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = cls(
                embedding_dim=self.embedding_dim,
                hidden_units=tuple(self.hidden_units),
                table=table,
                **(self.model_params or {}),
            )
        if getattr(net, "embedding", None) is None or not isinstance(net.embedding, DynamicEmbedding):
            raise TypeError(f"{cls.__name__} must keep its DynamicEmbedding in .embedding")
        return net.to(self._device)

    @property
    def updater(self) -> Updater:
        """The updater that applies the gradients (the ``optimizer`` object when one was given)."""
        return self._updater

    @property
    def n_fields(self) -> int:
        return len(self._encoder)

    @property
    def _multiclass(self) -> bool:
        return False

    @property
    def _is_stochastic(self) -> bool:
        return True

    @classmethod
    def _unit_test_params(cls):
        for model in ("lr", "fm", "deepfm", "widedeep", "dcnv2"):
            yield {"model": model, "hidden_units": (8,), "embedding_dim": 4, "n_buckets": 1024}

    def _unit_test_skips(self):
        return {
            # One mean-gradient step per frame is not a sequence of per-row steps, exactly
            # as for river's own gradient-descent linear models, which skip this check too.
            "check_learn_many_matches_learn_one",
        }

    # ------------------------------------------------------------- encoding

    def _lookup(self, keys: list[tuple], learn: bool, counts: Sequence[int] | None = None) -> list[int]:
        table = self.model_.embedding
        rows = table.lookup(keys, learn=learn, counts=counts)
        if learn:
            recycled = table.pop_recycled()
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
                        "numeric features must be finite (NaN means missing in a frame)"
                    )
                if self._log_numeric:
                    x = np.sign(x) * np.log1p(np.abs(x))
                parsed.append((col, True, x))
                continue
            try:
                codes, uniques = pd.factorize(series, use_na_sentinel=True)
            except TypeError as e:
                raise TypeError(f"feature {col!r} has values that are not categories: {e}") from None
            values = uniques.tolist()
            if all(type(u) is str for u in values):
                # The usual categorical column: every key is the string itself, weight 1.
                keys, weights = [(col, u) for u in values], [1.0] * len(values)
            else:
                keys, weights = [], []
                for u in values:
                    ((_, key, value),) = parse_features({col: u}, self._log_numeric) or ((None, None, 0.0),)
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
                losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
                loss = (losses * w).sum() / n
                grads, rows, row_grads = net.backward_cached(cache, (torch.sigmoid(logits) - y) * w / n)
            dense = [DenseGrad(name, p.data, grads[name]) for name, p in params]
            return losses, loss, dense, [SparseGrad("embedding.weight", table.weight, rows, row_grads)]
        logits = net(ids, vals)
        losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        loss = (losses * w).sum() / n
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
        warnings.warn(f"CTRClassifier rejected a step: {why}; the weights were left unchanged", RuntimeWarning)

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

    @_locked
    def learn_one(self, x: dict, y: base.typing.ClfTarget, w: float = 1.0) -> None:
        if self.batch_size == 1:
            fast = self._numpy()
            if fast is not None:
                label, weight = _label(y), _weight(w)
                self._memo.entry = None
                fast.learn(self, x, label, weight)
                return
        event = (parse_features(x, self._log_numeric), _label(y), _weight(w))
        if self.batch_size == 1:
            self._learn_events([event])
            return
        self._buffer.append(event)
        if len(self._buffer) >= self.batch_size:
            self.flush()

    @_locked
    def flush(self) -> None:
        """Take a step on the events buffered by ``learn_one`` (no-op when empty)."""
        if self._buffer:
            events, self._buffer = self._buffer, []
            self._learn_events(events)

    @_locked
    def learn_many(self, X: pd.DataFrame, y: pd.Series, w: pd.Series | float = 1.0) -> None:
        """One gradient step on the mean loss of the frame (buffered events are flushed first)."""
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        if not len(X):
            return
        if isinstance(y, pd.Series) and y.dtype == bool:
            labels = y.to_numpy(dtype=np.float32)  # nothing to check, and no per-label Python call
        else:
            labels = [_label(v) for v in (y.tolist() if hasattr(y, "tolist") else list(y))]
        if isinstance(w, pd.Series):
            if len(w) != len(X):
                raise ValueError(f"X has {len(X)} rows but w has {len(w)}")
            if w.dtype.kind in "iuf":
                arr = w.to_numpy(dtype=np.float64)
                bad = ~(np.isfinite(arr) & (arr >= 0))
                if bad.any():
                    _weight(float(arr[int(np.argmax(bad))]))  # raises, naming the first bad weight
                weights = arr
            else:
                weights = [_weight(v) for v in w.tolist()]
        else:
            weights = [_weight(w)] * len(X)
        # Validate the whole frame before flushing or registering anything.
        parsed = self._parse_frame(X, learn=True)
        self.flush()
        ids, vals = self._frame_tensors(X, learn=True, parsed=parsed)
        self._step(
            ids,
            vals,
            # torch.tensor copies: pandas may hand out read-only arrays.
            torch.tensor(labels, dtype=torch.float32, device=self._device),
            torch.tensor(weights, dtype=torch.float32, device=self._device),
        )

    # ----------------------------------------------------------- prediction

    @torch.inference_mode()
    def _proba(self, ids: torch.Tensor, vals: torch.Tensor) -> np.ndarray:
        return _no_nan(torch.sigmoid(self.model_(ids, vals)).double().cpu().numpy())

    @_locked
    def predict_proba_one(self, x: dict) -> dict[Hashable, float]:
        parsed = parse_features(x, self._log_numeric)
        fast = self._numpy()
        if fast is not None:
            p = fast.predict(self, x, parsed)
            if p != p:
                p = float(_no_nan(np.array([p]))[0])
            return {False: 1.0 - p, True: p}
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
        return {False: 1.0 - p, True: p}

    @_locked
    def predict_proba_many(self, X: pd.DataFrame) -> pd.DataFrame:
        ids, vals = self._frame_tensors(X, learn=False)
        p = self._proba(ids, vals) if len(X) else np.zeros(0)
        return pd.DataFrame({False: 1.0 - p, True: p}, index=X.index, columns=[False, True])

    def predict_one(self, x: dict) -> bool:
        return self.predict_proba_one(x)[True] > 0.5

    def predict_many(self, X: pd.DataFrame) -> pd.Series:
        return self.predict_proba_many(X)[True] > 0.5

    # ---------------------------------------------------------- checkpoints

    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint directory atomically (see :func:`river_torchrec.persistence.save`)."""
        from river_torchrec import persistence

        persistence.save(self, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, device: str | None = None, trusted_classes: Sequence[type] = ()
    ) -> CTRClassifier:
        """Read a checkpoint, verified and never unpickled (see :func:`river_torchrec.persistence.load`)."""
        from river_torchrec import persistence

        return persistence.load(path, device=device, trusted_classes=trusted_classes)

    # ---------------------------------------------------------- explanation

    @_locked
    def explain_one(self, x: dict) -> Explanation:
        """Each field's contribution to the logit of ``x`` (nothing in the model changes).

        Exact for LR and FM (an FM pair term is split evenly between its two fields), so
        ``bias + sum(contributions) == logit``; integrated gradients over the field rows
        for the other models, from the baseline where every field is absent, so
        ``baseline + sum(contributions) == logit`` to 1e-5. See :mod:`river_torchrec.explain`.

        Examples
        --------
        >>> from river_torchrec import CTRClassifier
        >>> model = CTRClassifier(model="fm", lr=0.1, seed=1)
        >>> for _ in range(20):
        ...     model.learn_one({"user": "ann", "item": "book"}, True)
        >>> e = model.explain_one({"user": "ann", "item": "book", "page": None})
        >>> abs(e.baseline + sum(e.contributions.values()) - e.logit) < 1e-5
        True
        >>> e.contributions["page"]
        0.0

        """
        ids, vals = self._tensors([parse_features(x, self._log_numeric)], learn=False)
        return explain_event(self.model_, self._encoder.slots, x, ids, vals)

    def debug_one(self, x: dict, decimals: int = 5) -> str:
        """A table of each field's value and contribution to the logit, largest first,
        then the bias (or baseline), the logit and the probability (see :meth:`explain_one`).

        Examples
        --------
        >>> from river_torchrec import CTRClassifier
        >>> model = CTRClassifier(model="lr", optimizer="adam", lr=0.1)
        >>> for _ in range(20):
        ...     model.learn_one({"user": "ann", "price": 2.0}, True)
        ...     model.learn_one({"user": "bob", "price": 1.0}, False)
        >>> print(model.debug_one({"user": "ann", "price": 2.0, "page": None}, decimals=2))
        Field         Value   Contribution
               user   'ann'           1.79
              price    2.00           0.49
               page    None           0.00
               Bias                  -0.30
              Logit                   1.98
        Probability                   0.88

        """
        return self.explain_one(x).to_table(decimals)
