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
    member becomes :math:`\log N + T \log\frac{1}{1-\alpha}`.

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

    Attributes
    ----------
    weights_
        The current mixture weights :math:`\pi`, one per member, summing to 1.
    member_losses_
        Each member's cumulative (weighted) log loss on the events learned so far.
    n_learned_
        Events learned so far.

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

    def __init__(self, members: Sequence, share: float = 0.0) -> None:
        members = list(members)
        if not members:
            raise ValueError("members must hold at least one classifier")
        for m in members:
            if not (hasattr(m, "predict_proba_one") and hasattr(m, "learn_one")):
                raise TypeError(f"member {m!r} has no predict_proba_one/learn_one")
        if not (isinstance(share, (int, float)) and 0 <= share < 1):
            raise ValueError(f"share must be a number in [0, 1), got {share!r}")
        self.members = members
        self.share = share
        n = len(members)
        self._log_w = [-math.log(n)] * n
        self._w = [1.0 / n] * n
        self.member_losses_ = [0.0] * n
        self.n_learned_ = 0
        self._last: tuple[dict, dict, list[float]] | None = None

    @property
    def _multiclass(self) -> bool:
        return False

    @property
    def weights_(self) -> list[float]:
        return list(self._w)

    def regret_bound(self, n_events: float | None = None) -> float:
        r"""The bound on (mixture's - best member's) cumulative log loss after ``n_events``
        (default: the events learned so far): :math:`\log N + T \log\frac{1}{1-\alpha}`."""
        t = self.n_learned_ if n_events is None else n_events
        return math.log(len(self.members)) + (t * -math.log1p(-self.share) if self.share else 0.0)

    @classmethod
    def _unit_test_params(cls):
        from river import linear_model

        yield {"members": [RunningPrior(), linear_model.LogisticRegression()]}
        yield {"members": [RunningPrior(), linear_model.LogisticRegression()], "share": 0.01}

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
        # Plain floats: for a few members NumPy's per-call overhead would cost more than
        # the arithmetic (this runs once per event).
        losses = [-math.log(max(q if label > 0.5 else 1.0 - q, _P_MIN)) * weight for q in probas]
        log_w = [a - b for a, b in zip(self._log_w, losses)]
        top = max(log_w)
        norm = top + math.log(sum(math.exp(a - top) for a in log_w))
        log_w = [a - norm for a in log_w]
        if self.share:
            keep, spread = 1.0 - self.share, self.share / len(log_w)
            log_w = [math.log(keep * math.exp(a) + spread) for a in log_w]
        self._log_w = log_w
        self._w = [math.exp(a) for a in log_w]
        self.member_losses_ = [a + b for a, b in zip(self.member_losses_, losses)]
        self.n_learned_ += 1

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
