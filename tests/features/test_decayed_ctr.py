from __future__ import annotations

import math
import pickle
import random

import pandas as pd
import pytest
from river import compose, linear_model, preprocessing
from sklearn.metrics import roc_auc_score

from river_torchrec.features import DecayedCTREncoder


def test_hand_computed_stream():
    # half_life=1: every event halves the weight of the past. prior_strength=1.
    enc = DecayedCTREncoder(fields=["ad"], half_life=1, prior_strength=1.0)
    assert enc.global_ctr == 0.5
    assert enc.transform_one({"ad": "a"}) == {"ad": "a", "ad_ctr": 0.5, "ad_log_imps": 0.0}

    enc.learn_one({"ad": "a"}, True)
    # global: clicks 1, imps 1 -> 1.0; a: clicks 1, imps 1 -> (1 + 1 * 1.0) / (1 + 1)
    assert enc.global_ctr == 1.0
    assert enc.transform_one({"ad": "a"}) == pytest.approx(
        {"ad": "a", "ad_ctr": 1.0, "ad_log_imps": math.log(2)}
    )

    enc.learn_one({"ad": "a"}, False)
    # global: 0.5 / 1.5 = 1/3; a: clicks 0.5, imps 1.5 -> (0.5 + 1/3) / 2.5 = 1/3
    assert enc.global_ctr == pytest.approx(1 / 3)
    assert enc.transform_one({"ad": "a"}) == pytest.approx(
        {"ad": "a", "ad_ctr": 1 / 3, "ad_log_imps": math.log(2.5)}
    )

    enc.learn_one({"ad": "b"}, 1)
    # global: 1.25 / 1.75 = 5/7; a decays lazily: clicks 0.25, imps 0.75
    g = 5 / 7
    assert enc.global_ctr == pytest.approx(g)
    assert enc.transform_one({"ad": "a"}) == pytest.approx(
        {"ad": "a", "ad_ctr": (0.25 + g) / 1.75, "ad_log_imps": math.log(1.75)}
    )
    assert enc.transform_one({"ad": "b"}) == pytest.approx(
        {"ad": "b", "ad_ctr": (1 + g) / 2, "ad_log_imps": math.log(2)}
    )
    # an unseen value gets the global CTR
    assert enc.transform_one({"ad": "z"}) == pytest.approx(
        {"ad": "z", "ad_ctr": g, "ad_log_imps": 0.0}
    )


def test_half_life_in_events():
    enc = DecayedCTREncoder(fields=["ad"], half_life=10, prior_strength=1.0)
    enc.learn_one({"ad": "a"}, 1)
    for _ in range(10):
        enc.learn_one({"ad": "other"}, 0)
    assert enc.transform_one({"ad": "a"})["ad_log_imps"] == pytest.approx(math.log1p(0.5))
    no_decay = DecayedCTREncoder(fields=["ad"], half_life=math.inf)
    for y in [1, 0, 0, 1]:
        no_decay.learn_one({"ad": "a"}, y)
    assert no_decay.global_ctr == 0.5
    assert no_decay.transform_one({"ad": "a"})["ad_log_imps"] == pytest.approx(math.log(5))


def test_lazy_decay_matches_eager_reference():
    """O(1) lazy decay gives the same numbers as decaying every statistic at every event."""
    rng = random.Random(42)
    half_life, strength = 7.0, 3.0
    gamma = 0.5 ** (1 / half_life)
    enc = DecayedCTREncoder(fields=["u", "ad"], half_life=half_life, prior_strength=strength)
    clicks, imps, g_clicks, g_imps = {}, {}, 0.0, 0.0
    for _ in range(400):
        x = {"u": rng.choice("abcdefghij"), "ad": rng.randint(0, 4)}
        y = rng.random() < 0.3
        # eager reference
        g = g_clicks / g_imps if g_imps else 0.5
        expected = {}
        for f in ("u", "ad"):
            c, n = clicks.get((f, x[f]), 0.0), imps.get((f, x[f]), 0.0)
            expected[f"{f}_ctr"] = (c + strength * g) / (n + strength)
            expected[f"{f}_log_imps"] = math.log1p(n)
        out = enc.transform_one(x)
        for k, v in expected.items():
            assert out[k] == pytest.approx(v, rel=1e-9, abs=1e-12)
        for key in clicks:
            clicks[key] *= gamma
            imps[key] *= gamma
        g_clicks, g_imps = g_clicks * gamma + y, g_imps * gamma + 1
        for f in ("u", "ad"):
            clicks[(f, x[f])] = clicks.get((f, x[f]), 0.0) + y
            imps[(f, x[f])] = imps.get((f, x[f]), 0.0) + 1
        enc.learn_one(x, y)


def test_missing_fields_and_keep_original():
    enc = DecayedCTREncoder(fields=["ad", "site"], keep_original=False)
    enc.learn_one({"ad": "a", "site": None}, 1)
    assert len(enc._stats) == 1  # a missing value is not learned
    out = enc.transform_one({"ad": "a", "site": None, "price": 1.0})
    assert set(out) == {"price", "ad_ctr", "ad_log_imps"}


def _click_stream(n, seed=7):
    """Labels are random and independent of the features, but every event has a unique id."""
    rng = random.Random(seed)
    for i in range(n):
        x = {"event_id": f"e{i}", "ad": rng.choice("abcde"), "site": rng.choice("xyz")}
        yield x, rng.random() < 0.3


def _progressive_auc(leaky: bool, n: int = 3000) -> float:
    enc = DecayedCTREncoder(fields=["event_id", "ad", "site"], keep_original=False)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    y_true, y_pred = [], []
    for x, y in _click_stream(n):
        if leaky:  # deliberately wrong: the encoding sees the label it is about to predict
            enc.learn_one(x, y)
        z = enc.transform_one(x)
        y_pred.append(model.predict_proba_one(z).get(True, 0.0))
        y_true.append(y)
        model.learn_one(z, y)
        if not leaky:
            enc.learn_one(x, y)
    return roc_auc_score(y_true, y_pred)


def test_no_label_leakage_in_progressive_validation():
    assert _progressive_auc(leaky=False) < 0.6
    # The test can fail: learning before transforming leaks the label through the event id.
    assert _progressive_auc(leaky=True) > 0.95


def test_no_label_leakage_in_a_river_pipeline():
    """A river Pipeline transforms supervised steps before learning them."""
    model = compose.Pipeline(
        DecayedCTREncoder(fields=["event_id", "ad", "site"], keep_original=False),
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(),
    )
    y_true, y_pred = [], []
    for x, y in _click_stream(3000):
        y_pred.append(model.predict_proba_one(x).get(True, 0.0))
        y_true.append(y)
        model.learn_one(x, y)
    assert roc_auc_score(y_true, y_pred) < 0.6


def test_learn_many_reaches_the_learn_one_state():
    rows = [({"u": u, "ad": i % 3}, (i * u) % 4 == 0) for i in range(100) for u in range(3)]
    one = DecayedCTREncoder(fields=["u", "ad"], half_life=20, max_tracked=4)
    many = one.clone()
    for x, y in rows:
        one.learn_one(x, y)
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        many.learn_many(pd.DataFrame([x for x, _ in chunk]), pd.Series([y for _, y in chunk]))
    assert list(one._stats.items()) == list(many._stats.items())
    assert one.global_ctr == many.global_ctr


def test_max_tracked_bounds_memory():
    enc = DecayedCTREncoder(fields=["event_id"], max_tracked=100)
    for i in range(5000):
        enc.learn_one({"event_id": i}, i % 2)
    assert len(enc._stats) == 100
    assert enc.transform_one({"event_id": 0})["event_id_log_imps"] == 0.0  # forgotten
    assert enc.transform_one({"event_id": 4999})["event_id_log_imps"] == pytest.approx(math.log(2))


@pytest.mark.parametrize(
    "y, error",
    [
        ("1", TypeError),
        (None, TypeError),
        (math.nan, ValueError),
        (-1, ValueError),
        (math.inf, ValueError),
    ],
)
def test_bad_label_raises_and_leaves_state_unchanged(y, error):
    enc = DecayedCTREncoder(fields=["ad"])
    enc.learn_one({"ad": "a"}, 1)
    before = pickle.dumps(enc)
    with pytest.raises(error, match="y must"):
        enc.learn_one({"ad": "a"}, y)
    with pytest.raises(error, match="y must"):
        enc.learn_many(pd.DataFrame({"ad": ["a", "b"]}), pd.Series([1, y], dtype=object))
    assert pickle.dumps(enc) == before


def test_bad_value_raises_naming_the_field_and_leaves_state_unchanged():
    enc = DecayedCTREncoder(fields=["ad", "tags"])
    enc.learn_one({"ad": "a", "tags": "t"}, 1)
    before = pickle.dumps(enc)
    with pytest.raises(TypeError, match="'tags'"):
        enc.learn_one({"ad": "a", "tags": ["t1", "t2"]}, 1)
    with pytest.raises(TypeError, match="'tags'"):
        enc.transform_one({"tags": {"t": 1}})
    assert pickle.dumps(enc) == before


@pytest.mark.parametrize(
    "params",
    [
        {"half_life": 0},
        {"half_life": -1},
        {"prior_strength": 0.0},
        {"max_tracked": 0},
        {"fields": None},
    ],
)
def test_bad_params(params):
    with pytest.raises((TypeError, ValueError)):
        DecayedCTREncoder(**{"fields": ["a"], **params})
