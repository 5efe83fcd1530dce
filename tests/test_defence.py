"""PoisoningDefence: each signal against its closed form, no cost on clean traffic, state saved and safe."""

from __future__ import annotations

import math
import pickle

import pandas as pd
import pytest
import torch

from river_torchrec import CTRClassifier, datasets
from river_torchrec.defence import PoisoningDefence, _binary_kl

ONLY_ANOMALY = {"max_share": None, "warmup": 0}


def _established(defence: PoisoningDefence, n_users=40, per_user=8, rate_every=10):
    """Established users: ``per_user`` events each on item "a", one user in ``rate_every`` clicking."""
    for i in range(n_users):
        for _ in range(per_user):
            defence.learn({"user_id": f"u{i}", "item_id": "a"}, float(i % rate_every == 0))


def test_bot_clicks_are_cut_once_the_evidence_passes_the_alarm():
    d = PoisoningDefence(**ONLY_ANOMALY, min_age=0)
    _established(d)
    p0 = d.transaction().population_rate()
    baseline = p0  # the target has no established traffic: the prior alone
    weights = [d.learn({"user_id": f"bot{i}", "item_id": "target"}, 1.0) for i in range(10)]
    # n newcomer clicks out of n: n * KL(1 || baseline) nats, flagged once above alarm_nats.
    first = next(n for n in range(1, 11) if n * _binary_kl(1.0, baseline) > d.alarm_nats)
    assert weights == [1.0] * (first - 1) + [0.0] * (10 - first + 1)
    assert d.n_flagged_ == 10 - first + 1
    assert d.weight_removed_ == 10 - first + 1
    assert d.flagged()[0][:2] == ("item_id", "target")


def test_newcomer_non_clicks_on_a_clicked_item_are_cut_too():
    # Suppression: bots sending mass non-clicks on an item established users click a lot.
    d = PoisoningDefence(**ONLY_ANOMALY, min_age=0)
    _established(d, rate_every=1)  # item "a" is clicked by everyone established
    weights = [d.learn({"user_id": f"bot{i}", "item_id": "a"}, 0.0) for i in range(8)]
    assert weights[0] == 1.0 and weights[-1] == 0.0
    # A newcomer's click on that item pushes the rate back towards the baseline: kept.
    assert d.learn({"user_id": "new", "item_id": "a"}, 1.0) == 1.0


def test_a_burst_sender_stays_a_newcomer_and_is_cut():
    d = PoisoningDefence(max_share=None, warmup=0, min_age=100)
    _established(d)
    weights = [d.learn({"user_id": "burst", "item_id": "target"}, 1.0) for _ in range(500)]
    # Others sent nothing during the burst, so its sender never ages: cut after a few clicks.
    assert sum(weights) <= 5 and weights[-1] == 0.0


def test_share_budget_closed_form():
    d = PoisoningDefence(item_fields=(), max_share=0.5, burst_allowance=2.0, share_half_life=1e12)
    weights = [d.learn({"user_id": "a"}, 1.0) for _ in range(7)]
    # granted = min(1, share * G + allowance - g); alone, g tends to allowance / (1 - share) = 4.
    assert weights[:5] == pytest.approx([1.0, 1.0, 1.0, 0.5, 0.25], abs=1e-9)
    assert sum(weights) == pytest.approx(4.0 - 0.25 / 4, abs=1e-9)
    # Another sender's events raise the budget of everyone by share x their weight.
    for _ in range(10):
        assert d.learn({"user_id": "b"}, 0.0) <= 1.0
    assert d.learn({"user_id": "a"}, 1.0) == 1.0


def test_gradient_clip_equals_learning_with_the_clipped_weight():
    events = list(datasets.SyntheticCTR(n_events=300, seed=2))
    clip = PoisoningDefence(user_field=None, item_fields=(), max_logit_gradient=0.3)
    a = CTRClassifier(model="fm", seed=3, defence=clip)
    b = CTRClassifier(model="fm", seed=3, defence=None)
    for x, y in events:
        p = b.predict_proba_one(x)[True]
        b.learn_one(x, y, min(1.0, 0.3 / abs(p - float(y))))
        a.learn_one(x, y)
    for (k, va), vb in zip(a.model_.state_dict().items(), b.model_.state_dict().values()):
        assert torch.equal(va, vb), k
    assert a.defence_.n_clipped_ > 0


def test_default_defence_barely_touches_clean_synthetic_traffic():
    events = list(datasets.SyntheticCTR(n_events=3_000, seed=42))
    a = CTRClassifier(model="fm", seed=1)  # the default defence
    b = CTRClassifier(model="fm", seed=1, defence=None)
    losses = {id(a): [], id(b): []}
    for x, y in events:
        for m in (a, b):
            p = m.predict_proba_one(x)[True]
            losses[id(m)].append(-math.log(p if y else 1 - p))
            m.learn_one(x, y)
    assert isinstance(a.defence_, PoisoningDefence) and b.defence_ is None
    assert a.defence_.n_seen_ == 3_000
    # Three genuine newcomer clicks of 3,000 events lost their weight; no budget was hit.
    assert (a.defence_.n_flagged_, a.defence_.n_limited_, a.defence_.weight_removed_) == (3, 0, 3.0)
    # The budget the defaults were chosen under (docs/robustness.md): 0.001 of LogLoss.
    cost = sum(losses[id(a)]) / 3_000 - sum(losses[id(b)]) / 3_000
    assert abs(cost) < 1e-3


def test_the_parameter_is_never_mutated_and_clone_starts_fresh():
    given = PoisoningDefence(warmup=0)
    model = CTRClassifier(model="lr", defence=given)
    model.learn_one({"user_id": "u", "item_id": "i"}, True)
    assert given.n_seen_ == 0 and model.defence_.n_seen_ == 1
    assert model.clone().defence_.n_seen_ == 0


def _bot_farm_stream(n=1_500):
    events = list(datasets.SyntheticCTR(n_events=n, seed=9))
    out = []
    for i, (x, y) in enumerate(events):
        out.append((x, y))
        if i > n // 2 and i % 15 == 0:
            out.append(({**x, "user_id": f"bot{i % 40}", "item_id": "target"}, True))
    return out


def test_checkpoint_keeps_the_defence_state(tmp_path):
    stream = _bot_farm_stream()
    half = len(stream) // 2 + 200
    a = CTRClassifier(model="fm", seed=1, defence=PoisoningDefence(warmup=100, max_keys=300))
    for x, y in stream[:half]:
        a.learn_one(x, y)
    a.save(tmp_path / "ckpt")
    b = CTRClassifier.load(tmp_path / "ckpt")
    c = pickle.loads(pickle.dumps(a))
    assert vars(b.defence_) == vars(a.defence_)
    for x, y in stream[half:]:
        for m in (a, b, c):
            m.learn_one(x, y)
    assert a.defence_.n_flagged_ > 0
    assert vars(b.defence_) == vars(a.defence_) == vars(c.defence_)
    for (k, va), vb in zip(a.model_.state_dict().items(), b.model_.state_dict().values()):
        assert torch.equal(va, vb), k


def test_tables_are_bounded_whatever_the_number_of_hostile_ids():
    d = PoisoningDefence(max_keys=50, warmup=0)
    for i in range(2_000):
        d.learn({"user_id": f"bot{i}", "item_id": f"item{i}"}, 1.0)
    assert len(d._history) == len(d._keys) == len(d._granted) == 50
    assert d.n_seen_ == 2_000


def test_bad_input_leaves_the_defence_unchanged():
    model = CTRClassifier(model="lr", defence=PoisoningDefence(warmup=0, max_logit_gradient=0.5))
    for x, y in datasets.SyntheticCTR(n_events=50, seed=1):
        model.learn_one(x, y)
    before = pickle.dumps(model.defence_)
    with pytest.raises(TypeError, match="feature 'price'"):
        model.learn_one({"user_id": "u1", "item_id": "i1", "price": [1.0]}, True)
    with pytest.raises(ValueError, match="label must be a bool or 0/1"):
        model.learn_one({"user_id": "u1", "item_id": "i1"}, 3)
    frame = pd.DataFrame({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "price": [1.0, float("inf")]})
    with pytest.raises(ValueError, match="feature 'price' has infinite values"):
        model.learn_many(frame, pd.Series([True, False]))
    assert pickle.dumps(model.defence_) == before


def test_learn_many_weighs_rows_as_learn_one_would():
    stream = _bot_farm_stream(900)
    X = pd.DataFrame([x for x, _ in stream])
    y = pd.Series([bool(v) for _, v in stream])
    a = PoisoningDefence(warmup=50)
    one = [a.learn(x, float(v)) for x, v in stream]
    model = CTRClassifier(model="lr", defence=PoisoningDefence(warmup=50))
    for start in range(0, len(X), 128):
        model.learn_many(X.iloc[start : start + 128], y.iloc[start : start + 128])
    assert vars(model.defence_) == vars(a)
    assert 0.0 in one


def test_frames_without_the_watched_columns_only_advance_the_clock():
    d = PoisoningDefence(half_life=50.0)
    ref = PoisoningDefence(half_life=50.0)
    labels = [float(i % 7 == 0) for i in range(300)]
    for v in labels:
        ref.learn({}, v)
    txn = d.transaction()
    assert txn.weigh_frame(None, {}, labels, [1.0] * 300) == [1.0] * 300
    txn.commit()
    assert d.n_seen_ == ref.n_seen_ == 300
    assert d._population == pytest.approx(ref._population, rel=1e-12)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"max_share": 0}, "max_share must be in (0, 1] or None, got 0"),
        ({"flagged_weight": 2}, "flagged_weight must be in [0, 1], got 2"),
        ({"min_history": 0}, "min_history must be >= 1, got 0"),
        ({"max_logit_gradient": 1.5}, "max_logit_gradient must be in (0, 1] or None, got 1.5"),
        ({"max_keys": 0}, "max_keys must be >= 1, got 0"),
        ({"half_life": 0}, "half_life and share_half_life must be > 0, got 0, 500.0"),
    ],
)
def test_bad_parameters_are_refused(params, message):
    with pytest.raises(ValueError, match=r"^" + re_escape(message) + "$"):
        PoisoningDefence(**params)


def test_a_defence_that_is_not_one_is_refused():
    with pytest.raises(TypeError, match=r"defence must be a PoisoningDefence, 'default' or None, got 'on'"):
        CTRClassifier(defence="on")


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_kl_closed_form():
    assert _binary_kl(1.0, 0.1) == pytest.approx(math.log(10), rel=1e-5)
    assert _binary_kl(0.3, 0.3) == 0.0


@pytest.mark.parametrize(
    "params",
    [{}, {"warmup": 0, "max_logit_gradient": 0.5, "max_keys": 300}, {"max_share": 0.02, "burst_allowance": 2.0},
     {"user_field": None}],
    ids=["default", "clip_small_tables", "tight_budget", "no_user"],
)
@pytest.mark.parametrize("strings_only", [True, False], ids=["str", "mixed"])
def test_compiled_frames_weigh_like_row_by_row_bit_for_bit(monkeypatch, params, strings_only):
    import copy
    import random

    from river_torchrec import _kernels
    from river_torchrec import defence as defence_module

    if not _kernels.available():
        pytest.skip("numba is not installed")
    rng = random.Random(7)
    extra_users = [] if strings_only else [3, 2.5, float("nan"), True]
    extra_items = [] if strings_only else [1.5, 7]
    rowwise = PoisoningDefence(**params)
    compiled = copy.deepcopy(rowwise)
    for _ in range(4):
        n = 300
        users = [rng.choice([f"u{rng.randrange(60)}", f"bot{rng.randrange(400)}", None, *extra_users]) for _ in range(n)]
        items = [rng.choice(["a", "b", "target", None, *extra_items]) for _ in range(n)]
        labels = [float(rng.random() < 0.3 or (isinstance(u, str) and u.startswith("bot"))) for u in users]
        weights = [rng.choice([1.0, 0.5, 2.0]) for _ in range(n)]
        probas = [rng.random() for _ in range(n)]
        out = []
        for defence, threshold in ((rowwise, 10**9), (compiled, 16)):
            monkeypatch.setattr(defence_module, "_COMPILED_FRAME", threshold)
            txn = defence.transaction()
            out.append(txn.weigh_frame(users, {"item_id": items}, labels, weights, probas))
            txn.commit()
        assert out[0] == out[1]
    for attr in ("_history", "_keys", "_granted"):
        assert list(getattr(rowwise, attr).items()) == list(getattr(compiled, attr).items()), attr
    assert rowwise._population == compiled._population and rowwise._total_granted == compiled._total_granted
    assert (rowwise.n_seen_, rowwise.n_flagged_, rowwise.n_limited_, rowwise.n_clipped_, rowwise.weight_removed_) == (
        compiled.n_seen_, compiled.n_flagged_, compiled.n_limited_, compiled.n_clipped_, compiled.weight_removed_
    )
    assert rowwise.n_flagged_ > 0 or params.get("user_field", "user_id") is None
