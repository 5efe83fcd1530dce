"""FTRL-Proximal against river's FTRL logistic regression, the paper's algorithm and closed forms."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from river import linear_model
from river import optim as river_optim

from river_torchrec import CTRClassifier, datasets
from river_torchrec.optim import DenseGrad, FTRLProximal, SparseGrad

BIAS = "__bias__"


def river_features(x: dict) -> dict:
    """River's view of an event: categorical values one-hot, the intercept a constant feature."""
    out = {BIAS: 1.0}
    for k, v in x.items():
        if isinstance(v, str):
            out[f"{k}={v}"] = 1.0
        elif v is not None:
            out[k] = float(v)
    return out


def our_weights(model: CTRClassifier) -> dict:
    table = model.model_.embedding.weight[:, 0]
    out = {BIAS: model.model_.bias.item()}
    for (field, value), row in model.model_.embedding.key_to_row().items():
        out[field if value is None else f"{field}={value}"] = float(table[row])
    return out


def stream(n: int):
    rng = itertools.cycle([1.0, 0.5, 2.0])
    for x, y in datasets.SyntheticCTR(n_events=n, seed=3):
        yield x, y, next(rng)


@pytest.mark.parametrize(
    "params",
    [
        {"alpha": 0.05, "beta": 1.0, "l1": 0.0, "l2": 1.0},
        {"alpha": 0.3, "beta": 0.5, "l1": 0.0, "l2": 0.01},
    ],
)
def test_matches_river_ftrl_logistic_regression(params):
    ours = CTRClassifier(model="lr", optimizer=FTRLProximal(**params), numeric="raw")
    # River learns the intercept like any other weight, as a constant feature; its own
    # intercept (plain SGD) is frozen at 0.
    theirs = linear_model.LogisticRegression(optimizer=river_optim.FTRLProximal(**params), intercept_lr=0.0)
    for x, y, w in stream(1_000):
        xr = river_features(x)
        # River writes the weights from (z, n) *before* folding a gradient in, so they lag
        # one update behind the paper's. A zero-gradient step brings them up to date
        # without changing z or n (sigma = 0): river then runs Algorithm 1 exactly.
        theirs.optimizer.step(w=theirs._weights, g=dict.fromkeys(xr, 0.0))
        p_ours, p_theirs = ours.predict_proba_one(x)[True], theirs.predict_proba_one(xr)[True]
        assert p_ours == pytest.approx(p_theirs, abs=1e-5)
        ours.learn_one(x, y, w)
        theirs.learn_one(xr, y, w)

    theirs.optimizer.step(w=theirs._weights, g=dict.fromkeys(theirs.weights, 0.0))
    mine, river_w = our_weights(ours), theirs.weights
    assert mine.keys() == river_w.keys()
    assert max(abs(mine[k] - river_w[k]) for k in mine) < 1e-5
    assert theirs.intercept == 0.0
    # The per-coordinate state agrees too (relative: n is a sum of squared gradients).
    state = ours.updater.state_dict()
    rows = ours.model_.embedding.key_to_row()
    for (field, value), row in rows.items():
        name = field if value is None else f"{field}={value}"
        assert float(state["embedding.weight/n"][row, 0]) == pytest.approx(theirs.optimizer.n[name], rel=1e-4, abs=1e-6)
        assert float(state["embedding.weight/z"][row, 0]) == pytest.approx(theirs.optimizer.z[name], rel=1e-4, abs=1e-5)


def reference_ftrl(events, alpha, beta, l1, l2):
    """Algorithm 1 of McMahan et al. (2013), plain Python, float64."""
    z, n = {}, {}

    def weight(i):
        zi = z.get(i, 0.0)
        if abs(zi) <= l1:
            return 0.0
        return -(zi - math.copysign(l1, zi)) / ((beta + math.sqrt(n.get(i, 0.0))) / alpha + l2)

    probas = []
    for x, y, w in events:
        ws = {i: weight(i) for i in x}
        p = 1 / (1 + math.exp(-sum(ws[i] * v for i, v in x.items())))
        probas.append(p)
        for i, v in x.items():
            g = (p - y) * w * v
            sigma = (math.sqrt(n.get(i, 0.0) + g * g) - math.sqrt(n.get(i, 0.0))) / alpha
            z[i] = z.get(i, 0.0) + g - sigma * ws[i]
            n[i] = n.get(i, 0.0) + g * g
    return probas, {i: weight(i) for i in z}


def test_l1_gives_exact_zeros_as_in_the_paper():
    params = {"alpha": 0.1, "beta": 1.0, "l1": 2.0, "l2": 0.5}
    events = list(stream(800))
    ours = CTRClassifier(model="lr", optimizer=FTRLProximal(**params), numeric="raw")
    probas = []
    for x, y, w in events:
        probas.append(ours.predict_proba_one(x)[True])
        ours.learn_one(x, y, w)
    want_p, want_w = reference_ftrl([(river_features(x), float(y), w) for x, y, w in events], **params)
    assert max(abs(a - b) for a, b in zip(probas, want_p)) < 1e-5
    mine = our_weights(ours)
    assert mine.keys() == want_w.keys()
    assert max(abs(mine[k] - want_w[k]) for k in mine) < 1e-5
    zeros = [k for k, v in want_w.items() if v == 0.0]
    assert 0 < len(zeros) < len(want_w)
    assert all(mine[k] == 0.0 for k in zeros)  # exactly, not approximately


def test_first_touch_keeps_random_weights_then_takes_the_paper_step():
    alpha, beta, l1, l2 = 0.1, 1.0, 0.01, 0.5
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(4, 3, generator=gen)
    start = table.clone()
    g = torch.randn(2, 3, generator=gen)
    g[1] = 0.0  # a touched row with zero gradient keeps its weights bit for bit
    updater = FTRLProximal(alpha=alpha, beta=beta, l1=l1, l2=l2)
    updater.step([], [SparseGrad("t", table, torch.tensor([1, 2]), g.clone())])
    w0, g0 = start[1].double(), g[0].double()
    z = -(beta / alpha + l2) * w0 - w0.sign() * l1 + g0 - g0.abs() / alpha * w0
    want = -(z - z.sign() * l1) / ((beta + g0.abs()) / alpha + l2)
    want = torch.where(z.abs() > l1, want, torch.zeros_like(want))
    torch.testing.assert_close(table[1].double(), want, rtol=0, atol=1e-6)
    assert torch.equal(table[2], start[2]) and torch.equal(table[[0, 3]], start[[0, 3]])
    # A tiny gradient moves random factors a little, it does not collapse them to zero.
    updater.step([], [SparseGrad("t", table, torch.tensor([3]), torch.full((1, 3), 1e-6))])
    torch.testing.assert_close(table[3], start[3], rtol=0, atol=1e-4)


def test_reset_state_keeps_the_weights_and_restarts_the_rates():
    w = torch.tensor([0.0, 0.0])
    updater = FTRLProximal(alpha=0.5, beta=1.0, l1=0.0, l2=0.0)
    for _ in range(5):
        updater.step([DenseGrad("w", w, torch.tensor([1.0, -2.0]))], [])
    before = w.clone()
    updater.reset_state()
    updater.step([DenseGrad("w", w, torch.tensor([0.0, 0.0]))], [])
    assert torch.equal(w, before)
    updater.step([DenseGrad("w", w, torch.tensor([1.0, 1.0]))], [])
    # from z0 = -w / alpha * beta: w' = -(z0 + g - |g| w / alpha) / ((1 + |g|) / alpha)
    z = -before / 0.5 + 1.0 - before / 0.5
    torch.testing.assert_close(w, -z / (2.0 / 0.5), rtol=0, atol=1e-6)


def test_alpha_is_the_learning_rate_and_the_scheduler_scales_it():
    updater = FTRLProximal(alpha=0.2)
    assert updater.lr == 0.2
    updater.lr = 0.4
    assert updater.alpha == 0.4 and updater.clone().alpha == 0.4
    a, b = torch.ones(3), torch.ones(3)
    g = torch.tensor([0.5, -1.0, 2.0])
    FTRLProximal(alpha=0.4).step([DenseGrad("w", a, g.clone())], [], lr_scale=0.25)
    FTRLProximal(alpha=0.1).step([DenseGrad("w", b, g.clone())], [])
    assert torch.equal(a, b)
    c = torch.ones(3)
    FTRLProximal().step([DenseGrad("w", c, g.clone())], [], lr_scale=0.0)
    assert torch.equal(c, torch.ones(3))  # a zero multiplier pauses learning
