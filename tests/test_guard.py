"""The numeric guard: a step that goes non-finite is undone exactly, counted, and learning goes on."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from river_torchrec import CTRClassifier, datasets, optim
from river_torchrec.optim import DenseGrad, SparseGrad
from river_torchrec.optim.schedulers import DriftAwareLR

MODELS = ["lr", "fm", "deepfm", "widedeep", "dcnv2"]
EVENTS = list(datasets.SyntheticCTR(n_events=200, seed=2))


def _snapshot(clf: CTRClassifier) -> tuple[bytes, bytes]:
    return pickle.dumps(clf.model_.state_dict()), pickle.dumps(clf.updater.state_dict())


def _trained(**params) -> CTRClassifier:
    clf = CTRClassifier(hidden_units=(8,), embedding_dim=4, **params)
    for x, y in EVENTS[:150]:
        clf.learn_one(x, y)
    return clf


def _inject(clf: CTRClassifier, fn) -> None:
    """Learn a known event while ``fn`` rewrites the gradients of its step."""

    def hook(dense, sparse, loss, n):
        return fn(dense, sparse, loss)

    clf._grad_hook = hook
    try:
        with pytest.warns(RuntimeWarning, match="rejected a step"):
            clf.learn_one(*EVENTS[10])  # every key already has its row
    finally:
        del clf._grad_hook


def _nan_in_dense(dense, sparse, loss):
    dense[-1].grad.view(-1)[0] = math.nan
    return dense, sparse, loss


def _inf_in_rows(dense, sparse, loss):
    sparse[0].grad[-1, 0] = math.inf
    return dense, sparse, loss


def _huge(dense, sparse, loss):
    # Finite, but its square overflows float32: Adam's second moment would become inf.
    for d in dense:
        d.grad.fill_(1e30)
    return dense, sparse, loss


def _nan_loss(dense, sparse, loss):
    return dense, sparse, torch.tensor(math.nan)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fault", [_nan_in_dense, _inf_in_rows, _huge, _nan_loss])
def test_a_faulty_step_leaves_weights_and_updater_state_exactly_as_before(model, fault):
    clf = _trained(model=model)
    before = _snapshot(clf)
    n_steps = clf.updater.n_steps
    _inject(clf, fault)
    assert _snapshot(clf) == before
    assert clf.updater.n_steps == n_steps
    assert clf.n_rejected_ == 1
    # Learning goes on.
    clf.learn_one(*EVENTS[11])
    assert clf.updater.n_steps == n_steps + 1
    assert _snapshot(clf)[0] != before[0]


@pytest.mark.parametrize("updater", [lambda: optim.OGD(lr=1e10), lambda: optim.FTRLProximal(alpha=1e10, l2=0.0)])
def test_weights_that_overflow_float32_are_rolled_back(updater):
    clf = _trained(model="lr", optimizer=updater(), numeric="raw")
    clf.learn_one({"price": 1.0}, True)
    before = _snapshot(clf)
    # A legal input whose step overflows: lr * value * gradient is far beyond float32.
    with pytest.warns(RuntimeWarning, match="rejected a step"):
        clf.learn_one({"price": 3e38}, False)
    assert _snapshot(clf) == before
    assert clf.n_rejected_ == 1
    for _, t in clf.model_.state_dict().items():
        assert torch.isfinite(t).all()


def test_a_rejected_step_does_not_reach_the_scheduler():
    clf = _trained(model="fm", scheduler=DriftAwareLR())
    seen = clf.scheduler.n_events
    _inject(clf, _nan_in_dense)
    assert clf.scheduler.n_events == seen


def test_rejected_step_that_grew_the_table_restores_the_updater_state():
    clf = CTRClassifier(model="fm", embedding_dim=2)
    table = clf.model_.embedding
    clf.learn_one({f"f{i}": "a" for i in range(table.capacity - 2)}, True)
    capacity = table.capacity
    old_rows = table.weight.clone()
    updater_before = pickle.dumps(clf.updater.state_dict())
    clf._grad_hook = lambda dense, sparse, loss, n: _nan_in_dense(dense, sparse, loss)
    with pytest.warns(RuntimeWarning, match="rejected"):
        clf.learn_one({"g1": "x", "g2": "y", "f0": "a"}, True)
    del clf._grad_hook
    assert table.capacity > capacity  # new rows were handed out, as documented
    assert torch.equal(table.weight[:capacity - 1], old_rows[:capacity - 1])
    assert pickle.dumps(clf.updater.state_dict()) == updater_before


def test_every_updater_clips_the_joint_gradient_norm():
    torch.manual_seed(0)
    param, table = torch.randn(5), torch.randn(6, 3)
    g_dense, g_rows, rows = torch.randn(5) * 4, torch.randn(2, 3) * 4, torch.tensor([1, 4])
    norm = float(torch.cat([g_dense, g_rows.flatten()]).norm())
    for name, cls in sorted(optim.UPDATERS.items()):
        clipped, plain = cls(clip_norm=0.5), cls()
        a_param, a_table = param.clone(), table.clone()
        b_param, b_table = param.clone(), table.clone()
        clipped.step([DenseGrad("w", a_param, g_dense.clone())], [SparseGrad("t", a_table, rows, g_rows.clone())])
        scale = 0.5 / (norm + 1e-12)
        plain.step([DenseGrad("w", b_param, g_dense * scale)], [SparseGrad("t", b_table, rows, g_rows * scale)])
        assert torch.allclose(a_param, b_param, atol=1e-6), name
        assert torch.allclose(a_table, b_table, atol=1e-6), name
