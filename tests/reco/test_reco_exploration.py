"""recommend(explore=...): epsilon-greedy, Thompson sampling and UCB, seeded and with the stated posterior."""

from __future__ import annotations

import numpy as np
import pytest

from river_torchrec.reco import CTRRanker, MostPopular, TwoTowerRanker
from river_torchrec.reco.exploration import (
    EpsilonGreedy,
    Greedy,
    ThompsonSampling,
    UpperConfidenceBound,
    held_normals,
    item_prior,
    item_variance,
    top_k,
    user_posterior,
)


def _fit(cls=TwoTowerRanker, seed=0, n=150, **params):
    model = cls(seed=seed, **params)
    rng = np.random.default_rng(0)
    for _ in range(n):
        u = int(rng.integers(6))
        model.learn_one(f"u{u}", f"i{(u % 2) + 2 * int(rng.integers(15))}", True)
    return model


def _clicks(seed=0, n=400, **params):
    """An explicit-feedback two-tower fitted on clicks whose rate depends on the item."""
    model = TwoTowerRanker(feedback="explicit", embedding_dim=4, seed=seed, **params)
    rng = np.random.default_rng(seed)
    for _ in range(n):
        u, i = int(rng.integers(8)), int(rng.integers(20))
        model.learn_one(f"u{u}", f"i{i}", bool(rng.random() < 0.1 + 0.04 * i))
    return model


def _sigmoid(s):
    return 1.0 / (1.0 + np.exp(-s))


def test_top_k_breaks_ties_by_index_and_respects_the_mask():
    scores = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert top_k(scores, 2).tolist() == [1, 2]
    assert top_k(scores, 3, np.array([True, False, True, True, True])).tolist() == [2, 4, 3]
    assert top_k(scores, 9, np.array([True, False, False, False, False])).tolist() == [0]
    big = np.zeros(1000)
    big[[5, 700, 999]] = 1.0
    assert top_k(big, 2).tolist() == [5, 700]


@pytest.mark.parametrize("cls", [TwoTowerRanker, CTRRanker])
def test_epsilon_zero_thompson_scale_zero_and_ucb_alpha_zero_are_greedy(cls):
    model = _fit(cls)
    greedy = model.recommend("u0", k=5)
    assert model.recommend("u0", k=5, explore=Greedy()) == greedy
    assert model.recommend("u0", k=5, explore=EpsilonGreedy(0.0)) == greedy
    assert model.recommend("u0", k=5, explore=ThompsonSampling(scale=0.0)) == greedy
    assert model.recommend("u0", k=5, explore=UpperConfidenceBound(alpha=0.0)) == greedy


@pytest.mark.parametrize("explore", ["epsilon", "thompson", EpsilonGreedy(0.5, decay=3)])
def test_exploration_is_seeded_and_reproducible(explore):
    a, b, c = _fit(seed=1), _fit(seed=1), _fit(seed=2)
    lists_a = [a.recommend("u1", k=5, explore=explore) for _ in range(10)]
    assert lists_a == [b.recommend("u1", k=5, explore=explore) for _ in range(10)]
    assert lists_a != [c.recommend("u1", k=5, explore=explore) for _ in range(10)]
    seen = {a.catalogue[i] for i in a._catalogue.seen["u1"]}
    for rec in lists_a:
        assert len(set(rec)) == 5 and not set(rec) & seen


@pytest.mark.parametrize("cls", [TwoTowerRanker, CTRRanker, MostPopular])
@pytest.mark.parametrize("explore", ["epsilon", "thompson", UpperConfidenceBound(alpha=2.0)])
def test_exploring_lists_never_hold_seen_items(cls, explore):
    model = _fit(cls) if cls is not MostPopular else _fit(cls, seed=0)
    seen = {model.catalogue[i] for i in model._catalogue.seen["u3"]}
    n_allowed = len(model.catalogue) - len(seen)
    for _ in range(20):
        rec = model.recommend("u3", k=n_allowed + 3, explore=explore)
        assert len(rec) == n_allowed == len(set(rec)) and not set(rec) & seen


def test_epsilon_swaps_that_share_of_slots_for_uniform_draws():
    model = _fit()
    greedy = model.recommend("u0", k=10)
    policy = EpsilonGreedy(epsilon=0.3)
    swapped, counts = 0, {}
    for _ in range(200):
        rec = model.recommend("u0", k=10, explore=policy)
        swapped += sum(r != g for r, g in zip(rec, greedy))
        for r, g in zip(rec, greedy):
            if r != g:
                counts[r] = counts.get(r, 0) + 1
    # A swapped slot may draw the greedy item of another slot, so slightly under 0.3.
    assert 0.24 < swapped / 2000 < 0.34
    assert len(counts) >= len(model.catalogue) - len(model._catalogue.seen["u0"]) - 2


def test_decaying_epsilon_follows_its_schedule():
    policy = EpsilonGreedy(0.4, decay=4)
    assert [policy.rate(n) for n in (0, 4, 16, 64)] == [0.4, 0.4, 0.2, 0.1]
    model = _fit()
    n_seen = len(model._catalogue.seen["u0"])  # 15 distinct items
    expected = 0.4 * np.sqrt(4 / n_seen)
    greedy = model.recommend("u0", k=1)
    changed = np.mean([model.recommend("u0", k=1, explore=policy) != greedy for _ in range(3000)])
    assert abs(changed - expected) < 0.03
    # A new user gets the full rate.
    new_greedy = model.recommend("nobody", k=1)
    changed = np.mean([model.recommend("nobody", k=1, explore=policy) != new_greedy for _ in range(3000)])
    assert abs(changed - 0.4 * (1 - 1 / len(model.catalogue))) < 0.03


def test_user_posterior_is_the_closed_form_weighted_regression():
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(6, 3))
    scores = rng.normal(size=6)
    evidence = {0: 2.0, 3: 1.0, 5: 4.0}
    shown = np.array([3.0, 0.0, 1.0, 2.0, 0.0, 5.0])
    got = user_posterior(vectors, scores, evidence, shown, prior_var=0.5)
    p = _sigmoid(scores)
    w = p * (1 - p)
    lam0 = np.sum(shown * (vectors**2).sum(1)) / shown.sum() / 0.5
    X = vectors[[0, 3, 5]]
    W = np.diag([2.0 * w[0], 1.0 * w[3], 4.0 * w[5]])
    np.testing.assert_allclose(got, lam0 * np.eye(3) + X.T @ W @ X, rtol=1e-12)
    # Bayesian regression: more evidence only narrows the posterior.
    wider = np.linalg.inv(user_posterior(vectors, scores, {0: 2.0}, shown, 0.5))
    narrower = np.linalg.inv(user_posterior(vectors, scores, {0: 20.0}, shown, 0.5))
    assert np.all(np.linalg.eigvalsh(wider - narrower) >= -1e-12)
    # The prior is in the units of the vectors: doubling them leaves every score's variance as is.
    cov, cov2 = np.linalg.inv(got), np.linalg.inv(user_posterior(2 * vectors, scores, evidence, shown, 0.5))
    np.testing.assert_allclose(4 * np.einsum("ij,jk,ik->i", vectors, cov2, vectors),
                               np.einsum("ij,jk,ik->i", vectors, cov, vectors), rtol=1e-10)
    # Without evidence the user term of an evidence-weighted average item has variance prior_var.
    bare = np.linalg.inv(user_posterior(vectors, scores, {}, shown, 0.5))
    var = np.einsum("ij,jk,ik->i", vectors, bare, vectors)
    assert np.sum(shown * var) / shown.sum() == pytest.approx(0.5)


def test_item_variance_is_the_method_of_moments_empirical_bayes():
    shown = np.array([10.0, 20.0, 40.0, 0.0, 5.0])
    positives = np.array([1.0, 8.0, 30.0, 0.0, 2.0])
    has = shown > 0
    r = positives[has] / shown[has]
    tau2_rate = np.var(r) - np.mean(r * (1 - r) / shown[has])
    mean = positives.sum() / shown.sum()
    tau2 = tau2_rate / (mean * (1 - mean)) ** 2
    assert item_prior(shown, positives) == pytest.approx(tau2, rel=1e-12)
    got = item_variance(shown, positives)
    rate = (positives + mean) / (shown + 1)
    np.testing.assert_allclose(got, 1 / (1 / tau2 + shown * rate * (1 - rate)), rtol=1e-12)
    assert got[3] == pytest.approx(tau2)  # an item never shown keeps the prior variance
    # Identical rates everywhere: no between-item variance to explore on.
    assert item_prior(np.array([10.0, 10.0, 10.0]), np.array([3.0, 3.0, 3.0])) == 0.0
    assert not item_variance(np.array([10.0, 10.0, 10.0]), np.array([3.0, 3.0, 3.0])).any()


def test_held_normals_are_standard_and_redrawn_only_on_new_evidence():
    a = held_normals(7, np.zeros(50_000))
    assert abs(a.mean()) < 0.02 and abs(a.std() - 1) < 0.02
    b = held_normals(7, np.r_[np.ones(10), np.zeros(49_990)])
    assert np.all(a[10:] == b[10:]) and not np.any(a[:10] == b[:10])
    assert abs(np.corrcoef(a, held_normals(7, np.ones(50_000)))[0, 1]) < 0.02
    assert not np.any(held_normals(8, np.zeros(10)) == a[:10])


def _posterior_of(model, user):
    scores = model._catalogue_scores(user, None)
    vectors, _ = model.item_vectors()
    cat = model._catalogue
    n = len(cat)
    tau2 = item_prior(cat.shown[:n], cat.positives[:n])
    precision = user_posterior(vectors, scores, model._evidence.get(user, {}), cat.shown[:n], tau2)
    user_cov = vectors.astype(np.float64) @ np.linalg.inv(precision) @ vectors.T.astype(np.float64)
    return scores, user_cov, item_variance(cat.shown[:n], cat.positives[:n])


def test_two_tower_thompson_draws_follow_the_bayesian_last_layer():
    model = _clicks()
    model.add_items(["brand new"])
    scores, user_cov, item_var = _posterior_of(model, "u0")
    assert item_var.min() > 0
    rng = np.random.default_rng(0)
    # A fresh item draw per call: the whole posterior, user term and item term.
    draws = np.array([ThompsonSampling(hold=False).scores(model, "u0", None, rng) for _ in range(3000)])
    cov = user_cov + np.diag(item_var)
    np.testing.assert_allclose(draws.mean(0), scores, atol=4 * np.sqrt(cov.diagonal().max() / 3000))
    np.testing.assert_allclose(np.cov(draws.T), cov, atol=0.12 * cov.diagonal().max())
    np.testing.assert_allclose(draws.var(0), cov.diagonal(), rtol=0.12)
    assert item_var[model.catalogue.index("brand new")] == max(item_var)  # no evidence: the widest
    # Held item draws: only the user term varies from call to call.
    held = np.array([ThompsonSampling().scores(model, "u0", None, rng) for _ in range(3000)])
    np.testing.assert_allclose(held.var(0), user_cov.diagonal(), rtol=0.12)
    offset = held.mean(0) - scores
    n = len(model.catalogue)
    expected = np.sqrt(item_var) * held_normals(model.seed, model._catalogue.shown[:n])
    np.testing.assert_allclose(offset, expected, atol=4 * np.sqrt(user_cov.diagonal().max() / 3000))


def test_two_tower_ucb_is_the_score_plus_alpha_posterior_deviations():
    model = _clicks()
    scores, user_cov, item_var = _posterior_of(model, "u2")
    got = UpperConfidenceBound(alpha=1.5).scores(model, "u2", None, np.random.default_rng(0))
    np.testing.assert_allclose(got, scores + 1.5 * np.sqrt(user_cov.diagonal() + item_var), rtol=1e-5, atol=1e-6)
    assert model.recommend("u2", k=4, explore=UpperConfidenceBound()) == model.recommend(
        "u2", k=4, explore=UpperConfidenceBound()
    )


def test_posterior_narrows_as_the_users_evidence_accrues():
    model = _clicks(n=50)
    _, before, _ = _posterior_of(model, "u1")
    for i in range(20):
        model.learn_one("u1", f"i{i}", i % 3 == 0)
    _, after, _ = _posterior_of(model, "u1")
    assert np.median(after.diagonal()) < 0.8 * np.median(before.diagonal())


def test_ctr_ranker_thompson_noise_shrinks_with_evidence():
    model = _fit(CTRRanker, model="fm")
    rng = np.random.default_rng(0)
    draws = np.array([model._sampled_scores("u0", None, rng, 2.0) for _ in range(1500)])
    shown = model._catalogue.shown[: len(model.catalogue)]
    np.testing.assert_allclose(draws.var(0), 4.0 / (1 + shown / 4), rtol=0.15)
    ucb = UpperConfidenceBound(alpha=2.0).scores(model, "u0", None, rng)
    np.testing.assert_allclose(ucb, model._catalogue_scores("u0", None) + 2.0 / np.sqrt(1 + shown / 4))


def test_most_popular_ucb_adds_the_gamma_deviation():
    model = _fit(MostPopular)
    pop = model._catalogue.popularity()
    got = UpperConfidenceBound(alpha=1.0).scores(model, "u0", None, np.random.default_rng(0))
    np.testing.assert_allclose(got, pop + np.sqrt(1 + pop))


def test_bad_exploration_parameters():
    with pytest.raises(ValueError, match=r"^epsilon must be in \[0, 1\], got 1.5$"):
        EpsilonGreedy(1.5)
    with pytest.raises(ValueError, match=r"^decay must be None or > 0, got 0$"):
        EpsilonGreedy(0.1, decay=0)
    with pytest.raises(ValueError, match=r"^scale must be >= 0, got -1$"):
        ThompsonSampling(-1)
    with pytest.raises(ValueError, match=r"^prior_var must be None or > 0, got 0$"):
        ThompsonSampling(prior_var=0)
    with pytest.raises(ValueError, match=r"^alpha must be >= 0, got -0.5$"):
        UpperConfidenceBound(alpha=-0.5)
    with pytest.raises(ValueError, match=r"^explore must be None, 'greedy', 'epsilon', 'thompson'"):
        _fit().recommend("u0", explore="ucb")
