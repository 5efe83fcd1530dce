"""Online mixtures of classifiers on log loss, with the Bayes-mixture regret bound.

An :class:`OnlineMixture` predicts the weighted average of its members' probabilities and,
after each label, multiplies every member's weight by the probability it gave that label
(Bayes' rule over "which member is right"). Its cumulative log loss is then never more than
``log(N)`` above its best member's, whatever the stream, so a mixture of a running click
rate and a learned model does no harm where the model overfits and keeps the model where it
learns. :class:`RunningPrior` is that click rate.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd
from river import base

from river_torchrec import _auto_kernels
from river_torchrec.labels import binary_label, frame_weights, sample_weight

__all__ = ["OnlineMixture", "RunningPrior"]

_P_MIN = 1e-15  # as river's LogLoss clips


class RunningPrior(base.MiniBatchClassifier):
    r"""The running click rate, ignoring every feature: the baseline a CTR model must beat.

    It predicts :math:`(c + a) / (n + 2a)` after :math:`c` clicks in :math:`n` events
    (weighted counts). With the default :math:`a = 1/2` (the Krichevsky-Trofimov
    estimator) its cumulative log loss exceeds that of the best constant rate chosen in
    hindsight by at most :math:`\tfrac12 \log n + \log 2`.

    Parameters
    ----------
    prior_count
        Pseudo-count :math:`a` added to both clicks and non-clicks (> 0).

    Examples
    --------
    >>> from river_torchrec.mixture import RunningPrior
    >>> prior = RunningPrior()
    >>> prior.predict_proba_one({})[True]
    0.5
    >>> for y in (True, False, False, False):
    ...     prior.learn_one({"user": "ann"}, y)
    >>> prior.predict_proba_one({"anything": 1.0})[True]  # (1 + 0.5) / (4 + 1)
    0.3

    """

    def __init__(self, prior_count: float = 0.5) -> None:
        if not (isinstance(prior_count, (int, float)) and math.isfinite(prior_count) and prior_count > 0):
            raise ValueError(f"prior_count must be a finite number > 0, got {prior_count!r}")
        self.prior_count = prior_count
        self.clicks_ = 0.0
        self.n_ = 0.0

    @property
    def _multiclass(self) -> bool:
        return False

    @property
    def rate(self) -> float:
        a = self.prior_count
        return (self.clicks_ + a) / (self.n_ + 2 * a)

    def learn_one(self, x: dict, y: base.typing.ClfTarget, w: float = 1.0) -> None:
        label, weight = binary_label(y), sample_weight(w)
        self.clicks_ += weight * label
        self.n_ += weight

    def predict_proba_one(self, x: dict) -> dict[Hashable, float]:
        p = self.rate
        return {False: 1.0 - p, True: p}

    def learn_many(self, X: pd.DataFrame, y: pd.Series, w: pd.Series | float = 1.0) -> None:
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        labels = np.array([binary_label(v) for v in y.tolist()])
        weights = np.asarray(frame_weights(w, len(X)), dtype=np.float64)
        self.clicks_ += float(weights @ labels)
        self.n_ += float(weights.sum())

    def predict_proba_many(self, X: pd.DataFrame) -> pd.DataFrame:
        p = self.rate
        return pd.DataFrame({False: 1.0 - p, True: p}, index=X.index, columns=[False, True])


class OnlineMixture(base.MiniBatchClassifier):
    r"""An exponentially weighted (Bayesian) mixture of binary classifiers on log loss.

    Member :math:`i` predicts :math:`p_{i,t}` for event :math:`t`; the mixture predicts

    .. math::
        p_t = \sum_i \pi_{i,t} \, p_{i,t}, \qquad
        \pi_{i,t+1} \propto \pi_{i,t} \, p_{i,t}(y_t)^{w_t}

    with :math:`p_{i,t}(y)` the probability member :math:`i` gave the label that came and
    :math:`w_t` the sample weight, starting from uniform :math:`\pi_{i,1} = 1/N`. Then, for
    every member :math:`j` and every stream (no assumption at all),

    .. math::
        \sum_t -w_t \log p_t(y_t) \;\le\; \sum_t -w_t \log p_{j,t}(y_t) + \log N

    because :math:`\prod_t p_t(y_t)^{w_t} \ge \pi_{j,1} \prod_t p_{j,t}(y_t)^{w_t}` for
    unit weights (the mixture's likelihood is an average of the members'). The average
    log loss of the mixture is therefore within :math:`\log(N)/T` of the best member's.

    With ``share`` :math:`\alpha > 0` (Herbster and Warmuth's fixed share) each update
    also hands a fraction :math:`\alpha` of the weight back evenly, so the mixture can move
    to a member that becomes best later (after a drift) within a few hundred events instead
    of having to pay back the whole lead of the former best; the bound against any single
    member :math:`j` becomes :math:`\log\frac{1}{\pi_{j,1}} + T \log\frac{1}{1-\alpha}`
    (:math:`\log N + T \log\frac{1}{1-\alpha}` from uniform weights).

    That price is paid on every event, also on a stream where one member is best all along.
    With ``baseline`` :math:`b` (a member index) the share goes only where there is
    evidence for it: to the members whose *recent lead* over member :math:`b` exceeds
    ``margin`` nats, evenly, or back to :math:`b` when no member leads. The recent lead of
    :math:`j` is :math:`\sum_{s \le t} \lambda^{t-s} w_s (\ell_{b,s} - \ell_{j,s})` with
    :math:`\lambda = 2^{-1/h}` (``half_life`` :math:`h`). On the :math:`k`-th event with a
    leader (:math:`k = 0, 1, \dots`) the rate is :math:`\alpha_t = \max(\alpha, 1/(k+2))`,
    so a member that starts leading takes over within a few events (the decreasing share of
    Koolen and de Rooij), and :math:`\alpha` on the other events. Each step multiplies the
    baseline's weight by at least :math:`1 - \alpha_t` on events with a leader and by at
    least 1 on the others, so

    .. math::
        \sum_t -w_t \log p_t(y_t) \;\le\; \sum_t -w_t \log p_{b,t}(y_t)
        + \log\frac{1}{\pi_{b,1}} + \sum_{t \in A} \log\frac{1}{1-\alpha_t}

    with :math:`A` the events where some member led (:meth:`regret_bound`; the sum is at
    most :math:`\log(|A|+1) + |A| \log\frac{1}{1-\alpha}`). With all the initial weight on
    the baseline and no member ever leading, the mixture *is* the baseline. Against any
    other member :math:`j`, from any event :math:`s` at which it received share, the excess
    is at most :math:`\log\frac{N}{\alpha_s} + \sum_{t > s} \log\frac{1}{1-\alpha_t}`.

    Every member learns every event (``learn_one`` on each); the mixture calls each
    member's ``predict_proba_one`` once per event and reuses it in ``learn_one`` when the
    event is the one just predicted, so progressive validation costs one prediction and
    one step per member.

    Parameters
    ----------
    members
        Binary classifiers with ``predict_proba_one`` and ``learn_one`` (at least one).
    share
        Fixed-share rate :math:`\alpha` in ``[0, 1)``; 0 is the plain Bayes mixture.
    weights
        Initial weights :math:`\pi_1` (non-negative, not all zero; normalised); uniform if None.
    baseline
        None: the share is spread evenly over every member on every event. A member index
        :math:`b`: the share goes to the members leading :math:`b` lately, or to :math:`b`.
    half_life
        ``baseline`` only: half-life, in events, of the recent lead (> 0).
    margin
        ``baseline`` only: the recent lead, in nats, above which a member leads (>= 0).

    Attributes
    ----------
    weights_
        The current mixture weights :math:`\pi`, one per member, summing to 1.
    member_losses_
        Each member's cumulative (weighted) log loss on the events learned so far.
    n_learned_
        Events learned so far.
    leads_
        ``baseline`` only: each member's recent lead over the baseline, in nats.
    n_led_
        ``baseline`` only: events on which some member led the baseline.
    share_price_
        ``baseline`` only: :math:`\sum_{t \in A} \log\frac{1}{1-\alpha_t}` so far.

    Examples
    --------
    A member that is confidently wrong loses its weight within a few events:

    >>> import math
    >>> from river_torchrec.mixture import OnlineMixture, RunningPrior
    >>> class AlwaysNo:
    ...     def predict_proba_one(self, x):
    ...         return {False: 0.99, True: 0.01}
    ...     def learn_one(self, x, y, w=1.0):
    ...         pass
    >>> mix = OnlineMixture([RunningPrior(), AlwaysNo()])
    >>> for t in range(20):
    ...     x, y = {"t": float(t)}, t % 2 == 0
    ...     _ = mix.predict_proba_one(x)
    ...     mix.learn_one(x, y)
    >>> [round(w, 6) for w in mix.weights_]
    [1.0, 0.0]
    >>> mix.regret_bound() == math.log(2)
    True

    """

    def __init__(
        self,
        members: Sequence,
        share: float = 0.0,
        weights: Sequence[float] | None = None,
        baseline: int | None = None,
        half_life: float = 500.0,
        margin: float = 1.0,
    ) -> None:
        members = list(members)
        if not members:
            raise ValueError("members must hold at least one classifier")
        for m in members:
            if not (hasattr(m, "predict_proba_one") and hasattr(m, "learn_one")):
                raise TypeError(f"member {m!r} has no predict_proba_one/learn_one")
        if not (isinstance(share, (int, float)) and 0 <= share < 1):
            raise ValueError(f"share must be a number in [0, 1), got {share!r}")
        n = len(members)
        if weights is None:
            init = [1.0 / n] * n
        else:
            init = [float(v) for v in weights]
            if len(init) != n or not all(math.isfinite(v) and v >= 0 for v in init) or not sum(init) > 0:
                raise ValueError(f"weights must be {n} finite numbers >= 0, not all 0, got {weights!r}")
            total = sum(init)
            init = [v / total for v in init]
        if baseline is not None and not (isinstance(baseline, int) and 0 <= baseline < n):
            raise ValueError(f"baseline must be None or a member index in [0, {n}), got {baseline!r}")
        if not (isinstance(half_life, (int, float)) and half_life > 0 and math.isfinite(half_life)):
            raise ValueError(f"half_life must be a finite number > 0, got {half_life!r}")
        if not (isinstance(margin, (int, float)) and margin >= 0 and math.isfinite(margin)):
            raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
        self.members = members
        self.share = share
        self.weights = weights
        self.baseline = baseline
        self.half_life = half_life
        self.margin = margin
        self._init = init
        self._decay = 0.5 ** (1.0 / half_life)
        # The whole state in one float64 array (weights, log-weights, losses, leads, then the
        # event counts and the share's price), so that one compiled call can update it.
        self._state = np.zeros(4 * n + 3)
        self._w = init
        self._last: tuple[dict, dict, list[float]] | None = None

    # ------------------------------------------------------------ state views

    @property
    def _w(self) -> list[float]:
        return self._state[: len(self.members)].tolist()

    @_w.setter
    def _w(self, w: Sequence[float]) -> None:
        n = len(self.members)
        self._state[:n] = w
        with np.errstate(divide="ignore"):
            self._state[n : 2 * n] = np.log(self._state[:n])

    @property
    def _log_w(self) -> list[float]:
        n = len(self.members)
        return self._state[n : 2 * n].tolist()

    @property
    def member_losses_(self) -> list[float]:
        n = len(self.members)
        return self._state[2 * n : 3 * n].tolist()

    @member_losses_.setter
    def member_losses_(self, losses: Sequence[float]) -> None:
        n = len(self.members)
        self._state[2 * n : 3 * n] = losses

    @property
    def leads_(self) -> list[float]:
        n = len(self.members)
        return self._state[3 * n : 4 * n].tolist()

    @leads_.setter
    def leads_(self, leads: Sequence[float]) -> None:
        n = len(self.members)
        self._state[3 * n : 4 * n] = leads

    @property
    def n_learned_(self) -> int:
        return int(self._state[4 * len(self.members)])

    @n_learned_.setter
    def n_learned_(self, n_events: int) -> None:
        self._state[4 * len(self.members)] = n_events

    @property
    def n_led_(self) -> int:
        return int(self._state[4 * len(self.members) + 1])

    @n_led_.setter
    def n_led_(self, n_events: int) -> None:
        self._state[4 * len(self.members) + 1] = n_events

    @property
    def share_price_(self) -> float:
        return float(self._state[4 * len(self.members) + 2])

    @share_price_.setter
    def share_price_(self, price: float) -> None:
        self._state[4 * len(self.members) + 2] = price

    @property
    def _multiclass(self) -> bool:
        return False

    @property
    def weights_(self) -> list[float]:
        return list(self._w)

    def regret_bound(self, n_events: float | None = None) -> float:
        r"""The bound on the mixture's cumulative log loss minus a member's.

        Without ``baseline``: against every member, after ``n_events`` (default: the events
        learned so far), :math:`\log\frac{1}{\min_j \pi_{j,1}} + T \log\frac{1}{1-\alpha}`
        (:math:`\log N + \dots` from uniform weights). With ``baseline``: against the
        baseline, on the events learned so far, :math:`\log\frac{1}{\pi_{b,1}}` plus
        :attr:`share_price_` (``n_events`` is then refused: the price depends on the stream).
        """
        if self.baseline is not None:
            if n_events is not None:
                raise ValueError("with a baseline the bound depends on the stream: call regret_bound() without n_events")
            return -math.log(self._init[self.baseline]) + self.share_price_
        t = self.n_learned_ if n_events is None else n_events
        smallest = min(self._init)
        first = -math.log(smallest) if smallest > 0 else math.inf
        return first + (t * -math.log1p(-self.share) if self.share else 0.0)

    @classmethod
    def _unit_test_params(cls):
        from river import linear_model

        yield {"members": [RunningPrior(), linear_model.LogisticRegression()]}
        yield {"members": [RunningPrior(), linear_model.LogisticRegression()], "share": 0.01}
        yield {
            "members": [RunningPrior(), linear_model.LogisticRegression()], "share": 0.01, "weights": [1, 0],
            "baseline": 0, "half_life": 50, "margin": 0.5,
        }

    def _unit_test_skips(self) -> set[str]:
        return {
            # The weights follow each event's members' probabilities: a frame is mixed with
            # the weights it started with, which one event at a time cannot reproduce.
            "check_learn_many_matches_learn_one",
        }

    # ---------------------------------------------------------------- one event

    def _member_probas(self, x: dict) -> list[float]:
        return [min(max(float(m.predict_proba_one(x).get(True, 0.0)), 0.0), 1.0) for m in self.members]

    def predict_proba_one(self, x: dict) -> dict[Hashable, float]:
        probas = self._member_probas(x)
        # Kept for learn_one: progressive validation learns the event it just predicted.
        self._last = (x, dict(x), probas)
        p = min(max(sum(w * q for w, q in zip(self._w, probas)), 0.0), 1.0)
        return {False: 1.0 - p, True: p}

    def learn_one(self, x: dict, y: base.typing.ClfTarget, w: float = 1.0) -> None:
        label, weight = binary_label(y), sample_weight(w)
        last, self._last = self._last, None
        if last is not None and last[0] is x and last[1] == x:
            probas = last[2]
        else:
            probas = self._member_probas(x)  # raises on bad features before anything learns
        for m in self.members:
            if weight == 1.0:
                m.learn_one(x, y)
            else:
                m.learn_one(x, y, weight)
        self._update_one(probas, label, weight)

    def _update_one(self, probas: list[float], label: float, weight: float) -> None:
        kernel = _auto_kernels.mix_kernel()
        if kernel is not None:
            b = self.baseline
            kernel(self._state, np.asarray(probas, dtype=np.float64), label, weight, self.share, self._decay,
                   self.margin, -1 if b is None else b)
            return
        self._update_python(probas, label, weight)

    def _update_python(self, probas: list[float], label: float, weight: float) -> None:
        """:meth:`_update_one` without numba; the compiled one (:mod:`river_torchrec._auto_kernels`)
        does the same arithmetic in the same order."""
        n = len(probas)
        state = self._state
        log, exp = math.log, math.exp
        if label > 0.5:
            losses = [-log(q if q > _P_MIN else _P_MIN) * weight for q in probas]
        else:
            losses = [-log(1.0 - q if 1.0 - q > _P_MIN else _P_MIN) * weight for q in probas]
        log_w = [a - b for a, b in zip(state[n : 2 * n].tolist(), losses)]
        top = max(log_w)
        norm = top + log(sum([exp(a - top) for a in log_w]))
        w = [exp(a - norm) for a in log_w]
        rate, target = self._share_target(losses)
        if rate:
            keep = 1.0 - rate
            if target is None:
                spread = rate / n
                w = [keep * v + spread for v in w]
            else:
                w = [keep * v for v in w]
                for i in target:
                    w[i] += rate / len(target)
        state[:n] = w
        state[n : 2 * n] = [log(v) if v > 0 else -math.inf for v in w]
        state[2 * n : 3 * n] += losses
        state[4 * n] += 1

    def _share_target(self, losses: list[float]) -> tuple[float, list[int] | None]:
        """This event's share rate and the members it goes to (None: all, evenly)."""
        b = self.baseline
        if b is None:
            return self.share, None
        n = len(losses)
        state = self._state
        decay, ref = self._decay, losses[b]
        leads = [decay * a + (ref - l) for a, l in zip(state[3 * n : 4 * n].tolist(), losses)]
        state[3 * n : 4 * n] = leads
        margin = self.margin
        target = [i for i, a in enumerate(leads) if i != b and a > margin]
        if not target:
            return self.share, [b]
        rate = max(self.share, 1.0 / (state[4 * n + 1] + 2))
        state[4 * n + 1] += 1
        state[4 * n + 2] += -math.log1p(-rate)
        return rate, target

    def _update(self, probas: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> None:
        """The updates of :meth:`_update_one` for rows of member probabilities, in order."""
        for row, label, weight in zip(probas.tolist(), labels.tolist(), weights.tolist()):
            self._update_one(row, label, weight)

    # ---------------------------------------------------------------- frames

    def _member_frame(self, X: pd.DataFrame) -> np.ndarray:
        cols = []
        for m in self.members:
            if hasattr(m, "predict_proba_many"):
                cols.append(m.predict_proba_many(X)[True].to_numpy(dtype=float))
            else:
                cols.append(np.array([m.predict_proba_one(x).get(True, 0.0) for x in X.to_dict("records")]))
        return np.column_stack(cols) if cols else np.zeros((len(X), 0))

    def predict_proba_many(self, X: pd.DataFrame) -> pd.DataFrame:
        probas = self._member_frame(X)
        p = np.clip(probas @ np.asarray(self._w), 0.0, 1.0)
        return pd.DataFrame({False: 1.0 - p, True: p}, index=X.index, columns=[False, True])

    def learn_many(self, X: pd.DataFrame, y: pd.Series, w: pd.Series | float = 1.0) -> None:
        """Mix the frame with the member predictions made before it, then let every member learn it."""
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        labels = np.array([binary_label(v) for v in y.tolist()])
        weights = np.asarray(frame_weights(w, len(X)), dtype=np.float64)
        if not len(X):
            return
        probas = self._member_frame(X)
        # The running prior accepts any frame, so it learns last: a member that rejects the
        # frame then raises before any member has changed.
        for m in sorted(self.members, key=lambda m: isinstance(m, RunningPrior)):
            if hasattr(m, "learn_many"):
                m.learn_many(X, y, w) if isinstance(w, pd.Series) or w != 1.0 else m.learn_many(X, y)
            else:
                for x, yi, wi in zip(X.to_dict("records"), y.tolist(), weights.tolist()):
                    m.learn_one(x, yi, wi)
        self._update(probas, labels, weights)
        self._last = None
