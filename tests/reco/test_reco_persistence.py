"""Rankers: checkpoints, pickling, updaters, schedulers and bad input, as for CTRClassifier."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from river import drift

from river_torchrec.optim.schedulers import DriftAwareLR
from river_torchrec.reco import CTRRanker, TwoTowerRanker

RANKERS = [
    pytest.param(TwoTowerRanker, {"embedding_dim": 8}, id="two_tower"),
    pytest.param(CTRRanker, {"model": "deepfm", "hidden_units": (8,)}, id="deepfm"),
    pytest.param(CTRRanker, {"model": "fm", "feedback": "explicit", "rating_range": (1, 5)}, id="fm_ratings"),
]


def _events(n, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        u, i = int(rng.integers(8)), int(rng.integers(20))
        y = int(rng.integers(1, 6)) if rng.random() < 2 else True
        yield f"u{u}", f"i{i}", y, {"age": 20 + u, "genre": "ab"[i % 2], "hour": int(rng.integers(24))}


def _label(model, y):
    return y if model.rating_range else y >= 3


def _make(cls, params):
    model = cls(user_features=("age",), item_features=("genre",), seed=5, **params)
    for user, item, y, x in _events(150):
        model.learn_one(user, item, _label(model, y), x)
    return model


def _snapshot(model):
    return (
        model.model_.embedding.weight.clone(),
        {n: p.detach().clone() for n, p in model.model_.named_parameters()},
        pickle.dumps((model._catalogue.items, model._catalogue.seen, model._catalogue.positives, model._catalogue.shown)),
        pickle.dumps((model._user_x, model._item_x, dict(model._encoder.slots), model._buffer)),
        pickle.dumps((model._sample_rng.bit_generator.state, model._explore_rng.bit_generator.state)),
        model.n_rejected_,
        {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in model.updater.state_dict().items()},
    )


def _same(a, b):
    assert torch.equal(a[0], b[0])
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert a[2:-1] == b[2:-1]
    ua, ub = a[-1], b[-1]
    assert ua.keys() == ub.keys()
    for k in ua:
        assert torch.equal(ua[k], ub[k]) if isinstance(ua[k], torch.Tensor) else ua[k] == ub[k]


@pytest.mark.parametrize("cls, params", RANKERS)
def test_checkpoint_continues_exactly(cls, params, tmp_path):
    model = _make(cls, params)
    model.save(tmp_path / "ckpt")
    loaded = cls.load(tmp_path / "ckpt")
    assert type(loaded) is cls and repr(loaded) == repr(model)
    for m in (model, loaded):
        assert m.catalogue == model.catalogue
    x = {"hour": 4}
    for user in ("u1", "u3", "nobody"):
        assert loaded.predict_one(user, "i2", x) == model.predict_one(user, "i2", x)
        assert loaded.rank(user, ["i1", "i2", "i3", "zzz"], x) == model.rank(user, ["i1", "i2", "i3", "zzz"], x)
        assert loaded.recommend(user, k=5, x=x) == model.recommend(user, k=5, x=x)
        for explore in ("epsilon", "thompson"):
            assert loaded.recommend(user, k=5, explore=explore) == model.recommend(user, k=5, explore=explore)
    # Learning on from the checkpoint gives bitwise the run that never stopped (negatives included).
    for user, item, y, x in _events(60, seed=1):
        model.learn_one(user, item, _label(model, y), x)
        loaded.learn_one(user, item, _label(loaded, y), x)
    _same(_snapshot(model), _snapshot(loaded))
    assert loaded.recommend("u2", k=10) == model.recommend("u2", k=10)


@pytest.mark.parametrize("cls, params", RANKERS)
def test_pickle_roundtrip_continues_exactly(cls, params):
    model = _make(cls, params)
    model.recommend("u1", k=3)  # fills the item cache, which is not pickled
    copy = pickle.loads(pickle.dumps(model))
    assert copy._cache.ids.shape == (0, 0)
    for user, item, y, x in _events(40, seed=2):
        model.learn_one(user, item, _label(model, y), x)
        copy.learn_one(user, item, _label(copy, y), x)
    _same(_snapshot(model), _snapshot(copy))
    assert copy.recommend("u1", k=10) == model.recommend("u1", k=10)


@pytest.mark.parametrize("optimizer", ["sgd", "osgd", "adam", "adagrad", "rowwise_adagrad", "ftrl"])
@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_every_updater_learns_a_ranker(optimizer, loss):
    model = TwoTowerRanker(embedding_dim=4, optimizer=optimizer, loss=loss, lr=0.1, init_std=0.1, n_negatives=4, seed=0)
    before = None
    for t in range(150):
        model.learn_one(f"u{t % 2}", f"i{(t % 2) + 2 * (t % 5)}", True)
        if t == 10:
            before = model.predict_one("u0", "i0")
    assert model.n_rejected_ == 0
    after = model.predict_one("u0", "i0")
    assert np.isfinite(after) and after != before
    # u0 only ever saw even items, u1 odd ones.
    assert set(model.recommend("u0", k=5, exclude_seen=False)) == {"i0", "i2", "i4", "i6", "i8"}
    own = np.mean([model.predict_one("u0", f"i{j}") for j in range(0, 10, 2)])
    other = np.mean([model.predict_one("u0", f"i{j}") for j in range(1, 10, 2)])
    assert own > other


def test_drift_aware_scheduler_scales_the_ranker_steps():
    sched = DriftAwareLR(
        detector=drift.DummyDriftDetector(t_0=50), boost=4.0, half_life=1e9, cooldown=10**6, rise_only=False
    )
    model = TwoTowerRanker(embedding_dim=4, optimizer="sgd", lr=0.05, scheduler=sched, n_negatives=2, loss="bce", seed=0)
    for t in range(40):
        model.learn_one(f"u{t % 3}", f"i{t % 7}", True)
    assert sched.drifts_ and sched.multiplier() == pytest.approx(4.0, rel=1e-6)
    plain = pickle.loads(pickle.dumps(model))
    plain.scheduler = None
    w0 = model.model_.embedding.weight.clone()
    model.learn_one("u9", "i3", False)  # an observed negative: one event, no sampling
    plain.learn_one("u9", "i3", False)
    d_boost = model.model_.embedding.weight - w0
    d_plain = plain.model_.embedding.weight - w0
    assert d_plain.abs().sum() > 0
    torch.testing.assert_close(d_boost, 4.0 * d_plain, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("cls, params", RANKERS)
def test_bad_input_gets_a_clear_error_and_changes_nothing(cls, params):
    model = _make(cls, params)
    model.recommend("u1", k=3)
    before = _snapshot(model)
    explicit = model.rating_range is not None
    good_y = 4 if explicit else True
    cases = [
        (TypeError, r"^x must be a dict or None, got list$", ("u1", "i1", good_y, ["a"])),
        (TypeError, r"^feature 'hour' has a value of type list \(\[1\]\); expected str or bool", ("u1", "i1", good_y, {"hour": [1]})),
        (ValueError, r"^feature 'hour' is inf; numeric features must be finite", ("u1", "i1", good_y, {"hour": float("inf")})),
        (TypeError, r"^user must be hashable, got list \(\['u'\]\)$", (["u"], "i1", good_y, None)),
        (TypeError, r"^item must be hashable, got set \(set\(\)\)$", ("u1", set(), good_y, None)),
        (ValueError, r"^x\['user'\] is 'u2' but the user is 'u1'; the ids are passed as arguments$", ("u1", "i1", good_y, {"user": "u2"})),
    ]
    if explicit:
        cases += [
            (ValueError, r"^rating must be a number in \[1, 5\], got 7$", ("u1", "i1", 7, None)),
            (ValueError, r"^rating must be a number in \[1, 5\], got True \(bool\)$", ("u1", "i1", True, None)),
            (ValueError, r"^rating must be a number in \[1, 5\], got nan$", ("u1", "i1", float("nan"), None)),
            (ValueError, r"^rating must be a number in \[1, 5\], got '4' \(str\)$", ("u1", "i1", "4", None)),
        ]
    else:
        cases += [
            (ValueError, r"^label must be a bool or 0/1, got 2 \(int\)$", ("u1", "i1", 2, None)),
            (ValueError, r"^label must be a bool or 0/1, got 'yes' \(str\)$", ("u1", "i1", "yes", None)),
            (ValueError, r"^label must be a bool or 0/1, got None \(NoneType\)$", ("u1", "i1", None, None)),
        ]
    for error, message, args in cases:
        with pytest.raises(error, match=message):
            model.learn_one(*args)
        _same(before, _snapshot(model))
    with pytest.raises(TypeError, match=r"^x must be a dict or None, got str$"):
        model.rank("u1", ["i1"], "hour=3")
    with pytest.raises(TypeError, match=r"^item must be hashable, got list \(\[1\]\)$"):
        model.rank("u1", ["i1", [1]])
    with pytest.raises(ValueError, match=r"^k must be an int >= 0, got 2.5$"):
        model.recommend("u1", k=2.5)
    with pytest.raises(ValueError, match=r"^explore must be None, 'greedy', 'epsilon', 'thompson'"):
        model.recommend("u1", explore="softmax")
    _same(before, _snapshot(model))
    # An empty context is an event with no extra fields.
    model.learn_one("u1", "i1", good_y, {})
    assert model.rank("u1", []) == []


def test_constructor_errors_name_the_parameter():
    cases = [
        ({"feedback": "both"}, ValueError, r"^feedback must be 'implicit' or 'explicit', got 'both'$"),
        ({"rating_range": (1, 5)}, ValueError, r"^rating_range applies to feedback='explicit' only$"),
        ({"feedback": "explicit", "rating_range": (5, 1)}, ValueError, r"^rating_range must be a tuple \(low, high\) of finite numbers with low < high, got \(5, 1\)$"),
        ({"n_negatives": -1}, ValueError, r"^n_negatives must be an int >= 0, got -1$"),
        ({"negative_sampling": "hard"}, ValueError, r"^negative_sampling must be one of \['uniform', 'popularity'\], got 'hard'$"),
        ({"loss": "mse"}, ValueError, r"^loss must be 'auto', 'bce' or 'bpr', got 'mse'$"),
        ({"loss": "bpr", "feedback": "explicit"}, ValueError, r"^loss='bpr' needs feedback='implicit' and n_negatives >= 1"),
        ({"user_features": "age"}, TypeError, r"^user_features must be a sequence of feature names, got 'age'$"),
        ({"item_features": ("item",)}, ValueError, r"^item_features must not hold \['item'\]: those names are the ids' fields$"),
        ({"user_features": ("a",), "item_features": ("a",)}, ValueError, r"^\['a'\] cannot be both user and item features$"),
        ({"index": "annoy"}, ValueError, r"^index must be 'exact' or 'faiss', got 'annoy'$"),
        ({"init_std": 0.0}, ValueError, r"^init_std must be > 0, got 0.0$"),
    ]
    for params, error, message in cases:
        with pytest.raises(error, match=message):
            TwoTowerRanker(**params)


@pytest.mark.parametrize("cls", [TwoTowerRanker, CTRRanker])
def test_nan_is_missing_by_default_and_refused_with_missing_error(cls):
    model = cls(user_features=("age",), seed=0)
    model.learn_one("u", "i", True, {"age": 30})
    model.learn_one("u", "j", True, {"age": float("nan")})  # missing: forgets the stored age
    assert model._user_x == {"u": {}}
    strict = cls(user_features=("age",), missing="error", seed=0)
    strict.learn_one("u", "i", True, {"age": 30})
    before = _snapshot(strict)
    with pytest.raises(ValueError, match=r"^feature 'age' is NaN and missing='error' refuses NaN"):
        strict.learn_one("u", "j", True, {"age": float("nan")})
    _same(before, _snapshot(strict))
