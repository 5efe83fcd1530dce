"""Hostile events: the estimator raises the documented error with its state unchanged, or learns.

Whatever the input, it never corrupts its state (weights stay finite) and never returns a
probability outside [0, 1].
"""

from __future__ import annotations

import decimal
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from river_torchrec import CTRClassifier

FIELDS = st.sampled_from(["user", "item", "price", "count", 7, ("t", 1), "", "\ud800", "$tag"])
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=8),
    st.text(min_size=5_000, max_size=5_000, alphabet="xyz\u00e9\U0001f600"),
    st.integers(min_value=-(10**50), max_value=10**50),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-1e6, max_value=1e6),
    st.sampled_from([3.4e38, -3.4e38, 1e-45, 0.0, -0.0, np.float32(2.5), np.int64(-3), np.bool_(False)]),
    st.sampled_from([[1], b"raw", 1 + 2j, decimal.Decimal("2"), object(), {"a": 1}, (1, 2)]),
)
EVENT = st.dictionaries(FIELDS, VALUES, max_size=6)
LABEL = st.one_of(st.booleans(), st.sampled_from([0, 1, 1.0, 2, -1, 0.5, "1", None, math.nan]))


@pytest.mark.parametrize("params", [{"model": "deepfm", "numeric": "raw"}, {"model": "fm", "clip_numeric": 10.0}])
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(stream=st.lists(st.tuples(EVENT, LABEL), min_size=1, max_size=6))
def test_hostile_events_are_refused_cleanly_or_learned(params, stream):
    model = CTRClassifier(hidden_units=(8,), embedding_dim=4, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rejected steps are reported so
        for x, y in stream:
            before = pickle.dumps(model)
            try:
                model.learn_one(x, y)
            except (TypeError, ValueError):
                assert pickle.dumps(model) == before
            before = pickle.dumps(model)
            try:
                proba = model.predict_proba_one(x)
            except (TypeError, ValueError):
                assert pickle.dumps(model) == before
            else:
                assert set(proba) == {False, True}
                assert 0.0 <= proba[True] <= 1.0 and proba[False] == 1.0 - proba[True]
    for name, t in model.model_.state_dict().items():
        assert torch.isfinite(t).all(), name
    for name, t in model.updater.state_dict().items():
        assert not isinstance(t, torch.Tensor) or torch.isfinite(t).all(), name
