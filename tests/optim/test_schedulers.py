"""Learning-rate schedulers: closed forms, the drift-aware boost, and a drifting stream."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from river import base, drift

from river_torchrec import CTRClassifier, datasets, optim
from river_torchrec.optim.schedulers import (
    Constant,
    CosineRestarts,
    DriftAwareLR,
    ExponentialDecay,
    InverseSqrt,
    Scheduler,
)

SCHEDULERS = [Constant, InverseSqrt, ExponentialDecay, CosineRestarts, DriftAwareLR]


class FireAt(base.DriftDetector):
    """Raises an alarm on the given (0-based) updates, whatever it is fed."""

    def __init__(self, at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.at = at
        self.n = 0

    def update(self, x: float) -> None:
        self._drift_detected = self.n in self.at
        self.n += 1


class FireAtBinary(base.BinaryDriftDetector):
    """The binary twin of :class:`FireAt`, recording what it is fed."""

    def __init__(self, at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.at = at
        self.seen: list = []

    def update(self, x: bool) -> None:
        self._drift_detected = len(self.seen) in self.at
        self.seen.append(x)


def multipliers(sched: Scheduler, losses, updater=None) -> list[float]:
    """The multiplier used for each event when the losses come one step per event."""
    out = []
    for v in losses:
        out.append(sched.multiplier())
        sched.observe([v], updater)
    return out


def rising(n: int, jump_at: int) -> list[float]:
    """A loss that steps up at ``jump_at``, so that alarms after it count as rises."""
    return [0.3 if i < jump_at else 0.9 for i in range(n)]


# ----------------------------------------------------------------- time-based


def test_inverse_sqrt_closed_form():
    sched = InverseSqrt(warmup=40)
    got = multipliers(sched, [0.5] * 200)
    for t in (0, 1, 19, 38, 39, 40, 99, 159, 199):
        s = t + 1
        expected = s / 40 if s <= 40 else math.sqrt(40 / s)
        assert got[t] == pytest.approx(expected, rel=1e-12)
    assert max(got) == pytest.approx(1.0)
    assert got.index(max(got)) == 39


def test_inverse_sqrt_without_warmup_is_plain_inverse_sqrt():
    got = multipliers(InverseSqrt(warmup=1), [0.5] * 50)
    assert got == pytest.approx([1 / math.sqrt(t + 1) for t in range(50)], rel=1e-12)


def test_exponential_decay_closed_form():
    sched = ExponentialDecay(half_life=25, floor=0.1)
    got = multipliers(sched, [0.5] * 200)
    for t in (0, 1, 24, 25, 50, 77, 199):
        assert got[t] == pytest.approx(0.1 + 0.9 * 2 ** (-t / 25), rel=1e-12)
    assert got[25] == pytest.approx(0.55)
    assert got[-1] > 0.1


def test_cosine_restarts_closed_form():
    sched = CosineRestarts(period=20, min_multiplier=0.2)
    got = multipliers(sched, [0.5] * 100)
    for t in (0, 1, 5, 10, 19, 20, 33, 99):
        tau = t % 20
        assert got[t] == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi * tau / 20)) / 2, rel=1e-12)
    assert got[20] == got[40] == 1.0


def test_cosine_restarts_growing_periods():
    """Cycles of 10, 20, 40 events start at events 0, 10 and 30, as in SGDR."""
    sched = CosineRestarts(period=10, min_multiplier=0.0, period_mult=2)
    got = multipliers(sched, [0.5] * 70)
    for t in range(70):
        start, length = (0, 10) if t < 10 else (10, 20) if t < 30 else (30, 40)
        assert got[t] == pytest.approx((1 + math.cos(math.pi * (t - start) / length)) / 2, abs=1e-12)
    assert got[10] == got[30] == 1.0


def test_cosine_restarts_matches_torch():
    """Same curve as torch's CosineAnnealingWarmRestarts with one 'epoch' per event."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    ref = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=7, T_mult=2, eta_min=0.1)
    sched = CosineRestarts(period=7, min_multiplier=0.1, period_mult=2)
    for _ in range(120):
        assert sched.multiplier() == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12)
        sched.observe([0.5])
        opt.step()
        ref.step()


def test_batched_steps_use_events_observed():
    """With k events per step, the multiplier is read at multiples of k events."""
    sched = ExponentialDecay(half_life=10, floor=0.0)
    for step in range(5):
        assert sched.multiplier() == pytest.approx(2 ** (-(4 * step) / 10))
        sched.observe([0.5] * 4)
    assert sched.n_events == 20


@pytest.mark.parametrize(
    "make",
    [
        lambda: InverseSqrt(warmup=0),
        lambda: InverseSqrt(warmup=2.5),
        lambda: ExponentialDecay(half_life=0),
        lambda: ExponentialDecay(floor=1.5),
        lambda: CosineRestarts(period=0),
        lambda: CosineRestarts(min_multiplier=-0.1),
        lambda: CosineRestarts(period_mult=0.5),
        lambda: DriftAwareLR(boost=0.5),
        lambda: DriftAwareLR(half_life=0),
        lambda: DriftAwareLR(cooldown=-1),
        lambda: DriftAwareLR(signal="auc"),
        lambda: DriftAwareLR(max_history=1),
    ],
)
def test_bad_parameters_are_rejected(make):
    with pytest.raises(ValueError):
        make()


def test_bad_objects_are_rejected():
    with pytest.raises(TypeError, match="Scheduler"):
        DriftAwareLR(base=optim.Adam())
    with pytest.raises(TypeError, match="drift detector"):
        DriftAwareLR(detector=Constant())
    with pytest.raises(ValueError, match="signal='error'"):
        DriftAwareLR(detector=drift.binary.DDM())


# ----------------------------------------------------------------- drift-aware


def test_boost_follows_the_documented_curve():
    sched = DriftAwareLR(detector=FireAt((99,)), boost=5.0, half_life=40, cooldown=10, rise_only=False)
    got = multipliers(sched, [0.3] * 400)
    assert sched.drifts_ == [99]
    assert got[:100] == [1.0] * 100
    for t in (100, 101, 120, 140, 180, 250, 399):
        assert got[t] == pytest.approx(1 + 4 * 2 ** (-(t - 100) / 40), rel=1e-12)
    assert got[100] == 5.0
    assert got[140] == pytest.approx(3.0)


def test_boost_multiplies_a_time_based_base():
    decay = ExponentialDecay(half_life=100, floor=0.2)
    sched = DriftAwareLR(base=decay, detector=FireAt((49,)), boost=3.0, half_life=30, rise_only=False)
    got = multipliers(sched, [0.3] * 200)
    assert decay.n_events == 200
    for t in (0, 49, 50, 51, 80, 199):
        b = 0.2 + 0.8 * 2 ** (-t / 100)
        boost = 1 + 2 * 2 ** (-(t - 50) / 30) if t >= 50 else 1.0
        assert got[t] == pytest.approx(b * boost, rel=1e-12)


def test_alarm_within_cooldown_is_ignored():
    sched = DriftAwareLR(
        detector=FireAt((99, 149, 400)), boost=3.0, half_life=20, cooldown=100, rise_only=False
    )
    got = multipliers(sched, [0.3] * 500)
    # 149 is 50 events after the accepted alarm at 99: ignored; 400 is past the cooldown.
    assert sched.drifts_ == [99, 400]
    assert sched.n_ignored_ == 1
    assert got[150] == pytest.approx(1 + 2 * 2 ** (-50 / 20))
    assert got[401] == 3.0


def test_cooldown_boundary():
    """An alarm exactly ``cooldown`` events after the last is ignored, one more is not."""
    sched = DriftAwareLR(detector=FireAt((10, 20, 31)), cooldown=10, rise_only=False)
    multipliers(sched, [0.3] * 40)
    assert sched.drifts_ == [10, 31]


def test_alarm_on_a_falling_loss_is_ignored():
    """A fresh model's falling loss makes ADWIN fire; ``rise_only`` keeps the rate alone."""
    falling = [1.0 - i / 1000 for i in range(600)]
    sched = DriftAwareLR(detector=FireAt((299,)))
    got = multipliers(sched, falling)
    assert sched.drifts_ == []
    assert sched.n_ignored_ == 1
    assert set(got) == {1.0}

    sched = DriftAwareLR(detector=FireAt((299,)), rise_only=False)
    multipliers(sched, falling)
    assert sched.drifts_ == [299]


def test_alarm_on_a_rising_loss_counts():
    sched = DriftAwareLR(detector=FireAt((1_999,)), boost=2.0)
    multipliers(sched, rising(2_100, jump_at=1_800))
    assert sched.drifts_ == [1_999]


def test_adwin_catches_a_jump_in_the_loss():
    """The default detector, on a loss that steps from 0.3 to 0.9 at event 2000."""
    sched = DriftAwareLR(cooldown=0)
    multipliers(sched, rising(4_000, jump_at=2_000))
    assert len(sched.drifts_) == 1
    assert 2_000 <= sched.drifts_[0] < 2_200


def test_error_signal_feeds_thresholded_losses():
    det = FireAtBinary()
    sched = DriftAwareLR(detector=det, signal="error")
    sched.observe([0.1, math.log(2) + 1e-9, 2.0, 0.69])
    assert det.seen == [False, True, True, False]

    # A real-valued detector gets the errors as floats.
    adwin = drift.ADWIN()
    sched = DriftAwareLR(detector=adwin, signal="error")
    sched.observe([0.1, 2.0, 3.0])
    assert adwin.estimation == pytest.approx(2 / 3)


def test_ddm_on_errors():
    """DDM on the 0/1 errors fires when a 10% error rate turns into 60%."""
    losses = [2.0 if i % 10 == 0 else 0.1 for i in range(3_000)]
    losses += [2.0 if i % 5 < 3 else 0.1 for i in range(1_000)]
    sched = DriftAwareLR(detector=drift.binary.DDM(), signal="error", cooldown=10_000)
    multipliers(sched, losses)
    assert len(sched.drifts_) == 1
    assert 3_000 <= sched.drifts_[0] < 3_100


def _adam_with_state() -> optim.Adam:
    adam = optim.Adam(lr=0.01)
    param = torch.zeros(3)
    table = torch.zeros(5, 2)
    adam.step(
        [optim.DenseGrad("w", param, torch.ones(3))],
        [optim.SparseGrad("embedding.weight", table, torch.tensor([1, 3]), torch.ones(2, 2))],
    )
    assert adam.state_dict().keys() > {"n_steps"}
    return adam


def test_alarm_resets_moments():
    adam = _adam_with_state()
    sched = DriftAwareLR(detector=FireAt((5,)), rise_only=False)
    sched.observe([0.3] * 5, adam)
    assert len(adam.state_dict()) > 1
    sched.observe([0.3], adam)
    assert sched.drifts_ == [5]
    assert adam.state_dict() == {"n_steps": 1}


def test_moments_kept_when_not_asked():
    adam = _adam_with_state()
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in adam.state_dict().items()}
    sched = DriftAwareLR(detector=FireAt((5,)), rise_only=False, reset_moments=False)
    sched.observe([0.3] * 10, adam)
    assert sched.drifts_ == [5]
    after = adam.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before if k != "n_steps")


def test_ignored_alarm_keeps_moments():
    adam = _adam_with_state()
    sched = DriftAwareLR(detector=FireAt((2, 5)), rise_only=False, cooldown=10)
    sched.observe([0.3] * 3)
    sched.observe([0.3] * 5, adam)
    assert sched.drifts_ == [2]
    assert len(adam.state_dict()) > 1


def test_bad_losses_leave_state_unchanged():
    sched = DriftAwareLR(detector=FireAt((0,)), rise_only=False)
    with pytest.raises(ValueError, match="position 1"):
        sched.observe([0.3, float("nan")])
    with pytest.raises(ValueError, match="position 0"):
        sched.observe([-1.0])
    assert sched.n_events == 0 and sched.base.n_events == 0
    assert sched.detector.n == 0 and sched.history_ == [] and sched.drifts_ == []


def test_history_records_each_step_then_stays_bounded():
    sched = DriftAwareLR(detector=FireAt((49,)), boost=4.0, half_life=10, rise_only=False, max_history=1_000)
    got = multipliers(sched, [0.3] * 300)
    assert sched.history_ == list(enumerate(got))

    sched = DriftAwareLR(detector=FireAt((4_321,)), boost=4.0, half_life=10, rise_only=False, max_history=64)
    got = multipliers(sched, [0.3] * 20_000)
    assert len(sched.history_) <= 64
    events = [n for n, _ in sched.history_]
    assert events == sorted(events) and events[0] == 0
    # Every point is a real step, and the boost peak survives the decimation.
    assert all(got[n] == m for n, m in sched.history_)
    assert (4_322, 4.0) in sched.history_


def test_history_with_batched_steps():
    sched = DriftAwareLR(detector=FireAt(), max_history=10)
    for _ in range(100):
        sched.observe([0.3] * 7)
    assert 5 <= len(sched.history_) <= 10
    assert all(n % 7 == 0 for n, _ in sched.history_)


def test_default_detector_is_adwin():
    sched = DriftAwareLR()
    assert isinstance(sched.detector, drift.ADWIN)
    assert isinstance(sched.base, Constant)


def test_clone_is_fresh():
    sched = DriftAwareLR(detector=drift.ADWIN(delta=0.01), boost=3.0, cooldown=0)
    multipliers(sched, rising(3_000, jump_at=1_500))
    assert sched.drifts_ and sched.detector.width > 0

    fresh = sched.clone()
    assert fresh.drifts_ == [] and fresh.history_ == [] and fresh.n_events == 0
    assert fresh.detector is not sched.detector and fresh.detector.width == 0
    assert fresh.base is not sched.base
    assert fresh.detector.delta == 0.01 and fresh.boost == 3.0
    # The clone replays the stream exactly as the original did.
    multipliers(fresh, rising(3_000, jump_at=1_500))
    assert fresh.drifts_ == sched.drifts_ and fresh.history_ == sched.history_


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_pickle_round_trip(cls):
    for params in cls._unit_test_params():
        sched = cls(**params)
        multipliers(sched, rising(1_500, jump_at=700))
        copy = pickle.loads(pickle.dumps(sched))
        assert copy.multiplier() == sched.multiplier()
        # Both go on identically, detector state included.
        tail = rising(1_500, jump_at=200)
        assert multipliers(copy, tail) == multipliers(sched, tail)
        assert getattr(copy, "drifts_", None) == getattr(sched, "drifts_", None)


@pytest.mark.parametrize("cls", SCHEDULERS)
def test_unit_test_params_build_and_clone(cls):
    for params in cls._unit_test_params():
        sched = cls(**params)
        assert isinstance(sched, Scheduler)
        assert sched.clone()._get_params().keys() == sched._get_params().keys()
        assert 0 < sched.multiplier() <= max(1.0, getattr(sched, "boost", 1.0))


# ----------------------------------------------------------------- integration


def test_classifier_learns_and_detects_an_abrupt_drift():
    """Few ids and strong interactions: the model learns the first concept well, so the
    drift at event 3000 makes its loss jump and the default ADWIN fires shortly after."""
    stream = datasets.SyntheticCTR(
        n_events=4_500,
        n_users=50,
        n_items=20,
        positive_rate=0.3,
        interaction_scale=3.0,
        drift="abrupt",
        drift_at=3_000,
        seed=1,
    )
    sched = DriftAwareLR()
    model = CTRClassifier(model="fm", embedding_dim=4, lr=0.01, scheduler=sched, seed=1)
    losses = []
    for x, y in stream:
        p = min(max(model.predict_proba_one(x)[True], 1e-7), 1 - 1e-7)
        losses.append(-math.log(p if y else 1 - p))
        model.learn_one(x, y)
    assert sched.n_events == 4_500
    assert sum(losses[2_000:3_000]) / 1_000 < math.log(2) - 0.1  # it learned
    assert sum(losses[3_000:3_500]) / 500 > sum(losses[2_000:3_000]) / 1_000 + 0.1  # the drift hurt
    assert len(sched.drifts_) == 1 and 3_000 <= sched.drifts_[0] < 3_600, sched.drifts_
    # The boost shows in the recorded history, right after the alarm.
    assert (sched.drifts_[0] + 1, sched.boost) in sched.history_
