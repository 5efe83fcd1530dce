"""Predictions and saves made while another thread learns see whole steps, never half of one."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd

from river_torchrec import CTRClassifier, datasets

EVENTS = list(datasets.SyntheticCTR(n_events=260, seed=6))
PROBE = EVENTS[-1][0]
PARAMS = {"model": "deepfm", "hidden_units": (16,), "embedding_dim": 4}


PROBES = pd.DataFrame([x for x, _ in EVENTS[-6:]])


def _every_state_prediction(learned) -> set[float]:
    """The probe's probability after 0, 1, 2, ... learned events (one model, one thread)."""
    return {one for one, _ in _every_state(learned)}


def _every_state(learned) -> set[tuple[float, tuple[float, ...]]]:
    """The probe's probability and the probe frame's probabilities after 0, 1, 2, ...
    learned events (one model, one thread): a torn read (some rows of a frame before a
    step, some after, or a half-applied step) gives a pair that is not among them."""
    model = CTRClassifier(**PARAMS)

    def state():
        return model.predict_proba_one(PROBE)[True], tuple(model.predict_proba_many(PROBES)[True].tolist())

    seen = {state()}
    for x, y in learned:
        model.learn_one(x, y)
        seen.add(state())
    return seen


def _in_threads(model, learned, reader, n_readers=3):
    errors, results, done = [], [], threading.Event()

    def learn():
        try:
            for x, y in learned:
                model.learn_one(x, y)
                # Let a reader in between steps however the OS schedules threads, so the
                # test always sees predictions interleaved with learning.
                seen, deadline = len(results), time.monotonic() + 0.05
                while len(results) == seen and time.monotonic() < deadline:
                    time.sleep(0.0005)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    def read():
        try:
            while not done.is_set():
                results.append(reader())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=learn)] + [threading.Thread(target=read) for _ in range(n_readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def test_concurrent_predictions_are_those_of_some_whole_step():
    learned = EVENTS[:200]
    possible = _every_state(learned)
    ones = {one for one, _ in possible}
    frames = {many for _, many in possible}
    model = CTRClassifier(**PARAMS)
    results = _in_threads(
        model,
        learned,
        lambda: (model.predict_proba_one(PROBE)[True], tuple(model.predict_proba_many(PROBES)[True].tolist())),
        n_readers=4,
    )
    assert len(results) > 10
    # A frame's forward runs torch's intra-op kernels, whose reductions may split
    # differently in a reader thread (OpenMP's thread count is per thread), so frames are
    # matched to 1e-6; a torn read is off by a whole learning step (> 1e-4 here).
    reference = np.array(sorted(frames))
    apart = np.abs(reference[:, None, :] - reference[None, :, :]).max(axis=2)
    np.fill_diagonal(apart, np.inf)
    assert apart.min() > 1e-4  # any two versions' frames differ by more than the tolerance
    for one, many in results:
        assert one in ones
        assert np.abs(reference - np.array(many)).max(axis=1).min() < 1e-6
    # Reads spread over many versions, not only the first and the last.
    assert len({one for one, _ in results}) > 10
    assert model.predict_proba_one(PROBE)[True] in ones


def test_saving_while_learning_gives_a_consistent_checkpoint(tmp_path):
    learned = EVENTS[:120]
    possible = _every_state_prediction(learned)
    model = CTRClassifier(**PARAMS)
    counter = iter(range(10_000))

    def save_and_reload():
        path = tmp_path / f"ckpt{next(counter)}"
        model.save(path)
        return CTRClassifier.load(path).predict_proba_one(PROBE)[True]

    results = _in_threads(model, learned, save_and_reload, n_readers=1)
    assert results
    assert all(p in possible for p in results)
