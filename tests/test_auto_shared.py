"""SharedRowsFM (the fast FM of AutoCTRClassifier) against the FM classifier it stands for, and
AutoCTRClassifier's direct stepping of its members against OnlineMixture's generic loop."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from river_torchrec import CTRClassifier, _auto_kernels, datasets
from river_torchrec.auto import AutoCTRClassifier, SharedRowsFM
from river_torchrec.mixture import OnlineMixture
from river_torchrec.optim import Adagrad


def _reference_fm(**kw) -> CTRClassifier:
    return CTRClassifier(model="fm", optimizer=Adagrad(lr=0.2, initial_accumulator_value=1.0), defence=None, **kw)


def _shared_fm(use_kernel: bool, **kw) -> tuple[CTRClassifier, SharedRowsFM]:
    host = CTRClassifier(model="deepfm", hidden_units=(8,), defence=None, **kw)
    fm = SharedRowsFM(host, 0.2, 1.0)
    fm.use_kernel = use_kernel
    return host, fm


@pytest.mark.parametrize("use_kernel", [True, False], ids=["compiled", "numpy"])
@pytest.mark.parametrize("stream", ["synthetic", "sparse"])
def test_shared_rows_fm_is_the_fm_classifier(stream: str, use_kernel: bool) -> None:
    if use_kernel and not _auto_kernels.available():
        pytest.skip("numba is not installed")
    # SparseCTR: thousands of distinct users, so rows beyond the table's first 1,024 are
    # drawn block by block and must start as the classifier's own draws.
    make = (lambda: datasets.SyntheticCTR(n_events=800, drift="abrupt", seed=3)) if stream == "synthetic" else (
        lambda: datasets.SparseCTR(n_events=1_500, seed=3)
    )
    events = list(make())
    ref = _reference_fm()
    host, fm = _shared_fm(use_kernel)
    diffs = []
    for x, y in events:
        host.predict_proba_one(x)
        p = fm.predict_proba_one(x)[True]
        diffs.append(abs(p - ref.predict_proba_one(x)[True]))
        ref.learn_one(x, y)
        host.learn_one(x, y)
        fm.learn_one(x, y)  # after its host, which hands a new key its row
    assert max(diffs) < 1e-5
    assert len(host.model_.embedding) > (1_100 if stream == "sparse" else 0)
    # The same rows and state, to float32 rounding.
    n = len(host.model_.embedding) + 1
    np.testing.assert_allclose(fm.weight_[:n], ref.model_.embedding.weight[:n].numpy(), atol=1e-5)
    assert fm.bias_[0] == pytest.approx(float(ref.model_.bias.detach()), abs=1e-5)


def test_compiled_and_numpy_steps_agree() -> None:
    if not _auto_kernels.available():
        pytest.skip("numba is not installed")
    events = list(datasets.RepeatVisits(n_events=800, seed=1))
    pairs = [_shared_fm(True, seed=2), _shared_fm(False, seed=2)]
    for x, y in events:
        ps = []
        for host, fm in pairs:
            host.predict_proba_one(x)
            ps.append(fm.predict_proba_one(x)[True])
            host.learn_one(x, y)
            fm.learn_one(x, y)
        assert ps[0] == pytest.approx(ps[1], abs=1e-6)
    np.testing.assert_allclose(pairs[0][1]._table, pairs[1][1]._table, atol=1e-6)


def test_frames_match_the_fm_classifier() -> None:
    events = list(datasets.SyntheticCTR(n_events=400, seed=5))
    X = pd.DataFrame([x for x, _ in events])
    y = pd.Series([t for _, t in events])
    ref = _reference_fm()
    host, fm = _shared_fm(True)
    for lo in range(0, 400, 100):
        Xb, yb = X.iloc[lo : lo + 100], y.iloc[lo : lo + 100]
        np.testing.assert_allclose(fm.predict_proba_many(Xb)[True], ref.predict_proba_many(Xb)[True], atol=1e-5)
        ref.learn_many(Xb, yb)
        host.learn_many(Xb, yb)
        fm.learn_many(Xb, yb)
    # A frame's predictions are the events' own.
    one = [fm.predict_proba_one(x)[True] for x in X.to_dict("records")[:20]]
    np.testing.assert_allclose(fm.predict_proba_many(X.iloc[:20])[True], one, atol=1e-6)
    assert fm.predict_proba_many(X.iloc[:0]).shape == (0, 2)


@pytest.mark.parametrize("use_kernel", [True, False], ids=["compiled", "numpy"])
def test_a_non_finite_step_is_refused_and_changes_nothing(use_kernel: bool) -> None:
    host, fm = _shared_fm(use_kernel)
    x = {"user": "ann", "item": "book"}
    host.predict_proba_one(x)
    fm.predict_proba_one(x)
    host.learn_one(x, True)
    fm.learn_one(x, True)
    rows = host.model_.embedding.lookup([("item", "book"), ("user", "ann")], learn=False)
    fm.weight_[rows, 1:] = 1e30  # the pair term overflows: the loss is not finite
    before = (fm._table.copy(), fm._dense.copy(), fm._version)
    with pytest.warns(RuntimeWarning, match="SharedRowsFM rejected a step: a non-finite loss"):
        fm.learn_one(x, False)
    assert fm.n_rejected_ == 1
    assert np.array_equal(fm._table, before[0]) and np.array_equal(fm._dense, before[1]) and fm._version == before[2]


def test_the_direct_steps_are_the_generic_mixture_loop() -> None:
    events = list(datasets.SyntheticCTR(n_events=1_200, drift="abrupt", seed=7))
    direct = AutoCTRClassifier(hidden_units=(8,), seed=3)
    generic = AutoCTRClassifier(hidden_units=(8,), seed=3)
    generic._shared = lambda: None  # OnlineMixture's own predict_proba_one / learn_one
    assert isinstance(direct.mixture_.members[2], SharedRowsFM)
    for i, (x, y) in enumerate(events):
        a, b = direct.predict_proba_one(x)[True], generic.predict_proba_one(x)[True]
        assert a == b
        w = 0.5 if i % 7 == 0 else 1.0
        direct.learn_one(x, y, w)
        generic.learn_one(x, y, w)
    assert direct.weights_ == generic.weights_
    assert direct.mixture_.member_losses_ == generic.mixture_.member_losses_
    # Learning an event that was not just predicted goes the same way too.
    x, y = events[0]
    direct.learn_one(dict(x), y)
    generic.learn_one(dict(x), y)
    assert direct.predict_proba_one(x) == generic.predict_proba_one(x)


def test_other_fast_members_and_bounded_tables_keep_a_classifier_of_their_own() -> None:
    assert isinstance(AutoCTRClassifier(fast_model="lr").mixture_.members[2], CTRClassifier)
    assert isinstance(AutoCTRClassifier(max_rows=100).mixture_.members[2], CTRClassifier)
    assert isinstance(AutoCTRClassifier(embeddings="hash", n_buckets=64).mixture_.members[2], SharedRowsFM)
    with pytest.raises(ValueError, match="no max_rows"):
        SharedRowsFM(CTRClassifier(max_rows=10), 0.2, 1.0)


def test_a_checkpoint_with_the_fast_fm_as_a_classifier_still_loads(tmp_path) -> None:
    # Checkpoints written before the fast FM shared its rows hold it as a classifier.
    events = list(datasets.SyntheticCTR(n_events=200, seed=2))
    old = AutoCTRClassifier(hidden_units=(8,), seed=4)
    mix = old.mixture_
    mix.members[2] = _reference_fm(hidden_units=(8,), seed=4)
    old._shared = lambda: None
    for x, y in events:
        old.predict_proba_one(x)
        old.learn_one(x, y)
    old.save(tmp_path / "auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = AutoCTRClassifier.load(tmp_path / "auto")
    assert isinstance(resumed.mixture_.members[2], CTRClassifier)
    assert resumed.predict_proba_one(events[0][0]) == old.predict_proba_one(events[0][0])


def test_an_online_mixture_of_the_members_gives_the_same_predictions() -> None:
    # The members on their own in a plain OnlineMixture: AutoCTRClassifier adds nothing else.
    events = list(datasets.SparseCTR(n_events=600, signal=1.0, seed=1))
    auto = AutoCTRClassifier(hidden_units=(8,), seed=2, defence=None)
    twin = AutoCTRClassifier(hidden_units=(8,), seed=2, defence=None)
    p = twin.mixture_
    mix = OnlineMixture(p.members, share=p.share, weights=p.weights, baseline=p.baseline,
                        half_life=p.half_life, margin=p.margin)
    for x, y in events:
        assert auto.predict_proba_one(x)[True] == mix.predict_proba_one(x)[True]
        auto.learn_one(x, y)
        mix.learn_one(x, y)
