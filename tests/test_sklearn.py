from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from river_torchrec.compat import SKLearnCTRClassifier
from river_torchrec.datasets import SyntheticCTR

MODELS = ["lr", "fm", "deepfm", "widedeep", "dcnv2"]


@pytest.fixture(scope="module")
def clicks():
    """3,000 synthetic impressions with string columns and 20% missing in three columns."""
    events = list(SyntheticCTR(n_events=3000, seed=3))
    X = pd.DataFrame([x for x, _ in events])
    y = np.array([t for _, t in events])
    rng = np.random.default_rng(0)
    for col in ("device", "site", "price"):
        X.loc[rng.random(len(X)) < 0.2, col] = None
    assert X["device"].isna().any() and X["price"].isna().any()
    assert X["user_id"].dtype.kind == "O" or str(X["user_id"].dtype) == "str"
    return X, y


def _pipeline(X: pd.DataFrame, **params) -> Pipeline:
    numeric = [c for c in X.columns if X[c].dtype.kind == "f"]
    scale = ColumnTransformer(
        [("scale", StandardScaler(), numeric)], remainder="passthrough", verbose_feature_names_out=False
    ).set_output(transform="pandas")
    clf = SKLearnCTRClassifier(
        **{"model": "fm", "numeric": "raw", "batch_size": 64, "epochs": 3, "lr": 0.02, "embedding_dim": 4, **params}
    )
    return Pipeline([("prep", scale), ("clf", clf)])


def test_pipeline_cross_val_score_on_strings_and_missing_values(clicks):
    X, y = clicks
    scores = cross_val_score(_pipeline(X), X, y, cv=3, scoring="roc_auc")
    # The Bayes AUC of this stream is 0.83; three epochs on 2,000 rows get most of the way.
    assert scores.min() > 0.62, scores
    assert scores.mean() > 0.65, scores


def test_grid_search_over_lr_picks_the_rate_that_learns(clicks):
    X, y = clicks
    search = GridSearchCV(_pipeline(X), {"clf__lr": [1e-5, 0.02]}, cv=2, scoring="roc_auc")
    search.fit(X, y)
    scores = dict(zip(search.cv_results_["param_clf__lr"], search.cv_results_["mean_test_score"]))
    assert search.best_params_ == {"clf__lr": 0.02}
    assert scores[0.02] > scores[1e-5] + 0.05, scores
    assert search.predict_proba(X.head(5)).shape == (5, 2)


def test_feature_names_and_column_order(clicks):
    X, y = clicks
    clf = SKLearnCTRClassifier(model="lr", batch_size=128).fit(X, y)
    assert list(clf.feature_names_in_) == list(X.columns)
    assert clf.n_features_in_ == X.shape[1]
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(X[X.columns[::-1]])


def test_numpy_input():
    X, y = make_classification(n_samples=600, n_features=6, n_informative=4, random_state=0)
    clf = SKLearnCTRClassifier(model="lr", numeric="raw", lr=0.05, batch_size=32, epochs=5).fit(X[:400], y[:400])
    assert clf.n_features_in_ == 6
    assert not hasattr(clf, "feature_names_in_")
    proba = clf.predict_proba(X[400:])
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # The same model class as sklearn's LogisticRegression, reaching the same test AUC.
    twin = LogisticRegression().fit(X[:400], y[:400]).predict_proba(X[400:])[:, 1]
    assert abs(roc_auc_score(y[400:], proba[:, 1]) - roc_auc_score(y[400:], twin)) < 0.01
    # The columns are named by position, so a frame of the same values predicts the same.
    frame = pd.DataFrame(X[400:], columns=[f"c{i}" for i in range(6)])
    with pytest.warns(UserWarning, match="feature names"):
        np.testing.assert_array_equal(clf.predict_proba(frame), proba)


def test_numpy_object_array_with_strings_and_none():
    rng = np.random.default_rng(1)
    users = rng.choice(["ann", "bob", "cid", None], size=400)
    hours = rng.uniform(0, 1, size=400)
    y = np.array([u == "ann" for u in users])
    X = np.empty((400, 2), dtype=object)
    X[:, 0], X[:, 1] = users, hours
    clf = SKLearnCTRClassifier(model="lr", lr=0.1, batch_size=20, epochs=5).fit(X, y)
    p = clf.predict_proba(np.array([["ann", 0.5], ["bob", 0.5], [None, 0.5]], dtype=object))[:, 1]
    assert p[0] > 0.8 and p[1] < 0.2 and p[2] < 0.5


@pytest.mark.parametrize(
    "labels, classes",
    [
        (("no", "yes"), ["no", "yes"]),
        ((0, 1), [0, 1]),
        ((False, True), [False, True]),
        ((-1, 1), [-1, 1]),
    ],
)
def test_any_two_labels_map_to_the_same_model(clicks, labels, classes):
    X, y = clicks
    X, y = X.iloc[:600], y[:600]
    ref = SKLearnCTRClassifier(model="fm", batch_size=64).fit(X, y)
    y_labels = np.where(y, labels[1], labels[0])
    clf = SKLearnCTRClassifier(model="fm", batch_size=64).fit(X, y_labels)
    assert clf.classes_.tolist() == classes
    np.testing.assert_array_equal(clf.predict_proba(X), ref.predict_proba(X))
    np.testing.assert_array_equal(clf.predict(X), np.where(ref.predict(X), labels[1], labels[0]))


def test_multiclass_and_single_class_are_rejected(clicks):
    X, _ = clicks
    X = X.iloc[:30]
    with pytest.raises(ValueError, match="Only binary classification"):
        SKLearnCTRClassifier().fit(X, np.arange(30) % 3)
    with pytest.raises(ValueError, match="1 class"):
        SKLearnCTRClassifier().fit(X, np.zeros(30))
    with pytest.raises(ValueError, match="Unknown label type"):
        SKLearnCTRClassifier().fit(X, np.linspace(0, 1, 30))


def test_partial_fit_continues_exactly_as_one_pass_of_fit(clicks):
    X, y = clicks
    X, y = X.iloc[:512], y[:512]
    full = SKLearnCTRClassifier(model="deepfm", batch_size=64, shuffle=False).fit(X, y)
    inc = SKLearnCTRClassifier(model="deepfm", batch_size=64)
    inc.partial_fit(X.iloc[:256], y[:256], classes=[False, True])
    inc.partial_fit(X.iloc[256:], y[256:])
    np.testing.assert_array_equal(inc.predict_proba(X), full.predict_proba(X))


def test_partial_fit_classes(clicks):
    X, y = clicks
    clf = SKLearnCTRClassifier(model="lr", batch_size=8)
    negatives = X.iloc[np.flatnonzero(~y)[:16]]
    with pytest.raises(ValueError, match="1 class"):
        clf.partial_fit(negatives, np.zeros(16, dtype=bool))
    assert not hasattr(clf, "estimator_")
    clf.partial_fit(negatives, np.zeros(16, dtype=bool), classes=[True, False])
    assert clf.classes_.tolist() == [False, True]
    with pytest.raises(ValueError, match="outside classes"):
        clf.partial_fit(negatives, np.full(16, 2))
    with pytest.raises(ValueError, match="differs from classes_"):
        clf.partial_fit(negatives, np.zeros(16, dtype=bool), classes=["a", "b"])


def test_fit_starts_afresh_and_is_reproducible(clicks):
    X, y = clicks
    X, y = X.iloc[:400], y[:400]
    clf = SKLearnCTRClassifier(model="deepfm", batch_size=32, epochs=2)
    first = clf.fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(clf.fit(X, y).predict_proba(X), first)
    np.testing.assert_array_equal(clone(clf).fit(X, y).predict_proba(X), first)
    other = clone(clf).set_params(seed=7).fit(X, y).predict_proba(X)
    assert not np.array_equal(other, first)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), first)


def test_decision_function_is_the_logit_of_predict_proba(clicks):
    X, y = clicks
    clf = SKLearnCTRClassifier(model="widedeep", batch_size=64).fit(X.iloc[:500], y[:500])
    logits = clf.decision_function(X.iloc[500:700])
    p = clf.predict_proba(X.iloc[500:700])[:, 1]
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), p, rtol=1e-12)
    # The same numbers as the river estimator underneath gives.
    river_p = clf.estimator_.predict_proba_many(X.iloc[500:700])[True].to_numpy()
    np.testing.assert_allclose(p, river_p, rtol=1e-5)


# ------------------------------------------------------------------ sklearn's checks

_STEP_FOR_ROW_COUNT = (
    "a step minimises the weighted loss summed over its rows and divided by the row count "
    "(CTRClassifier.learn_many), and weighted rows fall into other mini-batches than repeated "
    "ones, so weight k and k copies of a row agree only approximately (within ~1e-3 with Adam)"
)
_FLOAT32_GEMM = (
    "the MLP runs float32 matrix products whose rounding depends on the number of rows, so a "
    "row's logit on a subset can differ by ~1e-7 relative, the check's tolerance"
)


def _expected_failures(estimator) -> dict[str, str]:
    failures = {"check_sample_weight_equivalence_on_dense_data": _STEP_FOR_ROW_COUNT}
    if estimator.model not in ("lr", "fm"):
        failures["check_methods_subset_invariance"] = _FLOAT32_GEMM
    return failures


@parametrize_with_checks(
    [
        # One pass over the checks' 30-300 rows is too little for their accuracy bars:
        # these instances take 20 epochs of 32-row steps.
        SKLearnCTRClassifier(model=m, embedding_dim=4, hidden_units=(8,), lr=0.05, batch_size=32, epochs=20)
        for m in MODELS
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)
