"""A CTR classifier that does no harm: an online mixture of the click rate, DeepFM and a fast FM.

No single model or learning rate serves every click log: on sparse logs where nearly every id
is new, every learned model loses to the running click rate; where ids repeat (a few users
seeing a few items again and again) the default step size is several times too small; in
between, DeepFM at a small step wins. :class:`AutoCTRClassifier` runs one of each and mixes
their probabilities by Bayes' rule on log loss (:class:`~river_torchrec.mixture.OnlineMixture`),
starting from the click rate alone and sharing weight only with models that lead it lately,
so its cumulative log loss is provably never above the click rate's by more than the share's
price on the events where a model led (zero where none ever does), and it follows the best
model wherever one wins. The fast FM (:class:`SharedRowsFM`) shares the DeepFM member's row
ids instead of keeping a vocabulary of its own.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import warnings

import numpy as np
import pandas as pd
import torch
from river import base

from river_torchrec import _auto_kernels
from river_torchrec.classifier import CTRClassifier
from river_torchrec.defence import PoisoningDefence, resolve_defence
from river_torchrec.encoding import parse_features
from river_torchrec.labels import binary_label, frame_weights, sample_weight
from river_torchrec.learner import _Lock, locked
from river_torchrec.mixture import OnlineMixture, RunningPrior
from river_torchrec.nn import PADDING_ROW
from river_torchrec.numpy_path import NumpyPath, _bce, _finite, _sigmoid
from river_torchrec.optim import Adagrad

__all__ = ["AutoCTRClassifier", "SharedRowsFM"]

#: The manifest format of :meth:`AutoCTRClassifier.save` checkpoints.
AUTO_FORMAT = "river_torchrec.auto_checkpoint"
_MIXTURE_FILE = "mixture.json"
#: The mixture starts as the click rate alone: a learned member gets weight only once it
#: has led the click rate by more than ``LEAD_MARGIN`` nats over the recent events
#: (half-life ``LEAD_HALF_LIFE`` events), so where no model beats the click rate the
#: default *is* the click rate (see :class:`~river_torchrec.mixture.OnlineMixture`).
_INITIAL_WEIGHTS = (1.0, 0.0, 0.0)
LEAD_HALF_LIFE = 1000.0
LEAD_MARGIN = 1.0


_SHADOW_FILE = "member-2/shared_rows_fm.safetensors"
_DRAW_BLOCK = 4096  # DynamicEmbedding draws rows beyond its initial capacity in blocks of this many


class SharedRowsFM:
    r"""A factorization machine with Adagrad that keeps its own rows under another model's ids.

    Two :class:`~river_torchrec.CTRClassifier` members that learn the same events with the
    same ``seed`` and table settings hand out the same row to every ``(field, value)`` key,
    and start every row from the same random draw: their vocabularies are identical. This
    member therefore keeps no vocabulary, no field encoder and no parsing of its own. It
    reads each event's row ids and values from its *host* (the host's last prediction when
    it kept one, else the host's encoder and table, read-only) and holds only its own
    weights, one row per host row, and their Adagrad state. It computes what
    ``CTRClassifier(model="fm", optimizer=Adagrad(lr, initial_accumulator_value=s0))``
    with the host's ``seed``, ``embedding_dim`` and table settings would, to float32
    rounding (``tests/test_auto_shared.py`` holds the two to 1e-5 over thousands of events),
    at a fraction of its cost: one compiled call per prediction and one per step
    (:mod:`river_torchrec._auto_kernels`, NumPy without numba). The logit is

    .. math::
        b + \sum_f w_f v_f + \sum_{f<g} \langle e_f, e_g\rangle v_f v_g

    and each step is Adagrad on the bias and the touched rows; a step whose loss, weights
    or state would not be finite is refused (counted in ``n_rejected_``, with a warning).

    It must learn each event after its host (as :class:`~river_torchrec.mixture.OnlineMixture`
    orders its members): the host's lookup is what gives a new key its row. It applies to
    a dynamic table without ``max_rows`` (rows are never recycled) or a hashed one, whose
    rows are all drawn when the host is built. :class:`AutoCTRClassifier` builds it.

    Parameters
    ----------
    host
        The :class:`~river_torchrec.CTRClassifier` whose row ids it shares, freshly built
        (its table's initial rows are copied as this member's initial rows).
    lr
        Adagrad learning rate.
    initial_accumulator
        Adagrad's initial accumulator :math:`s_0`.

    Attributes
    ----------
    weight_
        ``[capacity, 1 + embedding_dim]`` float32 rows (column 0: first-order weights).
    sum_sq_
        Adagrad's sums of squared gradients of the rows (without :math:`s_0`).
    bias_, bias_sum_sq_
        The global bias and its sum of squared gradients.
    n_rejected_
        Steps refused because they would have produced a non-finite value.

    """

    model = "fm"
    #: The mixture's defence weighs each event once for every member: none of its own.
    defence_ = None
    #: Whether the compiled one-event steps (:mod:`river_torchrec._auto_kernels`) may run;
    #: tests switch it off on an instance to compare with the NumPy code.
    use_kernel = True

    def __init__(self, host: CTRClassifier, lr: float, initial_accumulator: float) -> None:
        self.host = host
        self.updater = Adagrad(lr=lr, initial_accumulator_value=initial_accumulator)
        table = host.model_.embedding
        if table.max_rows is not None or table.zero_cols != 1:
            raise ValueError("SharedRowsFM needs a host table with one first-order column and no max_rows")
        weight = table.weight.detach().to("cpu", torch.float32).numpy()
        width = weight.shape[1]
        # Rows and their Adagrad sums side by side: one array, one gather per event.
        self._table = np.zeros((len(weight), 2 * width), dtype=np.float32)
        self._table[:, :width] = weight
        self.init_upto_ = len(weight)  # rows below it hold their initial draw (or what was learned)
        self._dense = np.zeros(2, dtype=np.float32)  # the bias and its sum of squared gradients
        self._hyper = np.zeros(5, dtype=np.float64)  # lr, s0, eps, then each step's label and weight
        self.n_rejected_ = 0
        self._version = 0
        self._last: tuple | None = None
        self._scratch: tuple | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_last"] = None
        state["_scratch"] = None  # compiled functions and scratch space are rebuilt on use
        return state

    @property
    def weight_(self) -> np.ndarray:
        return self._table[:, : self._table.shape[1] // 2]

    @property
    def sum_sq_(self) -> np.ndarray:
        return self._table[:, self._table.shape[1] // 2 :]

    @property
    def bias_(self) -> np.ndarray:
        return self._dense[:1]

    @property
    def bias_sum_sq_(self) -> np.ndarray:
        return self._dense[1:]

    def _compiled(self, n: int) -> tuple | None:
        """The compiled kernels and scratch space for events of ``n`` fields, or None (NumPy)."""
        scratch = self._scratch
        if scratch is not None and scratch[0] == n:
            return scratch
        if not self.use_kernel:
            return None
        kernels = _auto_kernels.fm_kernels()
        if kernels is None:
            return None
        width = self._table.shape[1] // 2
        self._scratch = scratch = (n, kernels[0], kernels[1], np.zeros((3 * n + 1, width), dtype=np.float32))
        return scratch

    # ------------------------------------------------------------ rows

    def _reserve(self, top: int) -> None:
        """Make row ``top`` exist, drawn as the host's table drew it (a function of seed and row)."""
        if top < self.init_upto_:
            return
        capacity = len(self._table)
        if top >= capacity:
            grown = np.zeros((max(capacity * 2, top + 1), self._table.shape[1]), dtype=np.float32)
            grown[:capacity] = self._table
            self._table = grown
        table = self.host.model_.embedding
        width = self._table.shape[1] // 2
        start = self.init_upto_
        stop = min(len(self._table), (top // _DRAW_BLOCK + 1) * _DRAW_BLOCK)
        for block in range(start // _DRAW_BLOCK, (stop - 1) // _DRAW_BLOCK + 1):
            base_row = block * _DRAW_BLOCK
            lo, hi = max(start, base_row), min(stop, base_row + _DRAW_BLOCK)
            self._table[lo:hi, :width] = table._block(block)[lo - base_row : hi - base_row].numpy()
        self.init_upto_ = stop

    def _prepare(self, x: dict) -> tuple[np.ndarray, np.ndarray, bool]:
        """The host's row ids and values of ``x`` (read-only), as arrays, and whether every
        key of ``x`` had a row (then learning it finds the same rows)."""
        host = self.host
        fast = host._memo.numpy
        entry = fast.known_entry(host, x) if fast is not None else None
        if entry is not None:
            # The host has just predicted this very event: its ids are the ones to use.
            ids, vals, known = entry.ids, entry.vals, True
        else:
            # The host's own read-only arrangement of a prediction (no row is handed out).
            arranged = NumpyPath._arrange_dict(host, x)
            if arranged is None:
                parsed = parse_features(x, host._log_numeric, host._nan_missing)
                arranged = NumpyPath._arrange(host, parsed, learn=False)
            ids, vals, known = arranged
        if ids and max(ids) >= self.init_upto_:
            self._reserve(max(ids))
        return np.array(ids, dtype=np.intp), np.array(vals, dtype=np.float32), known

    # ------------------------------------------------------------ one event

    def _logit(self, ids: np.ndarray, values: np.ndarray) -> float:
        compiled = self._scratch
        if compiled is None or compiled[0] != len(ids):
            compiled = self._compiled(len(ids))
        if compiled is not None:
            return compiled[1](self._table, self._dense, ids, values, compiled[3])
        return self._forward_numpy(ids, values)[0]

    def _forward_numpy(self, ids: np.ndarray, values: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """The logit (CTRModel.numpy_forward's arithmetic for the linear and FM terms, in the
        same order), the event's rows, its scaled factors and their sum."""
        rows = self.weight_[ids]
        with np.errstate(all="ignore"):
            factors = rows[:, 1:] * values[:, None]
            total = factors.sum(axis=0)
            logit = float(self._dense[0]) + float(rows[:, 0] @ values)
            return logit + 0.5 * float(total @ total - np.vdot(factors, factors)), rows, factors, total

    def _step(self, ids: np.ndarray, values: np.ndarray, label: float, weight: float) -> None:
        """One Adagrad step on one event (refused, with a warning, if anything would not be finite)."""
        compiled = self._scratch
        if compiled is None or compiled[0] != len(ids):
            compiled = self._compiled(len(ids))
        if compiled is not None:
            hyper = self._hyper
            u = self.updater
            hyper[0], hyper[1], hyper[2], hyper[3], hyper[4] = u.lr, u.initial_accumulator_value, u.eps, label, weight
            status = compiled[2](self._table, self._dense, ids, values, hyper, compiled[3])
        else:
            status = self._step_numpy(ids, values, label, weight)
        if status == _auto_kernels.OK:
            self._version += 1
        else:
            self._reject("a non-finite loss" if status == _auto_kernels.NONFINITE_LOSS
                         else "a non-finite gradient, weight or optimizer state")

    def _step_numpy(self, ids: np.ndarray, values: np.ndarray, label: float, weight: float) -> int:
        width = self._table.shape[1] // 2
        logit, rows, factors, total = self._forward_numpy(ids, values)
        with np.errstate(all="ignore"):
            if not math.isfinite(_bce(logit, label) * weight):
                return _auto_kernels.NONFINITE_LOSS
            d = np.float32((_sigmoid(logit) - label) * weight)
            d_rows = np.empty_like(rows)
            np.multiply(values, d, out=d_rows[:, 0])
            np.multiply(d * (total - factors), values[:, None], out=d_rows[:, 1:])
            # Positions sharing a row (absent fields on the padding row) add up, as in index_add.
            idx, inverse = np.unique(ids, return_inverse=True)
            grad = np.zeros((len(idx), width), dtype=np.float32)
            np.add.at(grad, inverse, d_rows)
            return self._apply(idx, grad, np.float32(d))

    def _adagrad(self, param: np.ndarray, grad: np.ndarray, sum_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        new_param, state = self.updater._numpy_update(param, grad, {"sum_sq": sum_sq}, self.updater.lr)
        return new_param, state["sum_sq"]

    def _apply(self, idx: np.ndarray, grad: np.ndarray, d_bias: np.float32) -> int:
        """Adagrad on rows ``idx`` (distinct) and the bias, written only if every value is finite."""
        width = self._table.shape[1] // 2
        block = self._table[idx]
        new_rows, new_sum = self._adagrad(block[:, :width], grad, block[:, width:])
        new_dense = self._adagrad(self._dense[:1], np.array([d_bias], dtype=np.float32), self._dense[1:])
        if not _finite([new_rows, new_sum, *new_dense]):
            return _auto_kernels.NONFINITE_STEP
        self._table[idx, :width] = new_rows
        self._table[idx, width:] = new_sum
        self._dense[0], self._dense[1] = new_dense[0][0], new_dense[1][0]
        if (idx == PADDING_ROW).any():
            self._table[PADDING_ROW, :width] = 0
        return _auto_kernels.OK

    def _reject(self, why: str) -> None:
        self.n_rejected_ += 1
        warnings.warn(f"{type(self).__name__} rejected a step: {why}; the weights were left unchanged", RuntimeWarning)

    def predict_proba_one(self, x: dict) -> dict[bool, float]:
        ids, values, known = self._prepare(x)
        logit = self._logit(ids, values)
        self._last = (dict(x), tuple(map(type, x.values())), ids, values, self._version) if known else None
        p = _sigmoid(logit)
        if p != p:
            p = 0.5  # an overflowing logit, as the classifiers predict it
        return {False: 1.0 - p, True: p}

    def learn_one(self, x: dict, y: base.typing.ClfTarget, w: float = 1.0) -> None:
        label, weight = binary_label(y), sample_weight(w)
        last, self._last = self._last, None
        if last is not None and last[4] == self._version and last[0] == x and tuple(map(type, x.values())) == last[1]:
            # Every key had a row when predicted and rows are never recycled: the same ids.
            ids, values = last[2], last[3]
        else:
            ids, values, _ = self._prepare(x)
        self._step(ids, values, label, weight)

    # ------------------------------------------------------------ frames

    def _frame(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        ids, vals = self.host._frame_tensors(X, learn=False)
        ids, vals = ids.cpu().numpy(), vals.cpu().numpy()
        if ids.size:
            self._reserve(int(ids.max()))
        return ids, vals

    def _frame_logits(self, ids: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = self.weight_[ids]  # [B, F, W]
        factors = rows[..., 1:] * vals[..., None]
        total = factors.sum(axis=1)
        pairs = 0.5 * ((total * total).sum(axis=1) - (factors * factors).sum(axis=(1, 2)))
        logits = self._dense[0] + (rows[..., 0] * vals).sum(axis=1) + pairs
        return logits.astype(np.float64), factors, total

    def predict_proba_many(self, X: pd.DataFrame) -> pd.DataFrame:
        if not len(X):
            return pd.DataFrame({False: [], True: []}, index=X.index, columns=[False, True], dtype=float)
        ids, vals = self._frame(X)
        with np.errstate(all="ignore"):
            logits, _, _ = self._frame_logits(ids, vals)
            p = 1.0 / (1.0 + np.exp(-logits))
        p = np.where(np.isnan(p), 0.5, p)
        return pd.DataFrame({False: 1.0 - p, True: p}, index=X.index, columns=[False, True])

    def learn_many(self, X: pd.DataFrame, y: pd.Series, w: pd.Series | float = 1.0) -> None:
        """One Adagrad step on the frame's mean weighted loss, as the host's ``learn_many`` takes."""
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        labels = np.array([binary_label(v) for v in y.tolist()], dtype=np.float64)
        weights = np.asarray(frame_weights(w, len(X)), dtype=np.float64)
        self._last = None
        if not len(X):
            return
        ids, vals = self._frame(X)
        width = self._table.shape[1] // 2
        with np.errstate(all="ignore"):
            logits, factors, total = self._frame_logits(ids, vals)
            losses = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
            if not math.isfinite(float((losses * weights).sum())):
                self._reject("a non-finite loss")
                return
            d = ((1.0 / (1.0 + np.exp(-logits)) - labels) * weights / len(X)).astype(np.float32)
            d_pos = np.empty(ids.shape + (width,), dtype=np.float32)
            d_pos[..., 0] = vals * d[:, None]
            d_pos[..., 1:] = d[:, None, None] * (total[:, None, :] - factors) * vals[..., None]
            idx, inverse = np.unique(ids.reshape(-1), return_inverse=True)
            grad = np.zeros((len(idx), width), dtype=np.float32)
            np.add.at(grad, inverse.reshape(-1), d_pos.reshape(len(inverse.reshape(-1)), -1))
            status = self._apply(idx, grad, np.float32(d.sum()))
        if status == _auto_kernels.OK:
            self._version += 1
        else:
            self._reject("a non-finite gradient, weight or optimizer state")

    # ------------------------------------------------------------ checkpoints

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "table": torch.from_numpy(self._table.copy()),
            "dense": torch.from_numpy(self._dense.copy()),
            "counters": torch.tensor([self.init_upto_, self.n_rejected_, self._version], dtype=torch.int64),
        }

    def _restore(self, tensors: dict[str, torch.Tensor]) -> None:
        try:
            table, dense = tensors["table"].numpy().copy(), tensors["dense"].numpy().copy()
            counters = tensors["counters"].tolist()
        except KeyError as e:
            raise ValueError(f"the shared-rows FM's tensors lack {e}") from None
        if (
            table.dtype != np.float32 or table.ndim != 2 or table.shape[1] != self._table.shape[1]
            or dense.dtype != np.float32 or dense.shape != (2,) or len(counters) != 3
            or not 0 < counters[0] <= len(table)
        ):
            raise ValueError("the shared-rows FM's tensors do not fit its host")
        self._table, self._dense = table, dense
        self.init_upto_, self.n_rejected_, self._version = counters
        self._last = self._scratch = None


class AutoCTRClassifier(base.MiniBatchClassifier):
    """The running click rate, DeepFM at a small step and FM at a large one, mixed online.

    The three members learn every event, each on its own; the prediction is their average
    weighted by the mixture's posterior (:class:`~river_torchrec.mixture.OnlineMixture`).
    The mixture starts with all its weight on the running click rate; after each event a
    share of the weight goes to the models whose recent lead over the click rate (their
    log-loss advantage, discounted with a half-life of ``LEAD_HALF_LIFE`` = 1,000 events)
    exceeds ``LEAD_MARGIN`` = 1 nat, at rate ``max(share, 1 / (k + 2))`` on the ``k``-th such
    event, or back to the click rate when no model leads. Whatever the stream, the
    cumulative log loss is at most the click rate's plus ``mixture_.regret_bound()``, the
    share's price on the events where a model led (at most ``log(K + 1) + K * share`` for
    ``K`` of them); where no model ever leads, the prediction *is* the click rate. A model
    that starts to win (DeepFM after its first few hundred events, the fast FM once it has
    learned the ids that repeat, either after a drift) takes the weight within a few dozen
    events. ``benchmarks/bench_defaults.py`` measures it against every peer and
    ``docs/why.md`` explains the choice of members and of the mixing.

    The fast FM is a :class:`SharedRowsFM` (the same model as
    ``CTRClassifier(model=fast_model, optimizer=Adagrad(fast_lr, initial_accumulator_value=fast_accumulator))``,
    reading its row ids from the DeepFM member) when ``fast_model="fm"``, ``max_rows`` is
    None and the slow model keeps first-order weights; a classifier of its own otherwise.

    Parameters
    ----------
    model
        The learned member with the small step: a :class:`~river_torchrec.CTRClassifier`
        model name (default ``"deepfm"``).
    lr
        Its Adagrad learning rate (the library default, 0.02: best where ids are seen a few
        times, as in Criteo and Avazu).
    fast_model
        The learned member with the large step (default ``"fm"``, the cheapest model that
        learns pairwise interactions).
    fast_lr
        Its Adagrad learning rate (0.2: best where ids repeat, as on MovieLens).
    fast_accumulator
        Initial accumulator of its Adagrad: an id's first steps are about
        ``fast_lr * g / sqrt(fast_accumulator)`` instead of ``fast_lr`` whatever the gradient,
        so ids seen once or twice barely move and only ids that repeat get large steps.
    share
        The smallest share rate of the mixture (see above); 0: weight moves to a leading
        model at rate ``1 / (k + 2)`` only.
    embedding_dim, hidden_units, embeddings, n_buckets, max_rows, numeric, device, seed
        Passed to both learned members (see :class:`~river_torchrec.CTRClassifier`).
    defence
        As :class:`~river_torchrec.CTRClassifier`'s (``"default"``, None or a
        :class:`~river_torchrec.defence.PoisoningDefence`): one defence weighs each event
        once, and every member (the prior included) learns it with that trusted weight.

    Attributes
    ----------
    mixture_
        The :class:`~river_torchrec.mixture.OnlineMixture`; its ``members`` are the
        :class:`~river_torchrec.mixture.RunningPrior`, the slow classifier and the fast FM.

    Notes
    -----
    :meth:`save` and :meth:`load` write and read one atomic, checksummed directory holding
    the slow member's checkpoint (:mod:`river_torchrec.persistence`, never unpickled), the
    fast FM's rows as safetensors, and the mixture's state and the prior's counts as JSON;
    ``pickle`` works too. Checkpoints whose fast FM is a classifier of its own still load.

    **Speed**: the members are stepped by :class:`AutoCTRClassifier` itself, the fast FM and
    the mixture's update each in one compiled call (numba, when installed; NumPy and plain
    Python otherwise, with the same results), so a progressive-validation event costs
    about 1.4-1.5x a ``CTRClassifier()`` one (``benchmarks/bench_defaults.py --speed-only``).

    Examples
    --------
    >>> from river import evaluate, metrics
    >>> from river_torchrec import datasets
    >>> from river_torchrec.auto import AutoCTRClassifier
    >>> model = AutoCTRClassifier(seed=1)
    >>> evaluate.progressive_val_score(
    ...     datasets.RepeatVisits(n_events=4_000, seed=1), model, metrics.LogLoss()
    ... )
    LogLoss: 0.38...

    (the overall click rate alone scores 0.406 there). Where a few users meet a few items
    again and again, the fast FM has taken over:

    >>> max(model.weights_, key=model.weights_.get)
    'fm lr=0.2'
    >>> list(model.weights_)
    ['prior', 'deepfm lr=0.02', 'fm lr=0.2']

    """

    def __init__(
        self,
        model: str = "deepfm",
        lr: float = 0.02,
        fast_model: str = "fm",
        fast_lr: float = 0.2,
        fast_accumulator: float = 1.0,
        share: float = 0.0003,
        embedding_dim: int = 8,
        hidden_units: Sequence[int] = (64, 32),
        embeddings: str = "dynamic",
        n_buckets: int = 2**18,
        max_rows: int | None = None,
        numeric: str = "log",
        device: str = "cpu",
        seed: int = 42,
        defence: PoisoningDefence | str | None = "default",
    ) -> None:
        self.model = model
        self.lr = lr
        self.fast_model = fast_model
        self.fast_lr = fast_lr
        self.fast_accumulator = fast_accumulator
        self.share = share
        self.embedding_dim = embedding_dim
        self.hidden_units = hidden_units
        self.embeddings = embeddings
        self.n_buckets = n_buckets
        self.max_rows = max_rows
        self.numeric = numeric
        self.device = device
        self.seed = seed
        self.defence = defence
        self._defence = resolve_defence(defence)
        common = {
            "embedding_dim": embedding_dim,
            "hidden_units": hidden_units,
            "embeddings": embeddings,
            "n_buckets": n_buckets,
            "max_rows": max_rows,
            "numeric": numeric,
            "device": device,
            "seed": seed,
            "defence": None,  # the mixture's own defence weighs each event once for all members
        }
        slow = CTRClassifier(model=model, optimizer="adagrad", lr=lr, **common)
        table = slow.model_.embedding
        fast: CTRClassifier | SharedRowsFM
        if fast_model == "fm" and max_rows is None and table.dim == embedding_dim + 1 and table.zero_cols == 1:
            # The same keys get the same rows in both members: the fast FM borrows the slow
            # member's vocabulary and parsing instead of repeating them.
            fast = SharedRowsFM(slow, fast_lr, fast_accumulator)
        else:
            fast_updater = Adagrad(lr=fast_lr, initial_accumulator_value=fast_accumulator)
            fast = CTRClassifier(model=fast_model, optimizer=fast_updater, **common)
        self.mixture_ = OnlineMixture(
            [RunningPrior(), slow, fast], share=share, weights=_INITIAL_WEIGHTS, baseline=0,
            half_life=LEAD_HALF_LIFE, margin=LEAD_MARGIN,
        )
        self._names = ["prior", f"{model} lr={lr:g}", f"{fast_model} lr={fast_lr:g}"]
        self._lock = _Lock()
        self._pending: tuple | None = None

    @property
    def _multiclass(self) -> bool:
        return False

    @property
    def _is_stochastic(self) -> bool:
        return True

    @property
    def weights_(self) -> dict[str, float]:
        """The mixture weight of each member, by name."""
        return dict(zip(self._names, self.mixture_.weights_))

    @classmethod
    def _unit_test_params(cls):
        yield {"hidden_units": (8,), "embedding_dim": 4, "embeddings": "hash", "n_buckets": 1024}

    def _unit_test_skips(self) -> set[str]:
        return {
            # As for CTRClassifier (and river's own linear models): a frame is one mean-gradient
            # step per member, not a sequence of per-row steps.
            "check_learn_many_matches_learn_one",
        }

    @property
    def defence_(self) -> PoisoningDefence | None:
        """The live :class:`~river_torchrec.defence.PoisoningDefence` (its statistics), if any."""
        return self._defence

    @locked
    def learn_one(self, x: dict, y: base.typing.ClfTarget, w: float = 1.0) -> None:
        if self._defence is None:
            self._learn_mixture(x, y, w)
            return
        label, weight = binary_label(y), sample_weight(w)
        self._defence.learn_defended(
            x, label, weight, lambda trusted: self._learn_mixture(x, y, trusted), lambda: self._predict(x)
        )

    @locked
    def predict_proba_one(self, x: dict) -> dict[Hashable, float]:
        p = self._predict(x)
        return {False: 1.0 - p, True: p}

    # The default members (the prior, a classifier and the FM sharing its rows) are stepped
    # here directly rather than through OnlineMixture's generic loop: the same calls in the
    # same order, without a dict per member and without the FM checking the event a second
    # time. Per event, that generic plumbing cost about a fifth of a DeepFM step.

    def _shared(self) -> list | None:
        """The members when they are the default three (the FM sharing the classifier's rows)."""
        members = self.mixture_.members
        if len(members) == 3 and type(members[2]) is SharedRowsFM and members[2].host is members[1]:
            if type(members[0]) is RunningPrior:
                return members
        return None

    def _predict(self, x: dict) -> float:
        mix = self.mixture_
        shared = self._shared()
        if shared is None:
            return mix.predict_proba_one(x)[True]
        prior, slow, fm = shared
        memo = slow._memo.numpy
        if memo is not None:
            memo.entry = None  # so that an entry found after the prediction is this event's
        q1 = slow.predict_proba_one(x)[True]  # refuses bad features before anything is kept
        memo = slow._memo.numpy
        entry = memo.entry if memo is not None else None
        if entry is not None and entry.known and entry.version == slow._version:
            # The host's rows and values of this very event, as it just looked them up.
            top = max(entry.ids, default=0)
            if top >= fm.init_upto_:
                fm._reserve(top)
            ids = np.array(entry.ids, dtype=np.intp)
            values = np.array(entry.vals, dtype=np.float32)
            known = True
        else:
            ids, values, known = fm._prepare(x)
        compiled = fm._scratch
        if compiled is None or compiled[0] != len(ids):
            compiled = fm._compiled(len(ids))
        kernels = _auto_kernels.auto_kernels() if compiled is not None else None
        if kernels is not None:
            probas = np.empty(3)
            p = kernels[0](fm._table, fm._dense, ids, values, compiled[3], mix._state, probas, prior.rate, float(q1))
        else:
            q2 = _sigmoid(fm._logit(ids, values))
            q1 = 0.0 if q1 < 0.0 else 1.0 if q1 > 1.0 else float(q1)
            q2 = 0.5 if q2 != q2 else q2
            probas = np.array([prior.rate, q1, q2])
            w0, w1, w2 = mix._state[:3].tolist()
            p = w0 * probas[0] + w1 * q1 + w2 * q2
            p = 0.0 if p < 0.0 else 1.0 if p > 1.0 else float(p)
        mix._last = (x, dict(x), probas)
        self._pending = (probas, ids, values, fm._version) if known else None
        return p

    def _learn_mixture(self, x: dict, y: base.typing.ClfTarget, w: float) -> None:
        mix = self.mixture_
        shared = self._shared()
        pending, self._pending = self.__dict__.get("_pending"), None
        if shared is None:
            mix.learn_one(x, y, w)
            return
        prior, slow, fm = shared
        label = 1.0 if y is True else 0.0 if y is False else binary_label(y)
        weight = 1.0 if w == 1.0 and type(w) is float else sample_weight(w)
        last, mix._last = mix._last, None
        if last is not None and last[0] is x and last[1] == x:
            probas = last[2]
        else:
            probas, pending = mix._member_probas(x), None  # raises on bad features before anything learns
        prior.clicks_ += weight * label
        prior.n_ += weight
        if weight == 1.0:
            slow.learn_one(x, y)
        else:
            slow.learn_one(x, y, weight)
        if pending is not None and pending[0] is probas and pending[3] == fm._version:
            # Every key had a row when predicted and rows are never recycled: the same ids.
            ids, values = pending[1], pending[2]
        else:
            ids, values, _ = fm._prepare(x)
        fm._last = None
        compiled = fm._scratch
        kernels = _auto_kernels.auto_kernels() if compiled is not None and compiled[0] == len(ids) else None
        if kernels is None:
            fm._step(ids, values, label, weight)
            mix._update_one(probas, label, weight)
            return
        hyper, u = fm._hyper, fm.updater
        hyper[0], hyper[1], hyper[2], hyper[3], hyper[4] = u.lr, u.initial_accumulator_value, u.eps, label, weight
        params = self.__dict__.get("_mix_params")
        if params is None:
            params = self._mix_params = np.array(
                [mix.share, mix._decay, mix.margin, -1 if mix.baseline is None else mix.baseline], dtype=np.float64
            )
        if type(probas) is not np.ndarray:
            probas = np.array(probas, dtype=np.float64)
        status = kernels[1](fm._table, fm._dense, ids, values, hyper, compiled[3], mix._state, probas, params)
        if status == _auto_kernels.OK:
            fm._version += 1
        else:
            fm._reject("a non-finite loss" if status == _auto_kernels.NONFINITE_LOSS
                       else "a non-finite gradient, weight or optimizer state")

    @locked
    def learn_many(self, X: pd.DataFrame, y: pd.Series, w: pd.Series | float = 1.0) -> None:
        if self._defence is None or not isinstance(X, pd.DataFrame) or len(X) != len(y) or X.columns.has_duplicates:
            self.mixture_.learn_many(X, y, w)  # no defence, or a frame the members refuse
            return
        labels = [binary_label(v) for v in y.tolist()]
        self._defence.learn_frame_defended(
            X, labels, frame_weights(w, len(X)),
            lambda trusted: self.mixture_.learn_many(X, y, pd.Series(trusted, index=X.index, dtype=float)),
            lambda: self.mixture_.predict_proba_many(X)[True].tolist(),
        )

    @locked
    def predict_proba_many(self, X: pd.DataFrame) -> pd.DataFrame:
        return self.mixture_.predict_proba_many(X)

    # ---------------------------------------------------------------- checkpoints

    @locked
    def save(self, path: str | os.PathLike) -> None:
        """Write a checkpoint directory atomically (the members' own checkpoints and the mixture).

        Examples
        --------
        >>> import tempfile
        >>> from river_torchrec import datasets
        >>> from river_torchrec.auto import AutoCTRClassifier
        >>> model = AutoCTRClassifier(hidden_units=(8,), seed=1)
        >>> stream = list(datasets.SyntheticCTR(n_events=200, seed=1))
        >>> for x, y in stream[:100]:
        ...     model.learn_one(x, y)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     model.save(f"{tmp}/auto")
        ...     resumed = AutoCTRClassifier.load(f"{tmp}/auto")
        >>> for x, y in stream[100:]:
        ...     model.learn_one(x, y)
        ...     resumed.learn_one(x, y)
        >>> resumed.predict_proba_one(stream[0][0]) == model.predict_proba_one(stream[0][0])
        True

        """
        from river_torchrec import persistence

        path = Path(path)
        persistence._check_replaceable(path)
        mix = self.mixture_
        prior, *learners = mix.members
        files: dict[str, bytes] = {}
        for i, member in enumerate(learners, start=1):
            if isinstance(member, SharedRowsFM):
                files[_SHADOW_FILE] = persistence._safetensors_bytes(member._tensors())
                continue
            with member._lock:
                files.update({f"member-{i}/{name}": data for name, data in persistence._serialize(member).items()})
        enc = persistence._Encoder({})
        state = {
            "format_version": persistence.FORMAT_VERSION,
            "params": enc.params(self, "params"),
            "defence": enc(self._defence, "defence"),
            "log_weights": [a if math.isfinite(a) else None for a in mix._log_w],
            "weights": list(mix._w),
            "member_losses": list(mix.member_losses_),
            "n_learned": mix.n_learned_,
            "leads": list(mix.leads_),
            "n_led": mix.n_led_,
            "share_price": mix.share_price_,
            "prior": {"clicks": prior.clicks_, "n": prior.n_},
        }
        files[_MIXTURE_FILE] = json.dumps(state, sort_keys=True).encode()
        persistence._commit(path, files, AUTO_FORMAT)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> AutoCTRClassifier:
        """Read a checkpoint written by :meth:`save`, every file verified first.

        Raises :class:`~river_torchrec.persistence.CheckpointError` if a file is missing,
        truncated or modified, or holds another format.
        """
        from river_torchrec import persistence

        path = persistence._locate(Path(path))
        files = persistence._read_verified(path, AUTO_FORMAT, names=None)
        try:
            state = json.loads(files[_MIXTURE_FILE])
            if state.get("format_version") != persistence.FORMAT_VERSION:
                raise persistence.CheckpointError(f"{_MIXTURE_FILE} is of another format version")
            dec = persistence._Decoder(persistence._Classes(()), {}, torch.device("cpu"))
            params = dec.attributes(state["params"], "params")
            if device is not None:
                params["device"] = device
            model = cls(**params)
            model._defence = dec(state["defence"], "defence")
            mix = model.mixture_
            for i in range(1, len(mix.members)):
                prefix = f"member-{i}/"
                member_files = {k[len(prefix) :]: v for k, v in files.items() if k.startswith(prefix)}
                if isinstance(mix.members[i], SharedRowsFM) and _SHADOW_FILE in files:
                    shadow = mix.members[i]
                    shadow.host = mix.members[1]
                    shadow._restore(persistence._load_tensors(files, _SHADOW_FILE))
                elif isinstance(mix.members[i], SharedRowsFM):
                    # Written before the fast FM shared its rows: a classifier of its own.
                    mix.members[i] = persistence._from_files(member_files, device)
                else:
                    mix.members[i] = persistence._from_files(member_files, device)
            prior = mix.members[0]
            prior.clicks_, prior.n_ = float(state["prior"]["clicks"]), float(state["prior"]["n"])
            n = len(mix.members)
            log_w = [-math.inf if a is None else float(a) for a in state["log_weights"]]
            # Both as saved: the next update starts from the log-weights, the prediction uses the weights.
            w = [float(v) for v in state["weights"]] if "weights" in state else [math.exp(a) for a in log_w]
            leads = [float(v) for v in state.get("leads", [0.0] * n)]
            if len(w) != n or len(log_w) != n or len(state["member_losses"]) != n or len(leads) != n:
                raise persistence.CheckpointError(f"{_MIXTURE_FILE} does not have one weight per member")
            mix._w = w
            mix._state[n : 2 * n] = log_w
            mix.member_losses_ = [float(v) for v in state["member_losses"]]
            mix.n_learned_ = int(state["n_learned"])
            mix.leads_ = leads
            mix.n_led_ = int(state.get("n_led", 0))
            mix.share_price_ = float(state.get("share_price", 0.0))
        except persistence.CheckpointError as e:
            raise persistence.CheckpointError(f"{path}: {e}") from e.__cause__
        except (KeyError, TypeError, ValueError) as e:
            raise persistence.CheckpointError(f"{path}: the checkpoint does not fit: {type(e).__name__}: {e}") from e
        return model
