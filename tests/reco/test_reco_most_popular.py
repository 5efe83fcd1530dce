"""MostPopular: counts, ties, exclusion, river conventions and bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from river import checks

from river_torchrec.reco import MostPopular


def test_counts_rank_and_recommend():
    model = MostPopular()
    for user, item, y in [("a", "x", 1), ("b", "x", True), ("b", "y", 1), ("c", "z", 0), ("c", "y", 2)]:
        model.learn_one(user, item, y)
    assert model.predict_one("anyone", "x") == 2.0
    assert model.predict_one("anyone", "y") == 2.0
    assert model.predict_one("anyone", "z") == 0.0
    assert model.predict_one("anyone", "never") == 0.0
    # Ties go to the item seen first; unknown items last, in the given order.
    assert model.rank("a", ["never", "z", "y", "x", "other"]) == ["x", "y", "z", "never", "other"]
    assert model.recommend("new", k=2) == ["x", "y"]
    assert model.recommend("b", k=10) == ["z"]
    assert model.recommend("b", k=10, exclude_seen=False) == ["x", "y", "z"]
    assert model.recommend("b", k=0) == []
    assert model.catalogue == ["x", "y", "z"]


def test_threshold_counts_ratings_at_or_above_it():
    model = MostPopular(threshold=4)
    for item, rating in [("a", 5), ("a", 4), ("b", 3), ("b", 3), ("b", 3), ("c", 4.5)]:
        model.learn_one("u", item, rating)
    assert [model.predict_one("u", i) for i in "abc"] == [2.0, 0.0, 1.0]


def test_thompson_is_seeded_and_follows_the_gamma_posterior():
    def run(seed):
        model = MostPopular(seed=seed)
        for i in range(50):
            for _ in range(i):
                model.learn_one(f"u{_}", f"i{i}", True)
        return [model.recommend("nobody", k=5, explore="thompson") for _ in range(5)], model

    lists, model = run(3)
    assert lists == run(3)[0]
    assert lists != run(4)[0]
    # Gamma(1 + n) draws have mean 1 + n and variance 1 + n: check the sampler's moments.
    rng = np.random.default_rng(0)
    draws = np.array([model._sampled_scores("u", None, rng, 1.0) for _ in range(2000)])
    pop = model._catalogue.popularity()
    np.testing.assert_allclose(draws.mean(0), pop, atol=0.5)
    np.testing.assert_allclose(draws.var(0), 1 + pop, rtol=0.15, atol=0.2)


def test_check_estimator():
    for params in MostPopular._unit_test_params():
        checks.check_estimator(MostPopular(**params))


def test_bad_input_is_refused_and_changes_nothing():
    model = MostPopular()
    model.learn_one("u", "i", True)
    before = pickle.dumps(model._catalogue)
    with pytest.raises(TypeError, match=r"^user must be hashable, got list \(\['u'\]\)$"):
        model.learn_one(["u"], "i", True)
    with pytest.raises(TypeError, match=r"^item must be hashable, got dict \(\{\}\)$"):
        model.learn_one("u", {}, True)
    with pytest.raises(ValueError, match=r"^y must be a bool or a finite number, got 'yes' \(str\)$"):
        model.learn_one("u", "i", "yes")
    with pytest.raises(ValueError, match=r"^y must be a bool or a finite number, got nan \(float\)$"):
        model.learn_one("u", "i", float("nan"))
    with pytest.raises(ValueError, match=r"^k must be an int >= 0, got -1$"):
        model.recommend("u", k=-1)
    with pytest.raises(ValueError, match=r"^explore must be None, 'greedy', 'epsilon', 'thompson'"):
        model.recommend("u", explore="ucb")
    with pytest.raises(ValueError, match=r"^threshold must be a finite number or None, got 'high'$"):
        MostPopular(threshold="high")
    assert pickle.dumps(model._catalogue) == before
