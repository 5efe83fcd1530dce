"""The item index of TwoTowerRanker: exact scoring always, faiss when it imports."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from river_torchrec.reco import TwoTowerRanker
from river_torchrec.reco.index import FaissIndex


def _ranker(**params):
    model = TwoTowerRanker(embedding_dim=8, item_features=("genre",), seed=0, **params)
    model.add_items([f"cold{i}" for i in range(300)], {f"cold{i}": {"genre": "ab"[i % 2]} for i in range(300)})
    rng = np.random.default_rng(0)
    for _ in range(200):
        i = int(rng.integers(300))
        model.learn_one(f"u{rng.integers(5)}", f"cold{i}", True, {"genre": "ab"[i % 2]})
    return model


def test_add_items_puts_cold_items_in_the_catalogue():
    model = TwoTowerRanker(item_features=("genre",), seed=0)
    model.add_items(["a", "b"], {"a": {"genre": "jazz"}})
    assert model.catalogue == ["a", "b"] and model._item_x == {"a": {"genre": "jazz"}}
    assert model._catalogue.popularity().tolist() == [0.0, 0.0]
    assert sorted(model.recommend("anyone", k=5)) == ["a", "b"]
    vectors, _ = model.item_vectors()
    assert np.abs(vectors).sum(1).min() > 0  # rows of their own, not the padding row
    with pytest.raises(TypeError, match=r"^features of item 'c' must be a dict, got str$"):
        model.add_items(["c"], {"c": "jazz"})
    assert model.catalogue == ["a", "b"]
    # An undeclared key given per item is an item feature (undeclared_features="auto") ...
    model.add_items(["c"], {"c": {"year": 1999}})
    assert model.feature_sides == {"genre": "item", "year": "item"} and model._item_x["c"] == {"year": "1999"}
    # ... and is refused when undeclared keys are context, or when the key is known as the user's.
    strict = TwoTowerRanker(item_features=("genre",), undeclared_features="context", seed=0)
    with pytest.raises(ValueError, match=r"^features of item 'c' hold \['year'\], which are not item features$"):
        strict.add_items(["c"], {"c": {"year": 1999}})
    user_side = TwoTowerRanker(user_features=("age",), seed=0)
    with pytest.raises(ValueError, match=r"^features of item 'c' hold \['age'\], which are not item features$"):
        user_side.add_items(["c"], {"c": {"age": 30}})
    assert strict.catalogue == [] and user_side.catalogue == []


def test_exact_recommend_equals_brute_force_scores():
    model = _ranker()
    vectors, biases = model.item_vectors()
    u, const = model._user_vector("u1", None)
    scores = vectors @ u.numpy() + biases
    seen = model._catalogue.seen["u1"]
    scores[list(seen)] = -np.inf
    expected = [model.catalogue[i] for i in np.argsort(-scores, kind="stable")[:10]]
    assert model.recommend("u1", k=10) == expected


def test_faiss_missing_gives_an_error_naming_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_faiss)
    with pytest.raises(ImportError, match=r"^index='faiss' needs the faiss package: pip install 'river-torchrec\[faiss\]'"):
        TwoTowerRanker(index="faiss")


def test_faiss_index_recall_and_sync_as_vectors_move():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    n, d = 30_000, 16
    centers = rng.standard_normal((64, d))
    vectors = (centers[rng.integers(64, size=n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    biases = (0.1 * rng.standard_normal(n)).astype(np.float32)
    index = FaissIndex(nprobe=32, min_items=0)
    index.sync(vectors, biases, np.arange(n))

    def recall(seen=np.zeros(0, dtype=np.int64)):
        hits = 0
        for _ in range(50):
            u = rng.standard_normal(d).astype(np.float32)
            s = vectors @ u + biases
            s[seen] = -np.inf
            exact = set(np.argsort(-s)[:10].tolist())
            found = index.search(u, 10, seen)
            assert len(found) == 10 and not set(found.tolist()) & set(seen.tolist())
            hits += len(exact & set(found.tolist()))
        return hits / 500

    assert recall() >= 0.95
    assert recall(np.arange(0, n, 3)) >= 0.95
    # Move some items far: once synced, the index finds them where they are now.
    moved = rng.choice(n, 500, replace=False)
    vectors[moved] = (centers[rng.integers(64, size=500)] + 0.3 * rng.standard_normal((500, d))).astype(np.float32)
    index.sync(vectors, biases, moved)
    assert index.n_updates == 500 and index.n_trained == n
    assert recall() >= 0.95
    # A vector that outgrows the norm bound of the L2 transform makes the index re-train.
    star = int(moved[0])
    vectors[star] = 50.0 * centers[0]
    index.sync(vectors, biases, np.array([star]))
    assert index.n_updates == 0
    assert index.search(centers[0].astype(np.float32), 1, np.zeros(0, dtype=np.int64)).tolist() == [star]
    assert recall() >= 0.95


def test_faiss_ranker_recommends_as_exact_when_every_list_is_probed():
    pytest.importorskip("faiss")
    exact, approx = _ranker(), _ranker(index="faiss")
    approx._faiss_min_items = 0  # a small catalogue, all lists probed: the same answers
    def same(user):
        # Equal up to float32 rounding of the transformed distances: compare the exact scores.
        scores = dict(zip(exact.catalogue, exact._catalogue_scores(user, None)))
        got = [scores[i] for i in approx.recommend(user, k=10)]
        np.testing.assert_allclose(got, [scores[i] for i in exact.recommend(user, k=10)], atol=1e-4)

    for user in ("u0", "u3", "new"):
        same(user)
    assert approx._cache.index is not None
    rng = np.random.default_rng(5)
    for _ in range(30):  # vectors move: the index follows
        i = int(rng.integers(300))
        for m in (exact, approx):
            m.learn_one("u0", f"cold{i}", True, {"genre": "ab"[i % 2]})
    same("u0")
