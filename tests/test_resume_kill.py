"""Exactly-once resume: a learner killed by SIGKILL again and again ends bit-identical to one never killed.

The workers are forked from one long-lived helper process that imported torch once (with one
thread, before any tensor work, so forking it is safe): each kill then costs a fork and a
checkpoint load, not a Python start and a torch import.
"""

from __future__ import annotations

import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from river_torchrec import CTRClassifier, datasets
from river_torchrec.persistence import CheckpointError
from river_torchrec.stream_checkpoint import (
    StreamCheckpoint,
    StreamMismatchError,
    event_digest,
    learn_stream,
)

N_EVENTS = 400
EVERY = 10
MIN_KILLS = 20

ZYGOTE = textwrap.dedent(
    f"""
    import os, sys, traceback, warnings
    import torch
    torch.set_num_threads(1)
    from river_torchrec import CTRClassifier, datasets
    from river_torchrec.stream_checkpoint import learn_stream
    events = list(datasets.SyntheticCTR(n_events={N_EVENTS}, seed=3))

    def factory():
        return CTRClassifier(model="fm", embedding_dim=4, seed=1)

    # Load the compiled one-event kernels (numba, where installed) here, once: a worker that
    # loaded them itself would spend most of each short life doing so, and the kills would
    # land in starts rather than in steps and saves.
    warm = factory()
    warm.predict_proba_one(events[0][0])
    warm.learn_one(*events[0])
    del warm

    print("ready", flush=True)
    for line in sys.stdin:
        path = line.strip()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                warnings.simplefilter("ignore")
                learn_stream(factory, events, path, every={EVERY})
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(status, flush=True)
    """
)


@pytest.fixture(scope="module")
def zygote():
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    proc = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert proc.stdout.readline().strip() == "ready"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=30)


def _start(zygote, path: pathlib.Path) -> int:
    zygote.stdin.write(f"{path}\n")
    zygote.stdin.flush()
    return int(zygote.stdout.readline())


def _status(zygote) -> int:
    return int(zygote.stdout.readline())


def _state(path: pathlib.Path):
    model, position, state = StreamCheckpoint(path).load()
    table = model.model_.embedding
    return {
        "position": position,
        "fingerprint": state["fingerprint"],
        "weights": {k: v.clone() for k, v in model.model_.state_dict().items()},
        "updater": {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in model.updater.state_dict().items()},
        "vocabulary": dict(table._rows),
        "slots": dict(model._encoder.slots),
        "defence": {k: v for k, v in vars(model.defence_).items()},
        "version": model._version,
    }


def _assert_bit_identical(a: dict, b: dict) -> None:
    assert a["position"] == b["position"] == N_EVENTS
    assert a["fingerprint"] == b["fingerprint"]
    assert a["weights"].keys() == b["weights"].keys()
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert a["updater"].keys() == b["updater"].keys()
    for k, v in a["updater"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, b["updater"][k]), k
        else:
            assert v == b["updater"][k], k
    assert a["vocabulary"] == b["vocabulary"]
    assert a["slots"] == b["slots"]
    assert a["defence"] == b["defence"]
    assert a["version"] == b["version"]


def _kill_repeatedly(zygote, killed: pathlib.Path, bound: float, rng: random.Random) -> tuple[int, int, list[int]]:
    """SIGKILL runs on ``killed`` after ``uniform(0, bound)`` seconds until one finishes or
    ``MIN_KILLS + 5`` were killed: (kills, kills that landed inside a save, positions)."""
    kills = during_save = 0
    positions: list[int] = []
    while kills < MIN_KILLS + 5:
        pid = _start(zygote, killed)
        time.sleep(rng.uniform(0.0, bound))
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = _status(zygote)
        if os.WIFEXITED(status):
            assert os.WEXITSTATUS(status) == 0, "a worker failed (traceback above)"
            break  # it finished before the kill landed
        assert os.WTERMSIG(status) == signal.SIGKILL
        kills += 1
        # A save's temporary directory left behind means the kill landed inside a save.
        during_save += bool(list(killed.parent.glob(".killed.tmp-*")) or (killed.parent / ".killed.old").exists())
        ckpt = StreamCheckpoint(killed)
        if ckpt.exists():
            positions.append(ckpt.load()[1])
    return kills, during_save, positions


# Loading between kills may meet a swap cut in half, which persistence reports (and handles).
@pytest.mark.filterwarnings("ignore:.*a save was interrupted:RuntimeWarning")
def test_sigkill_at_random_points_resumes_bit_identical_and_exactly_once(zygote, tmp_path):
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    _start(zygote, reference)
    assert _status(zygote) == 0
    whole = time.monotonic() - t0
    # A run with nothing left to learn: the fixed cost of a start (fork, load, re-hash).
    t0 = time.monotonic()
    _start(zygote, reference)
    assert _status(zygote) == 0
    start = time.monotonic() - t0

    killed = tmp_path / "killed"
    # Scaled to this machine: kills land in starts, steps and saves (which, with their
    # fsyncs, take most of a run's time), and each run covers a small part of the stream on
    # average, so the kills are spread over it, on a fast disk or a slow one. `start` is
    # the cost of a start at the stream's end (the longest re-hash), so runs early in the
    # stream may learn for longer; when the stream ends before MIN_KILLS kills, the
    # experiment starts again from nothing with half the bound.
    bound = start + whole / 20
    for _ in range(6):
        kills, during_save, positions = _kill_repeatedly(zygote, killed, bound, random.Random(15))
        if kills >= MIN_KILLS:
            break
        for leftover in [killed, *tmp_path.glob(".killed.tmp-*"), tmp_path / ".killed.old"]:
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()
        bound /= 2
    assert kills >= MIN_KILLS
    assert during_save >= 1
    # The killed runs made progress between kills, and were killed at many points.
    assert positions == sorted(positions) and len(set(positions)) >= 5, positions
    assert all(p % EVERY == 0 and 0 < p < N_EVENTS for p in positions[1:]), positions
    # Resume until the stream is done (also cleans the dead runs' temporaries).
    _start(zygote, killed)
    assert _status(zygote) == 0
    assert not list(tmp_path.glob(".killed.tmp-*"))

    a, b = _state(killed), _state(reference)
    _assert_bit_identical(a, b)
    # Exactly once, in order: the fingerprint is the chain over every event, each once.
    chain = ""
    for i, (x, y) in enumerate(datasets.SyntheticCTR(n_events=N_EVENTS, seed=3)):
        chain = event_digest(chain, i, x, y)
    assert a["fingerprint"] == chain


def _small_stream(n=120, seed=4):
    return list(datasets.SyntheticCTR(n_events=n, seed=seed))


def test_resume_on_another_stream_is_refused(tmp_path):
    path = tmp_path / "ckpt"
    learn_stream(lambda: CTRClassifier(model="lr"), _small_stream(60), path, every=20)
    with pytest.raises(StreamMismatchError, match=r"the first 60 events of the stream are not those .* learned"):
        learn_stream(lambda: CTRClassifier(model="lr"), _small_stream(120, seed=5), path, every=20)
    with pytest.raises(StreamMismatchError, match=r"has learned 60 events but the stream has only 30"):
        learn_stream(lambda: CTRClassifier(model="lr"), _small_stream(60)[:30], path, every=20)
    # The refused resumes changed nothing.
    _, position, _ = StreamCheckpoint(path).load()
    assert position == 60


def test_resumed_progressive_run_keeps_every_prediction(tmp_path):
    events = _small_stream(150)
    whole = learn_stream(lambda: CTRClassifier(model="fm", seed=2), events, tmp_path / "a", every=25, progressive=True)
    learn_stream(lambda: CTRClassifier(model="fm", seed=2), events[:70], tmp_path / "b", every=25, progressive=True)
    resumed = learn_stream(lambda: CTRClassifier(model="fm", seed=2), events, tmp_path / "b", every=25, progressive=True)
    assert resumed.skipped == 70 and resumed.position == 150
    assert resumed.y.tolist() == whole.y.tolist() == [bool(y) for _, y in events]
    assert resumed.proba.tolist() == whole.proba.tolist()


def test_user_supplied_position_and_state_round_trip(tmp_path):
    model = CTRClassifier(model="lr")
    for x, y in _small_stream(30):
        model.learn_one(x, y)
    ckpt = StreamCheckpoint(tmp_path / "ckpt")
    assert not ckpt.exists()
    ckpt.save(model, {"topic": "clicks", "partition": 3, "offset": 1_234}, {"note": "after batch 7"})
    assert ckpt.exists()
    assert "_stream_checkpoint" not in vars(model)  # the live model carries no position
    loaded, position, state = ckpt.load()
    assert position == {"topic": "clicks", "partition": 3, "offset": 1_234}
    assert state == {"note": "after batch 7"}
    x = _small_stream(31)[-1][0]
    assert loaded.predict_proba_one(x) == model.predict_proba_one(x)


def test_a_plain_model_checkpoint_has_no_position(tmp_path):
    model = CTRClassifier(model="lr")
    model.save(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="is a model checkpoint without a stream position"):
        StreamCheckpoint(tmp_path / "plain").load()


def test_every_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="every must be a positive integer, got 0"):
        learn_stream(CTRClassifier(model="lr"), [], tmp_path / "x", every=0)


def test_a_micro_batch_buffer_survives_the_resume(tmp_path):
    events = _small_stream(150)

    def factory():
        return CTRClassifier(model="fm", seed=2, batch_size=4)

    whole = learn_stream(factory, events, tmp_path / "a", every=25).model
    # 70 and 130 are not multiples of the batch: the checkpoints hold part-filled buffers.
    learn_stream(factory, events[:70], tmp_path / "b", every=70)
    learn_stream(factory, events[:130], tmp_path / "b", every=60)
    resumed = learn_stream(factory, events, tmp_path / "b", every=60).model
    assert len(resumed._buffer) == len(whole._buffer) == 150 % 4
    for (k, a), b in zip(whole.model_.state_dict().items(), resumed.model_.state_dict().values()):
        assert torch.equal(a, b), k
