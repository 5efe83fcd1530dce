"""Exactly-once learning of a stream across crashes: the checkpoint holds the weights *and* the position.

A model checkpoint alone cannot resume a stream: after a crash, events learned since the
last save would be learned twice (if the stream restarts from the beginning) or skipped
(if it restarts from where it crashed). :class:`StreamCheckpoint` writes the position,
how many events the model has learned (an offset, or any JSON value you supply such as
a Kafka offset), inside the same atomic checkpoint directory as the weights
(:mod:`river_torchrec.persistence`: written beside, fsynced, renamed into place), so a
crash at any instant leaves either the previous pair or the new one, never weights of
one position with the offset of another.

:func:`learn_stream` learns an iterable of ``(x, y)`` events, saving every ``every`` events
and at the end; called again on the same path after a crash, it loads the last checkpoint,
skips the events the checkpoint has learned and goes on. The result is bit-identical to a
run that was never interrupted (weights, optimizer state, vocabulary, on CPU with the same
thread count), which ``tests/test_resume_kill.py`` checks under 20+ ``SIGKILL`` s, some in
the middle of a save. Every learned event also enters a running BLAKE2b fingerprint of the
stream (its position, features and label): the skipped events of a resumed run are hashed
again and compared with the checkpoint's fingerprint, so resuming on a *different* stream
(another file, another order) is refused instead of silently corrupting the model.

Examples
--------
>>> import tempfile
>>> from river_torchrec import CTRClassifier, datasets
>>> from river_torchrec.stream_checkpoint import StreamCheckpoint, learn_stream
>>> stream = list(datasets.SyntheticCTR(n_events=300, seed=1))
>>> with tempfile.TemporaryDirectory() as tmp:
...     run = learn_stream(lambda: CTRClassifier(model="lr"), stream[:120], f"{tmp}/ckpt", every=100)
...     # ... the process dies here; a new one resumes where the checkpoint stopped:
...     run = learn_stream(lambda: CTRClassifier(model="lr"), stream, f"{tmp}/ckpt", every=100)
...     model, position, state = StreamCheckpoint(f"{tmp}/ckpt").load()
>>> run.position, run.skipped, position
(300, 120, 300)

"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from river_torchrec import persistence
from river_torchrec.learner import OnlineLearner

__all__ = ["StreamCheckpoint", "StreamRun", "StreamMismatchError", "event_digest", "learn_stream"]

# The estimator attribute that carries the stream state through persistence (set only
# for the duration of a save, under the estimator's lock).
_ATTRIBUTE = "_stream_checkpoint"


class StreamMismatchError(ValueError):
    """The stream given to resume is not the one the checkpoint learned from."""


def event_digest(previous: str, position: int, x: Any, y: Any) -> str:
    """The running fingerprint after learning event ``position`` (hex BLAKE2b-128).

    Features are hashed by ``repr`` of their sorted items: the same event always hashes
    the same within and across processes (``repr`` of str, int, float and bool is stable).
    """
    h = hashlib.blake2b(previous.encode("ascii"), digest_size=16)
    items = sorted(x.items(), key=lambda kv: repr(kv[0])) if isinstance(x, dict) else x
    h.update(f"{position}|{items!r}|{y!r}".encode("utf-8", "backslashreplace"))
    return h.hexdigest()


class StreamCheckpoint:
    """A checkpoint directory holding an estimator and how far into its stream it has learned.

    Parameters
    ----------
    path
        The checkpoint directory (replaced atomically by every :meth:`save`).
    trusted_classes
        Passed to :func:`river_torchrec.persistence.load` (your own model classes).
    """

    def __init__(self, path: str | os.PathLike, trusted_classes: tuple[type, ...] = ()) -> None:
        self.path = pathlib.Path(path)
        self.trusted_classes = tuple(trusted_classes)

    def exists(self) -> bool:
        """Whether there is a checkpoint to resume from (the previous one after a crashed save counts)."""
        return (self.path / persistence.MANIFEST).is_file() or (
            persistence._backup(self.path) / persistence.MANIFEST
        ).is_file()

    def save(self, model: OnlineLearner, position: Any, state: dict | None = None) -> None:
        """Write ``model`` with ``position`` (and a JSON-able ``state`` dict) in one atomic checkpoint."""
        if not isinstance(model, OnlineLearner):
            raise TypeError(f"expected a CTRClassifier or a river_torchrec ranker, got {type(model).__name__}")
        with model._lock:
            model.__dict__[_ATTRIBUTE] = {"position": position, "state": dict(state or {})}
            try:
                persistence.save(model, self.path)
            finally:
                model.__dict__.pop(_ATTRIBUTE, None)

    def load(self, device: str | None = None) -> tuple[OnlineLearner, Any, dict]:
        """``(model, position, state)`` of the last complete checkpoint.

        Raises
        ------
        river_torchrec.persistence.CheckpointError
            If there is no checkpoint, it is damaged, or it was saved without a position.
        """
        model = persistence.load(self.path, device=device, trusted_classes=self.trusted_classes)
        saved = model.__dict__.pop(_ATTRIBUTE, None)
        if not isinstance(saved, dict) or "position" not in saved:
            raise persistence.CheckpointError(
                f"{self.path} is a model checkpoint without a stream position (not written by StreamCheckpoint)"
            )
        return model, saved["position"], saved.get("state") or {}


@dataclasses.dataclass
class StreamRun:
    """What :func:`learn_stream` did.

    ``position`` is the number of events the model has learned in all (this run and those
    it resumed), ``skipped`` how many of them the resumed checkpoint already had,
    ``fingerprint`` the running digest of all of them (:func:`event_digest`). With
    ``progressive=True``, ``y`` and ``proba`` hold the label and the prediction made before
    learning of every event since the start of the stream (resumed runs included).
    """

    model: OnlineLearner
    position: int
    skipped: int
    fingerprint: str
    y: np.ndarray | None = None
    proba: np.ndarray | None = None


def learn_stream(
    model: OnlineLearner | Callable[[], OnlineLearner],
    stream: Iterable,
    path: str | os.PathLike,
    every: int = 10_000,
    n: int | None = None,
    progressive: bool = False,
    progress: Any = None,
    after_save: Callable[[int], None] | None = None,
) -> StreamRun:
    """Learn ``stream`` exactly once across crashes, checkpointing to ``path``.

    Parameters
    ----------
    model
        The estimator to start from, or a factory called only when there is no checkpoint
        (a checkpoint, when present, always wins).
    stream
        ``(x, y)`` events, the same sequence on every call (a dataset, a file reader).
    path
        The checkpoint directory.
    every
        Save after this many learned events (and always at the end).
    n
        Learn at most this many events of the stream in all.
    progressive
        Predict each event before learning it and keep the predictions (progressive
        validation); they are saved with the checkpoint so a resumed run reports on the
        whole stream.
    progress
        Something with ``update(k)`` (a tqdm bar).
    after_save
        Called with the position after every save.

    Raises
    ------
    StreamMismatchError
        If the checkpoint's fingerprint does not match the first events of ``stream``, or
        the stream is shorter than the checkpoint's position.
    """
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive integer, got {every!r}")
    ckpt = StreamCheckpoint(path)
    position, fingerprint, ys, probas = 0, "", [], []
    if ckpt.exists():
        model, position, state = ckpt.load()
        if not isinstance(position, int) or position < 0:
            raise persistence.CheckpointError(f"{path}: the stream position {position!r} is not an event count")
        fingerprint = state.get("fingerprint", "")
        if progressive:
            ys = np.asarray(state.get("y", np.zeros(0, dtype=bool)), dtype=bool).tolist()
            probas = np.asarray(state.get("proba", np.zeros(0)), dtype=float).tolist()
    elif callable(model) and not isinstance(model, OnlineLearner):
        model = model()
    if not isinstance(model, OnlineLearner):
        raise TypeError(f"expected a CTRClassifier or a river_torchrec ranker, got {type(model).__name__}")

    def save(pos: int, digest: str) -> None:
        state: dict[str, Any] = {"fingerprint": digest}
        if progressive:
            state["y"] = np.asarray(ys, dtype=bool)
            state["proba"] = np.asarray(probas, dtype=float)
        ckpt.save(model, pos, state)
        if after_save is not None:
            after_save(pos)

    skipped, check = position, ""
    events = iter(stream)
    for i in range(position):
        try:
            x, y = next(events)
        except StopIteration:
            raise StreamMismatchError(
                f"{path} has learned {position} events but the stream has only {i}"
            ) from None
        check = event_digest(check, i, x, y)
    if check != fingerprint:
        raise StreamMismatchError(
            f"the first {position} events of the stream are not those {path} learned (fingerprint mismatch): "
            "resume on the same stream, or start from an empty checkpoint path"
        )
    if progress is not None and position:
        progress.update(position)
    since = 0
    for x, y in events:
        if n is not None and position >= n:
            break
        if progressive:
            p = model.predict_proba_one(x)
            probas.append(float(p.get(True, 0.0)) if isinstance(p, dict) else float("nan"))
            ys.append(bool(y))
        model.learn_one(x, y)
        fingerprint = event_digest(fingerprint, position, x, y)
        position += 1
        since += 1
        if progress is not None:
            progress.update(1)
        if since >= every:
            save(position, fingerprint)
            since = 0
    # No flush: a micro-batch buffer is saved with the checkpoint, and flushing here would
    # make a run cut into pieces differ from one that was never interrupted.
    if since or not ckpt.exists():
        save(position, fingerprint)
    return StreamRun(
        model=model,
        position=position,
        skipped=skipped,
        fingerprint=fingerprint,
        y=np.asarray(ys, dtype=bool) if progressive else None,
        proba=np.asarray(probas, dtype=float) if progressive else None,
    )


def checkpointed_evaluation(model: Any, stream: Iterable, args: Any, name: str, progress: Any = None) -> Any:
    """Progressive validation of one model that checkpoints and resumes (``river-torchrec --checkpoint-every``).

    The checkpoint of model ``name`` is ``<--checkpoint>/<name>``; it holds the weights, the
    position, and the labels and predictions so far, so a resumed run reports on the whole
    stream. ``seconds`` and the memory cover this run only. Returns a
    :class:`river_torchrec.cli.EvaluationResult`.
    """
    import time

    from river import metrics

    from river_torchrec.cli import CommandError, EvaluationResult

    if not isinstance(model, OnlineLearner):
        raise CommandError(f"--checkpoint-every saves our models only, not {name} (river's own)")
    if args.delay > 1:
        raise CommandError("--checkpoint-every needs --delay 0 (a checkpoint holds no labels still pending)")
    path = pathlib.Path(args.checkpoint) / name
    if StreamCheckpoint(path).exists() and not args.resume:
        raise CommandError(f"{path} holds a checkpoint: pass --resume to continue it, or remove it to start over")
    t0 = time.perf_counter()
    try:
        run = learn_stream(model, stream, path, every=args.checkpoint_every, n=args.n, progressive=True, progress=progress)
    except (StreamMismatchError, persistence.CheckpointError) as e:
        raise CommandError(str(e)) from None
    seconds = time.perf_counter() - t0
    metric = metrics.LogLoss()
    for y, p in zip(run.y.tolist(), run.proba.tolist()):
        metric.update(y, {True: p, False: 1.0 - p})
    return EvaluationResult(
        name=name,
        y=run.y,
        proba=run.proba,
        logloss=float(metric.get()),
        seconds=seconds,
        peak_rss_delta=None,
        multiplier=np.zeros(0),
        drift_alarms=[],
    )
