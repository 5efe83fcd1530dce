"""Online stochastic gradient descent: each new event learned along with replayed recent ones."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from river_torchrec.optim.base import DenseGrad, SparseGrad
from river_torchrec.optim.ogd import OGD

__all__ = ["OSGD"]

_KEYS = ("ids", "values", "y", "w")
_PREFIX = "osgd_buffer/"


def _pad_columns(t: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad ``[B, F]`` to ``[B, width]``: the padding row with value 0, i.e. a missing field."""
    if t.shape[1] >= width:
        return t
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))


class OSGD(OGD):
    r"""Online SGD with a replay buffer: every step is a mini-batch of new and recent events.

    :meth:`select` returns the newly arrived events followed by a random draw, without
    replacement, of up to ``batch_size - n_new`` events from a buffer of the most recent
    ``buffer_size`` labelled events; the step is then plain SGD on the mean loss of that
    batch. Every event is learned from when it arrives (it is always in the batch) and is
    replayed a few more times while it stays in the buffer, which lowers the variance of
    the steps of pure online gradient descent without waiting for a batch to fill.

    The buffer is a *sliding window* (first in, first out) rather than a reservoir: a
    reservoir samples uniformly from the whole past, which keeps replaying stale events
    after a drift, while a window replays only the last ``buffer_size`` events. It holds
    tensors (row ids, values, labels, weights), never more than ``buffer_size`` rows;
    when the number of fields grows, stored events get zero columns (missing fields).

    Events enter the buffer only after a step learned from them, so an event whose step
    was rejected (non-finite loss) is never replayed. Rows recycled by the embedding
    table (:meth:`reset_rows`) are erased from the stored events, as their keys are gone,
    and :meth:`reset_state` empties the buffer as well as the (empty) SGD state: after a
    drift, replaying older events would pull the model back.

    Draws are reproducible: draw ``k`` uses a generator seeded from ``seed`` and ``k``,
    so no ``torch.Generator`` is stored and the updater pickles and resumes exactly.

    Parameters
    ----------
    lr
        Learning rate of the SGD step (default: best of the sweep of
        ``benchmarks/bench_updaters.py``).
    buffer_size
        Most recent events kept for replay.
    batch_size
        Rows of a step: the new events plus replayed ones. 1 is plain online gradient
        descent (:class:`OGD`).
    seed
        Seed of the replay draws.
    clip_norm
        Optional joint gradient-norm bound.

    Examples
    --------
    >>> from river import evaluate, metrics
    >>> from river_torchrec import CTRClassifier, datasets, optim
    >>> model = CTRClassifier(model="lr", optimizer=optim.OSGD(lr=0.05, batch_size=8))
    >>> evaluate.progressive_val_score(datasets.SyntheticCTR(n_events=2_000, seed=1), model, metrics.LogLoss())
    LogLoss: 0.3...
    >>> model.updater.n_buffered
    1000

    """

    def __init__(
        self,
        lr: float = 0.001,
        buffer_size: int = 1000,
        batch_size: int = 32,
        seed: int = 42,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(lr=lr, clip_norm=clip_norm)
        if not (isinstance(buffer_size, int) and buffer_size >= 1):
            raise ValueError(f"buffer_size must be an int >= 1, got {buffer_size!r}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.buffer_size = buffer_size
        self.batch_size = batch_size
        self.seed = seed
        self._events: dict[str, torch.Tensor] = {}
        self._size = 0
        self._pos = 0
        self._n_draws = 0
        self._pending: tuple[torch.Tensor, ...] | None = None

    @property
    def n_buffered(self) -> int:
        """Events currently in the replay buffer."""
        return self._size

    # ---------------------------------------------------------------- buffer

    def _draw(self, k: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self._n_draws)
        self._n_draws += 1
        return torch.randperm(self._size, generator=gen)[:k]

    def _remember(self, ids: torch.Tensor, values: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> None:
        cap = self.buffer_size
        new = dict(zip(_KEYS, (ids[-cap:], values[-cap:], y[-cap:], w[-cap:])))
        m = len(new["y"])
        if not self._events:
            width = ids.shape[1]
            self._events = {
                "ids": torch.zeros(cap, width, dtype=ids.dtype, device=ids.device),
                "values": torch.zeros(cap, width, dtype=torch.float32, device=ids.device),
                "y": torch.zeros(cap, dtype=torch.float32, device=ids.device),
                "w": torch.zeros(cap, dtype=torch.float32, device=ids.device),
            }
        width = max(ids.shape[1], self._events["ids"].shape[1])
        for key in ("ids", "values"):
            self._events[key] = _pad_columns(self._events[key], width)
            new[key] = _pad_columns(new[key], width)
        slots = (self._pos + torch.arange(m)) % cap
        for key in _KEYS:
            buf = self._events[key]
            buf[slots.to(buf.device)] = new[key].to(device=buf.device, dtype=buf.dtype)
        self._pos = (self._pos + m) % cap
        self._size = min(self._size + m, cap)

    def select(
        self, ids: torch.Tensor, values: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The new events followed by up to ``batch_size - len(y)`` replayed ones."""
        self._pending = (ids, values, y, w)
        k = min(self.batch_size - len(y), self._size)
        if k <= 0:
            return ids, values, y, w
        slots = self._draw(k).to(self._events["y"].device)
        width = max(ids.shape[1], self._events["ids"].shape[1])
        old = [self._events[key][slots].to(ids.device) for key in _KEYS]
        return (
            torch.cat([_pad_columns(ids, width), _pad_columns(old[0], width)]),
            torch.cat([_pad_columns(values, width), _pad_columns(old[1], width).to(values.dtype)]),
            torch.cat([y, old[2].to(y.dtype)]),
            torch.cat([w, old[3].to(w.dtype)]),
        )

    @torch.no_grad()
    def step(
        self, dense: Sequence[DenseGrad], sparse: Sequence[SparseGrad], lr_scale: float = 1.0
    ) -> None:
        super().step(dense, sparse, lr_scale)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._remember(*pending)

    # ----------------------------------------------------------------- state

    def reset_rows(self, name: str, rows: Sequence[int]) -> None:
        """Forget the state of ``rows`` and erase them from the buffered events."""
        super().reset_rows(name, rows)
        if self._events and len(rows):
            ids = self._events["ids"]
            hit = torch.isin(ids, torch.as_tensor(rows, dtype=ids.dtype, device=ids.device))
            ids[hit] = 0
            self._events["values"][hit] = 0

    def reset_state(self) -> None:
        """Forget the SGD state and empty the replay buffer."""
        super().reset_state()
        self._events = {}
        self._size = self._pos = 0
        self._pending = None

    def state_dict(self) -> dict[str, torch.Tensor | int | float]:
        """The base state plus the buffer (``osgd_buffer/*`` tensors); safetensors-friendly."""
        out = super().state_dict()
        for key, buf in self._events.items():
            out[_PREFIX + key] = buf
        out[_PREFIX + "counters"] = torch.tensor([self._size, self._pos, self._n_draws], dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor | int | float]) -> None:
        state = dict(state)
        mine = {k[len(_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(_PREFIX)}
        super().load_state_dict(state)
        counters = mine.pop("counters", None)
        self._events = {k: torch.as_tensor(v).clone() for k, v in mine.items()}
        self._size, self._pos, self._n_draws = (
            (int(c) for c in torch.as_tensor(counters)) if counters is not None else (0, 0, 0)
        )
        self._pending = None

    @classmethod
    def _unit_test_params(cls):
        yield {}
        yield {"lr": 0.1, "buffer_size": 10, "batch_size": 4, "seed": 1, "clip_norm": 1.0}
