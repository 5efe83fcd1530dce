from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from river import checks

from river_torchrec import CTRClassifier
from river_torchrec.datasets import SyntheticCTR
from river_torchrec.encoding import parse_features
from river_torchrec.explain import field_contributions, integrated_gradients
from river_torchrec.nn import CTRModel, MLP

MODELS = ["lr", "fm", "deepfm", "widedeep", "dcnv2"]
DEEP = ["deepfm", "widedeep", "dcnv2"]


def _trained(model: str, n: int = 300, **params) -> tuple[CTRClassifier, list[dict]]:
    events = list(SyntheticCTR(n_events=n + 8, seed=5))
    clf = CTRClassifier(model=model, embedding_dim=4, hidden_units=(16, 8), lr=0.02, **params)
    for x, y in events[:n]:
        clf.learn_one(x, y)
    probe = [x for x, _ in events[n:]]
    # Unseen values, a missing field and a field the model never saw.
    probe.append({**probe[0], "user_id": "u_never_seen", "device": None, "brand_new": "z"})
    return clf, probe


def _logit(clf: CTRClassifier, x: dict) -> float:
    p = clf.predict_proba_one(x)[True]
    return math.log(p / (1 - p))


def _rows(clf: CTRClassifier) -> dict:
    return clf.model_.embedding.key_to_row()


# ------------------------------------------------------------------ closed forms


def test_lr_contributions_are_weight_times_value_on_a_hand_built_model():
    clf = CTRClassifier(model="lr", numeric="raw")
    clf.learn_one({"user": "a", "price": 1.0}, True)
    rows = _rows(clf)
    with torch.no_grad():
        clf.model_.embedding.weight[rows[("user", "a")], 0] = 0.5
        clf.model_.embedding.weight[rows[("price", None)], 0] = -2.0
        clf.model_.bias.fill_(0.25)
    e = clf.explain_one({"user": "a", "price": 3.0})
    assert e.method == "exact"
    assert e.contributions == pytest.approx({"user": 0.5, "price": -6.0}, abs=1e-7)
    assert e.baseline == pytest.approx(0.25, abs=1e-7)
    assert e.logit == pytest.approx(-5.25, abs=1e-6)
    assert e.probability == pytest.approx(1 / (1 + math.exp(5.25)), abs=1e-7)
    assert clf.predict_proba_one({"user": "a", "price": 3.0})[True] == pytest.approx(e.probability, abs=1e-6)


def test_fm_contributions_split_each_pair_evenly_on_a_hand_built_model():
    clf = CTRClassifier(model="fm", embedding_dim=2, numeric="raw")
    clf.learn_one({"a": "x", "b": "y", "c": 1.0}, True)
    rows = _rows(clf)
    weights = {"a": (0.1, 1.0, 2.0), "b": (-0.2, 0.5, -1.0), "c": (0.3, 2.0, 0.0)}
    keys = {"a": ("a", "x"), "b": ("b", "y"), "c": ("c", None)}
    with torch.no_grad():
        for f, w in weights.items():
            clf.model_.embedding.weight[rows[keys[f]]] = torch.tensor(w)
        clf.model_.bias.fill_(-0.5)
    values = {"a": 1.0, "b": 1.0, "c": 1.5}
    # Rendle's FM term by term: w_f v_f + half of <e_f, e_g> v_f v_g for every other g.
    expected = {}
    for f in values:
        total = weights[f][0] * values[f]
        for g in values:
            if g != f:
                dot = sum(p * q for p, q in zip(weights[f][1:], weights[g][1:]))
                total += 0.5 * dot * values[f] * values[g]
        expected[f] = total
    e = clf.explain_one({"a": "x", "b": "y", "c": 1.5})
    assert e.method == "exact"
    assert e.contributions == pytest.approx(expected, abs=1e-6)
    # 0.1 - 0.2 + 0.45 + (-1.5 + 3 + 1.5) = 3.35, plus the bias.
    assert e.logit == pytest.approx(-0.5 + 3.35, abs=1e-6)
    assert e.baseline == pytest.approx(-0.5)


@pytest.mark.parametrize("model", ["lr", "fm"])
def test_exact_contributions_add_up_to_the_logit(model):
    clf, probe = _trained(model)
    for x in probe:
        e = clf.explain_one(x)
        assert e.method == "exact"
        assert e.baseline == pytest.approx(clf.model_.bias.item(), abs=1e-7)
        assert abs(e.baseline + sum(e.contributions.values()) - e.logit) < 1e-5
        assert e.logit == pytest.approx(_logit(clf, x), abs=1e-5)
    assert e.contributions["brand_new"] == 0.0 and e.contributions["device"] == 0.0  # last probe


def test_integrated_gradients_reproduce_the_fm_closed_form():
    clf, probe = _trained("fm")
    for x in probe:
        ids, vals = clf._tensors([parse_features(x, clf._log_numeric)], learn=False)
        exact, bias, _ = field_contributions(clf.model_, ids[0], vals[0])
        ig, baseline = integrated_gradients(clf.model_, ids[0], vals[0])
        np.testing.assert_allclose(ig, exact, atol=1e-9)
        assert baseline == pytest.approx(bias, abs=1e-9)


# --------------------------------------------------------- integrated gradients


@pytest.mark.parametrize("model", DEEP)
def test_deep_contributions_add_up_to_logit_minus_baseline(model):
    clf, probe = _trained(model)
    baseline = clf.explain_one({}).logit  # every field absent
    for x in probe:
        e = clf.explain_one(x)
        assert e.method == "integrated-gradients"
        assert e.baseline == pytest.approx(baseline, abs=1e-6)
        assert abs(e.baseline + sum(e.contributions.values()) - e.logit) < 1e-5
        assert e.logit == pytest.approx(_logit(clf, x), abs=1e-5)
    assert e.contributions["brand_new"] == 0.0 and e.contributions["device"] == 0.0  # last probe


def _riemann_ig(model: CTRModel, ids: torch.Tensor, values: torch.Tensor, steps: int) -> np.ndarray:
    """Midpoint-rule IG through the model's public forward: scaling the values by alpha
    scales every field row by alpha, and ``v_f dF/dv_f = <x_f, dF/dx_f>``."""
    twin = copy.deepcopy(model).double()
    alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    scaled = (alphas[:, None] * values.double()).requires_grad_()
    out = twin(ids.expand(steps, -1), scaled)
    (grad,) = torch.autograd.grad(out.sum(), scaled)
    return (values.double() * grad.mean(0)).numpy()


@pytest.mark.parametrize("model", DEEP)
def test_deep_contributions_match_a_fine_riemann_sum(model):
    clf, probe = _trained(model)
    for x in probe[:3]:
        ids, vals = clf._tensors([parse_features(x, clf._log_numeric)], learn=False)
        ig, _ = integrated_gradients(clf.model_, ids[0], vals[0])
        brute = _riemann_ig(clf.model_, ids, vals[0], steps=20_000)
        np.testing.assert_allclose(ig, brute, atol=1e-4)
        assert np.abs(ig).max() > 1e-3  # the comparison is not between zeros


class _TanhNet(CTRModel):
    """A custom model: a tanh MLP over the factors and no first-order term."""

    uses_linear = False

    def __init__(self, embedding_dim=4, hidden_units=(8,), table=None, **_):
        super().__init__(embedding_dim=embedding_dim, table=table)
        self.mlp = MLP(0, hidden_units)

    def _grow_fields(self, old, new):
        self.mlp.widen(new * self.embedding_dim)

    def forward(self, ids, values):
        _, factors = self.rows(ids, values)
        return self.bias + torch.tanh(self.mlp(factors.flatten(1))).squeeze(-1) * 3


class _TwoLookups(_TanhNet):
    def forward(self, ids, values):
        first = self.embedding(ids[:, :1])
        return super().forward(ids, values) + first.sum(dim=(1, 2))


def test_custom_model_gets_integrated_gradients():
    clf, probe = _trained(_TanhNet)
    for x in probe:
        e = clf.explain_one(x)
        assert e.method == "integrated-gradients"
        assert abs(e.baseline + sum(e.contributions.values()) - e.logit) < 1e-5
    assert any(abs(c) > 1e-3 for c in e.contributions.values())


def test_custom_model_with_two_lookups_is_refused_clearly():
    clf, probe = _trained(_TwoLookups, n=20)
    before = pickle.dumps(clf)
    with pytest.raises(TypeError, match="single"):
        clf.explain_one(probe[0])
    assert pickle.dumps(clf) == before


def test_fm_subclass_overriding_forward_is_not_explained_by_the_fm_formula():
    from river_torchrec.nn import FM

    class Shifted(FM):
        def forward(self, ids, values):
            return super().forward(ids, values) + 1.0

    clf, probe = _trained(Shifted, n=50)
    e = clf.explain_one(probe[0])
    assert e.method == "integrated-gradients"
    assert abs(e.baseline + sum(e.contributions.values()) - e.logit) < 1e-5


# ------------------------------------------------------------ debug_one and purity


@pytest.mark.parametrize("model", MODELS)
def test_debug_one_and_explain_one_change_nothing(model):
    clf, probe = _trained(model, n=100, batch_size=3)
    clf.learn_one(probe[1], True)  # leaves an event in the learn_one buffer
    before = pickle.dumps(clf)
    for x in probe:
        clf.debug_one(x)
        clf.explain_one(x)
    assert pickle.dumps(clf) == before


@pytest.mark.parametrize("model", MODELS)
def test_debug_one_works_before_learning(model):
    clf = CTRClassifier(model=model)
    before = pickle.dumps(clf)
    x = {"user": "ann", "price": 3.0, "page": None}
    e = clf.explain_one(x)
    assert e.contributions == {"user": 0.0, "price": 0.0, "page": 0.0}
    assert e.logit == e.baseline == pytest.approx(_logit(clf, x), abs=1e-6)
    table = clf.debug_one(x)
    assert "Logit" in table and "Probability" in table and "'ann'" in table
    assert pickle.dumps(clf) == before


def test_debug_one_table_is_sorted_by_absolute_contribution():
    clf, probe = _trained("deepfm")
    x = probe[0]
    e = clf.explain_one(x)
    lines = clf.debug_one(x, decimals=6).splitlines()
    assert lines[0].split() == ["Field", "Value", "Contribution"]
    fields = [line.split()[0] for line in lines[1 : 1 + len(x)]]
    assert sorted(fields) == sorted(map(str, x))
    contributions = [abs(e.contributions[f]) for f in fields]
    assert contributions == sorted(contributions, reverse=True)
    tail = lines[1 + len(x) :]
    assert [line.split()[0] for line in tail] == ["Baseline", "Logit", "Probability"]
    assert float(tail[1].split()[-1]) == pytest.approx(e.logit, abs=1e-6)
    assert float(tail[2].split()[-1]) == pytest.approx(e.probability, abs=1e-6)
    assert float(lines[1].split()[-1]) == pytest.approx(e.contributions[fields[0]], abs=1e-6)


def test_bad_input_names_the_field_and_changes_nothing():
    clf, probe = _trained("fm", n=50)
    before = pickle.dumps(clf)
    with pytest.raises(TypeError, match="'user_id'"):
        clf.debug_one({**probe[0], "user_id": ["a", "list"]})
    with pytest.raises(ValueError, match="'price'"):
        clf.explain_one({**probe[0], "price": float("inf")})
    assert pickle.dumps(clf) == before


@pytest.mark.parametrize("params", list(CTRClassifier._unit_test_params()), ids=lambda p: p["model"])
def test_river_runs_check_debug_one(params):
    model = CTRClassifier(**params)
    debug_checks = [c for c in checks.yield_checks(model) if "check_debug_one" in getattr(c, "__name__", "")]
    assert debug_checks, "river's check_estimator should now include check_debug_one"
    for check in debug_checks:
        check(model.clone())
