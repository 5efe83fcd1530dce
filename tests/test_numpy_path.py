"""The NumPy twin of one-event steps agrees with the torch path and keeps its guarantees."""

from __future__ import annotations

import copy
import math
import pickle
import random

import numpy as np
import pandas as pd
import pytest
import torch

from river_torchrec import CTRClassifier, datasets, optim
from river_torchrec.learner import OnlineLearner
from river_torchrec.optim.schedulers import Constant, DriftAwareLR, ExponentialDecay
from helpers import assert_same_state, assert_unchanged, snapshot

EVENTS = list(datasets.SyntheticCTR(n_events=400, drift="abrupt", drift_at=200, seed=3))


@pytest.fixture(autouse=True)
def _numpy_twin_without_kernel(monkeypatch):
    # This file holds the NumPy twin (what runs without numba) to the torch path;
    # tests/test_kernel.py holds the compiled step to both.
    monkeypatch.setattr(OnlineLearner, "_use_kernel", False)


def _pair(fast_params: dict, use_numpy: tuple[bool, bool] = (True, False)) -> tuple[CTRClassifier, CTRClassifier]:
    a, b = CTRClassifier(**fast_params), CTRClassifier(**copy.deepcopy(fast_params))
    a._use_numpy, b._use_numpy = use_numpy
    return a, b


def _assert_same_model(a: CTRClassifier, b: CTRClassifier, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    # Over hundreds of steps float32 rounding (NumPy and torch sum in other orders) adds up
    # in the weights, more so where a ReLU input sits at 0; the predictions stay within
    # 1e-6 and one step is held to 1e-6 below.
    assert_same_state(a, b, rtol, atol)
    assert a.n_rejected_ == b.n_rejected_


def _progressive(clf: CTRClassifier, events, weights=None) -> np.ndarray:
    out = []
    for i, (x, y) in enumerate(events):
        out.append(clf.predict_proba_one(x)[True])
        clf.learn_one(x, y, 1.0 if weights is None else weights[i])
    return np.array(out)


UPDATERS = {
    "ogd": lambda: optim.OGD(lr=0.05),
    "adagrad": lambda: optim.Adagrad(),
    "rowwise_adagrad": lambda: optim.RowWiseAdagrad(lr=0.05),
    "adagrad_s0_clipped": lambda: optim.Adagrad(lr=0.05, initial_accumulator_value=0.1, clip_norm=0.5),
    "ftrl": lambda: optim.FTRLProximal(),
    "ftrl_l1_clipped": lambda: optim.FTRLProximal(alpha=0.1, beta=0.5, l1=0.01, l2=0.0, clip_norm=1.0),
}

# Adam is held to the torch path step by step rather than over a whole stream: its step,
# lr * m / (sqrt(v) + eps), is about lr * sign(g) for any gradient much larger than eps, so a
# gradient that is 0 up to float32 rounding (a unit at a ReLU's kink, a factor summed in
# another order) takes a full-size step whose sign is the rounding's. Two correct
# implementations then drift apart over hundreds of steps (1e-6 to 1e-5 in the predictions
# here), while every single step agrees to 1e-6.
ADAM_UPDATERS = {
    "adam": lambda: optim.Adam(lr=0.01),
    "adam_decay_clipped": lambda: optim.Adam(lr=0.005, betas=(0.8, 0.99), weight_decay=0.01, clip_norm=0.5),
}


@pytest.mark.parametrize("updater", sorted(UPDATERS))
@pytest.mark.parametrize("model", ["lr", "fm", "deepfm", "widedeep"])
def test_numpy_twin_matches_the_torch_path(model, updater):
    a, b = CTRClassifier(model=model, optimizer=UPDATERS[updater]()), CTRClassifier(
        model=model, optimizer=UPDATERS[updater]()
    )
    b._use_numpy = False
    assert a._numpy() is not None and b._numpy() is None
    pa, pb = _progressive(a, EVENTS), _progressive(b, EVENTS)
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-6)
    assert a.updater.n_steps == b.updater.n_steps == len(EVENTS)
    _assert_same_model(a, b)
    # The twin did learn: the predictions moved away from the first one.
    assert np.std(pa) > 0.01


@pytest.mark.parametrize("updater", sorted(UPDATERS | ADAM_UPDATERS))
@pytest.mark.parametrize("model", ["lr", "fm", "deepfm", "widedeep"])
def test_one_numpy_step_equals_one_torch_step_to_1e6(model, updater):
    trained = CTRClassifier(model=model, optimizer=(UPDATERS | ADAM_UPDATERS)[updater]())
    trained._use_numpy = False
    _progressive(trained, EVENTS[:150])
    a, b = copy.deepcopy(trained), copy.deepcopy(trained)
    a._use_numpy = True
    assert a._numpy() is not None
    for x, y in EVENTS[150:152]:  # the first builds the flat layout, the second reuses it
        assert a.predict_proba_one(x)[True] == pytest.approx(b.predict_proba_one(x)[True], abs=1e-7)
        a.learn_one(x, y)
        b.learn_one(x, y)
        _assert_same_model(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("updater", sorted(ADAM_UPDATERS))
@pytest.mark.parametrize("model", ["lr", "fm", "deepfm", "widedeep"])
def test_every_adam_numpy_step_equals_the_torch_step_to_1e6(model, updater):
    torch_path = CTRClassifier(model=model, optimizer=ADAM_UPDATERS[updater]())
    torch_path._use_numpy = False
    for i, (x, y) in enumerate(EVENTS[:250]):  # across the drift at event 200
        twin = copy.deepcopy(torch_path)
        twin._use_numpy = True
        assert twin._numpy() is not None
        assert twin.predict_proba_one(x)[True] == pytest.approx(torch_path.predict_proba_one(x)[True], abs=1e-7)
        twin.learn_one(x, y)
        torch_path.learn_one(x, y)
        # To 1e-6 absolute: Adam divides the step by sqrt(v), so where v is small a float32
        # rounding of the gradient moves the new weight by up to a few 1e-7.
        _assert_same_model(twin, torch_path, rtol=1e-6, atol=1e-6)
        if i == 0:
            # Per-row and per-parameter step counts moved with the step.
            assert twin.updater._state["mlp.layers.0.weight" if model in ("deepfm", "widedeep") else "bias"][
                "step"
            ].item() == 1
    assert torch_path.updater.n_steps == 250


def test_adam_twin_with_step_counts_that_differ_between_parameters():
    # As after loading a state dict written by other code: the twin then corrects each
    # coordinate with its own parameter's count instead of one shared count.
    trained = CTRClassifier(model="deepfm", optimizer=optim.Adam(lr=0.01))
    trained._use_numpy = False
    _progressive(trained, EVENTS[:20])
    trained.updater._state["bias"]["step"].fill_(3.0)
    trained.updater._state["mlp.layers.2.weight"]["step"].fill_(500.0)
    twin, torch_path = copy.deepcopy(trained), copy.deepcopy(trained)
    twin._use_numpy = True
    for x, y in EVENTS[20:23]:
        twin.learn_one(x, y)
        torch_path.learn_one(x, y)
        _assert_same_model(twin, torch_path, rtol=1e-6, atol=1e-7)
    assert twin.updater._state["bias"]["step"].item() == 6
    assert twin.updater._state["mlp.layers.2.weight"]["step"].item() == 503
    assert twin.updater._state["mlp.layers.0.weight"]["step"].item() == 23


def test_ftrl_twin_with_a_paused_learning_rate_changes_nothing():
    # A scheduler may scale FTRL's alpha to 0 (paused): both paths then leave weights and
    # state alone, although the step still counts.
    class Paused(Constant):
        def multiplier(self) -> float:
            return 0.0 if self.n_events >= 50 else 1.0

    twin, torch_path = _pair({"model": "deepfm", "optimizer": optim.FTRLProximal(), "scheduler": Paused()})
    _progressive(twin, EVENTS[:50])
    _progressive(torch_path, EVENTS[:50])
    before = {k: v.clone() for k, v in twin.model_.state_dict().items()}
    pa, pb = _progressive(twin, EVENTS[50:80]), _progressive(torch_path, EVENTS[50:80])
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-6)
    _assert_same_model(twin, torch_path)
    for k, v in twin.model_.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert twin.updater.n_steps == 80


def _ragged_stream(n: int, seed: int):
    """Fields that come and go, a late field, missing values, ints and bools."""
    rng = random.Random(seed)
    for t in range(n):
        x = {"user": f"u{rng.randrange(30)}", "item": f"i{rng.randrange(12)}", "price": rng.random() * 50}
        if rng.random() < 0.3:
            x["item"] = None
        if rng.random() < 0.5:
            x["premium"] = rng.random() < 0.5
        if t > n // 2:
            x["hour"] = rng.randrange(24)
        y = rng.random() < (0.7 if x["user"] in ("u1", "u2", "u3") else 0.2)
        yield x, y


@pytest.mark.parametrize(
    "params",
    [
        {"embeddings": "hash", "n_buckets": 16},  # collisions: positions sharing a row
        {"max_rows": 20},  # LRU recycling of rows between prediction and learning
        {"min_count": 3},  # out-of-vocabulary rows until admitted
        {"numeric": "raw", "clip_numeric": 10.0},
        {"scheduler": DriftAwareLR()},
        {"scheduler": ExponentialDecay(half_life=200)},
    ],
    ids=["hash16", "max_rows", "min_count", "clip_numeric", "drift_aware", "exp_decay"],
)
def test_numpy_twin_matches_the_torch_path_with_table_and_stream_options(params):
    events = list(_ragged_stream(500, seed=1))
    weights = [random.Random(i).choice([0.0, 0.5, 1.0, 2.0]) for i in range(len(events))]
    a, b = _pair({"model": "deepfm", "embedding_dim": 4, "hidden_units": (16, 8), "lr": 0.05, **params})
    assert a._numpy() is not None
    pa, pb = _progressive(a, events, weights), _progressive(b, events, weights)
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-6)
    _assert_same_model(a, b)
    if "scheduler" in params:
        assert a.scheduler.n_events == b.scheduler.n_events == len(events)


def test_paths_can_be_mixed_with_learn_many():
    frame = pd.DataFrame([x for x, _ in EVENTS[:128]])
    labels = pd.Series([y for _, y in EVENTS[:128]])
    a, b = _pair({"model": "deepfm"})
    for clf in (a, b):
        clf.learn_many(frame, labels)
        _progressive(clf, EVENTS[128:300])
        clf.learn_many(frame, labels)
        _progressive(clf, EVENTS[300:])
    _assert_same_model(a, b)
    np.testing.assert_allclose(a.predict_proba_many(frame), b.predict_proba_many(frame), atol=1e-6)


def test_pickles_and_copies_stay_small_and_learn_on_identically():
    a, b = _pair({"model": "deepfm"})
    _progressive(a, EVENTS[:200])
    _progressive(b, EVENTS[:200])
    # A view of the flat parameter tensor would pickle the whole flat storage.
    assert len(pickle.dumps(a)) < 1.05 * len(pickle.dumps(b))
    for twin in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a), a.clone(include_attributes=True)):
        np.testing.assert_allclose(_progressive(twin, EVENTS[200:]), _progressive(copy.deepcopy(a), EVENTS[200:]))
    np.testing.assert_allclose(_progressive(a, EVENTS[200:]), _progressive(b, EVENTS[200:]), atol=1e-6)


def test_prediction_creates_no_state_and_changes_nothing():
    clf = CTRClassifier(model="deepfm")
    clf.predict_proba_one(EVENTS[0][0])
    assert clf.updater.state_dict() == {"n_steps": 0}
    _progressive(clf, EVENTS[:50])
    before = pickle.dumps(clf)
    for x, _ in EVENTS[50:60]:
        clf.predict_proba_one(x)
    assert pickle.dumps(clf) == before


def test_models_and_updaters_without_a_twin_take_the_torch_path():
    class MyAdagrad(optim.Adagrad):
        def _dense_step(self, name, param, grad, lr):  # changed arithmetic, no twin declared
            super()._dense_step(name, param, grad, 2 * lr)

    assert CTRClassifier(model="dcnv2")._numpy() is None
    assert CTRClassifier(optimizer="osgd")._numpy() is None
    assert CTRClassifier(optimizer=MyAdagrad())._numpy() is None
    assert CTRClassifier(embedding_dtype="float16")._numpy() is None
    assert CTRClassifier(batch_size=8)._numpy() is None
    assert CTRClassifier()._numpy() is not None


def _corrupt(clf: CTRClassifier, how: str):
    net = clf.model_
    real = net.numpy_backward

    def backward(plan, arrays, grads, cache, d_logit):
        d_rows = real(plan, arrays, grads, cache, d_logit)
        if how == "nan_dense":
            grads["bias"][...] = math.nan
        elif how == "inf_rows":
            d_rows[-1, 0] = math.inf
        elif how == "huge":  # finite, but Adagrad's sum of squares (Adam's v) overflows float32
            for g in grads.values():
                g[...] = 1e30
        return d_rows

    net.numpy_backward = backward
    return real


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
@pytest.mark.parametrize("how", ["nan_dense", "inf_rows", "huge"])
@pytest.mark.parametrize("model", ["fm", "deepfm"])
def test_a_rejected_numpy_step_changes_nothing(model, how, optimizer):
    clf = CTRClassifier(model=model, hidden_units=(8,), embedding_dim=4, optimizer=optimizer)
    assert clf._numpy() is not None
    _progressive(clf, EVENTS[:100])
    snap = snapshot(clf)
    version = clf._version
    real = _corrupt(clf, how)
    with pytest.warns(RuntimeWarning, match="rejected a step"):
        clf.learn_one(*EVENTS[10])  # every key already has its row
    assert clf.n_rejected_ == 1 and clf._version == version + 1
    assert_unchanged(clf, snap)
    clf.model_.numpy_backward = real
    clf.learn_one(*EVENTS[10])
    assert clf.updater.n_steps == 101


def test_a_rejected_first_step_creates_no_updater_state():
    clf = CTRClassifier(model="lr", numeric="raw")
    assert clf._numpy() is not None
    weights = {k: v.clone() for k, v in clf.model_.state_dict().items()}
    with pytest.warns(RuntimeWarning, match="rejected a step"):
        # The logit is 0, but the squared gradient (1.5e38)**2 overflows Adagrad's sum.
        clf.learn_one({"price": 3e38}, False)
    assert clf.updater.state_dict() == {"n_steps": 0}
    for k, v in clf.model_.state_dict().items():
        assert torch.equal(v, weights[k]), k
    clf.learn_one({"price": 1.0}, True)
    assert clf.updater.n_steps == 1 and clf.predict_proba_one({"price": 1.0})[True] > 0.5
