"""A scikit-learn classifier over the CTR models, for pipelines, grid searches and cross-validation."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    _check_feature_names,
    _check_n_features,
    _check_sample_weight,
    check_array,
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
)

from river_torchrec.classifier import CTRClassifier

__all__ = ["SKLearnCTRClassifier"]

#: Parameters passed through to :class:`~river_torchrec.CTRClassifier` as they are.
_PASSED = (
    "model",
    "embedding_dim",
    "hidden_units",
    "embeddings",
    "n_buckets",
    "min_count",
    "max_rows",
    "lr",
    "batch_size",
    "device",
    "seed",
    "model_params",
    "numeric",
    "embedding_dtype",
    "clip_numeric",
)


def _fresh(obj: Any) -> Any:
    """An untrained copy of an updater or scheduler object, so that each fit starts anew."""
    if obj is None or isinstance(obj, str):
        return obj
    return obj.clone() if hasattr(obj, "clone") else copy.deepcopy(obj)


class SKLearnCTRClassifier(ClassifierMixin, BaseEstimator):
    """A scikit-learn binary classifier that trains a :class:`~river_torchrec.CTRClassifier`.

    Unlike ``river.compat.convert_river_to_sklearn``, it takes DataFrames whose columns
    are strings (categorical), numbers (numeric) or both, with missing values (``None`` or
    NaN: the field is absent from that row), as well as numpy arrays (whose columns are
    named 0, 1, ...). Each mini-batch of ``batch_size`` rows is one
    :meth:`~river_torchrec.CTRClassifier.learn_many` step.

    Parameters
    ----------
    model, embedding_dim, hidden_units, embeddings, n_buckets, min_count, max_rows, optimizer, lr, scheduler, device, seed, model_params, numeric, embedding_dtype, clip_numeric
        As for :class:`~river_torchrec.CTRClassifier`. An updater or scheduler object is
        cloned by each :meth:`fit`, which therefore always starts from scratch.
    batch_size
        Rows per gradient step.
    epochs
        Passes over the data made by :meth:`fit`.
    shuffle
        Whether :meth:`fit` visits the rows in a new random order (drawn from ``seed``)
        each epoch. :meth:`partial_fit` always keeps the given order, as a stream would.

    Attributes
    ----------
    classes_
        The two labels, sorted; the second is the positive class (the click).
    estimator_
        The trained :class:`~river_torchrec.CTRClassifier`.
    n_features_in_
        Number of columns seen by :meth:`fit`.
    feature_names_in_
        Column names seen by :meth:`fit`, when ``X`` was a DataFrame with string names.

    Examples
    --------
    >>> import pandas as pd
    >>> from sklearn.model_selection import cross_val_score
    >>> from river_torchrec.compat import SKLearnCTRClassifier
    >>> X = pd.DataFrame({
    ...     "user": ["ann", "bob", None, "ann", "bob", "cid"] * 50,
    ...     "hour": [9.0, 21.0, 9.0, None, 21.0, 9.0] * 50,
    ... })
    >>> y = ["yes", "no", "no", "yes", "no", "no"] * 50
    >>> clf = SKLearnCTRClassifier(model="fm", lr=0.05, batch_size=16, epochs=3)
    >>> clf.fit(X, y).classes_
    array(['no', 'yes'], dtype='<U3')
    >>> clf.predict(pd.DataFrame({"user": ["ann", "bob"], "hour": [9.0, 21.0]}))
    array(['yes', 'no'], dtype='<U3')
    >>> float(cross_val_score(clf, X, y, cv=3, scoring="roc_auc").mean())
    1.0

    """

    def __init__(
        self,
        model: str | type = "deepfm",
        embedding_dim: int = 8,
        hidden_units: Sequence[int] = (64, 32),
        embeddings: str = "dynamic",
        n_buckets: int = 2**18,
        min_count: int = 1,
        max_rows: int | None = None,
        optimizer: Any = "adam",
        lr: float | None = None,
        scheduler: Any = None,
        batch_size: int = 256,
        epochs: int = 1,
        shuffle: bool = True,
        device: str = "cpu",
        seed: int = 42,
        model_params: dict | None = None,
        numeric: str = "log",
        embedding_dtype: str = "float32",
        clip_numeric: float | None = None,
    ) -> None:
        self.model = model
        self.embedding_dim = embedding_dim
        self.hidden_units = hidden_units
        self.embeddings = embeddings
        self.n_buckets = n_buckets
        self.min_count = min_count
        self.max_rows = max_rows
        self.optimizer = optimizer
        self.lr = lr
        self.scheduler = scheduler
        self.batch_size = batch_size
        self.epochs = epochs
        self.shuffle = shuffle
        self.device = device
        self.seed = seed
        self.model_params = model_params
        self.numeric = numeric
        self.embedding_dtype = embedding_dtype
        self.clip_numeric = clip_numeric

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN is a missing value, as None is
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        tags.classifier_tags.multi_class = False
        return tags

    # ------------------------------------------------------------- inputs

    def _frame(self, X: Any, reset: bool) -> pd.DataFrame:
        """``X`` as a DataFrame whose columns are the names the model learns under."""
        _check_feature_names(self, X, reset=reset)
        if isinstance(X, pd.DataFrame):
            if X.shape[0] < 1:
                raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required.")
            frame = X
        else:
            arr = check_array(X, dtype=None, ensure_all_finite=False, input_name="X")
            # An object array holds numbers and strings alike; numeric columns become
            # numeric so that they get one scaled row, not one row per distinct value.
            frame = pd.DataFrame(arr).infer_objects() if arr.dtype == object else pd.DataFrame(arr)
        _check_n_features(self, frame, reset=reset)
        names = getattr(self, "feature_names_in_", None)
        return frame.set_axis(list(names) if names is not None else list(range(frame.shape[1])), axis=1)

    def _targets(self, y: Any, n: int) -> np.ndarray:
        y = column_or_1d(y, warn=True)
        if len(y) != n:
            check_consistent_length(np.empty(n), y)
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("Input y contains NaN or infinity.")
        check_classification_targets(y)
        return y

    @staticmethod
    def _two_classes(labels: np.ndarray) -> np.ndarray:
        classes = np.unique(labels)
        if len(classes) > 2:
            raise ValueError(
                "Only binary classification is supported (click or not); y has "
                f"{len(classes)} classes: {classes[:10].tolist()}"
            )
        if len(classes) < 2:
            raise ValueError(
                f"y has 1 class ({classes.tolist()}); a binary classifier needs two classes. "
                "Pass classes= to partial_fit to learn from a batch of one class."
            )
        return classes

    # ----------------------------------------------------------- learning

    def _new_estimator(self) -> CTRClassifier:
        params = {name: getattr(self, name) for name in _PASSED}
        return CTRClassifier(optimizer=_fresh(self.optimizer), scheduler=_fresh(self.scheduler), **params)

    def _learn(self, frame: pd.DataFrame, y: np.ndarray, w: np.ndarray | None, order: np.ndarray) -> None:
        target = pd.Series(y == self.classes_[1])
        weights = pd.Series(w) if w is not None else None
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            self.estimator_.learn_many(
                frame.iloc[idx], target.iloc[idx], 1.0 if weights is None else weights.iloc[idx]
            )

    def _check_loop_params(self) -> None:
        for name in ("batch_size", "epochs"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> SKLearnCTRClassifier:
        """Train a fresh model for ``epochs`` passes of ``batch_size``-row steps.

        Parameters
        ----------
        X
            A DataFrame (string, bool, numeric columns; None or NaN where missing) or an array.
        y
            Two distinct labels of any type (strings, 0/1, bools).
        sample_weight
            Per-row weights of the loss (e.g. to undo negative down-sampling).

        """
        self._check_loop_params()
        for attr in ("feature_names_in_", "n_features_in_"):
            self.__dict__.pop(attr, None)
        frame = self._frame(X, reset=True)
        y = self._targets(y, len(frame))
        classes = self._two_classes(y)
        w = None if sample_weight is None else _check_sample_weight(sample_weight, frame)
        self.classes_ = classes
        self.estimator_ = self._new_estimator()
        rng = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            order = rng.permutation(len(frame)) if self.shuffle else np.arange(len(frame))
            self._learn(frame, y, w, order)
        return self

    def partial_fit(
        self, X: Any, y: Any, classes: Any = None, sample_weight: Any = None
    ) -> SKLearnCTRClassifier:
        """One pass over ``X`` in the given order, continuing from the current model.

        Parameters
        ----------
        X, y, sample_weight
            As for :meth:`fit`.
        classes
            The two labels. Needed by the first call unless its ``y`` already has both.

        """
        self._check_loop_params()
        first = not hasattr(self, "estimator_")
        frame = self._frame(X, reset=first)
        y = self._targets(y, len(frame))
        if classes is not None:
            classes = self._two_classes(np.asarray(classes))
            if not first and not np.array_equal(classes, self.classes_):
                raise ValueError(f"classes={classes.tolist()} differs from classes_={self.classes_.tolist()}")
        elif first:
            classes = self._two_classes(y)
        known = classes if classes is not None else self.classes_
        unseen = np.setdiff1d(np.unique(y), known)
        if len(unseen):
            raise ValueError(f"y has labels {unseen.tolist()} outside classes {known.tolist()}")
        w = None if sample_weight is None else _check_sample_weight(sample_weight, frame)
        if first:
            self.classes_ = classes
            self.estimator_ = self._new_estimator()
        self._learn(frame, y, w, np.arange(len(frame)))
        return self

    # --------------------------------------------------------- prediction

    def decision_function(self, X: Any) -> np.ndarray:
        """The logit of the positive class ``classes_[1]``, shape ``(n,)``."""
        check_is_fitted(self)
        frame = self._frame(X, reset=False)
        est = self.estimator_
        # The logits themselves: sigmoid outputs in float32 saturate at 1 beyond logit ~17,
        # which would make decision_function lose the ranking of confident rows.
        with est._lock, torch.inference_mode():
            ids, vals = est._frame_tensors(frame, learn=False)
            return est.model_(ids, vals).double().cpu().numpy()

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities of ``classes_``, shape ``(n, 2)``."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1.0 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """The more probable label of each row."""
        positive = self.decision_function(X) > 0
        return self.classes_[positive.astype(int)]
