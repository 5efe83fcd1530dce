"""Predictions and saves made while another thread learns see whole steps, never half of one."""

from __future__ import annotations

import threading
import time

import pandas as pd

from river_torchrec import CTRClassifier, datasets

EVENTS = list(datasets.SyntheticCTR(n_events=260, seed=6))
PROBE = EVENTS[-1][0]
PARAMS = {"model": "deepfm", "hidden_units": (16,), "embedding_dim": 4}


def _every_state_prediction(learned) -> set[float]:
    """The probe's probability after 0, 1, 2, ... learned events (one model, one thread)."""
    model = CTRClassifier(**PARAMS)
    seen = {model.predict_proba_one(PROBE)[True]}
    for x, y in learned:
        model.learn_one(x, y)
        seen.add(model.predict_proba_one(PROBE)[True])
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
    possible = _every_state_prediction(learned)
    model = CTRClassifier(**PARAMS)
    frame = pd.DataFrame([PROBE])
    results = _in_threads(
        model,
        learned,
        lambda: (model.predict_proba_one(PROBE)[True], float(model.predict_proba_many(frame)[True].iloc[0])),
    )
    assert len(results) > 10
    for one, many in results:
        assert one in possible
        assert 0.0 <= many <= 1.0
    assert model.predict_proba_one(PROBE)[True] in possible


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
