"""Train one CTRClassifier on N workers, each learning from its own shard of the stream."""

from __future__ import annotations

import hashlib
import itertools
import math
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

from river_torchrec.classifier import CTRClassifier, _label
from river_torchrec.distributed.averaging import average_models
from river_torchrec.distributed.checkpoint import load_checkpoint, save_checkpoint
from river_torchrec.distributed.gradients import GradientMerger
from river_torchrec.distributed.group import Comm
from river_torchrec.encoding import parse_features

__all__ = ["DistributedCTR", "Report"]

Mode = Literal["sync", "local_sgd"]


@dataclass
class Report:
    """What a distributed run did; every worker gets the same numbers except the ``*_local`` ones.

    Attributes
    ----------
    mode
        ``"sync"`` or ``"local_sgd"``.
    n_workers
        Workers in the run.
    n_steps
        Synchronised steps (``"sync"``) or averaging rounds (``"local_sgd"``) of this run.
    n_events
        Events learned by all workers, checkpointed ones included when resumed.
    n_events_local
        Events learned by this worker in this run.
    seconds
        Wall-clock time of this run.
    events_per_s
        Events of this run, all workers together, per second.
    logloss
        Progressive (predict, then learn) log loss over all workers' events; None when
        evaluation is off.
    logloss_local
        The same over this worker's events of this run.
    comm_ms_per_step
        Milliseconds per step spent in each kind of collective, on this worker.
    resumed_from_step
        The checkpointed step this run resumed from, or None.
    n_checkpoints
        Checkpoints written by this run.

    """

    mode: str
    n_workers: int
    n_steps: int
    n_events: int
    n_events_local: int
    seconds: float
    events_per_s: float
    logloss: float | None
    logloss_local: float | None
    comm_ms_per_step: dict[str, float] = field(default_factory=dict)
    resumed_from_step: int | None = None
    n_checkpoints: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fingerprint(clf: CTRClassifier) -> int:
    """A 63-bit digest of the bytes of every weight of the model (table included)."""
    h = hashlib.blake2b(digest_size=8)
    for name, t in itertools.chain(clf.model_.named_parameters(), clf.model_.named_buffers()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def _logloss_sum(p: np.ndarray, y: np.ndarray) -> float:
    # Clipped like river's metrics.LogLoss.
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).sum())


class DistributedCTR:
    """Data-parallel online learning of one :class:`~river_torchrec.CTRClassifier` on N workers.

    Every worker builds the same classifier (same configuration and seed, hence the same
    initial weights), joins a ``torch.distributed`` process group
    (:func:`~river_torchrec.distributed.init_process_group`, launched by ``torchrun``) and
    calls :meth:`learn` with its own shard of the stream
    (:func:`~river_torchrec.distributed.shard`). The workers stay one model:

    * ``mode="sync"``: each step, every worker takes up to ``batch_size`` events of its
      shard, computes its gradient, and the gradients are merged
      (:class:`~river_torchrec.distributed.GradientMerger`) into the gradient of the mean
      loss over all the workers' events, the *global batch*; every worker applies the same
      update. With N workers and plain SGD, this is exactly one process learning batches of
      ``N * batch_size`` events (up to float rounding).
    * ``mode="local_sgd"``: each worker learns ``sync_every`` events of its shard alone, in
      steps of ``batch_size``, then the dense weights and the embedding rows touched since
      the last round are averaged (:func:`~river_torchrec.distributed.average_models`).
      Far less communication, at the price of replicas that differ between averages.

    **Lockstep.** All workers take part in every collective: a worker whose shard is
    exhausted keeps stepping with empty batches (it contributes nothing to the merged
    gradient or the average) until every shard is done. A control ``all_reduce`` at each
    step (``"sync"``) or round (``"local_sgd"``) sums the events taken and stops the run
    when the sum is 0, so shards of different lengths need no agreement up front.

    **Ids and fields.** Every worker must give an embedding key the same row and a field
    the same slot.

    * Field slots: new fields are announced to all workers (an ``all_gather_object`` of
      the new names, only at steps where some worker saw one) and registered everywhere in
      the same order, the one a single process would use; or declare them up front with
      ``fields``, and fields outside that list are ignored (with a warning naming them).
    * ``embeddings="hash"``: a key's row is a stable hash, the same everywhere: nothing to
      synchronise. Required by ``"local_sgd"``.
    * ``embeddings="dynamic"`` (``"sync"`` only): every step, the workers exchange the keys
      of their batches (``all_gather_object``) and each looks up all of them, in rank order,
      as one process would look up the global batch, so rows are allocated, counted
      (``min_count``) and evicted (``max_rows``) identically everywhere. This costs a
      pickled exchange of keys each step.

    **Checkpoints.** With ``checkpoint_dir``, rank 0 writes a checkpoint every
    ``checkpoint_every`` events (all workers together; in ``"local_sgd"`` at the first
    average after that) and at the end, with how many events each worker has consumed.
    :meth:`learn` with ``resume=True`` loads the newest one on every worker (so the folder
    must be visible to all of them) and skips the consumed events of each shard; the number
    of workers must be unchanged, since it decides the shards. The classifier is written
    with ``CTRClassifier.save`` when it has one, else as a ``torch.save`` of its state
    loaded back with ``weights_only=True``.

    **Failures.** A worker that raises or dies leaves the others blocked in a collective:
    Gloo notices a closed connection at once, and a worker that hangs is caught by the
    process group's ``timeout``; either way the others raise
    :class:`~river_torchrec.distributed.WorkerFailure`. Resume from the last checkpoint.

    Parameters
    ----------
    classifier
        The worker's classifier, configured identically on every worker.
    mode
        ``"sync"`` or ``"local_sgd"``.
    batch_size
        Events per worker per step (the classifier's ``batch_size`` by default).
    sync_every
        ``"local_sgd"``: events each worker learns between two averages.
    fields
        Field names declared up front, or None to discover and synchronise them.
    checkpoint_dir
        Folder of checkpoints, or None.
    checkpoint_every
        Events (all workers) between checkpoints; None: only at the end.
    evaluate
        Score each event before learning it (progressive validation) and report the log
        loss. Costs one extra forward pass per batch.
    check_every
        Every that many steps (rounds), verify that all workers hold bit-identical weights
        and raise ``RuntimeError`` if not; None to skip this (it hashes the whole model).
    on_progress
        Called on rank 0 with a dict of progress every ``log_every`` events.
    log_every
        Events (all workers) between two ``on_progress`` calls.
    timeout
        The process group's timeout in seconds, only quoted in error messages.
    group
        The process group; the default one if None.

    """

    def __init__(
        self,
        classifier: CTRClassifier,
        mode: Mode = "sync",
        batch_size: int | None = None,
        sync_every: int = 256,
        fields: Sequence[Hashable] | None = None,
        checkpoint_dir: str | None = None,
        checkpoint_every: int | None = None,
        evaluate: bool = True,
        check_every: int | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        log_every: int | None = None,
        timeout: float | None = None,
        group: Any = None,
    ) -> None:
        if mode not in ("sync", "local_sgd"):
            raise ValueError(f"mode must be 'sync' or 'local_sgd', got {mode!r}")
        if not isinstance(classifier, CTRClassifier):
            raise TypeError(f"classifier must be a CTRClassifier, got {type(classifier).__name__}")
        if mode == "local_sgd" and classifier.embeddings != "hash":
            raise ValueError(
                "mode='local_sgd' averages embedding rows by index, so every worker must give a "
                "key the same row without talking to the others: build the classifier with "
                "embeddings='hash' (or use mode='sync', which synchronises dynamic ids)"
            )
        batch_size = classifier.batch_size if batch_size is None else batch_size
        for name, value in (("batch_size", batch_size), ("sync_every", sync_every)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in (("checkpoint_every", checkpoint_every), ("check_every", check_every), ("log_every", log_every)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if not dist.is_initialized():
            raise RuntimeError(
                "no process group: call river_torchrec.distributed.init_process_group() first "
                "(and launch the workers with torchrun)"
            )
        self.classifier = classifier
        self.mode = mode
        self.batch_size = batch_size
        self.sync_every = sync_every
        self.fields = None if fields is None else list(fields)
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.evaluate = evaluate
        self.check_every = check_every
        self.on_progress = on_progress
        self.log_every = log_every
        self.comm = Comm(timeout, group)
        self._declared = None if fields is None else set(self.fields)
        self._warned: set[Hashable] = set()
        if self.fields is not None:
            self._register([self.fields])

    # ------------------------------------------------------------ helpers

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world_size(self) -> int:
        return self.comm.world_size

    def _register(self, field_lists: Iterable[Sequence[Hashable]]) -> None:
        enc = self.classifier._encoder
        for names in field_lists:
            enc.register(names)
        self.classifier.model_.add_fields(len(enc))

    def _parse(self, chunk: list[tuple[dict, Any]]) -> list[tuple[list, float, float]]:
        events = []
        for x, y in chunk:
            parsed = parse_features(x, self.classifier._log_numeric, self.classifier._nan_missing)
            if self._declared is not None:
                extra = {f for f, _, _ in parsed if f not in self._declared} - self._warned
                if extra:
                    self._warned |= extra
                    warnings.warn(
                        f"worker {self.rank}: fields {sorted(extra, key=repr)} are not among the declared "
                        "fields and are ignored",
                        RuntimeWarning,
                    )
                parsed = [t for t in parsed if t[0] in self._declared]
            events.append((parsed, _label(y), 1.0))
        return events

    def _new_fields(self, events: list) -> list[list[Hashable]]:
        """For each event that brings fields unknown so far, those fields, sorted by name."""
        known = set(self.classifier._encoder.slots)
        out = []
        for parsed, _, _ in events:
            new = sorted({f for f, _, _ in parsed if f not in known}, key=repr)
            if new:
                out.append(new)
                known.update(new)
        return out

    def _score(self, events: list) -> None:
        if not self.evaluate or not events:
            return
        clf = self.classifier
        ids, vals = clf._tensors([p for p, _, _ in events], learn=False)
        p = clf._proba(ids, vals)
        self._loss_sum += _logloss_sum(p, np.array([t for _, t, _ in events]))
        self._loss_n += len(events)

    def _labels(self, events: list) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.classifier._device
        y = torch.tensor([t for _, t, _ in events], dtype=torch.float32, device=device)
        w = torch.tensor([s for _, _, s in events], dtype=torch.float32, device=device)
        return y, w

    def check_consistency(self) -> None:
        """Raise ``RuntimeError`` unless every worker holds bit-identical weights."""
        mine = torch.tensor([fingerprint(self.classifier)], dtype=torch.int64, device=self.classifier._device)
        digests = [int(d) for d in self.comm.all_gather("consistency check", mine)]
        if len(set(digests)) > 1:
            raise RuntimeError(
                f"worker {self.rank}: the workers' weights differ after step {self._step_count} "
                f"(digests by rank: {digests})"
            )

    # ------------------------------------------------------------ sync mode

    def _sync_tensors(
        self, events: list, new: list[list[Hashable]], any_new_fields: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        clf = self.classifier
        if clf.embeddings == "hash":
            if any_new_fields:
                gathered = self.comm.all_gather_object("fields all_gather", new)
                self._register(itertools.chain.from_iterable(gathered))
            return clf._tensors([p for p, _, _ in events], learn=True)

        # Dynamic ids: look up every worker's keys, in rank order, as one process would
        # look up the global batch, and keep this worker's share of the rows.
        payload = (new, [[(f, k) for f, k, _ in p] for p, _, _ in events])
        gathered = self.comm.all_gather_object("keys all_gather", payload)
        self._register(itertools.chain.from_iterable(g[0] for g in gathered))
        slots = clf._encoder.slots
        everyone: list[tuple] = []
        start = 0
        for r, (_, keys_by_event) in enumerate(gathered):
            if r == self.rank:
                start = len(everyone)
            for keys in keys_by_event:
                everyone.extend(sorted(keys, key=lambda k: slots[k[0]]))
        rows = clf._lookup(everyone, learn=True) if everyone else []
        arranged = [clf._encoder.arrange(p, learn=False) for p, _, _ in events]
        n_fields = clf.model_.n_fields
        ids = np.zeros((len(events), n_fields), dtype=np.int64)
        vals = np.zeros((len(events), n_fields), dtype=np.float32)
        i = start
        for b, (event_slots, _, values) in enumerate(arranged):
            n = len(event_slots)
            ids[b, event_slots] = rows[i : i + n]
            vals[b, event_slots] = values
            i += n
        return torch.from_numpy(ids).to(clf._device), torch.from_numpy(vals).to(clf._device)

    def _sync_step(self, events: list, new: list[list[Hashable]], any_new_fields: bool) -> None:
        self._score(events)
        ids, vals = self._sync_tensors(events, new, any_new_fields)
        y, w = self._labels(events)
        net = self.classifier.model_
        if events or not net.supports_manual_grad:
            self.classifier._step(ids, vals, y, w)
            return
        # An exhausted worker still takes part in the step with an empty batch, whose
        # gradient the merger ignores: autograd handles a batch of zero events, the models'
        # hand-written gradients need at least one.
        net.supports_manual_grad = False
        try:
            self.classifier._step(ids, vals, y, w)
        finally:
            del net.supports_manual_grad

    # ------------------------------------------------------- local SGD mode

    def _local_round(self, events: list, new: list[list[Hashable]], any_new_fields: bool) -> None:
        clf = self.classifier
        if any_new_fields:
            gathered = self.comm.all_gather_object("fields all_gather", new)
            self._register(itertools.chain.from_iterable(gathered))
        touched = [torch.zeros(0, dtype=torch.int64, device=clf._device)]
        for i in range(0, len(events), self.batch_size):
            batch = events[i : i + self.batch_size]
            self._score(batch)
            ids, vals = clf._tensors([p for p, _, _ in batch], learn=True)
            y, w = self._labels(batch)
            clf._step(ids, vals, y, w)
            touched.append(torch.unique(ids))
        average_models(self.comm, clf.model_, len(events), torch.cat(touched))

    # ------------------------------------------------------------ progress

    def _progress(self) -> dict[str, Any]:
        """Events consumed by each worker and the summed losses, over all workers (a collective)."""
        world = self.world_size
        t = torch.zeros(world + 2, dtype=torch.float64, device=self.classifier._device)
        t[self.rank] = self._consumed
        t[world] = self._loss_sum
        t[world + 1] = self._loss_n
        self.comm.all_reduce("progress all_reduce", t)
        values = t.tolist()
        return {
            "world_size": world,
            "mode": self.mode,
            "batch_size": self.batch_size,
            "sync_every": self.sync_every,
            "n_steps": self._step_count,
            "n_events": self._events_total,
            "consumed": [int(v) for v in values[:world]],
            "loss_sum": values[world],
            "loss_n": int(values[world + 1]),
        }

    def _checkpoint(self) -> None:
        progress = self._progress()
        if self.rank == 0:
            clf = self.classifier
            hook = clf.__dict__.pop("_grad_hook", None)
            try:
                save_checkpoint(self.checkpoint_dir, clf, progress)
            finally:
                if hook is not None:
                    clf._grad_hook = hook
        self._n_checkpoints += 1

    def _resume(self) -> dict[str, Any] | None:
        if self.checkpoint_dir is None:
            raise ValueError("resume=True needs a checkpoint_dir")
        # Wait for every worker, so that none reads the folder while rank 0 may still be
        # writing the checkpoint of a run that stopped a moment ago.
        self.comm.all_reduce("resume barrier", torch.zeros(1, device=self.classifier._device))
        loaded = load_checkpoint(self.checkpoint_dir, self.classifier)
        if loaded is None:
            return None
        clf, progress = loaded
        for key, value in (("world_size", self.world_size), ("mode", self.mode), ("batch_size", self.batch_size)):
            if progress[key] != value:
                raise ValueError(
                    f"the checkpoint in {self.checkpoint_dir} was written with {key}={progress[key]!r}, "
                    f"this run has {key}={value!r}; resume with the same setting (it decides the shards "
                    "and the steps)"
                )
        self.classifier = clf
        if self.fields is not None:
            self._register([self.fields])
        return progress

    # ------------------------------------------------------------ the loop

    def learn(self, stream: Iterable[tuple[dict, Any]], resume: bool = False) -> Report:
        """Learn this worker's shard, in lockstep with the other workers; every worker must call it.

        Parameters
        ----------
        stream
            This worker's ``(x, y)`` events, e.g. ``shard(dataset, rank, world_size)``.
        resume
            Start from the newest checkpoint in ``checkpoint_dir`` (if there is one),
            skipping the events this worker had consumed.

        """
        self._step_count = 0
        self._events_total = 0
        self._consumed = 0
        self._loss_sum = 0.0
        self._loss_n = 0
        self._n_checkpoints = 0
        resumed_from = None
        it = iter(stream)
        if resume:
            progress = self._resume()
            if progress is not None:
                resumed_from = self._step_count = progress["n_steps"]
                self._events_total = progress["n_events"]
                self._consumed = progress["consumed"][self.rank]
                if self.rank == 0:
                    self._loss_sum, self._loss_n = progress["loss_sum"], progress["loss_n"]
                skipped = sum(1 for _ in itertools.islice(it, self._consumed))
                if skipped != self._consumed:
                    raise ValueError(
                        f"worker {self.rank}: the checkpoint says this shard had {self._consumed} events "
                        f"consumed, but it only has {skipped}; resume on the same stream"
                    )
        clf = self.classifier
        own_loss_start = (self._loss_sum, self._loss_n)
        events_start, steps_start, consumed_start = self._events_total, self._step_count, self._consumed
        chunk_size = self.batch_size if self.mode == "sync" else self.sync_every
        next_checkpoint = self._next_multiple(self.checkpoint_every)
        next_log = self._next_multiple(self.log_every)
        device = clf._device
        start = time.perf_counter()
        if self.mode == "sync":
            clf._grad_hook = GradientMerger(self.comm, clf.model_)
        try:
            while True:
                events = self._parse(list(itertools.islice(it, chunk_size)))
                new = self._new_fields(events)
                control = torch.tensor([len(events), len(new)], dtype=torch.int64, device=device)
                n_all, any_new = self.comm.all_reduce("control all_reduce", control).tolist()
                if n_all == 0:
                    break
                if self.mode == "sync":
                    self._sync_step(events, new, bool(any_new))
                else:
                    self._local_round(events, new, bool(any_new))
                self._step_count += 1
                self._events_total += n_all
                self._consumed += len(events)
                if self.check_every and self._step_count % self.check_every == 0:
                    self.check_consistency()
                if next_checkpoint is not None and self._events_total >= next_checkpoint:
                    self._checkpoint()
                    next_checkpoint = self._next_multiple(self.checkpoint_every)
                if next_log is not None and self._events_total >= next_log:
                    self._log(start)
                    next_log = self._next_multiple(self.log_every)
        finally:
            clf.__dict__.pop("_grad_hook", None)
        seconds = time.perf_counter() - start
        if self.checkpoint_dir is not None:
            self._checkpoint()
        final = self._progress()
        n_steps = self._step_count - steps_start
        local_n = self._loss_n - own_loss_start[1]
        return Report(
            mode=self.mode,
            n_workers=self.world_size,
            n_steps=n_steps,
            n_events=self._events_total,
            n_events_local=self._consumed - consumed_start,
            seconds=seconds,
            events_per_s=(self._events_total - events_start) / seconds if seconds > 0 else math.nan,
            logloss=final["loss_sum"] / final["loss_n"] if self.evaluate and final["loss_n"] else None,
            logloss_local=(self._loss_sum - own_loss_start[0]) / local_n if self.evaluate and local_n else None,
            comm_ms_per_step=self.comm.per_step(n_steps),
            resumed_from_step=resumed_from,
            n_checkpoints=self._n_checkpoints,
        )

    def _next_multiple(self, every: int | None) -> int | None:
        if every is None:
            return None
        return (self._events_total // every + 1) * every

    def _log(self, start: float) -> None:
        progress = self._progress()
        if self.rank == 0 and self.on_progress is not None:
            self.on_progress(
                {
                    "step": self._step_count,
                    "events": self._events_total,
                    "seconds": time.perf_counter() - start,
                    "logloss": progress["loss_sum"] / progress["loss_n"] if progress["loss_n"] else None,
                }
            )
