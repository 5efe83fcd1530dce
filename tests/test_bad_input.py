"""Bad input (docs/bad_input.md): a clear error naming the field and an unchanged estimator, or documented handling."""

from __future__ import annotations

import decimal
import math
import pickle
import re

import numpy as np
import pandas as pd
import pytest
import torch
from river import evaluate, metrics, stream

from river_torchrec import CTRClassifier, datasets

EVENTS = list(datasets.SyntheticCTR(n_events=120, seed=4))


def _trained(**params) -> CTRClassifier:
    clf = CTRClassifier(hidden_units=(8,), embedding_dim=4, **params)
    for x, y in EVENTS[:100]:
        clf.learn_one(x, y)
    return clf


BAD_FEATURES = [
    # NaN is missing by default (missing="nan-is-missing"); see the tests of missing= below.
    ({"price": -math.inf}, ValueError, "'price'"),
    ({"price": 1e39}, ValueError, "'price'.*float32"),
    ({"price": 10**400}, ValueError, "'price'.*too large"),
    ({"price": np.float32("inf")}, ValueError, "'price'"),
    ({"price": 2 + 3j}, TypeError, "'price'.*complex"),
    ({"price": decimal.Decimal("1.5")}, TypeError, "'price'.*Decimal"),
    ({"tags": ["a", "b"]}, TypeError, "'tags'.*list"),
    ({"blob": b"\x00\x01"}, TypeError, "'blob'.*bytes"),
    ({"when": pd.Timestamp("2024-01-01")}, TypeError, "'when'"),
    ({"nested": {"a": 1}}, TypeError, "'nested'.*dict"),
    ({7: object()}, TypeError, "7"),
    ([("user_id", "u1")], TypeError, "dict"),
]


@pytest.mark.parametrize("x, error, match", BAD_FEATURES)
def test_bad_features_raise_naming_the_field_and_change_nothing(x, error, match):
    clf = _trained(model="deepfm", batch_size=3)
    # A good field before the bad one must not be registered either.
    if isinstance(x, dict):
        x = {"a_new_field": "v", **x}
    before = pickle.dumps(clf)
    with pytest.raises(error, match=match):
        clf.learn_one(x, True)
    with pytest.raises(error, match=match):
        clf.predict_proba_one(x)
    assert pickle.dumps(clf) == before


@pytest.mark.parametrize("y", [2, -1, 0.5, "1", "yes", None, math.nan, [1]])
def test_labels_other_than_bool_or_0_1_are_refused(y):
    clf = _trained(model="fm")
    before = pickle.dumps(clf)
    with pytest.raises(ValueError, match="label"):
        clf.learn_one(EVENTS[0][0], y)
    with pytest.raises(ValueError, match="label"):
        clf.learn_many(pd.DataFrame([EVENTS[0][0]]), pd.Series([y]))
    assert pickle.dumps(clf) == before


@pytest.mark.parametrize("y", [True, 1, 1.0, np.int64(1), np.bool_(True), np.float32(1.0)])
def test_all_spellings_of_a_click_are_the_same_label(y):
    a, b = CTRClassifier(model="lr"), CTRClassifier(model="lr")
    a.learn_one(EVENTS[0][0], True)
    b.learn_one(EVENTS[0][0], y)
    assert a.predict_proba_one(EVENTS[1][0]) == b.predict_proba_one(EVENTS[1][0])


@pytest.mark.parametrize("w", [-1.0, math.nan, math.inf, "heavy"])
def test_bad_sample_weights_are_refused(w):
    clf = _trained(model="lr")
    before = pickle.dumps(clf)
    with pytest.raises((ValueError, TypeError)):
        clf.learn_one(EVENTS[0][0], True, w)
    assert pickle.dumps(clf) == before


def test_empty_event_predicts_from_the_bias_and_learns_only_dense_weights():
    for model in ("lr", "fm"):
        clf = _trained(model=model, optimizer="sgd", lr=0.1)
        bias = float(clf.model_.bias.detach())
        assert clf.predict_proba_one({})[True] == pytest.approx(1 / (1 + math.exp(-bias)), abs=1e-7)
        table = clf.model_.embedding.weight.clone()
        clf.learn_one({}, True)
        assert torch.equal(clf.model_.embedding.weight, table)
        # One SGD step on the bias alone: b += lr * (1 - sigmoid(b)).
        assert float(clf.model_.bias.detach()) == pytest.approx(bias + 0.1 * (1 - 1 / (1 + math.exp(-bias))), abs=1e-6)
    deep = _trained(model="deepfm")
    table = deep.model_.embedding.weight.clone()
    deep.learn_one({}, False)
    assert torch.equal(deep.model_.embedding.weight, table)


def test_fields_unseen_while_learning_are_ignored_by_predictions():
    clf = _trained(model="deepfm")
    x = dict(EVENTS[110][0])
    before = pickle.dumps(clf)
    with_unknown = clf.predict_proba_one({**x, "brand_new": "v", "another": 3.0})
    assert with_unknown == clf.predict_proba_one(x)
    assert pickle.dumps(clf) == before


def test_strings_of_any_length_are_accepted_as_they_are():
    clf = _trained(model="fm")
    huge = "é" * 1_000_000
    clf.learn_one({"user_id": huge}, True)
    assert ("user_id", huge) in clf.model_.embedding.key_to_row()
    p = clf.predict_proba_one({"user_id": huge})[True]
    assert 0 < p < 1 and p != clf.predict_proba_one({"user_id": "other"})[True]


def test_learn_many_checks_lengths_and_changes_nothing_when_refusing():
    clf = _trained(model="deepfm", batch_size=4)
    clf.learn_one(*EVENTS[100])  # a buffered event must not be flushed by a refused frame
    X = pd.DataFrame([x for x, _ in EVENTS[101:111]])
    y = pd.Series([y for _, y in EVENTS[101:111]])
    before = pickle.dumps(clf)
    with pytest.raises(ValueError, match="10 rows but y has 9"):
        clf.learn_many(X, y[:9])
    with pytest.raises(ValueError, match="10 rows but w has 3"):
        clf.learn_many(X, y, pd.Series([1.0, 1.0, 1.0]))
    with pytest.raises(TypeError, match="DataFrame"):
        clf.learn_many(X.to_dict("records"), y)
    assert pickle.dumps(clf) == before


@pytest.mark.parametrize(
    "column, values, error, match",
    [
        ("price", [1.0, math.inf] + [2.0] * 8, ValueError, "'price'.*infinite"),
        ("price", [1.0, 1e39] + [2.0] * 8, ValueError, "'price'.*float32"),
        ("tags", [["a"]] * 10, TypeError, "'tags'"),
        ("user_id", ["u1", object()] + ["u2"] * 8, TypeError, "'user_id'"),
        ("user_id", ["u1", math.inf] + ["u2"] * 8, ValueError, "'user_id'"),
    ],
)
def test_a_bad_frame_column_is_named_and_nothing_changes(column, values, error, match):
    clf = _trained(model="deepfm", batch_size=4)
    clf.learn_one(*EVENTS[100])
    X = pd.DataFrame([x for x, _ in EVENTS[101:111]])
    X["zz_new_field"] = "v"  # registered after `column` if nothing stopped it
    X[column] = pd.Series(values, dtype=object if not isinstance(values[0], float) else None)
    y = pd.Series([y for _, y in EVENTS[101:111]])
    before = pickle.dumps(clf)
    with pytest.raises(error, match=match):
        clf.learn_many(X, y)
    if column in clf._encoder.slots:
        with pytest.raises(error, match=match):
            clf.predict_proba_many(X)
    else:  # a column the model never learned is ignored by predictions, whatever it holds
        assert clf.predict_proba_many(X).equals(clf.predict_proba_many(X.drop(columns=[column])))
    assert pickle.dumps(clf) == before


def test_duplicate_frame_columns_are_refused():
    clf = _trained(model="lr")
    X = pd.DataFrame([[1.0, 2.0]], columns=["price", "price"])
    before = pickle.dumps(clf)
    with pytest.raises(ValueError, match="duplicate columns.*price"):
        clf.learn_many(X, pd.Series([True]))
    assert pickle.dumps(clf) == before


NAN_VALUES = [math.nan, np.float64("nan"), np.float32("nan"), float("-nan")]


@pytest.mark.parametrize("nan", NAN_VALUES)
def test_nan_in_a_dict_is_missing_by_default_like_an_absent_key(nan):
    clf = _trained(model="fm")
    x = {"user_id": "u1", "price": nan}
    assert clf.predict_proba_one(x) == clf.predict_proba_one({"user_id": "u1"})
    twin = _trained(model="fm")
    clf.learn_one(x, True)
    twin.learn_one({"user_id": "u1"}, True)
    ours, theirs = clf.model_.state_dict(), twin.model_.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert clf.n_fields == twin.n_fields  # a field seen only as NaN is not registered


@pytest.mark.parametrize("nan", NAN_VALUES)
def test_missing_error_refuses_nan_in_a_dict_and_changes_nothing(nan):
    clf = _trained(model="deepfm", missing="error")
    before = pickle.dumps(clf)
    message = "feature 'price' is NaN and missing='error' refuses NaN; pass None for a missing value"
    with pytest.raises(ValueError, match=re.escape(message)):
        clf.learn_one({"a_new_field": "v", "price": nan}, True)
    with pytest.raises(ValueError, match=re.escape(message)):
        clf.predict_proba_one({"price": nan})
    assert pickle.dumps(clf) == before
    clf.learn_one({"price": None}, True)  # None still means missing


@pytest.mark.parametrize(
    "column, row",
    [
        (pd.Series([1.0, 2.0, math.nan]), 2),  # a float column
        (pd.Series(["a", math.nan, "b"]), 1),  # str dtype on pandas >= 3, object before
        (pd.Series(["a", math.nan], dtype=object), 1),
    ],
    ids=["float", "str", "object"],
)
def test_missing_error_refuses_nan_in_a_frame_as_in_a_dict(column, row):
    clf = _trained(model="fm", missing="error")
    X = pd.DataFrame({"user_id": ["u1"] * len(column), "price": column})
    before = pickle.dumps(clf)
    message = f"feature 'price' is NaN in row {row} and missing='error' refuses NaN"
    with pytest.raises(ValueError, match=re.escape(message)):
        clf.learn_many(X, pd.Series([True] * len(X)))
    assert pickle.dumps(clf) == before
    # Each row as river's iter_pandas hands it over is refused the same way.
    dicts = [dict(x) for x, _ in stream.iter_pandas(X)]
    with pytest.raises(ValueError, match="'price' is NaN"):
        clf.learn_one(dicts[row], True)
    # None in an object column and NA in a nullable one are missing, not NaN.
    ok = pd.DataFrame({"user_id": pd.Series(["u1", None], dtype=object), "price": pd.array([2, None], dtype="Int64")})
    clf.learn_many(ok, pd.Series([True, False]))


def test_missing_must_be_a_known_policy():
    with pytest.raises(ValueError, match=re.escape("missing must be one of ['nan-is-missing', 'error'], got 'drop'")):
        CTRClassifier(missing="drop")


def test_progressive_val_score_on_a_frame_with_nan_cells_equals_learn_one_on_clean_dicts():
    rng = np.random.default_rng(3)
    n = 300
    X = pd.DataFrame({
        "user_id": rng.choice(["u1", "u2", "u3", None], n),
        "price": np.where(rng.random(n) < 0.3, np.nan, rng.lognormal(1.0, 0.5, n)),
    })
    y = pd.Series(rng.random(n) < 0.3)
    score = evaluate.progressive_val_score(stream.iter_pandas(X, y), CTRClassifier(model="fm", seed=2), metrics.LogLoss())
    # The same events with their NaN and None cells left out of the dicts.
    clean = [({k: v for k, v in x.items() if isinstance(v, str) or (v is not None and v == v)}, yy)
             for x, yy in stream.iter_pandas(X, y)]
    reference = evaluate.progressive_val_score(clean, CTRClassifier(model="fm", seed=2), metrics.LogLoss())
    assert score.get() == reference.get()
    assert 0.3 < score.get() < 0.75


def test_nan_in_a_frame_is_missing_like_an_absent_key():
    clf = _trained(model="fm")
    X = pd.DataFrame({"user_id": ["u1", None], "price": [math.nan, 3.0]})
    p = clf.predict_proba_many(X)[True].tolist()
    # predict_proba_one runs the NumPy twin of the frame's torch path: equal to 1e-6.
    one = [clf.predict_proba_one({"user_id": "u1"})[True], clf.predict_proba_one({"price": 3.0})[True]]
    assert p == pytest.approx(one, abs=1e-6)
    assert p[0] != pytest.approx(p[1], abs=1e-3)


def test_clip_numeric_bounds_outliers_by_a_robust_running_scale():
    clf = CTRClassifier(model="lr", numeric="raw", clip_numeric=10.0)
    rng = np.random.default_rng(0)
    for v in rng.lognormal(1.0, 0.5, 300):
        clf.learn_one({"price": float(v)}, bool(rng.random() < 0.3))
    scale = clf._clipper.scale("price")
    assert scale == pytest.approx(math.e, rel=0.15)  # the geometric mean of lognormal(1, .5)
    bound = 10.0 * scale
    # A value a million times too large predicts (and learns) as the bound does.
    assert clf.predict_proba_one({"price": 3e6}) == clf.predict_proba_one({"price": bound})
    assert clf.predict_proba_one({"price": -3e6}) == clf.predict_proba_one({"price": -bound})
    frame = pd.DataFrame({"price": [3e6, math.nan, 2.0]})
    expected = [clf.predict_proba_one(x)[True] for x in ({"price": bound}, {}, {"price": 2.0})]
    assert clf.predict_proba_many(frame)[True].tolist() == pytest.approx(expected, abs=1e-7)
    # Outliers barely move the scale: each one by at most rate * log(k) in the log domain.
    for _ in range(20):
        clf.learn_one({"price": 1e30}, True)
    assert clf._clipper.scale("price") < 1.2 * scale


def test_an_overflowing_prediction_is_one_half_with_a_warning():
    clf = CTRClassifier(model="fm", numeric="raw", embedding_dim=4)
    clf.learn_one({"a": 1.0, "b": 1.0}, True)
    with torch.no_grad():
        clf.model_.embedding.weight.fill_(1e30)  # an FM square of sums overflows: inf - inf
    with pytest.warns(RuntimeWarning, match="NaN"):
        p = clf.predict_proba_one({"a": 1.0, "b": 1.0})
    assert p == {False: 0.5, True: 0.5}
    with pytest.warns(RuntimeWarning, match="NaN"):
        assert clf.predict_proba_many(pd.DataFrame({"a": [1.0], "b": [1.0]}))[True].tolist() == [0.5]


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_a_bad_weight_in_a_frame_is_named_and_changes_nothing(bad):
    clf = _trained(model="fm")
    X = pd.DataFrame([x for x, _ in EVENTS[101:111]])
    y = pd.Series([y for _, y in EVENTS[101:111]])
    w = pd.Series([1.0] * 9 + [bad])
    before = pickle.dumps(clf)
    with pytest.raises(ValueError, match="sample weight must be finite and >= 0, got " + re.escape(repr(bad))):
        clf.learn_many(X, y, w)
    assert pickle.dumps(clf) == before


def test_frame_labels_and_weights_of_any_spelling_learn_the_same_model():
    X = pd.DataFrame([x for x, _ in EVENTS[:64]])
    labels = [y for _, y in EVENTS[:64]]
    weights = [float(i % 3) for i in range(64)]
    models = []
    for y, w in [
        (pd.Series(labels), pd.Series(weights)),  # bool labels, float weights: the vectorised path
        (pd.Series([int(v) for v in labels], dtype=object), pd.Series(weights, dtype=object)),
    ]:
        clf = CTRClassifier(model="fm", seed=1)
        clf.learn_many(X, y, w)
        models.append(clf.model_.state_dict())
    for k in models[0]:
        assert torch.equal(models[0][k], models[1][k]), k
