"""Serving while learning: every prediction made by reader threads is the model's output at some version.

A frame of several probes is predicted in one call, so a torn read (some rows before a step,
some after, or a half-applied step) would give a tuple that no version of the model gives.
"""

from __future__ import annotations

import threading
import time

import pandas as pd

from river_torchrec import CTRClassifier, datasets

EVENTS = list(datasets.SyntheticCTR(n_events=400, seed=8))
LEARNED = EVENTS[:150]
PROBES = [x for x, _ in EVENTS[-6:]]
FRAME = pd.DataFrame(PROBES)
PARAMS = {"model": "deepfm", "hidden_units": (16,), "embedding_dim": 4, "seed": 3}


def _frame_tuple(model) -> tuple[float, ...]:
    return tuple(model.predict_proba_many(FRAME)[True].tolist())


def _one_tuple(model) -> tuple[float, ...]:
    return tuple(model.predict_proba_one(x)[True] for x in PROBES)


def _versions() -> tuple[set, set]:
    """Every version's frame predictions and single-event predictions (one thread)."""
    model = CTRClassifier(**PARAMS)
    frames, ones = {_frame_tuple(model)}, {_one_tuple(model)[0]}
    for x, y in LEARNED:
        model.learn_one(x, y)
        frames.add(_frame_tuple(model))
        ones.add(_one_tuple(model)[0])
    return frames, ones


def test_readers_never_see_a_torn_model():
    frames, ones = _versions()
    model = CTRClassifier(**PARAMS)
    seen_frames, seen_ones, errors = [], [], []
    done = threading.Event()

    def learn():
        try:
            for x, y in LEARNED:
                model.learn_one(x, y)
                # Make room for readers between steps however the OS schedules threads.
                n, deadline = len(seen_ones), time.monotonic() + 0.02
                while len(seen_ones) == n and time.monotonic() < deadline:
                    time.sleep(0.0002)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    def read(kind: int):
        try:
            while not done.is_set():
                if kind % 2:
                    seen_frames.append(_frame_tuple(model))
                else:
                    seen_ones.append(model.predict_proba_one(PROBES[0])[True])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=learn)] + [threading.Thread(target=read, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(seen_frames) > 20 and len(seen_ones) > 20
    assert all(f in frames for f in seen_frames)
    assert all(p in ones for p in seen_ones)
    # Reads spread over many versions, not only the first and the last.
    assert len(set(seen_ones)) > 10
    assert _frame_tuple(model) in frames


def test_serving_benchmark_quick_run():
    import pathlib
    import subprocess
    import sys

    script = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serving.py"
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| lock")]
    assert len(rows) == 3
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2].replace(",", "")) > 0 and float(cells[3].replace(",", "")) > 0
