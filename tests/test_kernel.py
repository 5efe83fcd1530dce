"""The compiled one-event step (river_torchrec._kernels) agrees with the torch path and the NumPy
twin, and keeps their guarantees: rejection, checkpoints, schedulers, no numba."""

from __future__ import annotations

import copy
import pickle
import math
import warnings

import numpy as np
import pytest
import torch

from river_torchrec import CTRClassifier, _kernels, datasets, optim
from river_torchrec.optim.schedulers import DriftAwareLR
from helpers import assert_same_state, assert_unchanged, snapshot

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")

EVENTS = list(datasets.SyntheticCTR(n_events=300, drift="abrupt", drift_at=150, seed=5))

UPDATERS = {
    "ogd": lambda: optim.OGD(lr=0.05),
    "adagrad": lambda: optim.Adagrad(),
    "rowwise_adagrad": lambda: optim.RowWiseAdagrad(lr=0.05),
    "adagrad_s0_clipped": lambda: optim.Adagrad(lr=0.05, initial_accumulator_value=0.1, clip_norm=0.5),
}
MODELS = ["lr", "fm", "deepfm", "widedeep"]


def _progressive(clf: CTRClassifier, events) -> np.ndarray:
    out = []
    for x, y in events:
        out.append(clf.predict_proba_one(x)[True])
        clf.learn_one(x, y)
    return np.array(out)


def _kernel_on(clf: CTRClassifier) -> bool:
    fast = clf._memo.numpy
    return fast is not None and fast._layout is not None and fast._layout.kernel is not None


def _assert_close(a: CTRClassifier, b: CTRClassifier, rtol: float, atol: float) -> None:
    assert_same_state(a, b, rtol, atol)


@pytest.mark.parametrize("updater", sorted(UPDATERS))
@pytest.mark.parametrize("model", MODELS)
def test_one_kernel_step_equals_one_torch_step_to_1e6(model, updater):
    trained = CTRClassifier(model=model, optimizer=UPDATERS[updater](), defence=None)
    trained._use_numpy = False
    _progressive(trained, EVENTS[:60])
    kernel, torch_path = copy.deepcopy(trained), copy.deepcopy(trained)
    kernel._use_numpy = True
    for x, y in EVENTS[60:63]:  # the first builds the workspace, the others reuse it
        assert kernel.predict_proba_one(x)[True] == pytest.approx(torch_path.predict_proba_one(x)[True], abs=1e-7)
        kernel.learn_one(x, y)
        torch_path.learn_one(x, y)
        assert _kernel_on(kernel)
        _assert_close(kernel, torch_path, rtol=1e-6, atol=1e-7)
    assert kernel.updater.n_steps == torch_path.updater.n_steps == 63


@pytest.mark.parametrize("updater", sorted(UPDATERS))
@pytest.mark.parametrize("model", MODELS)
def test_kernel_stream_matches_the_torch_path(model, updater):
    kernel = CTRClassifier(model=model, optimizer=UPDATERS[updater](), defence=None)
    torch_path = copy.deepcopy(kernel)
    torch_path._use_numpy = False
    events = EVENTS[:150]  # across the drift at event 150 for the last one
    pk, pr = _progressive(kernel, events), _progressive(torch_path, events)
    assert _kernel_on(kernel)
    np.testing.assert_allclose(pk, pr, rtol=0, atol=1e-6)
    _assert_close(kernel, torch_path, rtol=1e-3, atol=1e-4)
    assert np.std(pk) > 0.005  # it did learn


def test_kernel_stream_matches_the_numpy_twin():
    kernel = CTRClassifier(defence=None)
    twin = copy.deepcopy(kernel)
    twin._use_kernel = False
    pk, pt = _progressive(kernel, EVENTS), _progressive(twin, EVENTS)
    assert _kernel_on(kernel) and not _kernel_on(twin)
    np.testing.assert_allclose(pk, pt, rtol=0, atol=1e-6)
    _assert_close(kernel, twin, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "params",
    [
        {"embeddings": "hash", "n_buckets": 16},  # positions sharing a row
        {"max_rows": 20},  # rows recycled between prediction and learning
        {"min_count": 3},
        {"scheduler": DriftAwareLR()},
    ],
    ids=["hash16", "max_rows", "min_count", "drift_aware"],
)
def test_kernel_matches_the_torch_path_with_table_and_stream_options(params):
    kernel = CTRClassifier(model="deepfm", embedding_dim=4, hidden_units=(16, 8), lr=0.05, defence=None, **params)
    torch_path = copy.deepcopy(kernel)
    torch_path._use_numpy = False
    events = EVENTS[:120]
    np.testing.assert_allclose(_progressive(kernel, events), _progressive(torch_path, events), rtol=0, atol=1e-6)
    assert _kernel_on(kernel)
    _assert_close(kernel, torch_path, rtol=1e-3, atol=1e-4)
    if "scheduler" in params:
        assert kernel.scheduler.n_events == torch_path.scheduler.n_events == len(events)


@pytest.mark.parametrize("model", ["fm", "deepfm"])
def test_a_rejected_kernel_step_changes_nothing(model):
    clf = CTRClassifier(model=model, hidden_units=(8,), embedding_dim=4, numeric="raw", defence=None)
    _progressive(clf, EVENTS[:60])
    assert _kernel_on(clf)
    snap = snapshot(clf)
    x, y = EVENTS[10]
    # A finite event whose gradient squares overflow float32 in Adagrad's sums.
    huge = {**x, "price": 3e38} if "price" in x else {**x, "num_0": 3e38}
    with pytest.warns(RuntimeWarning, match="rejected a step"):
        clf.learn_one(huge, True)
    assert clf.n_rejected_ == 1
    assert_unchanged(clf, snap)
    # A non-finite weight makes the loss non-finite: rejected, nothing written.
    clf = CTRClassifier(model=model, hidden_units=(8,), embedding_dim=4, defence=None)
    _progressive(clf, EVENTS[:60])
    with torch.no_grad():
        clf.model_.bias.fill_(math.inf)  # in place: the workspace sees it
    snap = snapshot(clf)
    with pytest.warns(RuntimeWarning, match="rejected a step: a non-finite loss"):
        clf.learn_one(*EVENTS[10])
    assert clf.n_rejected_ == 1
    assert_unchanged(clf, snap)


def test_a_rejected_first_kernel_step_creates_no_updater_state():
    clf = CTRClassifier(model="lr", numeric="raw", defence=None)
    with pytest.warns(RuntimeWarning, match="rejected a step: a non-finite gradient"):
        clf.learn_one({"price": 3e38}, False)
    assert clf.updater.state_dict() == {"n_steps": 0}
    clf.learn_one({"price": 1.0}, True)
    assert _kernel_on(clf) and clf.updater.n_steps == 1


def test_checkpoint_resumes_the_kernel_bit_for_bit(tmp_path):
    a = CTRClassifier(defence=None)
    _progressive(a, EVENTS[:100])
    a.save(tmp_path / "ckpt")
    b = CTRClassifier.load(tmp_path / "ckpt")
    pa, pb = _progressive(a, EVENTS[100:160]), _progressive(b, EVENTS[100:160])
    assert _kernel_on(a) and _kernel_on(b)
    np.testing.assert_array_equal(pa, pb)


def test_without_numba_the_numpy_twin_runs(monkeypatch):
    monkeypatch.setattr(_kernels, "available", lambda: False)
    clf = CTRClassifier(defence=None)
    ref = copy.deepcopy(clf)
    ref._use_kernel = False
    np.testing.assert_array_equal(_progressive(clf, EVENTS[:80]), _progressive(ref, EVENTS[:80]))
    assert not _kernel_on(clf)


def test_updaters_and_settings_the_kernel_does_not_cover_fall_back():
    class MyAdagrad(optim.Adagrad):
        pass

    for clf in (
        CTRClassifier(optimizer="adam", defence=None),
        CTRClassifier(optimizer=MyAdagrad(), defence=None),
        CTRClassifier(optimizer=optim.Adagrad(eps=0.0), defence=None),  # 0 / 0: the torch path rejects
        CTRClassifier(model="dcnv2", defence=None),
    ):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _progressive(clf, EVENTS[:5])
        assert not _kernel_on(clf)
    clf = CTRClassifier(defence=None)
    _progressive(clf, EVENTS[:5])
    assert _kernel_on(clf)


def test_kernel_predictions_change_nothing_not_even_a_pickle():
    clf = CTRClassifier(model="deepfm")
    _progressive(clf, EVENTS[:50])
    before = pickle.dumps(clf)  # drops the workspace: the next prediction builds one
    for x, _ in EVENTS[50:60]:
        clf.predict_proba_one(x)
    assert _kernel_on(clf)
    assert pickle.dumps(clf) == before
    # A torch step in between (a frame) changes the parameters in place: the kernel's copy follows.
    import pandas as pd

    frame = pd.DataFrame([x for x, _ in EVENTS[60:92]])
    clf.learn_many(frame, pd.Series([y for _, y in EVENTS[60:92]]))
    ref = copy.deepcopy(clf)
    ref._use_numpy = False
    for x, _ in EVENTS[92:100]:
        assert clf.predict_proba_one(x)[True] == pytest.approx(ref.predict_proba_one(x)[True], abs=1e-7)


def test_last_rows_are_those_of_the_last_known_prediction():
    clf = CTRClassifier(defence=None)
    _progressive(clf, EVENTS[:30])
    x, y = EVENTS[5]
    clf.predict_proba_one(x)
    ids, vals = clf._last_rows()
    assert len(ids) == len(vals) == clf.model_.n_fields and all(r > 0 for r in ids)
    clf.learn_one(x, y)
    assert clf._last_rows() is None  # a step since
    clf.predict_proba_one({**x, "user_id": "never-seen"})
    assert clf._last_rows() is None  # a key without a row
