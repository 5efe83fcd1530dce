"""A learning-rate boost, and optionally fresh optimizer moments, when a drift detector fires."""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from river import base as river_base
from river import drift

from river_torchrec.optim.schedulers.base import Scheduler
from river_torchrec.optim.schedulers.constant import Constant

if TYPE_CHECKING:
    from river_torchrec.optim.base import Updater

__all__ = ["DriftAwareLR"]

#: The log loss of a prediction of exactly 0.5: above it, the thresholded prediction is wrong.
LOG_2 = math.log(2.0)

#: Events in the "recent" part of the signal that ``rise_only`` compares with the older
#: part: short next to the thousands of events a detector needs to notice a change in the
#: per-event loss, long enough to average out its noise.
RECENT_WINDOW = 500


class DriftAwareLR(Scheduler):
    r"""Boost the learning rate when a drift detector fires on the progressive loss.

    Every event's loss, computed before the model learns from it (the progressive,
    out-of-sample loss), is fed to ``detector``. When the detector raises an alarm, the
    multiplier jumps to ``boost`` times the ``base`` scheduler's and decays back to it:
    with :math:`n` the number of events observed before a step and :math:`n_a` the number
    observed when the last accepted alarm fired (``drifts_[-1] + 1``),

    .. math::
        m(n) = b(n) \left(1 + (\beta - 1)\, 2^{-(n - n_a) / h}\right)

    where :math:`b(n)` is ``base.multiplier()``, :math:`\beta` is ``boost`` and :math:`h` is
    ``half_life``; before any alarm, :math:`m(n) = b(n)`. The step right after an alarm
    uses :math:`\beta\, b(n)`, and the excess halves every ``half_life`` events. A new
    alarm restarts the curve (boosts do not stack).

    An adaptive updater's state summarises the gradients of the old concept (Adam's second
    moment over about :math:`1/(1-\beta_2) = 1000` steps). With ``reset_moments=True`` an
    alarm also calls ``updater.reset_state()``, so that state is re-estimated from the new
    concept's gradients (Adam's first steps after it getting a full bias correction).

    A two-sided detector such as ADWIN also fires when the loss *falls*: while a fresh
    model learns, or while it recovers from a drift. Neither calls for a larger rate, so
    with ``rise_only=True`` an alarm counts only if the signal has risen. The values fed
    since the detector's previous alarm (river's detectors start afresh after each alarm)
    are split into a recent part, the last ``min(500, k // 2)`` of the ``k`` values, and the
    older rest; the alarm counts if the recent mean is the larger. And alarms raised by
    the ``cooldown`` events that follow an accepted alarm are ignored, so that one drift
    gives one boost. An ignored alarm leaves the multiplier and the updater alone and is
    not recorded in ``drifts_``; the detector is fed all the same (and, like any river
    detector after an alarm, starts afresh).

    Parameters
    ----------
    base
        The scheduler whose multiplier is boosted; :class:`Constant` if None.
    detector
        A river drift detector. ``signal="loss"`` needs a real-valued one
        (``river.base.DriftDetector``); binary detectors such as
        ``river.drift.binary.DDM`` need ``signal="error"``. If None,
        ``river.drift.ADWIN()``, whose default ``delta=0.002`` is chosen by
        ``benchmarks/bench_drift.py``: with ``rise_only``, it raised no alarm on stationary
        streams there, and a larger ``delta`` did.
    signal
        ``"loss"``: the per-event log loss. ``"error"``: whether the prediction, thresholded
        at 0.5, was wrong, recovered from the loss as ``loss > log 2``.
    boost
        Multiplier of ``base`` right after an alarm (>= 1).
    half_life
        Events over which the excess ``boost - 1`` halves (> 0). The defaults, a boost of 8
        halving every 2,000 events, did best in ``benchmarks/bench_drift.py`` among boosts
        of 4 to 16 and half-lives of 1,000 to 5,000 events (tuned with Adam at
        ``lr=0.001``, checked with the default Adagrad at ``lr=0.01``).
    reset_moments
        Whether an alarm resets the updater's state (Adam's moments, AdaGrad's sums).
    cooldown
        Events after an accepted alarm during which alarms are ignored (>= 0).
    rise_only
        Whether to ignore alarms on a fall of the signal.
    max_history
        Most points kept in ``history_`` (>= 2).

    Attributes
    ----------
    drifts_
        Event indices (from 0, in the order observed) of the events whose loss raised an
        accepted alarm.
    history_
        ``(n, m)`` pairs: the multiplier ``m`` used by the step that started at event ``n``.
        Memory is bounded: the stream is cut into buckets of ``stride`` events (1 at first)
        and each bucket keeps only its step with the largest multiplier; whenever more
        than ``max_history`` points are held, ``stride`` doubles and neighbouring buckets
        merge. Boosts therefore stay visible in a plot however long the stream is.
    n_ignored_
        Alarms ignored: on a fall of the signal (with ``rise_only``) or within a cooldown.

    Examples
    --------
    The loss steps up from 0.3 to 0.9 at event 80, and a detector that fires on its 100th
    value stands in for a real one:

    >>> from river import drift
    >>> from river_torchrec.optim.schedulers import DriftAwareLR
    >>> sched = DriftAwareLR(
    ...     detector=drift.DummyDriftDetector(t_0=100), boost=5.0, half_life=50, cooldown=1_000
    ... )
    >>> for i in range(150):
    ...     sched.observe([0.3 if i < 80 else 0.9])
    >>> sched.drifts_
    [99]
    >>> sched.multiplier()  # 50 events after the alarm: 1 + 4 / 2
    3.0

    The multiplier history, as plotted:

    >>> sched.history_[98:102]
    [(98, 1.0), (99, 1.0), (100, 5.0), (101, 4.94...)]

    With a classifier, the scheduler sees the losses of every step:

    >>> from river import evaluate, metrics
    >>> from river_torchrec import CTRClassifier, datasets
    >>> model = CTRClassifier(model="fm", scheduler=DriftAwareLR(), seed=1)
    >>> evaluate.progressive_val_score(
    ...     datasets.SyntheticCTR(n_events=2_000, seed=1), model, metrics.LogLoss()
    ... )
    LogLoss: 0.3...

    """

    def __init__(
        self,
        base: Scheduler | None = None,
        detector: river_base.DriftDetector | river_base.BinaryDriftDetector | None = None,
        signal: Literal["loss", "error"] = "loss",
        boost: float = 8.0,
        half_life: float = 2_000,
        reset_moments: bool = True,
        cooldown: int = 5_000,
        rise_only: bool = True,
        max_history: int = 2_000,
    ) -> None:
        super().__init__()
        if base is not None and not isinstance(base, Scheduler):
            raise TypeError(f"base must be a Scheduler, got {type(base).__name__}")
        if detector is not None and not isinstance(
            detector, (river_base.DriftDetector, river_base.BinaryDriftDetector)
        ):
            raise TypeError(f"detector must be a river drift detector, got {type(detector).__name__}")
        if signal not in ("loss", "error"):
            raise ValueError(f"signal must be 'loss' or 'error', got {signal!r}")
        if signal == "loss" and isinstance(detector, river_base.BinaryDriftDetector):
            raise ValueError(
                f"{type(detector).__name__} is a binary detector: use signal='error' "
                "(it cannot be fed real-valued losses)"
            )
        if not (isinstance(boost, (int, float)) and math.isfinite(boost) and boost >= 1):
            raise ValueError(f"boost must be a finite number >= 1, got {boost!r}")
        if not (isinstance(half_life, (int, float)) and math.isfinite(half_life) and half_life > 0):
            raise ValueError(f"half_life must be a finite number > 0, got {half_life!r}")
        if isinstance(cooldown, bool) or not isinstance(cooldown, int) or cooldown < 0:
            raise ValueError(f"cooldown must be an integer >= 0, got {cooldown!r}")
        if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 2:
            raise ValueError(f"max_history must be an integer >= 2, got {max_history!r}")
        self.base = base if base is not None else Constant()
        self.detector = detector if detector is not None else drift.ADWIN()
        self.signal = signal
        self.boost = boost
        self.half_life = half_life
        self.reset_moments = reset_moments
        self.cooldown = cooldown
        self.rise_only = rise_only
        self.max_history = max_history

        self.drifts_: list[int] = []
        self.history_: list[tuple[int, float]] = []
        self.n_ignored_ = 0
        self._stride = 1
        # The signal since the detector's last alarm: its sum and count, and its last
        # RECENT_WINDOW values (all of them while there are fewer).
        self._recent: collections.deque[float] = collections.deque(maxlen=RECENT_WINDOW)
        self._segment_sum = 0.0
        self._segment_n = 0

    def multiplier(self) -> float:
        m = self.base.multiplier()
        if not self.drifts_:
            return m
        age = self.n_events - (self.drifts_[-1] + 1)
        return m * (1.0 + (self.boost - 1.0) * 0.5 ** (age / self.half_life))

    def observe(self, losses: Sequence[float], updater: Updater | None = None) -> None:
        losses = [float(v) for v in losses]
        for i, v in enumerate(losses):
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"losses must be finite and >= 0, got {v!r} at position {i}")
        # The multiplier the step used, read before anything below moves it.
        self._record(self.n_events, self.multiplier())
        self.base.observe(losses, updater)
        binary = isinstance(self.detector, river_base.BinaryDriftDetector)
        for v in losses:
            index = self.n_events
            self.n_events += 1
            x = v if self.signal == "loss" else float(v > LOG_2)
            self.detector.update(bool(x) if binary else x)
            self._recent.append(x)
            self._segment_sum += x
            self._segment_n += 1
            if not self.detector.drift_detected:
                continue
            rose = self._rose()
            self._recent.clear()
            self._segment_sum, self._segment_n = 0.0, 0
            if (self.rise_only and not rose) or (
                self.drifts_ and index - self.drifts_[-1] <= self.cooldown
            ):
                self.n_ignored_ += 1
                continue
            self.drifts_.append(index)
            if self.reset_moments and updater is not None:
                updater.reset_state()

    def _rose(self) -> bool:
        """Whether the recent part of the segment has a larger mean than the older part."""
        n = self._segment_n
        k = min(len(self._recent), n // 2)
        if k == 0:
            return True
        recent = sum(itertools.islice(reversed(self._recent), k))
        return recent / k > (self._segment_sum - recent) / (n - k)

    def _record(self, n: int, m: float) -> None:
        history = self.history_
        if history and history[-1][0] // self._stride == n // self._stride:
            if m > history[-1][1]:
                history[-1] = (n, m)
            return
        history.append((n, m))
        while len(history) > self.max_history:
            self._stride *= 2
            merged: list[tuple[int, float]] = []
            for point in history:
                if merged and merged[-1][0] // self._stride == point[0] // self._stride:
                    if point[1] > merged[-1][1]:
                        merged[-1] = point
                else:
                    merged.append(point)
            history[:] = merged

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {
            "detector": drift.binary.DDM(),
            "signal": "error",
            "boost": 2.0,
            "half_life": 100,
            "reset_moments": False,
            "cooldown": 0,
        }
