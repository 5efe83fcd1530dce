from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from river import checks, compat, datasets, evaluate, linear_model, metrics, preprocessing
from sklearn.metrics import roc_auc_score

from river_torchrec import CTRClassifier
from river_torchrec.nn import CTRModel

from helpers import pair_stream

MODELS = ["lr", "fm", "deepfm", "widedeep", "dcnv2"]


def _check_ids():
    for params in CTRClassifier._unit_test_params():
        model = CTRClassifier(**params)
        skips = model._unit_test_skips()
        for check in checks.yield_checks(model):
            if check.__name__ in skips:
                continue
            yield pytest.param(model, check, id=f"{params['model']}-{check.__name__}")


@pytest.mark.parametrize("model, check", list(_check_ids()))
def test_river_check_estimator(model, check):
    check(model.clone())


def _mixed_stream(n, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        x = {
            "user": f"u{rng.integers(20)}",
            "item": f"i{rng.integers(30)}",
            "price": float(rng.normal()),
            "flag": bool(rng.integers(2)),
        }
        if i % 7 == 0:
            x["late_field"] = f"v{i % 3}"
        if i % 5 == 0:
            del x["price"]
        yield x, bool(rng.random() < 0.3)


@pytest.mark.parametrize("model", MODELS)
def test_predict_proba_many_equals_predict_proba_one(model):
    clf = CTRClassifier(model=model, embedding_dim=4, hidden_units=(8,), optimizer="adam", lr=0.05)
    events = list(_mixed_stream(300))
    for x, y in events[:200]:
        clf.learn_one(x, y)
    xs = [x for x, _ in events[200:]] + [{}, {"unseen_field": "z", "user": "u_new"}]
    frame = pd.DataFrame(xs)
    many = clf.predict_proba_many(frame)
    assert list(many.columns) == [False, True]
    for i, x in enumerate(xs):
        one = clf.predict_proba_one(x)
        assert abs(many.iloc[i][True] - one[True]) < 1e-6
        assert abs(many.iloc[i][False] - one[False]) < 1e-6


def test_deepfm_on_phishing_reaches_auc_093():
    model = preprocessing.StandardScaler() | CTRClassifier(model="deepfm")
    ys, ps = [], []
    for x, y in datasets.Phishing():
        ps.append(model.predict_proba_one(x)[True])
        ys.append(y)
        model.learn_one(x, y)
    assert roc_auc_score(ys, ps) >= 0.93


def _progressive_logloss(model, stream):
    metric = metrics.LogLoss()
    for x, y in stream:
        metric.update(y, model.predict_proba_one(x))
        model.learn_one(x, y)
    return metric.get()


def test_fm_and_deepfm_learn_field_pairs_that_lr_cannot():
    n = 6000
    scores = {
        name: _progressive_logloss(CTRClassifier(model=name, optimizer="adam", lr=0.02), pair_stream(n))
        for name in ("lr", "fm", "deepfm")
    }
    assert scores["fm"] < scores["lr"] - 0.05, scores
    assert scores["deepfm"] < scores["lr"] - 0.05, scores


def test_progressive_val_score_with_delay_runs():
    model = preprocessing.StandardScaler() | CTRClassifier(model="fm")
    metric = evaluate.progressive_val_score(
        datasets.Phishing().take(300), model, metrics.LogLoss(), delay=10
    )
    assert 0 < metric.get() < 0.7


def test_sklearn_wrapping_of_a_pipeline_fits_and_predicts():
    X, y = [], []
    for x, t in datasets.Phishing().take(400):
        X.append(list(x.values()))
        y.append(t)
    X, y = np.array(X, dtype=float), np.array(y)
    sk = compat.convert_river_to_sklearn(preprocessing.StandardScaler() | CTRClassifier(model="lr", lr=0.05))
    sk.fit(X, y)
    proba = sk.predict_proba(X)
    assert proba.shape == (400, 2)
    assert np.allclose(proba.sum(axis=1), 1)
    assert roc_auc_score(y, proba[:, 1]) > 0.9
    assert set(sk.predict(X)) <= {False, True}


def test_clone_is_an_untrained_twin_and_same_seed_gives_same_predictions():
    a = CTRClassifier(model="deepfm", seed=7)
    for x, y in _mixed_stream(200):
        a.learn_one(x, y)
    b = a.clone()
    fresh = CTRClassifier(model="deepfm", seed=7)
    x = {"user": "u1", "item": "i2", "price": 0.3}
    assert b.n_fields == 0 and len(b.model_.embedding) == 0
    assert b.predict_proba_one(x) == fresh.predict_proba_one(x)
    assert a.predict_proba_one(x) != fresh.predict_proba_one(x)
    for x, y in _mixed_stream(200):
        b.learn_one(x, y)
    assert b.predict_proba_one(x) == a.predict_proba_one(x)
    other_seed = CTRClassifier(model="deepfm", seed=8)
    for x, y in _mixed_stream(200):
        other_seed.learn_one(x, y)
    assert other_seed.predict_proba_one(x) != a.predict_proba_one(x)


def test_max_rows_is_never_exceeded():
    clf = CTRClassifier(model="fm", max_rows=50)
    for i in range(500):
        clf.learn_one({"id": f"id{i}", "user": f"u{i % 7}"}, i % 3 == 0)
        assert len(clf.model_.embedding) <= 50
        assert clf.model_.embedding.capacity <= 51


def test_hash_ids_are_stable_across_processes(tmp_path):
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1)\n"
        "from river_torchrec import CTRClassifier\n"
        "clf = CTRClassifier(model='fm', embeddings='hash', n_buckets=4096)\n"
        "for i in range(50): clf.learn_one({'u': f'u{i % 9}', 'i': f'i{i % 4}'}, i % 2 == 0)\n"
        "print(sorted(clf.model_.embedding.lookup([('u', 'u3'), ('i', 'i1')], learn=False)))\n"
        "print(repr(clf.predict_proba_one({'u': 'u3', 'i': 'i1'})[True]))\n"
    )
    outs = set()
    for seed in ("0", "123"):
        env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}
        import os

        env = {**os.environ, **env}
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs.add(res.stdout)
    assert len(outs) == 1


def test_new_fields_grow_the_model_without_changing_old_predictions():
    clf = CTRClassifier(model="deepfm", seed=3)
    for x, y in itertools.islice(pair_stream(300), 300):
        clf.learn_one(x, y)
    old = {"a": "a1", "b": "b2", "c": "c0", "noise": 0.5}
    before = clf.predict_proba_one(old)
    grown = clf.clone()
    grown.__dict__.update(pickle.loads(pickle.dumps(clf)).__dict__)
    grown.model_.add_fields(grown.n_fields + 3)
    assert grown.predict_proba_one(old) == pytest.approx(before, abs=1e-7)
    clf.learn_one({**old, "brand_new": "x"}, True)
    assert clf.n_fields == 5
    assert 0 < clf.predict_proba_one({"brand_new": "x"})[True] < 1


def test_batch_size_buffers_events_and_flush_applies_them():
    clf = CTRClassifier(model="fm", batch_size=4)
    x = {"u": "a", "price": 1.0}
    p0 = clf.predict_proba_one(x)
    for _ in range(3):
        clf.learn_one(x, True)
    assert len(clf._buffer) == 3
    assert clf.predict_proba_one(x) == p0  # no step yet: predictions use the last step
    restored = pickle.loads(pickle.dumps(clf))
    assert len(restored._buffer) == 3
    assert len(clf.clone()._buffer) == 0
    clf.flush()
    assert clf._buffer == [] and clf.predict_proba_one(x)[True] > p0[True]
    restored.learn_one(x, True)  # the 4th event triggers the step
    assert restored._buffer == []


def test_batched_step_equals_learn_many_on_the_same_events():
    # Hash rows depend on the key alone, so both paths address the same rows.
    events = list(pair_stream(64, seed=3))
    a = CTRClassifier(model="deepfm", batch_size=16, embeddings="hash", n_buckets=512)
    b = CTRClassifier(model="deepfm", embeddings="hash", n_buckets=512)
    for x, y in events:
        a.learn_one(x, y)
    for i in range(0, 64, 16):
        chunk = events[i : i + 16]
        b.learn_many(pd.DataFrame([x for x, _ in chunk]), pd.Series([y for _, y in chunk]))
    for x, _ in events[:20]:
        assert a.predict_proba_one(x)[True] == pytest.approx(b.predict_proba_one(x)[True], abs=1e-6)
    assert a.predict_proba_one(events[0][0]) != CTRClassifier(model="deepfm").predict_proba_one(events[0][0])


@pytest.mark.parametrize(
    "x, error, match",
    [
        # NaN is missing by default now (missing="nan-is-missing"): tests/test_bad_input.py.
        ({"price": float("-inf")}, ValueError, "'price'"),
        ({"price": float("inf")}, ValueError, "'price'"),
        ({"tags": ["a", "b"]}, TypeError, "'tags'"),
        ({"when": object()}, TypeError, "'when'"),
        ("not a dict", TypeError, "dict"),
    ],
)
def test_bad_features_name_the_field_and_leave_the_model_unchanged(x, error, match):
    clf = CTRClassifier(model="deepfm")
    for xx, y in _mixed_stream(20):
        clf.learn_one(xx, y)
    before = pickle.dumps(clf)
    with pytest.raises(error, match=match):
        clf.learn_one(x, True)
    with pytest.raises(error, match=match):
        clf.predict_proba_one(x)
    assert pickle.dumps(clf) == before


@pytest.mark.parametrize("y", [2, -1, "yes", None, 0.5])
def test_unknown_labels_are_rejected(y):
    clf = CTRClassifier(model="lr")
    before = pickle.dumps(clf)
    with pytest.raises(ValueError, match="label"):
        clf.learn_one({"u": "a"}, y)
    assert pickle.dumps(clf) == before


def test_labels_zero_one_and_bool_are_the_same():
    a, b = CTRClassifier(model="fm"), CTRClassifier(model="fm")
    for (x, y) in _mixed_stream(50):
        a.learn_one(x, y)
        b.learn_one(x, int(y))
    x = {"user": "u1"}
    assert a.predict_proba_one(x) == b.predict_proba_one(x)
    assert set(a.predict_proba_one(x)) == {False, True}


def test_empty_dict_predicts_the_prior_and_learns_the_bias():
    clf = CTRClassifier(model="lr", optimizer="sgd", lr=0.5)
    assert clf.predict_proba_one({}) == {False: 0.5, True: 0.5}
    clf.learn_one({}, True)
    # One SGD step on the bias: b = 0 - lr * (sigmoid(0) - 1) = 0.25.
    assert clf.predict_proba_one({})[True] == pytest.approx(1 / (1 + math.exp(-0.25)), abs=1e-7)


def test_numeric_field_is_one_row_scaled_by_its_value():
    clf = CTRClassifier(model="lr", optimizer="sgd", lr=0.1, numeric="raw")
    clf.learn_one({"price": 2.0}, True)
    # grad of the price weight = (p - y) * 2 = -1, of the bias = -0.5.
    w = clf.model_.embedding.weight[clf.model_.embedding.lookup([("price", None)], learn=False)[0], 0]
    assert float(w) == pytest.approx(0.1)
    assert float(clf.model_.bias.detach()) == pytest.approx(0.05)
    assert clf.predict_proba_one({"price": 3.0})[True] == pytest.approx(1 / (1 + math.exp(-0.35)), abs=1e-7)


class TinyModel(CTRModel):
    """A user-defined model: first-order terms only, through a custom module."""

    def __init__(self, embedding_dim=8, hidden_units=(), table=None, **kwargs):
        super().__init__(embedding_dim=embedding_dim, table=table)

    def forward(self, ids, values):
        linear, factors = self.rows(ids, values)
        return self.bias + linear.sum(1) + factors.sum((1, 2))


def test_custom_model_class_is_accepted():
    clf = CTRClassifier(model=TinyModel)
    score = _progressive_logloss(clf, pair_stream(500))
    assert math.isfinite(score) and 0 < score < 1


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="unknown model"):
        CTRClassifier(model="xgboost")
    with pytest.raises(ValueError, match="optimizer"):
        CTRClassifier(optimizer="lbfgs")
    with pytest.raises(ValueError, match="batch_size"):
        CTRClassifier(batch_size=0)
    with pytest.raises(TypeError):
        CTRClassifier(model=torch.nn.Linear)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_learns_on_cuda():
    clf = CTRClassifier(model="deepfm", device="cuda")
    score = _progressive_logloss(clf, pair_stream(2000))
    assert clf.model_.embedding.weight.device.type == "cuda"
    cpu = _progressive_logloss(CTRClassifier(model="deepfm"), pair_stream(2000))
    assert score == pytest.approx(cpu, abs=0.02)
    frame = pd.DataFrame([x for x, _ in itertools.islice(pair_stream(50, seed=1), 50)])
    assert clf.predict_proba_many(frame).shape == (50, 2)


def test_auto_device_falls_back_to_what_exists():
    clf = CTRClassifier(device="auto")
    if torch.cuda.is_available():
        expected = "cuda"
    elif torch.backends.mps.is_available():
        expected = "mps"
    else:
        expected = "cpu"
    assert clf._device.type == expected
    assert clf.model_.embedding.weight.device.type == expected


def test_numeric_log_transform_is_signed_log1p():
    raw = CTRClassifier(model="lr", optimizer="sgd", lr=0.1, numeric="raw")
    logged = CTRClassifier(model="lr", optimizer="sgd", lr=0.1)
    v = 1e6
    raw.learn_one({"count": math.copysign(math.log1p(v), -1)}, True)
    logged.learn_one({"count": -v}, True)
    for x in ({"count": 3.0}, {"count": -12.5}):
        expected = raw.predict_proba_one({"count": math.copysign(math.log1p(abs(x["count"])), x["count"])})
        assert logged.predict_proba_one(x)[True] == pytest.approx(expected[True], abs=1e-7)
    frame = pd.DataFrame({"count": [3.0, -12.5, None]})
    many = logged.predict_proba_many(frame)[True].tolist()
    assert many[:2] == pytest.approx([logged.predict_proba_one({"count": 3.0})[True],
                                      logged.predict_proba_one({"count": -12.5})[True]], abs=1e-7)
    assert many[2] == pytest.approx(logged.predict_proba_one({})[True], abs=1e-7)
