"""OnlineMixture and RunningPrior: the Bayes-mixture bound, closed forms, bad input, river checks."""

from __future__ import annotations

import json
import math
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from river import checks, linear_model

from river_torchrec import CTRClassifier, datasets
from river_torchrec.auto import AutoCTRClassifier
from river_torchrec.mixture import OnlineMixture, RunningPrior


class Constant:
    """A member that always predicts ``p`` and learns nothing."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba_one(self, x: dict) -> dict:
        return {False: 1.0 - self.p, True: self.p}

    def learn_one(self, x: dict, y: bool, w: float = 1.0) -> None:
        pass


class Recorder:
    """Wraps a member and records the probability it gave each event before learning it."""

    def __init__(self, member) -> None:
        self.member = member
        self.preds: list[float] = []

    def predict_proba_one(self, x: dict) -> dict:
        out = self.member.predict_proba_one(x)
        self.preds.append(out[True])
        return out

    def learn_one(self, x: dict, y: bool, w: float = 1.0) -> None:
        self.member.learn_one(x, y)


def _losses(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-15, 1.0)
    return np.where(y > 0.5, -np.log(p), -np.log(np.clip(1.0 - p, 1e-15, 1.0)))


def _progressive(model, events) -> np.ndarray:
    out = []
    for x, y in events:
        out.append(model.predict_proba_one(x)[True])
        model.learn_one(x, y)
    return np.array(out)


def test_bayes_bound_with_a_deliberately_bad_member() -> None:
    events = list(datasets.SyntheticCTR(n_events=1_500, seed=3))
    y = np.array([float(t) for _, t in events])
    members = [
        Recorder(RunningPrior()),
        Recorder(CTRClassifier(model="lr", lr=0.05, seed=1)),
        Recorder(Constant(0.99)),  # predicts a click on a 10% stream: deliberately bad
    ]
    mix = OnlineMixture(members)
    p = _progressive(mix, events)
    member_losses = [float(_losses(y, np.array(m.preds)).sum()) for m in members]
    mix_loss = float(_losses(y, p).sum())
    # The Bayes-mixture bound, exactly: cumulative loss <= best member's + log N.
    assert mix_loss <= min(member_losses) + math.log(3) + 1e-9
    assert mix.regret_bound() == math.log(3)
    np.testing.assert_allclose(mix.member_losses_, member_losses, rtol=1e-12)
    # The bad member is far worse than the bound, and its weight is gone.
    assert member_losses[2] > min(member_losses) + 1_000
    assert mix.weights_[2] < 1e-100
    assert mix.n_learned_ == len(events)


def test_weights_are_the_posterior_in_closed_form() -> None:
    mix = OnlineMixture([Constant(0.2), Constant(0.7)])
    labels = [True, False, True, True, False, True]
    for t in labels:
        mix.predict_proba_one({})
        mix.learn_one({}, t)
    like = [math.prod(p if t else 1 - p for t in labels) for p in (0.2, 0.7)]
    np.testing.assert_allclose(mix.weights_, [v / sum(like) for v in like], rtol=1e-12)
    expected = sum(w * p for w, p in zip(mix.weights_, (0.2, 0.7)))
    assert mix.predict_proba_one({})[True] == pytest.approx(expected, rel=1e-12)


def test_identical_members_give_the_member_itself() -> None:
    events = list(datasets.SyntheticCTR(n_events=300, seed=2))
    alone = _progressive(RunningPrior(), events)
    mixed = _progressive(OnlineMixture([RunningPrior(), RunningPrior()]), events)
    np.testing.assert_allclose(mixed, alone, rtol=1e-12)


def test_sample_weight_counts_as_repeated_evidence() -> None:
    once = OnlineMixture([Constant(0.3), Constant(0.6)])
    once.learn_one({}, True, 2.0)
    twice = OnlineMixture([Constant(0.3), Constant(0.6)])
    twice.learn_one({}, True)
    twice.learn_one({}, True)
    np.testing.assert_allclose(once.weights_, twice.weights_, rtol=1e-12)
    np.testing.assert_allclose(once.weights_, [0.09 / 0.45, 0.36 / 0.45], rtol=1e-12)


def test_fixed_share_bound_and_recovery_after_a_switch() -> None:
    # Member 0 is right for the first half, member 1 for the second.
    rng = np.random.default_rng(0)
    n = 2_000
    truth = np.where(np.arange(n) < n // 2, 0.1, 0.6)
    labels = rng.random(n) < truth

    class Switching:
        def __init__(self, first: float, second: float) -> None:
            self.t, self.first, self.second = 0, first, second

        def predict_proba_one(self, x):
            p = self.first if self.t < n // 2 else self.second
            return {False: 1 - p, True: p}

        def learn_one(self, x, y, w=1.0):
            self.t += 1

    def run(share: float) -> tuple[np.ndarray, list[np.ndarray], OnlineMixture]:
        members = [Recorder(Switching(0.1, 0.1)), Recorder(Switching(0.6, 0.6))]
        mix = OnlineMixture(members, share=share)
        p = _progressive(mix, [({}, bool(t)) for t in labels])
        return p, [np.array(m.preds) for m in members], mix

    y = labels.astype(float)
    p_bayes, members, _ = run(0.0)
    p_share, _, mix = run(0.01)
    best = min(_losses(y, m).sum() for m in members)
    assert _losses(y, p_share).sum() <= best + mix.regret_bound() + 1e-9
    assert mix.regret_bound() == pytest.approx(math.log(2) + n * -math.log(0.99))
    # After the switch the plain Bayes mixture must first pay back member 0's lead.
    second = slice(n // 2, n)
    assert _losses(y[second], p_share[second]).sum() < _losses(y[second], p_bayes[second]).sum() - 20


def test_baseline_share_is_the_baseline_when_no_member_leads_it() -> None:
    # The baseline is the truth and the other member is deliberately bad: nothing ever leads
    # the baseline, so the mixture starting on it is it, exactly, and its bound is 0.
    rng = np.random.default_rng(5)
    labels = rng.random(3_000) < 0.1
    events = [({}, bool(t)) for t in labels]
    mix = OnlineMixture([RunningPrior(), Constant(0.99)], share=0.01, weights=[1, 0], baseline=0)
    p = _progressive(mix, events)
    assert p.tolist() == _progressive(RunningPrior(), events).tolist()
    assert mix.n_led_ == 0 and mix.share_price_ == 0.0 and mix.regret_bound() == 0.0
    assert mix.weights_ == [1.0, 0.0]
    assert mix.leads_[1] < -100  # far behind, in nats
    # From uniform weights it pays at most log(1 / pi_baseline) = log 2 against the baseline.
    uniform = OnlineMixture([RunningPrior(), Constant(0.99)], share=0.01, baseline=0)
    y = labels.astype(float)
    loss = float(_losses(y, _progressive(uniform, events)).sum())
    assert loss <= float(_losses(y, p).sum()) + math.log(2) + 1e-9
    assert uniform.regret_bound() == pytest.approx(math.log(2))


def test_baseline_share_bound_and_recovery_after_a_switch() -> None:
    # The baseline (member 0) is right for the first half, member 1 for the second.
    rng = np.random.default_rng(0)
    n, alpha = 2_000, 0.001
    truth = np.where(np.arange(n) < n // 2, 0.1, 0.6)
    labels = rng.random(n) < truth
    events = [({}, bool(t)) for t in labels]
    y = labels.astype(float)

    def run(**kw):
        members = [Recorder(Constant(0.1)), Recorder(Constant(0.6))]
        mix = OnlineMixture(members, **kw)
        p, led = [], []
        for x, t in events:
            p.append(mix.predict_proba_one(x)[True])
            mix.learn_one(x, t)
            led.append(mix.n_led_)
        return np.array(p), [np.array(m.preds) for m in members], mix, np.array(led)

    p, members, mix, led = run(share=alpha, weights=[1, 0], baseline=0, half_life=100, margin=1.0)
    loss = [_losses(y, m) for m in members]
    # Against the baseline: the share's price on the events where member 1 led, in closed form.
    k = mix.n_led_
    assert 0 < k < n // 2 + 50 and led[n // 2 - 1] <= 5  # hardly anyone led while the baseline was right
    rates = [max(alpha, 1 / (i + 2)) for i in range(k)]
    assert mix.share_price_ == pytest.approx(sum(-math.log1p(-r) for r in rates), rel=1e-12)
    assert mix.share_price_ <= math.log(k + 1) + k * -math.log1p(-alpha)
    assert _losses(y, p).sum() <= loss[0].sum() + mix.regret_bound() + 1e-9
    # Against member 1, from the first event at which it received share (rate 1/2, N = 2):
    # log(N / alpha_s) plus the price of every later event.
    s = int(np.argmax(led > 0))
    later = [max(alpha, 1 / (i + 2)) if led[t] > led[t - 1] else alpha for i, t in zip(led[s + 1 :] - 1, range(s + 1, n))]
    bound = math.log(2 / 0.5) + sum(-math.log1p(-r) for r in later)
    assert _losses(y[s + 1 :], p[s + 1 :]).sum() <= loss[1][s + 1 :].sum() + bound + 1e-9
    # And it recovers far sooner than the plain Bayes mixture, which pays back member 0's lead.
    p_bayes, _, _, _ = run()
    second = slice(n // 2, n)
    assert _losses(y[second], p[second]).sum() < _losses(y[second], p_bayes[second]).sum() - 20


def test_the_compiled_update_is_the_python_update(monkeypatch) -> None:
    from river_torchrec import _auto_kernels

    if _auto_kernels.mix_kernel() is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(2)
    probas = rng.random((500, 3))
    labels = rng.random(500) < 0.3
    weights = np.where(rng.random(500) < 0.1, 0.5, 1.0)
    runs = []
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(_auto_kernels, "mix_kernel", lambda: None)
        for kw in ({"share": 0.01}, {"share": 0.001, "weights": [1, 0, 0], "baseline": 0, "half_life": 20}):
            mix = OnlineMixture([Constant(0.5)] * 3, **kw)
            for q, t, w in zip(probas, labels, weights):
                mix._update_one(q.tolist(), float(t), float(w))
            runs.append((mix.weights_, mix.member_losses_, mix.leads_, mix.n_led_, mix.share_price_))
    for a, b in zip(runs[:2], runs[2:]):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(a[1], b[1], rtol=1e-12)
        np.testing.assert_allclose(a[2], b[2], rtol=1e-12)
        assert a[3] == b[3] and a[4] == pytest.approx(b[4], rel=1e-12)


def test_learn_many_equals_learn_one_for_members_that_do_not_learn() -> None:
    X = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0]})
    y = pd.Series([True, False, False, True])
    frame = OnlineMixture([Constant(0.2), Constant(0.7)])
    frame.learn_many(X, y)
    one = OnlineMixture([Constant(0.2), Constant(0.7)])
    for x, t in zip(X.to_dict("records"), y):
        one.learn_one(x, t)
    np.testing.assert_allclose(frame.weights_, one.weights_, rtol=1e-12)
    p = frame.predict_proba_many(X)[True]
    assert p.tolist() == pytest.approx([frame.predict_proba_one(x)[True] for x in X.to_dict("records")])


def test_running_prior_closed_form_and_regret() -> None:
    rng = np.random.default_rng(1)
    labels = rng.random(5_000) < 0.04
    prior = RunningPrior()
    p = _progressive(prior, [({}, bool(t)) for t in labels])
    clicks = np.concatenate([[0], np.cumsum(labels)[:-1]])
    np.testing.assert_allclose(p, (clicks + 0.5) / (np.arange(len(labels)) + 1.0), rtol=1e-12)
    y = labels.astype(float)
    rate = y.mean()
    best_constant = -(y.sum() * math.log(rate) + (len(y) - y.sum()) * math.log(1 - rate))
    # Krichevsky-Trofimov: at most 0.5 log n + log 2 worse than the best constant in hindsight.
    assert _losses(y, p).sum() <= best_constant + 0.5 * math.log(len(y)) + math.log(2)
    prior.learn_many(pd.DataFrame({"a": [0, 0]}), pd.Series([True, True]), pd.Series([2.0, 1.0]))
    assert prior.clicks_ == y.sum() + 3 and prior.n_ == len(y) + 3


def test_bad_input_leaves_everything_unchanged() -> None:
    clf = CTRClassifier(model="lr", seed=1)
    prior = RunningPrior()
    mix = OnlineMixture([prior, clf])
    for t in range(30):
        mix.learn_one({"u": f"u{t % 3}"}, t % 2 == 0)
    state = (list(mix.weights_), list(mix.member_losses_), mix.n_learned_, prior.n_, prior.clicks_)
    p = mix.predict_proba_one({"u": "u1"})[True]
    with pytest.raises(ValueError, match=r"label must be a bool or 0/1, got 2 \(int\)"):
        mix.learn_one({"u": "u1"}, 2)
    with pytest.raises(ValueError, match=r"sample weight must be finite and >= 0, got -1"):
        mix.learn_one({"u": "u1"}, True, -1)
    with pytest.raises(TypeError, match="'u'"):
        mix.learn_one({"u": [1, 2]}, True)
    assert (list(mix.weights_), list(mix.member_losses_), mix.n_learned_, prior.n_, prior.clicks_) == state
    assert mix.predict_proba_one({"u": "u1"})[True] == p
    with pytest.raises(ValueError, match="members must hold at least one classifier"):
        OnlineMixture([])
    with pytest.raises(ValueError, match=r"share must be a number in \[0, 1\), got 1"):
        OnlineMixture([prior], share=1)
    with pytest.raises(TypeError, match="has no predict_proba_one/learn_one"):
        OnlineMixture([object()])
    with pytest.raises(ValueError, match=r"weights must be 2 finite numbers >= 0, not all 0, got \[0, 0\]"):
        OnlineMixture([prior, clf], weights=[0, 0])
    with pytest.raises(ValueError, match=r"baseline must be None or a member index in \[0, 2\), got 2"):
        OnlineMixture([prior, clf], baseline=2)
    with pytest.raises(ValueError, match="half_life must be a finite number > 0, got 0"):
        OnlineMixture([prior, clf], half_life=0)
    with pytest.raises(ValueError, match="margin must be a finite number >= 0, got -1"):
        OnlineMixture([prior, clf], margin=-1)
    with pytest.raises(ValueError, match="depends on the stream"):
        OnlineMixture([prior, clf], baseline=0).regret_bound(100)
    with pytest.raises(ValueError, match="prior_count must be a finite number > 0, got 0"):
        RunningPrior(prior_count=0)


@pytest.mark.parametrize(
    "estimator",
    [
        RunningPrior(),
        # With share > 0 every code path of the plain Bayes mixture runs too.
        OnlineMixture([RunningPrior(), linear_model.LogisticRegression()], share=0.01),
        OnlineMixture(
            [RunningPrior(), linear_model.LogisticRegression()], share=0.01, weights=[1, 0], baseline=0,
            half_life=20, margin=0.1,
        ),
    ],
    ids=["prior", "mixture", "baseline-share"],
)
def test_river_checks(estimator) -> None:
    for check in checks.yield_checks(estimator):
        if check.__name__ in estimator._unit_test_skips():
            continue
        check(estimator.clone())


def test_auto_never_loses_more_than_its_bound_to_the_prior() -> None:
    # A sparse log without signal: the running prior is the best possible predictor.
    events = list(datasets.SparseCTR(n_events=1_000, signal=0.0, seed=4))
    y = np.array([float(t) for _, t in events])
    model = AutoCTRClassifier(hidden_units=(8,), seed=3)
    p = _progressive(model, events)
    mix = model.mixture_
    loss = float(_losses(y, p).sum())
    # All the initial weight is on the prior: the bound is the share's price on the events
    # where a model led the prior, at most log(K + 1) + K log(1 / (1 - share)) for K of them.
    k = mix.n_led_
    assert mix.regret_bound() == mix.share_price_
    assert mix.share_price_ <= math.log(k + 1) + k * -math.log1p(-0.0003) + 1e-12
    assert loss <= mix.member_losses_[0] + mix.regret_bound() + 1e-9  # the prior's
    if k == 0:
        # No model ever led it: the mixture is the prior, exactly.
        prior = _progressive(RunningPrior(), events)
        assert p.tolist() == prior.tolist()
    assert list(model.weights_) == ["prior", "deepfm lr=0.02", "fm lr=0.2"]
    assert max(model.weights_, key=model.weights_.get) == "prior"
    # Pickling keeps every member and the weights: the copy predicts exactly the same.
    copy = pickle.loads(pickle.dumps(model))
    assert copy.weights_ == model.weights_
    assert [copy.predict_proba_one(x)[True] for x, _ in events[:20]] == [
        model.predict_proba_one(x)[True] for x, _ in events[:20]
    ]


def test_auto_members_are_built_from_its_parameters() -> None:
    model = AutoCTRClassifier(model="fm", lr=0.05, fast_model="lr", fast_lr=0.3, fast_accumulator=0.5, seed=7)
    prior, slow, fast = model.mixture_.members
    assert isinstance(prior, RunningPrior)
    assert (slow.model, slow.lr, slow.seed) == ("fm", 0.05, 7)
    assert (fast.model, fast.updater.lr, fast.updater.initial_accumulator_value) == ("lr", 0.3, 0.5)
    assert list(model.weights_) == ["prior", "fm lr=0.05", "lr lr=0.3"]
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        AutoCTRClassifier(fast_model="nope")


def _auto_checks():
    for params in AutoCTRClassifier._unit_test_params():
        model = AutoCTRClassifier(**params)
        for check in checks.yield_checks(model):
            if check.__name__ not in model._unit_test_skips():
                yield pytest.param(model, check, id=f"{params.get('model', 'deepfm')}-{check.__name__}")


@pytest.mark.parametrize("model, check", list(_auto_checks()))
def test_auto_river_checks(model, check) -> None:
    check(model.clone())


def test_bench_defaults_quick_smoke(tmp_path) -> None:
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_defaults.py"
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--only", "sparse", "--runs", "0", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| sparse, no signal: <= prior |" in proc.stdout
    rows = json.loads(out.read_text())["results"]["sparse"]
    prior = rows["running prior"]["logloss"]
    # AutoCTRClassifier() is within its bound of the prior: log(3) / 1,000 + share.
    assert rows["AutoCTRClassifier()"]["logloss"] <= prior + math.log(3) / 1_000 + 0.0003 + 1e-12
    assert rows["deep-river Classifier (MLP)"]["skip"].startswith("skipped")


def test_bench_defaults_speed_smoke(tmp_path) -> None:
    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_defaults.py"
    out = tmp_path / "s.json"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--speed-only", "--runs", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CPU time)" in proc.stdout and "(wall clock " in proc.stdout
    speed = json.loads(out.read_text())["speed"]
    assert set(speed["cpu_us_per_event"]) == set(speed["us_per_event"])
    assert all(len(v) == 1 and v[0] > 0 for v in speed["cpu_us_per_event"].values())


def test_auto_checkpoint_resumes_exactly_and_refuses_tampering(tmp_path) -> None:
    from river_torchrec.persistence import CheckpointError

    stream = list(datasets.RepeatVisits(n_events=600, seed=2))
    model = AutoCTRClassifier(hidden_units=(8,), seed=5)
    for x, y in stream[:300]:
        model.predict_proba_one(x)
        model.learn_one(x, y)
    model.save(tmp_path / "auto")
    resumed = AutoCTRClassifier.load(tmp_path / "auto")
    assert resumed.weights_ == model.weights_ and resumed.mixture_.n_learned_ == 300
    assert resumed.mixture_.members[0].n_ == 300
    a = _progressive(model, stream[300:])
    b = _progressive(resumed, stream[300:])
    assert a.tolist() == b.tolist()
    assert resumed.weights_ == model.weights_
    # A modified file is refused before anything is rebuilt.
    state = tmp_path / "auto" / "mixture.json"
    state.write_bytes(state.read_bytes().replace(b'"n_learned": 300', b'"n_learned": 301'))
    with pytest.raises(CheckpointError, match="mixture.json"):
        AutoCTRClassifier.load(tmp_path / "auto")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="exists and is not a checkpoint; refusing to replace it"):
        model.save(tmp_path / "other")


def test_auto_weighs_each_event_once_for_all_members_and_checkpoints_the_defence(tmp_path):
    from river_torchrec.defence import PoisoningDefence

    model = AutoCTRClassifier(hidden_units=(8,), seed=3, defence=PoisoningDefence(warmup=0, min_age=0))
    members = model.mixture_.members[1:]
    assert all(m.defence_ is None for m in members)  # no second copy of the statistics
    stream = list(datasets.SyntheticCTR(n_events=600, seed=3))
    bots = [({**stream[0][0], "user_id": f"bot{i}", "item_id": "target"}, True) for i in range(30)]
    events = stream[:300] + bots + stream[300:400]
    for x, y in events:
        model.learn_one(x, y)
    d = model.defence_
    assert d.n_seen_ == len(events)
    assert d.n_flagged_ > 0 and d.weight_removed_ > 0
    # The prior learned the trusted weights: it counts fewer events than were sent.
    assert model.mixture_.members[0].n_ == pytest.approx(len(events) - d.weight_removed_)

    model.save(tmp_path / "auto")
    resumed = AutoCTRClassifier.load(tmp_path / "auto")
    assert resumed.defence_._keys == d._keys and resumed.defence_.n_seen_ == d.n_seen_
    for x, y in stream[400:]:
        model.learn_one(x, y)
        resumed.learn_one(x, y)
    assert resumed.predict_proba_one(stream[0][0]) == model.predict_proba_one(stream[0][0])
    assert resumed.defence_._keys == model.defence_._keys
