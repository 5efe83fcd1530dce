"""TwoTowerRanker and CTRRanker: river's conventions, batched scoring, feedback, features, negatives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from river import checks, optim, reco

from river_torchrec.reco import CTRRanker, TwoTowerRanker
from river_torchrec.reco.base import _ItemCache
from river_torchrec.reco.negatives import NegativeSampler

RANKERS = [
    pytest.param(TwoTowerRanker, {"embedding_dim": 8}, id="two_tower"),
    pytest.param(TwoTowerRanker, {"embedding_dim": 8, "hidden_units": (8,)}, id="two_tower_mlp"),
    pytest.param(CTRRanker, {"model": "fm"}, id="fm"),
    pytest.param(CTRRanker, {"model": "deepfm", "hidden_units": (8,)}, id="deepfm"),
    pytest.param(CTRRanker, {"model": "dcnv2", "hidden_units": (8,)}, id="dcnv2"),
]


def _stream(n_users=12, n_items=30, n=400, seed=0):
    """Users in two taste groups, items in two genres, with user and item side features."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        u = int(rng.integers(n_users))
        genre = "jazz" if u % 2 == 0 else "rock"
        if rng.random() < 0.2:
            genre = "rock" if genre == "jazz" else "jazz"
        i = int(rng.integers(n_items // 2)) * 2 + (0 if genre == "jazz" else 1)
        x = {"age": 20.0 + u, "genre": "jazz" if i % 2 == 0 else "rock", "hour": int(rng.integers(24))}
        yield f"u{u}", f"i{i}", x


def _fit(cls, params, **more):
    model = cls(user_features=("age",), item_features=("genre",), seed=3, **params, **more)
    for user, item, x in _stream():
        model.learn_one(user, item, True, x)
    return model


@pytest.mark.parametrize("cls", [TwoTowerRanker, CTRRanker])
def test_check_estimator(cls):
    for params in cls._unit_test_params():
        checks.check_estimator(cls(**params))


def test_river_biasedmf_example_with_ours_swapped_in():
    # The docstring example of river.reco.BiasedMF, with one line changed.
    dataset = (
        ({"user": "Alice", "item": "Superman"}, 8),
        ({"user": "Alice", "item": "Terminator"}, 9),
        ({"user": "Alice", "item": "Star Wars"}, 8),
        ({"user": "Alice", "item": "Notting Hill"}, 2),
        ({"user": "Alice", "item": "Harry Potter"}, 5),
        ({"user": "Bob", "item": "Superman"}, 8),
        ({"user": "Bob", "item": "Terminator"}, 9),
        ({"user": "Bob", "item": "Star Wars"}, 8),
        ({"user": "Bob", "item": "Notting Hill"}, 2),
    )
    theirs = reco.BiasedMF(
        n_factors=10,
        bias_optimizer=optim.SGD(0.025),
        latent_optimizer=optim.SGD(0.025),
        latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=71),
    )
    ours = TwoTowerRanker(feedback="explicit", rating_range=(0, 10), embedding_dim=10, lr=0.1, seed=71)
    for model in (theirs, ours):
        for x, y in dataset:
            model.learn_one(**x, y=y)
    assert theirs.predict_one(user="Bob", item="Harry Potter") == pytest.approx(6.489025)
    assert isinstance(ours.predict_one(user="Bob", item="Harry Potter"), float)
    # With more passes ours fits the ratings and ranks Bob's films as Alice rated them.
    for _ in range(60):
        for x, y in dataset:
            ours.learn_one(**x, y=y)
    mae = np.mean([abs(ours.predict_one(**x) - y) for x, y in dataset])
    assert mae < 0.6
    assert ours.rank("Bob", {"Notting Hill", "Terminator", "Harry Potter"}) == ["Terminator", "Harry Potter", "Notting Hill"]
    assert 2 < ours.predict_one(user="Bob", item="Harry Potter") < 8


@pytest.mark.parametrize("cls, params", RANKERS)
def test_rank_is_one_batch_equal_to_predict_one(cls, params):
    model = _fit(cls, params)
    items = model.catalogue[:20] + ["never-seen"]
    x = {"age": 25.0, "hour": 7}
    single = np.array([model.predict_one("u4", i, x) for i in items])
    ranked = model.rank("u4", set(items), x)
    assert sorted(ranked) == sorted(items)
    assert [single[items.index(i)] for i in ranked] == sorted(single, reverse=True)
    # The batched catalogue scores are the per-item logits.
    logits = model._catalogue_scores("u4", x)
    cat = model.catalogue
    per_item = np.array([model.predict_one("u4", i, x) for i in cat])
    np.testing.assert_allclose(logits, np.log(per_item / (1 - per_item)), atol=1e-4)


@pytest.mark.parametrize("cls, params", RANKERS)
def test_recommend_is_the_top_of_all_unseen_items(cls, params):
    model = _fit(cls, params)
    for user in ("u0", "u1", "new user"):
        cat = model.catalogue
        seen = {cat[i] for i in model._catalogue.seen.get(user, set())}
        scores = {i: model.predict_one(user, i) for i in cat if i not in seen}
        best = sorted(scores, key=scores.get, reverse=True)[:5]
        got = model.recommend(user, k=5)
        assert not set(got) & seen
        np.testing.assert_allclose([scores[i] for i in got], [scores[i] for i in best], atol=1e-6)
        assert len(model.recommend(user, k=1000)) == len(cat) - len(seen)
        assert len(model.recommend(user, k=1000, exclude_seen=False)) == len(cat)


@pytest.mark.parametrize("hidden", [(), (8,)])
def test_cached_item_vectors_follow_every_step(hidden):
    model = TwoTowerRanker(embedding_dim=8, hidden_units=hidden, item_features=("genre",), seed=1)
    stream = list(_stream(n=600, seed=4))
    for t, (user, item, x) in enumerate(stream):
        model.learn_one(user, item, True, x)
        if t % 37 == 0:
            model.recommend(user, k=3)  # refreshes the cache incrementally
    cached_v, cached_b = model.item_vectors()
    model._cache = _ItemCache()  # recompute everything from scratch
    fresh_v, fresh_b = model.item_vectors()
    np.testing.assert_allclose(cached_v, fresh_v, atol=1e-6)
    np.testing.assert_allclose(cached_b, fresh_b, atol=1e-6)


def test_implicit_negatives_are_never_items_the_user_interacted_with():
    model = TwoTowerRanker(embedding_dim=4, n_negatives=5, seed=0)
    learned = []
    original = model._learn_events

    def spy(events):
        learned.append([({f: k for f, k, _ in p}, t) for p, t, _ in events])
        return original(events)

    model._learn_events = spy
    rng = np.random.default_rng(1)
    history: dict[str, set[str]] = {}
    for _ in range(300):
        user, item = f"u{rng.integers(5)}", f"i{rng.integers(25)}"
        history.setdefault(user, set()).add(item)
        n_before = len(learned)
        model.learn_one(user, item, True)
        (group,) = learned[n_before:]
        (pos, t0), *negs = group
        assert t0 == 1.0 and pos["item"] == item
        assert all(t == 0.0 for _, t in negs)
        neg_items = [p["item"] for p, _ in negs]
        assert len(set(neg_items)) == len(neg_items)
        assert not set(neg_items) & history[user]
        free = len(model.catalogue) - len(history[user])
        assert len(neg_items) == min(5, free)


def test_uniform_and_popularity_sampling_frequencies():
    rng = np.random.default_rng(0)
    uniform = NegativeSampler("uniform")
    counts = np.zeros(10)
    for _ in range(4000):
        counts[uniform.sample(10, {0}, 3, rng)] += 1
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / counts[1:].sum(), np.full(9, 1 / 9), atol=0.015)

    popular = NegativeSampler("popularity")
    weights = np.array([0, 1, 2, 3, 4, 10])
    for item, w in enumerate(weights):
        for _ in range(w):
            popular.observe(item, rng)
    counts = np.zeros(6)
    for _ in range(20000):
        counts[popular.sample(6, {5}, 1, rng)] += 1
    assert counts[5] == 0 and counts[0] == 0
    np.testing.assert_allclose(counts[1:5] / counts.sum(), weights[1:5] / weights[1:5].sum(), atol=0.01)


@pytest.mark.parametrize("loss", ["bce", "bpr"])
@pytest.mark.parametrize("cls, params", [(CTRRanker, {"model": "fm"}), (CTRRanker, {"model": "deepfm"}), (TwoTowerRanker, {})])
def test_manual_gradients_match_autograd(cls, params, loss, monkeypatch):
    model = cls(loss=loss, n_negatives=2, item_features=("genre",), seed=0, **params)
    for user, item, x in _stream(n=60):
        model.learn_one(user, item, True, x)
    from river_torchrec.encoding import parse_features

    events = [{"user": "u1", "item": "i2", "genre": "jazz"}, {"user": "u1", "item": "i4"}, {"user": "u3", "item": "i5"}]
    ids, vals = model._tensors([parse_features(e, True) for e in events], learn=False)
    y, w = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1.0, 0.5, 2.0])
    params = model._trainable()
    manual = model._gradients(ids, vals, y, w, params)
    monkeypatch.setattr(type(model.model_), "supports_manual_grad", False)
    auto = model._gradients(ids, vals, y, w, params)
    assert float(manual[1]) == pytest.approx(float(auto[1]), rel=1e-6)
    np.testing.assert_allclose(manual[0].numpy(), auto[0].numpy(), rtol=1e-5, atol=1e-7)
    auto_dense = {d.name: d.grad for d in auto[2]}
    for d in manual[2]:
        torch.testing.assert_close(d.grad, auto_dense[d.name], rtol=1e-5, atol=1e-7)
    (sm,), (sa,) = manual[3], auto[3]
    order_m, order_a = torch.argsort(sm.rows), torch.argsort(sa.rows)
    torch.testing.assert_close(sm.rows[order_m], sa.rows[order_a])
    torch.testing.assert_close(sm.grad[order_m], sa.grad[order_a], rtol=1e-5, atol=1e-7)


def test_bpr_objective_closed_form():
    model = CTRRanker(model="fm", loss="bpr", n_negatives=2, seed=0)
    logits = torch.tensor([2.0, 0.5, -1.0, 0.3, 0.9], requires_grad=True)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    w = torch.tensor([1.0, 1.0, 2.0, 1.0, 0.5])
    losses, loss = model._objective(logits, y, w)
    pairs = [-math.log(1 / (1 + math.exp(-(2.0 - 0.5)))), -2 * math.log(1 / (1 + math.exp(-(2.0 + 1.0)))),
             -0.5 * math.log(1 / (1 + math.exp(-(0.3 - 0.9))))]
    assert float(loss.detach()) == pytest.approx(sum(pairs) / 3, rel=1e-6)
    np.testing.assert_allclose(
        losses.detach().numpy(), [(pairs[0] + pairs[1]) / 2, pairs[0], pairs[1], pairs[2], pairs[2]], rtol=1e-6
    )


@pytest.mark.parametrize("cls", [TwoTowerRanker, CTRRanker])
def test_explicit_ratings_are_soft_labels_on_the_rating_scale(cls):
    model = cls(feedback="explicit", rating_range=(1, 5), lr=0.1, seed=0)
    assert model._label(4) == 0.75 and model._label(1) == 0.0 and model._label(5.0) == 1.0
    assert model.predict_one("a", "x") == pytest.approx(3.0, abs=0.5)  # p = 0.5 before learning
    for _ in range(200):
        model.learn_one("a", "x", 5)
        model.learn_one("a", "y", 1)
        model.learn_one("b", "x", 4)
    assert model.predict_one("a", "x") > 4.5
    assert model.predict_one("a", "y") < 1.5
    assert 1 <= model.predict_one("b", "y") <= 5
    assert model.rank("a", ["y", "x"]) == ["x", "y"]


def test_implicit_zero_is_an_observed_negative():
    model = TwoTowerRanker(embedding_dim=4, loss="bce", seed=0)
    model.learn_one("a", "x", True)
    p0 = model.predict_one("a", "y")
    for _ in range(30):
        model.learn_one("a", "y", False)
    assert model.predict_one("a", "y") < p0
    assert "y" not in model.recommend("a", k=5)
    bpr = TwoTowerRanker(embedding_dim=4, seed=0)  # loss="auto": BPR for implicit feedback
    assert bpr._loss == "bpr" and TwoTowerRanker(feedback="explicit")._loss == "bce"
    assert TwoTowerRanker(n_negatives=0)._loss == "bce"
    bpr.learn_one("a", "x", True)
    before = bpr.model_.embedding.weight.clone()
    bpr.learn_one("a", "y", 0)  # BPR learns from pairs only: marked as seen, not learned
    assert torch.equal(before, bpr.model_.embedding.weight)
    assert bpr.recommend("a", k=5) == []


@pytest.mark.parametrize("cls", [TwoTowerRanker, CTRRanker])
def test_side_features_are_stored_per_user_and_item_and_context_is_not(cls):
    model = cls(user_features=("age",), item_features=("genre", "year"), seed=0)
    model.learn_one("a", "x", True, {"age": 30, "genre": "jazz", "year": 1959, "hour": 3})
    model.learn_one("b", "y", True, {"age": 40, "genre": "rock", "hour": 5})
    # Numbers describing a user or an item are stored as categories (side_numeric="category").
    assert model._user_x == {"a": {"age": "30"}, "b": {"age": "40"}}
    assert model._item_x == {"x": {"genre": "jazz", "year": "1959"}, "y": {"genre": "rock"}}
    model.learn_one("a", "x", True, {"year": None, "genre": "bebop"})  # latest wins, None removes
    assert model._item_x["x"] == {"genre": "bebop"}
    # Candidates are scored with their stored features: rank agrees with explicit ones.
    stored = model.predict_one("a", "x", {"hour": 3})
    assert stored == pytest.approx(model.predict_one("a", "x", {"hour": 3, "genre": "bebop", "age": 30}), abs=1e-7)
    assert stored != pytest.approx(model.predict_one("a", "x", {"hour": 3, "genre": "rock"}), abs=1e-7)
    logits = model._catalogue_scores("a", {"hour": 3})
    assert 1 / (1 + math.exp(-logits[0])) == pytest.approx(stored, abs=1e-5)


def test_integer_ids_are_categories_and_differ_from_their_strings():
    model = TwoTowerRanker(embedding_dim=4, seed=0)
    model.learn_one(1, 2, True)
    model.learn_one("1", "2", True)
    assert model.catalogue == [2, "2"]
    assert len(model.model_.embedding) == 4
    assert model.recommend(1, k=5) == ["2"]


def test_batch_size_keeps_groups_whole_and_flush_applies_them():
    model = TwoTowerRanker(embedding_dim=4, n_negatives=3, batch_size=10, loss="bpr", seed=0)
    for i in range(6):
        model.learn_one("c", f"c{i}", True)  # c has seen every item: groups of one event
    assert len(model._buffer) == 6
    model.learn_one("a", "a0", True)  # 1 + 3 negatives: 10 events, flushed whole
    assert model._buffer == []
    for i in range(1, 4):
        model.learn_one("a", f"a{i}", True)  # 4, 8, then 12 events: flushed
    assert model._buffer == []
    model.learn_one("a", "a4", True)
    assert len(model._buffer) == 4 and [t for _, t, _ in model._buffer] == [1.0, 0.0, 0.0, 0.0]
    before = model.model_.embedding.weight.clone()
    model.flush()
    assert model._buffer == []
    assert not torch.equal(before, model.model_.embedding.weight)


def test_ctr_ranker_takes_the_numpy_one_event_path_and_matches_torch():
    fast = CTRRanker(model="deepfm", feedback="explicit", rating_range=(1, 5), hidden_units=(8,), item_features=("genre",), seed=2)
    slow = CTRRanker(model="deepfm", feedback="explicit", rating_range=(1, 5), hidden_units=(8,), item_features=("genre",), seed=2)
    slow._use_numpy = False
    rng = np.random.default_rng(0)
    for t in range(150):
        u, i = f"u{rng.integers(6)}", int(rng.integers(12))
        x = {"genre": "ab"[i % 2], "hour": int(rng.integers(24))}
        r = int(rng.integers(1, 6))
        for m in (fast, slow):
            m.learn_one(u, f"i{i}", r, x)
    assert fast._numpy() is not None and slow._numpy() is None
    torch.testing.assert_close(fast.model_.embedding.weight, slow.model_.embedding.weight, rtol=1e-5, atol=1e-6)
    for u in ("u0", "u3"):
        assert abs(fast.predict_one(u, "i2") - slow.predict_one(u, "i2")) < 1e-5
