"""Poisoning and click-fraud defence: how much any one sender or key may move an online model.

Anyone who can click can steer a model that learns from its traffic. :class:`PoisoningDefence`
sits in front of :meth:`CTRClassifier.learn_one <river_torchrec.CTRClassifier.learn_one>`
and ``learn_many`` (``CTRClassifier(defence=PoisoningDefence())``) and turns each event's
sample weight into a *trusted* weight, from three signals (each can be switched off):

1. **Newcomer label anomaly on a key** (``item_fields``): a bot farm spreads its clicks over
   many fresh ids, two or three events each, so no sender looks busy; what gives it away is
   the *item*: it collects clicks from ids with no history at a rate far above what
   established users give it (or, with no established traffic, the population's rate).
   For each value of each item field, decayed counts of events and clicks from newcomers
   (senders with fewer than ``min_history`` events, or fewer than ``min_age`` events of
   other senders since their first) and from established senders are kept.
   The newcomer click rate ``r`` over ``n`` newcomer events is compared to the baseline
   ``b`` (established clicks plus ``prior_strength`` events at the population rate) by
   the Chernoff bound of a binomial tail, ``n * KL(r || b)`` nats: above ``alarm_nats``
   (``P <= exp(-alarm_nats)`` under the baseline), newcomer events that push the key's rate
   further the anomalous way get ``flagged_weight`` times their weight. Events pushing the
   other way, and established senders' events, keep theirs, so an attack by mass
   non-clicks on a competitor's item is caught the same way.
2. **Per-sender share budget** (``max_share``): a sender's decayed granted weight may not
   exceed ``max_share`` of all the decayed granted weight plus ``burst_allowance``: a single
   id replaying thousands of events in a burst gets its budget and then nothing, however
   fast it sends, while genuine heavy users (a quarter of the traffic, in ``SyntheticCTR``)
   stay under the default 0.5.
3. **Per-event gradient clip** (``max_logit_gradient``): the gradient of the loss with
   respect to the logit is ``(p - y) * w``; the weight is cut so that this stays at most
   ``max_logit_gradient`` in size, bounding what one confidently-contradicted event (a
   flipped label) can do. Off by default: with rare clicks it also slows learning from
   genuine surprising positives (see ``docs/robustness.md``).

State is bounded (``max_keys`` entries per table, least recently used evicted, as hostile
ids are unbounded), deterministic (no randomness), plain Python (saved by checkpoints
with the estimator) and advances only once the estimator has accepted the event: bad input
leaves it unchanged.

Examples
--------
>>> from river_torchrec.defence import PoisoningDefence
>>> defence = PoisoningDefence(warmup=0, max_share=None)
>>> for i in range(40):  # established users click item "a" 10% of the time
...     for _ in range(5):
...         _ = defence.learn({"user_id": f"u{i}", "item_id": "a"}, float(i % 10 == 0))
>>> [defence.learn({"user_id": f"bot{i}", "item_id": "target"}, 1.0) for i in range(6)]
[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
>>> defence.n_flagged_
3

"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from river import base

from river_torchrec import _kernels

__all__ = ["PoisoningDefence", "DefenceTransaction", "resolve_defence"]

_EPS = 1e-6
_KEY_TYPES = (str, bool, int, float)
#: Frames of at least this many rows are weighed by the compiled loop (with numba installed).
_COMPILED_FRAME = 16


def _clock_ints(times: np.ndarray) -> list[int]:
    """Clock values (whole numbers held as floats by the compiled loop) as the ints weigh stores."""
    return times.astype(np.int64).tolist()


def _overlay(overlay: dict, keys: list, values: Iterable) -> None:
    """Put ``keys`` last in ``overlay``, in order, with ``values`` (as a pop and an insert each would)."""
    if overlay:
        for key in keys:
            overlay.pop(key, None)
    overlay.update(zip(keys, values))


def _column(series: pd.Series) -> Sequence:
    """A frame column's values as Python objects: an object column's own array (no copy),
    any other as a list (a NumPy integer is no key; its Python int is)."""
    return series.to_numpy() if series.dtype == object else series.tolist()


def _entries(overlay: dict, saved: dict, keys: list) -> list:
    """The current entry of each key: the overlay's, else the saved table's (None: neither)."""
    if not overlay:
        return list(map(saved.get, keys))
    return [e if (e := overlay.get(k)) is not None else saved.get(k) for k in keys]


def _fill(entries: list, into: np.ndarray, columns: list[int], flag: int | None, dtype: type) -> np.ndarray:
    """Write the tuples of ``entries`` (None: none) into ``columns`` of their rows of ``into``
    and 1 into column ``flag``; returns which rows had an entry."""
    has = np.fromiter((e is not None for e in entries), dtype=bool, count=len(entries))
    if has.any():
        values = np.array([e for e in entries if e is not None], dtype=dtype)
        into[np.ix_(np.flatnonzero(has), columns)] = values[:, : len(columns)]
        if flag is not None:
            into[has, flag] = 1
    return has


def _codes(values: Sequence, n: int, uniques: list) -> np.ndarray:
    """Integer codes of the key values of a column (-1: no key, as :func:`_key` says), in
    order of first occurrence; the distinct values are appended to ``uniques``."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if arr.dtype == object and len(arr) and pd.api.types.infer_dtype(arr, skipna=True) == "string":
        # Strings, None and NaN only (the usual id column): pandas factorises it in C, the
        # missing values as -1 as _key says.
        codes, found = pd.factorize(arr, use_na_sentinel=True)
        found = found.tolist()
        if set(map(type, found)) <= {str}:  # not a str subclass (np.str_ is no key to _key)
            uniques += found
            return codes.astype(np.int64, copy=False)
    index: dict = {}
    codes = np.full(n, -1, dtype=np.int64)
    for i, v in enumerate(values):
        t = type(v)
        if v is None or t not in _KEY_TYPES or (t is float and v != v):
            continue
        c = index.get(v)
        if c is None:
            c = index[v] = len(index)
            uniques.append(v)
        codes[i] = c
    return codes


def _binary_kl(r: float, b: float) -> float:
    """KL divergence between Bernoulli(r) and Bernoulli(b), in nats."""
    r = min(max(r, _EPS), 1.0 - _EPS)
    b = min(max(b, _EPS), 1.0 - _EPS)
    return r * math.log(r / b) + (1.0 - r) * math.log((1.0 - r) / (1.0 - b))


def _key(x: dict, field: Hashable) -> Hashable | None:
    v = x.get(field)
    # Only plain scalars are keys: anything else is bad input, which the estimator refuses.
    if v is None or type(v) not in _KEY_TYPES or (type(v) is float and v != v):
        return None
    return v


class PoisoningDefence(base.Base):
    """Trusted sample weights for an online CTR model under poisoning and click fraud.

    See the module docstring for the three signals. Pass it as
    ``CTRClassifier(defence=PoisoningDefence(...))``: the estimator keeps a fresh clone
    (``model.defence_``), so the object you pass is never mutated.

    Parameters
    ----------
    user_field
        Field naming the sender of an event (a user, device or cookie id); events without
        it are never newcomers and have no share budget. None switches signals 1 and 2 off.
    item_fields
        Fields whose newcomer label rate is watched (items, ads, campaigns). None or empty: off.
    min_history
        Events a sender must have sent before it is established.
    min_age
        Events *from other senders* since a sender's first before it is established: one id
        sending a burst stays a newcomer for as long as the burst lasts.
    alarm_nats
        Evidence, in nats, for a key's newcomer label rate to be anomalous: 6.9 is a
        binomial tail probability of about 1e-3 (the default, which flagged 2 events of
        12,000 on the clean synthetic stream; 9.2 flags none there but lets a bot farm
        through for longer, 4.6 flags 38).
    prior_strength
        Pseudo-events at the population's label rate added to a key's established counts.
    flagged_weight
        Factor of the weight of a newcomer event that pushes an anomalous key further.
    warmup
        Events before any key can be flagged: at the start of a stream every sender is new.
    half_life
        Half-life, in events, of the per-key counts and the population's label rate.
    max_share
        Largest share of the recent granted weight one sender may hold (None: no budget).
    burst_allowance
        Weight every sender may have on top of its share.
    share_half_life
        Half-life, in events, of the granted weights of the share budget.
    max_logit_gradient
        Bound on ``|p - y| * w`` per event (None: no clip). Needs the model's prediction,
        which the estimator computes (one extra forward pass per event).
    max_keys
        Entries kept per table (senders' histories, keys' counts, senders' budgets).

    Attributes
    ----------
    n_seen_
        Events assessed.
    n_flagged_
        Events down-weighted by the newcomer anomaly test.
    n_limited_
        Events whose weight the share budget cut.
    n_clipped_
        Events whose weight the gradient clip cut.
    weight_removed_
        Total sample weight taken away.

    """

    def __init__(
        self,
        user_field: Hashable | None = "user_id",
        item_fields: Sequence[Hashable] | None = ("item_id",),
        min_history: int = 5,
        min_age: int = 100,
        alarm_nats: float = 6.9,
        prior_strength: float = 20.0,
        flagged_weight: float = 0.0,
        warmup: int = 1000,
        half_life: float = 20_000.0,
        max_share: float | None = 0.5,
        burst_allowance: float = 20.0,
        share_half_life: float = 500.0,
        max_logit_gradient: float | None = None,
        max_keys: int = 20_000,
    ) -> None:
        if min_history < 1:
            raise ValueError(f"min_history must be >= 1, got {min_history!r}")
        if min_age < 0:
            raise ValueError(f"min_age must be >= 0, got {min_age!r}")
        if not alarm_nats > 0:
            raise ValueError(f"alarm_nats must be > 0, got {alarm_nats!r}")
        if not prior_strength > 0:
            raise ValueError(f"prior_strength must be > 0, got {prior_strength!r}")
        if not 0 <= flagged_weight <= 1:
            raise ValueError(f"flagged_weight must be in [0, 1], got {flagged_weight!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup!r}")
        if not half_life > 0 or not share_half_life > 0:
            raise ValueError(f"half_life and share_half_life must be > 0, got {half_life!r}, {share_half_life!r}")
        if max_share is not None and not 0 < max_share <= 1:
            raise ValueError(f"max_share must be in (0, 1] or None, got {max_share!r}")
        if not burst_allowance >= 0:
            raise ValueError(f"burst_allowance must be >= 0, got {burst_allowance!r}")
        if max_logit_gradient is not None and not 0 < max_logit_gradient <= 1:
            raise ValueError(f"max_logit_gradient must be in (0, 1] or None, got {max_logit_gradient!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be >= 1, got {max_keys!r}")
        self.user_field = user_field
        # None rather than (): river's parameter handling cannot take an empty tuple.
        self.item_fields = tuple(item_fields) if item_fields else None
        self.min_history = min_history
        self.min_age = min_age
        self.alarm_nats = alarm_nats
        self.prior_strength = prior_strength
        self.flagged_weight = flagged_weight
        self.warmup = warmup
        self.half_life = half_life
        self.max_share = max_share
        self.burst_allowance = burst_allowance
        self.share_half_life = share_half_life
        self.max_logit_gradient = max_logit_gradient
        self.max_keys = max_keys

        # sender -> (events sent, clock at its first event) (LRU)
        self._history: collections.OrderedDict = collections.OrderedDict()
        # (field, value) -> [newcomer events, newcomer label sum, established events, established label sum, t]
        self._keys: collections.OrderedDict = collections.OrderedDict()
        # sender -> [granted weight, t]
        self._granted: collections.OrderedDict = collections.OrderedDict()
        # population: [events, label sum, t] (decayed) and [granted weight, t] (decayed)
        self._population = [0.0, 0.0, 0.0]
        self._total_granted = [0.0, 0.0]
        self.n_seen_ = 0
        self.n_flagged_ = 0
        self.n_limited_ = 0
        self.n_clipped_ = 0
        self.weight_removed_ = 0.0

    @property
    def needs_prediction(self) -> bool:
        """Whether :meth:`DefenceTransaction.weigh` needs the model's ``p`` (the gradient clip)."""
        return self.max_logit_gradient is not None

    def transaction(self) -> DefenceTransaction:
        """A pending batch of assessments that changes this defence only on ``commit()``."""
        return DefenceTransaction(self)

    def learn_defended(
        self, x: dict, label: float, weight: float, step: Callable[[float], None], predict: Callable[[], float] | None = None
    ) -> None:
        """Run ``step(trusted weight)`` (an estimator's learning step) for one event, then
        commit the assessment: a step that raises (bad input) leaves the defence as it was.
        ``predict`` gives the model's P(y = 1), asked for only when the gradient clip is on."""
        txn = self.transaction()
        p = predict() if predict is not None and self.needs_prediction else None
        step(txn.weigh(x, label, weight, p))
        txn.commit()

    def learn_frame_defended(
        self,
        X: pd.DataFrame,
        labels: Sequence[float],
        weights: Sequence[float],
        step: Callable[[Sequence[float]], None],
        predict: Callable[[], Sequence[float]] | None = None,
    ) -> None:
        """:meth:`learn_defended` for a frame: ``step`` gets the trusted weight of each row."""
        txn = self.transaction()
        trusted = txn.weigh_frame(
            _column(X[self.user_field]) if self.user_field in X.columns else None,
            {f: _column(X[f]) for f in self.item_fields or () if f in X.columns},
            labels if isinstance(labels, np.ndarray) else list(labels),
            weights if isinstance(weights, np.ndarray) else list(weights),
            list(predict()) if predict is not None and self.needs_prediction else None,
        )
        step(trusted)
        txn.commit()

    def learn(self, x: dict, label: float, weight: float = 1.0, p: float | None = None) -> float:
        """Assess one event and commit it at once; returns the trusted weight."""
        txn = self.transaction()
        w = txn.weigh(x, label, weight, p)
        txn.commit()
        return w

    def flagged(self) -> list[tuple[Hashable, Hashable, float]]:
        """``(field, value, nats)`` of every key whose newcomer label rate is anomalous now, worst first."""
        txn = self.transaction()
        p0 = txn.population_rate()
        out = []
        for (field, value), entry in self._keys.items():
            f = txn._decay(entry[4], self.half_life)
            nats = txn.surprise(entry[0] * f, entry[1] * f, entry[2] * f, entry[3] * f, p0)
            if nats > self.alarm_nats:
                out.append((field, value, nats))
        return sorted(out, key=lambda t: -t[2])


class DefenceTransaction:
    """Assessments of one ``learn_one`` or ``learn_many`` call, applied by :meth:`commit`.

    Later events of the same call see the effect of earlier ones (an overlay over the
    defence's tables), and nothing reaches the defence until the estimator's step has
    gone through, so an event refused as bad input leaves the defence as it was.
    """

    __slots__ = ("d", "t", "history", "keys", "granted", "population", "total_granted", "counts", "removed")

    def __init__(self, defence: PoisoningDefence) -> None:
        self.d = defence
        self.t = defence.n_seen_
        self.history: dict = {}
        self.keys: dict = {}
        self.granted: dict = {}
        self.population = list(defence._population)
        self.total_granted = list(defence._total_granted)
        self.counts = [0, 0, 0]  # flagged, limited, clipped
        self.removed = 0.0

    # ---------------------------------------------------------------- helpers

    def _decay(self, t_last: float, half_life: float) -> float:
        return 2.0 ** (-(self.t - t_last) / half_life) if self.t != t_last else 1.0

    def population_rate(self) -> float:
        n, s, t_last = self.population
        f = self._decay(t_last, self.d.half_life)
        # One pseudo-event at 0.5 keeps the rate defined (and cautious) on an empty stream.
        return (s * f + 0.5) / (n * f + 1.0)

    def baseline(self, n_old: float, c_old: float, p0: float) -> float:
        """A key's established label rate, shrunk toward the population's ``p0``."""
        k = self.d.prior_strength
        return (c_old + k * p0) / (n_old + k)

    def surprise(self, n_new: float, c_new: float, n_old: float, c_old: float, p0: float) -> float:
        """Nats of evidence that the newcomer rate ``c_new / n_new`` is not the baseline's."""
        if n_new <= 0:
            return 0.0
        return n_new * _binary_kl(c_new / n_new, self.baseline(n_old, c_old, p0))

    # ----------------------------------------------------------------- assess

    def weigh(self, x: Any, label: float, weight: float, p: float | None = None) -> float:
        """The trusted weight of one event (``label`` in [0, 1], ``p`` the model's prediction)."""
        # One function with the helpers inlined (this runs once per learned event); the
        # arithmetic is theirs, in their order: _decay, population_rate, baseline, surprise.
        d = self.d
        self.t = t = self.t + 1
        if not isinstance(x, dict):
            return weight  # the estimator refuses it; nothing here is committed then
        w = weight
        user = None
        if d.user_field is not None:
            user = x.get(d.user_field)
            if user is not None and (type(user) not in _KEY_TYPES or (type(user) is float and user != user)):
                user = None
        newcomer = False
        if user is not None:
            history = self.history
            entry = history.pop(user, None)  # overlays keep last-touch order, as the LRU tables do
            if entry is None:
                entry = d._history.get(user) or (0, t)
            count, first = entry
            # Age counts the others' events since the sender's first: a burst does not age its sender.
            newcomer = count < d.min_history or (t - first) - count < d.min_age
            history[user] = (count + 1, first)

        n, s, t_last = self.population
        half_life = d.half_life
        f = 2.0 ** (-(t - t_last) / half_life) if t != t_last else 1.0
        if d.item_fields:
            # Tested against the population's rate before this event.
            factor = self._newcomer_anomaly(x, label, newcomer, (s * f + 0.5) / (n * f + 1.0))
            if factor < 1.0:
                self.counts[0] += 1
                w *= factor
        self.population = [n * f + 1.0, s * f + label, t]

        if user is not None and d.max_share is not None:
            w = self._share_budget(user, w)
        if d.max_logit_gradient is not None and p is not None:
            g = abs(p - label) * w
            if g > d.max_logit_gradient:
                w = d.max_logit_gradient / abs(p - label)
                self.counts[2] += 1
        self.removed += weight - w
        return w

    def _newcomer_anomaly(self, x: dict, label: float, newcomer: bool, p0: float) -> float:
        d = self.d
        t, half_life, keys, saved = self.t, d.half_life, self.keys, d._keys
        prior = d.prior_strength
        factor = 1.0
        for field in d.item_fields:
            value = x.get(field)
            if value is None or type(value) not in _KEY_TYPES or (type(value) is float and value != value):
                continue
            key = (field, value)
            entry = keys.pop(key, None)
            if entry is None:
                entry = saved.get(key)
            if entry is None:
                n_new = c_new = n_old = c_old = 0.0
            else:
                t_last = entry[4]
                f = 2.0 ** (-(t - t_last) / half_life) if t != t_last else 1.0
                n_new, c_new, n_old, c_old = entry[0] * f, entry[1] * f, entry[2] * f, entry[3] * f
            if newcomer:
                n_new, c_new = n_new + 1.0, c_new + label
                if t > d.warmup and n_new > 0:
                    baseline = (c_old + prior * p0) / (n_old + prior)
                    nats = n_new * _binary_kl(c_new / n_new, baseline)
                    if nats > d.alarm_nats:
                        # Only events pushing the rate further the anomalous way lose weight.
                        if (label - baseline) * (c_new / n_new - baseline) > 0:
                            factor = min(factor, d.flagged_weight)
            else:
                n_old, c_old = n_old + 1.0, c_old + label
            keys[key] = (n_new, c_new, n_old, c_old, t)
        return factor

    def _share_budget(self, user: Hashable, w: float) -> float:
        d = self.d
        t, half_life = self.t, d.share_half_life
        entry = self.granted.pop(user, None)
        if entry is None:
            entry = d._granted.get(user)
        if entry is None:
            g = 0.0
        else:
            g = entry[0] * (2.0 ** (-(t - entry[1]) / half_life) if t != entry[1] else 1.0)
        total, t_last = self.total_granted
        total *= 2.0 ** (-(t - t_last) / half_life) if t != t_last else 1.0
        cap = d.max_share * total + d.burst_allowance
        granted = min(w, max(0.0, cap - g))
        if granted < w:
            self.counts[1] += 1
        self.granted[user] = (g + granted, t)
        self.total_granted = [total + granted, t]
        return granted

    def weigh_frame(
        self, users: Sequence | None, items: dict, labels: Sequence[float], weights: Sequence[float],
        probas: Sequence[float] | None = None,
    ) -> list[float]:
        """Trusted weights of the rows of a frame, given its columns as lists."""
        d = self.d
        fields = [f for f in d.item_fields or () if f in items]
        if users is None and not fields and (probas is None or d.max_logit_gradient is None):
            self._advance(labels)  # nothing to weigh: only the clock and the population move
            return list(weights)
        if len(labels) >= _COMPILED_FRAME and _kernels.available():
            return self._weigh_frame_compiled(users, {f: items[f] for f in fields}, labels, weights, probas)
        out = []
        for i, (label, w) in enumerate(zip(labels, weights)):
            x = {f: items[f][i] for f in fields}
            if users is not None:
                x[d.user_field] = users[i]
            out.append(self.weigh(x, float(label), float(w), None if probas is None else float(probas[i])))
        return out

    def _weigh_frame_compiled(
        self, users: Sequence | None, items: dict, labels: Sequence[float], weights: Sequence[float],
        probas: Sequence[float] | None,
    ) -> list[float]:
        """:meth:`weigh_frame` as one compiled loop over integer codes of the senders and keys
        (:func:`river_torchrec._kernels_impl.defence_frame`): the same arithmetic in the same
        order, so the same weights bit for bit, and the overlays end in the same order."""
        from river_torchrec._kernels_impl import defence_frame

        d, n = self.d, len(labels)
        if d.user_field is None:
            users = None  # weigh ignores the sender then
        elif users is not None and d.user_field in items:
            items = {**items, d.user_field: users}  # weigh's x holds the sender's value there
        user_keys: list = []
        ucode = _codes(users, n, user_keys) if users is not None else np.full(n, -1, dtype=np.int64)
        user_int = np.zeros((len(user_keys), 5), dtype=np.int64)
        user_float = np.zeros((len(user_keys), 3), dtype=np.float64)
        _fill(_entries(self.history, d._history, user_keys), user_int, [0, 1], 3, np.int64)
        _fill(_entries(self.granted, d._granted, user_keys), user_float, [0, 1], 2, np.float64)
        fields = list(items)
        keys: list = []
        kcode = np.full((len(fields), n), -1, dtype=np.int64)
        field_of: list[int] = []
        for fi, field in enumerate(fields):
            values: list = []
            codes = _codes(items[field], n, values)
            kcode[fi] = np.where(codes >= 0, codes + len(keys), -1)
            keys += [(field, v) for v in values]
            field_of += [fi] * len(values)
        key_state = np.zeros((len(keys), 5), dtype=np.float64)  # the 5th column: t, for key_int
        key_int = np.zeros((len(keys), 3), dtype=np.int64)
        has = _fill(_entries(self.keys, d._keys, keys), key_state, [0, 1, 2, 3, 4], None, np.float64)
        key_int[:, 0], key_int[:, 1] = key_state[:, 4], has
        key_state = np.ascontiguousarray(key_state[:, :4])
        pop_n, pop_s, pop_t = self.population
        tot_g, tot_t = self.total_granted
        scalars = np.array([self.t, pop_n, pop_s, pop_t, tot_g, tot_t, self.removed], dtype=np.float64)
        counts = np.zeros(3, dtype=np.int64)
        params = np.array(
            [d.min_history, d.min_age, d.warmup, d.half_life, d.alarm_nats, d.prior_strength, d.flagged_weight,
             -1.0 if d.max_share is None else d.max_share, d.burst_allowance, d.share_half_life,
             -1.0 if d.max_logit_gradient is None else d.max_logit_gradient],
            dtype=np.float64,
        )
        out = np.empty(n, dtype=np.float64)
        defence_frame(
            ucode, kcode, np.asarray(labels, dtype=np.float64), np.asarray(weights, dtype=np.float64),
            np.zeros(0) if probas is None else np.asarray(probas, dtype=np.float64),
            user_int, user_float, key_state, key_int, scalars, counts, params, out,
        )
        # Into the overlays in the order of the rows' last touch, as one weigh per row leaves
        # them: every sender and key of the frame was touched.
        order = np.argsort(user_int[:, 4], kind="stable")
        users_in_order = [user_keys[u] for u in order.tolist()]
        _overlay(self.history, users_in_order, zip(user_int[order, 0].tolist(), user_int[order, 1].tolist()))
        if d.max_share is not None:
            _overlay(self.granted, users_in_order, zip(user_float[order, 0].tolist(), _clock_ints(user_float[order, 1])))
        if keys:
            order = np.argsort(key_int[:, 2] * len(fields) + np.asarray(field_of, dtype=np.int64), kind="stable")
            state = key_state[order].T.tolist()
            _overlay(self.keys, [keys[k] for k in order.tolist()], zip(*state, key_int[order, 0].tolist()))
        self.t = int(scalars[0])
        self.population = [float(scalars[1]), float(scalars[2]), int(scalars[3])]
        if user_keys and d.max_share is not None:
            self.total_granted = [float(scalars[4]), int(scalars[5])]
        self.removed = float(scalars[6])
        for j in range(3):
            self.counts[j] += int(counts[j])
        return out.tolist()

    def _advance(self, labels: Sequence[float]) -> None:
        """Count ``labels`` as events that no signal applies to (closed form of one step per event)."""
        d, k = self.d, len(labels)
        if not k:
            return
        n, s, t_last = self.population
        ages = np.arange(k - 1, -1, -1, dtype=np.float64)
        decay = np.exp2(-ages / d.half_life)
        f = 2.0 ** (-(self.t + k - t_last) / d.half_life)
        self.population = [n * f + float(decay.sum()), s * f + float(decay @ np.asarray(labels, dtype=np.float64)), self.t + k]
        self.t += k

    # ----------------------------------------------------------------- commit

    def commit(self) -> None:
        """Write the assessments into the defence (tables stay within ``max_keys``)."""
        d = self.d
        for table, changes in ((d._history, self.history), (d._keys, self.keys), (d._granted, self.granted)):
            if not changes:
                continue
            # The changed keys last, in the overlay's order: a set and a move_to_end each, or,
            # for a frame's many, the ones already there removed and all appended in one update.
            if len(changes) > 8:
                for key in changes.keys() & table.keys():
                    del table[key]
                table.update(changes)
            else:
                for key, value in changes.items():
                    table[key] = value
                    table.move_to_end(key)
            for _ in range(len(table) - d.max_keys):
                table.popitem(last=False)
        d._population = self.population
        d._total_granted = self.total_granted
        d.n_seen_ = self.t
        d.n_flagged_ += self.counts[0]
        d.n_limited_ += self.counts[1]
        d.n_clipped_ += self.counts[2]
        d.weight_removed_ += self.removed


def resolve_defence(defence: PoisoningDefence | str | None) -> PoisoningDefence | None:
    """The live defence of an estimator's ``defence`` parameter: ``"default"`` is a fresh
    ``PoisoningDefence()``, a ``PoisoningDefence`` is cloned (the parameter stays pristine),
    None is no defence."""
    if isinstance(defence, str) and defence == "default":
        return PoisoningDefence()
    if isinstance(defence, PoisoningDefence):
        return defence.clone()
    if defence is None:
        return None
    raise TypeError(f"defence must be a PoisoningDefence, 'default' or None, got {defence!r}")
